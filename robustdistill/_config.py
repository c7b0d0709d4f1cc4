"""The run configuration: every ``robustdistill train`` option, typed, and immutable once a run is built.

Core options are the fields of :class:`RunConfig`; each field carries its command-line
:class:`~robustdistill._registry.Option` (flag, help, type, whether ``--resume`` may change it), so the
parser, ``config.json`` and the resume check all derive from one declaration. Plugin options are kept
per plugin in :class:`PluginOptions` namespaces: ``config.igdm.alpha``.

This module does not import torch, so that ``--help`` starts at once. It is about 500 lines because every core
option of ``train`` is declared here, once, with its help text: splitting the declarations would split the
reference ``train --help`` renders from.
"""
from __future__ import annotations

import argparse
import keyword
import math
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from ._registry import Option, RobustDistillError

if TYPE_CHECKING:
    import torch

BACKENDS = ("auto", "ext", "ref")
BACKEND_ENV = "ROBUSTDISTILL_OPS_BACKEND"
NORMS = ("linf", "l2")
FD_DISTANCES = ("kl", "l1", "l2")
ROBUSTBENCH_DEFAULT_DIR = "./models"
AUTOATTACK_VERSIONS = ("standard", "plus")
"""AutoAttack versions ``eval --autoattack-version`` offers (every paper here reports ``standard``)."""
LR_SCHEDULES = ("multistep", "cosine", "constant")
ACTIVATIONS = ("relu", "gelu", "silu")


# -- value parsers ------------------------------------------------------------------------------------

def parse_number(text: str) -> float:
    """Parse ``0.0314``, ``8/255`` or ``1e-3`` into a float."""
    try:
        if "/" in text:
            num, den = text.split("/")
            value = float(Fraction(num.strip()) / Fraction(den.strip()))
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (examples: 0.1, 8/255)") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def format_duration(seconds: float) -> str:
    """``4.2s`` (below 10 s), ``42s``, ``7m05s``, ``3h12m``."""
    seconds = max(0.0, float(seconds))
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    if round(seconds) < 60:
        return f"{round(seconds)}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def parse_epoch_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of epochs, e.g. 100,150") from None


def value_type(option: Option) -> Callable[[str], Any]:
    """How an option's text is parsed: its ``type``, else guessed from its default."""
    if option.type is not None:
        return option.type
    if isinstance(option.default, float):
        return parse_number
    if isinstance(option.default, int) and not isinstance(option.default, bool):
        return parse_int
    return str


def resolve_device(name: str) -> "torch.device":
    """``auto`` picks CUDA when a GPU is visible, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RobustDistillError(f"--device {name} was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise RobustDistillError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


# -- core options -------------------------------------------------------------------------------------

def _option(flag: str, default: Any, help: str, group: str = "", *, type: Callable[[str], Any] | None = None,
            choices: tuple[Any, ...] | None = None, fixed_on_resume: bool = True, metavar: str | None = None,
            repeat: bool = False, required: bool = False) -> Any:
    """A configuration field declared with its command-line option (``repeat``: given once per value;
    ``required``: the command refuses to run without it)."""
    option = Option(flag=flag, default=default, help=help, type=type, choices=choices, fixed_on_resume=fixed_on_resume,
                    metavar=metavar)
    return from_option(option, group, repeat=repeat, required=required)


def from_option(option: Option, group: str = "", *, repeat: bool = False, required: bool = False, **changes: Any) -> Any:
    """A configuration field of an option declared once and shared by several commands (``changes`` adapt its
    help or default to the command)."""
    option = replace(option, **changes) if changes else option
    return field(default=option.default, metadata={"option": option, "group": group, "repeat": repeat,
                                                   "required": required})


def _positional(name: str, help: str, *, metavar: str, many: bool = False) -> Any:
    """A positional argument of a command's configuration (``many``: one or more values)."""
    return field(default=None, metadata={"positional": {"help": help, "metavar": metavar, "many": many}})


# -- options several commands share ---------------------------------------------------------------------

DEVICE = Option(flag="--device", default="auto", help="auto (CUDA when a GPU is visible), cpu or cuda[:N]",
                fixed_on_resume=False)
OPS_BACKEND = Option(flag="--ops-backend", default=None, type=str, choices=BACKENDS, fixed_on_resume=False,
                     help=f"fused kernels for the PGD step and IGDM's loss: auto (when built for the device), ext "
                          f"(require them), ref (pure PyTorch) (default: ${BACKEND_ENV}, else auto)")
ROBUSTBENCH_DIR = Option(flag="--robustbench-dir", default=None, type=str, metavar="DIR", fixed_on_resume=False,
                         help="where robustbench:NAME weights are, in RobustBench's layout DIR/DATASET/THREAT/NAME.pt "
                              f"(default: RobustBench's own {ROBUSTBENCH_DEFAULT_DIR})")
DATA_DIR = Option(flag="--data-dir", default=None, type=str, metavar="DIR", fixed_on_resume=False,
                  help="where the dataset files are (also $ROBUSTDISTILL_DATA)")
DOWNLOAD = Option(flag="--download", default=False, fixed_on_resume=False,
                  help="download the dataset, and robustbench:NAME weights, if they are not found locally")
NORMALIZE_HELP = ("input normalisation of {what} when it is a plain state_dict that does not record it: none "
                  "(images in [0, 1] as they are), dataset (the dataset's mean and std), or MEAN/STD, e.g. "
                  "0.4914,0.4822,0.4465/0.2471,0.2435,0.2616")


def fold_bn_option(what: str) -> Option:
    """``--fold-bn on|off`` for the models a command runs."""
    return Option(flag="--fold-bn", default="on", choices=("on", "off"), fixed_on_resume=False,
                  help=f"fold eval-mode BatchNorm into the preceding convolutions of {what} (the same function, less "
                       "memory traffic)")


def normalize_option(flag: str, what: str, metavar: str = "none|dataset|MEAN/STD") -> Option:
    """``--teacher-normalize`` / ``--normalize``: the normalisation of a plain state_dict that does not record it."""
    return Option(flag=flag, default=None, type=str, metavar=metavar, help=NORMALIZE_HELP.format(what=what))


# -- core options -------------------------------------------------------------------------------------

METHOD, DATA, OPTIM, SPEED, ATTACK, VALIDATION, OUTPUT = (
    "method", "data and model", "optimisation", "speed (the same training, faster)",
    "attack (defaults per dataset: Fashion-MNIST ε=0.1, step 0.01, 10 steps; MNIST 0.3, 0.01, 40; "
    "CIFAR/SVHN 8/255, 2/255, 10)", "validation", "output and checkpoints")


@dataclass(frozen=True)
class PluginOptions(Mapping[str, Any]):
    """One plugin's option values, read as attributes: ``config.igdm.alpha``."""

    plugin: str
    values: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(f"plugin {self.__dict__['plugin']!r} has no option {name!r}; "
                                 f"it has {sorted(self.__dict__['values'])}") from None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def namespace(plugin: str) -> str:
    """The attribute a plugin's options are read under: ``scaled-ce`` → ``config.scaled_ce``."""
    return plugin.replace("-", "_")


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a training run. Built once per run, then read-only (``dataclasses.replace`` for
    variants). Values the user leaves unset (``None``) are resolved when the run is built — ε from the
    dataset, the model from the image size — so a run's ``config.json`` records what it actually used."""

    plugin: tuple[str, ...] = _option(
        "--plugin", ("natural",), "training method; repeat it to compose methods (e.g. --plugin rslad --plugin igdm)",
        METHOD, metavar="NAME", repeat=True)
    preset: str | None = _option(
        "--preset", None, "the training protocol of a paper as defaults: model, schedule, optimiser, attack, method "
        "options (`robustdistill presets` lists them; other options given here win)", METHOD, metavar="NAME",
        fixed_on_resume=False)
    teacher: tuple[str, ...] | None = _option(
        "--teacher", None, "teacher for distillation methods: a checkpoint, a run directory (its final model), a "
        "plain state_dict with --teacher-arch, or robustbench:NAME (a RobustBench model for --dataset, Linf; pip "
        "install 'robustdistill[robustbench]'); ROLE=SPEC names a teacher of a method that distils from several "
        "(MTARD: --teacher robust=SPEC --teacher clean=SPEC); repeat it for each", METHOD, metavar="[ROLE=]SPEC",
        repeat=True)
    teacher_arch: tuple[str, ...] | None = _option(
        "--teacher-arch", None, "architecture of a --teacher that is a plain state_dict saved by another tool: a model "
        "name (wrn-34-10, torchvision:resnet50, timm:resnet18), or official-wrn for a WideResNet from the TRADES, ARD, "
        "RSLAD or IGDM code (depth and width read from the weights, no normalisation); ROLE=NAME for one teacher "
        "of several, a bare NAME for every other", METHOD, metavar="[ROLE=]NAME", repeat=True)
    teacher_normalize: tuple[str, ...] | None = from_option(
        normalize_option("--teacher-normalize", "a --teacher", "[ROLE=]none|dataset|MEAN/STD"), METHOD, repeat=True,
        help=NORMALIZE_HELP.format(what="a --teacher") + "; ROLE=... for one teacher of several")
    robustbench_dir: str | None = from_option(ROBUSTBENCH_DIR, METHOD)
    teacher_resize: bool = _option("--teacher-resize", False, "resize inputs inside a teacher trained at another "
                                   "image size (cross-resolution transfer)", METHOD)
    dataset: str = _option("--dataset", "fashion-mnist", "dataset to train on", DATA)
    data_dir: str | None = from_option(DATA_DIR, DATA)
    download: bool = from_option(DOWNLOAD, DATA)
    subset: int | None = _option("--subset", None, "train on the first N training images only", DATA,
                                 type=parse_int, metavar="N")
    model: str | None = _option("--model", None, "student architecture (default: cnn for 28×28 data, else resnet18)",
                                DATA)
    activation: str = _option("--activation", "relu", "activation of the built-in models", DATA, choices=ACTIVATIONS)
    epochs: int = _option("--epochs", 10, "training epochs (a resumed run may be extended)", OPTIM,
                          fixed_on_resume=False)
    batch_size: int = _option("--batch-size", 128, "global batch size", OPTIM)
    lr: float = _option("--lr", 0.1, "SGD learning rate", OPTIM)
    momentum: float = _option("--momentum", 0.9, "SGD momentum", OPTIM)
    nesterov: bool = _option("--nesterov", False, "Nesterov momentum (the Fair-ARD code's SGD)", OPTIM)
    weight_decay: float = _option("--weight-decay", 5e-4, "SGD weight decay (IGDM paper: 5e-4; most official "
                                  "adversarial-distillation code: 2e-4)", OPTIM)
    lr_schedule: str = _option("--lr-schedule", "multistep", "learning-rate schedule", OPTIM, choices=LR_SCHEDULES)
    milestones: tuple[int, ...] | None = _option(
        "--milestones", None, "epochs where multistep divides the lr (default: 50% and 75% of --epochs)", OPTIM,
        type=parse_epoch_list, metavar="E1,E2")
    lr_gamma: float = _option("--lr-gamma", 0.1, "multistep decay factor", OPTIM)
    seed: int = _option("--seed", 0, "random seed (weights, data order, attack noise)", OPTIM)
    device: str = from_option(DEVICE, SPEED)
    amp: str = _option("--amp", "off", "off: fp32, as the official codes of the distillation methods train; bf16: "
                       "bf16 autocast on CUDA (faster, but forwards and input gradients rounded to 8-bit mantissas: "
                       "PGD steps and small loss terms such as IGDM's logit differences change; recorded as off on "
                       "the CPU)", SPEED, choices=("off", "bf16"))
    ops_backend: str | None = from_option(OPS_BACKEND, SPEED)
    channels_last: str = _option("--channels-last", "auto", "channels_last memory layout of models and batches "
                                 "(auto: on CUDA only)", SPEED, choices=("auto", "on", "off"), fixed_on_resume=False)
    cudnn_benchmark: str = _option("--cudnn-benchmark", "on", "let cuDNN pick the fastest convolution algorithms "
                                   "(CUDA only; recorded as off elsewhere)", SPEED, choices=("on", "off"),
                                   fixed_on_resume=False)
    fold_bn: str = from_option(fold_bn_option("the teacher and of the student while it is attacked"), SPEED)
    batch_student_forwards: bool = _option(
        "--batch-student-forwards", False, "run the student's training-mode forwards of a step (e.g. S(x′), S(x), "
        "S(x−δ)) as one batch: faster on a GPU, but BatchNorm then normalises over them together, which changes "
        "the training (the papers' code runs them separately)", SPEED)
    attack: str | None = _option(
        "--attack", None, "the training attack's objective, for base methods that take one: ce (PGD on the labels' "
        "CE), cw (the C&W margin), trades-kl, teacher-kl (RSLAD's), adaad-kl, or one a plugin registers (default: "
        "the base method's own)", ATTACK, metavar="NAME")
    eps: float | None = _option("--eps", None, "L∞ radius of the training attack, e.g. 8/255 or 0.1", ATTACK,
                                type=parse_number)
    step_size: float | None = _option("--step-size", None, "step of the training attack, e.g. 2/255", ATTACK,
                                      type=parse_number)
    attack_steps: int | None = _option("--attack-steps", None, "steps of the training attack", ATTACK, type=parse_int)
    clip_start: str = _option(
        "--clip-start", "code", "where the training attack takes its first gradient: code (default: as the method's "
        "official code — TRADES, ARD, RSLAD and AdaAD at the unclipped random start, PGD-AT at the start clipped "
        "to the image range), on (clip every start), off (never clip)", ATTACK, choices=("code", "on", "off"))
    val_split: int | None = _option(
        "--val-split", None, "training images held out from the end of the training set for the per-epoch clean and "
        "PGD check, and excluded from training (default: 500, or a tenth of the training images when that is "
        "fewer; 0: none held out, nothing validated)", VALIDATION, type=parse_int, metavar="N")
    val_test: int = _option("--val-test", 0, "also check the first N test images every epoch (test_clean, "
                            "test_pgd): for monitoring only, since selecting an epoch or a setting on them leaks the "
                            "test set", VALIDATION, metavar="N", fixed_on_resume=False)
    val_attack_steps: int = _option("--val-attack-steps", 20, "PGD steps of the per-epoch check", VALIDATION,
                                    fixed_on_resume=False)
    out: str | None = _option("--out", None, "run directory (default: runs/<plugins>-<dataset>)", OUTPUT,
                              metavar="DIR", fixed_on_resume=False)
    checkpoint_every: int | None = _option(
        "--checkpoint-every", None, "also checkpoint every N steps", OUTPUT, type=parse_int, metavar="N",
        fixed_on_resume=False)
    checkpoint_minutes: float = _option(
        "--checkpoint-minutes", 10.0, "also checkpoint when this many minutes of training passed since the last "
        "checkpoint (0: only at epoch ends and --checkpoint-every)", OUTPUT, fixed_on_resume=False)
    sync_bn: bool = _option("--sync-bn", False, "SyncBatchNorm across processes in distributed runs (torchrun)",
                            OPTIM)
    plugin_options: Mapping[str, PluginOptions] = field(default_factory=lambda: MappingProxyType({}))

    def __getattr__(self, name: str) -> PluginOptions:
        options = self.__dict__.get("plugin_options", {})
        if name in options:
            return options[name]
        raise AttributeError(f"the run configuration has no option or plugin namespace {name!r}")

    def options_of(self, plugin: str) -> PluginOptions:
        """The option values of ``plugin`` (``config.options_of("scaled-ce")`` = ``config.scaled_ce``)."""
        try:
            return self.plugin_options[namespace(plugin)]
        except KeyError:
            raise RobustDistillError(f"plugin {plugin!r} is not active in this run or registers no options") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: core options at the top level, each plugin's options under ``plugins``."""
        out: dict[str, Any] = {f.name: _jsonable(getattr(self, f.name)) for f in core_fields()}
        out["plugins"] = {name: {k: _jsonable(v) for k, v in opts.values.items()}
                          for name, opts in sorted(self.plugin_options.items())}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        """The inverse of :meth:`to_dict` (unknown keys are ignored)."""
        values: dict[str, Any] = {}
        for f in core_fields():
            if f.name in data:
                value = data[f.name]
                values[f.name] = tuple(value) if isinstance(value, list) else value
        plugins = {name: PluginOptions(name, MappingProxyType(dict(opts)))
                   for name, opts in (data.get("plugins") or {}).items()}
        return cls(**values, plugin_options=MappingProxyType(plugins))


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def core_fields() -> list[Any]:
    """The :class:`RunConfig` fields that are command-line options, in declaration order."""
    return [f for f in fields(RunConfig) if "option" in f.metadata]


def core_options() -> list[Option]:
    return [f.metadata["option"] for f in core_fields()]


# -- the command line -----------------------------------------------------------------------------------

PLUGIN_DEST = "plugin-option:{plugin}:{key}"


def _help(option: Option) -> str:
    if option.default is None:
        return option.help
    shown = ("on" if option.default else "off") if option.is_flag else (
        ",".join(map(str, option.default)) if isinstance(option.default, tuple) else option.default)
    return f"{option.help} (default: {shown})"


class Repeated(argparse.Action):
    """An option given once per value (``--teacher robust=A --teacher clean=B``). Values that came as defaults (from
    ``--preset`` or ``--config``) are replaced by the command line's, not extended by them."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        items = [] if current is None or current is self.default else list(current)
        setattr(namespace, self.dest, [*items, values])


def add_option(group: argparse._ActionsContainer, option: Option, dest: str, repeat: bool = False,
               required: bool = False) -> None:
    """Add one :class:`Option` to an argparse parser or group."""
    kwargs: dict[str, Any] = {"dest": dest, "help": _help(option).replace("%", "%%")}
    if option.is_flag:
        kwargs["action"] = argparse.BooleanOptionalAction
        kwargs["default"] = option.default
    else:
        kwargs["type"] = value_type(option)
        kwargs["default"] = None if repeat else option.default
        if repeat:
            kwargs["action"] = Repeated
        if option.choices is not None:
            kwargs["choices"] = option.choices
        if option.choices is None:
            kwargs["metavar"] = option.metavar or dest.rsplit(":", 1)[-1].rstrip("_").upper()
    if required:
        kwargs["required"] = True
    group.add_argument(option.flag, **kwargs)


def config_fields(cls: type) -> list[Any]:
    """The fields of a command's configuration that are options or positional arguments, in declaration order."""
    return [f for f in fields(cls) if "option" in f.metadata or "positional" in f.metadata]


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, known: Mapping[str, str] | None = None) -> None:
    """Every option and positional argument of the configuration ``cls``, options by group. ``known`` adds the
    names users may choose from to the help of the fields it names (``--plugin``, ``--dataset``, ``--model``)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in config_fields(cls):
        if "positional" in f.metadata:
            meta = f.metadata["positional"]
            parser.add_argument(f.name, metavar=meta["metavar"], help=meta["help"], nargs="+" if meta["many"] else None)
            continue
        option: Option = f.metadata["option"]
        if known and f.name in known:
            option = replace(option, help=f"{option.help}. Known: {known[f.name]}")
        name = f.metadata["group"]
        target = groups.setdefault(name, parser.add_argument_group(name)) if name else parser
        add_option(target, option, f.name, f.metadata["repeat"], f.metadata["required"])


def config_from_namespace(cls: type, args: argparse.Namespace) -> Any:
    """The configuration ``cls`` of parsed arguments (repeated options as tuples)."""
    values = {}
    for f in config_fields(cls):
        value = getattr(args, f.name)
        values[f.name] = tuple(value) if isinstance(value, list) and f.metadata.get("repeat") else value
    return cls(**values)


def add_run_arguments(parser: argparse.ArgumentParser, plugin_options: Mapping[str, list[Option]],
                      known: Mapping[str, str]) -> None:
    """All ``train`` options: the core ones by group, then one group per plugin. ``known`` adds the names
    users may choose from to the help of ``--plugin``, ``--dataset`` and ``--model``."""
    add_config_arguments(parser, RunConfig, known)
    for plugin, options in sorted(plugin_options.items()):
        group = parser.add_argument_group(f"plugin {plugin}")
        for option in options:
            add_option(group, option, PLUGIN_DEST.format(plugin=plugin, key=option_key(plugin, option)))


OptionTable = Mapping[str, "tuple[str, Option, bool]"]
"""A command's options by flag without ``--``: ``{"igdm-alpha": (dest, option, repeat)}``."""


def option_table(cls: type, plugin_options: Mapping[str, list[Option]] | None = None) -> dict[str, Any]:
    """The :data:`OptionTable` of the configuration ``cls`` (and, for ``train``, of the plugins' options)."""
    table = {f.metadata["option"].flag[2:]: (f.name, f.metadata["option"], f.metadata["repeat"])
             for f in config_fields(cls) if "option" in f.metadata}
    for plugin, options in (plugin_options or {}).items():
        for option in options:
            table[option.flag[2:]] = (PLUGIN_DEST.format(plugin=plugin, key=option_key(plugin, option)), option, False)
    return table


REPLACED_OPTIONS: Mapping[str, Mapping[str, str]] = MappingProxyType({"train": MappingProxyType({
    "val-size": "--val-split N holds out N training images for the per-epoch check (the test set is for "
                "evaluation), and --val-test N monitors the first N test images"})})
"""Options that no longer exist, per command, and what replaced them (said on the command line and in files)."""


def option_key(plugin: str, option: Option) -> str:
    """The name a plugin reads an option under: ``--igdm-alpha`` of ``igdm`` → ``alpha``; ``--adaad-lambda``
    → ``lambda_`` (a Python keyword gets a trailing underscore); ``--tensorboard`` of ``tensorboard`` →
    ``enabled`` (a flag) and ``--average`` of ``average`` → ``mode`` (an option with a value)."""
    if option.flag == f"--{plugin}":
        return "enabled" if option.is_flag else "mode"
    key = option.flag[len(f"--{plugin}-"):].replace("-", "_")
    return f"{key}_" if keyword.iskeyword(key) else key


def check_plugin_option(plugin: str, option: Option) -> None:
    """A plugin's flags start with ``--<plugin>-`` (or are ``--<plugin>``); raises ``ValueError`` otherwise."""
    if not option.flag.startswith(f"--{plugin}-") and option.flag != f"--{plugin}":
        raise ValueError(f"option {option.flag} must start with --{plugin}- (a plugin's options are prefixed "
                         "with its name)")
    if option.default is None and option.type is None:
        raise ValueError(f"option {option.flag} has no default to take its type from; give it type=")


def config_from_args(args: argparse.Namespace, plugin_options: Mapping[str, list[Option]]) -> RunConfig:
    """The :class:`RunConfig` of parsed ``train`` arguments (unset values stay ``None`` until the run resolves them)."""
    values = vars(args)
    core = {f.name: values[f.name] for f in core_fields() if f.name in values}
    if core.get("plugin") is None:
        core.pop("plugin", None)
    else:
        core["plugin"] = tuple(core["plugin"])
    plugins = {}
    for plugin, options in plugin_options.items():
        keys = [option_key(plugin, o) for o in options]
        plugins[namespace(plugin)] = PluginOptions(plugin, MappingProxyType(
            {key: values[PLUGIN_DEST.format(plugin=plugin, key=key)] for key in keys}))
    return RunConfig(**core, plugin_options=MappingProxyType(plugins))


def option_defaults(table: OptionTable, values: Mapping[str, Any], source: str, command: str) -> dict[str, Any]:
    """``{dest: value}`` for ``parser.set_defaults`` from ``option: value`` pairs named like the flags without
    ``--`` (``_`` and ``-`` alike), each value parsed and checked as the command line would; ``source`` names
    where they come from in errors (``--config FILE``, ``--preset NAME``)."""
    defaults = {}
    for key, value in values.items():
        name = str(key).lstrip("-").replace("_", "-")
        if name in REPLACED_OPTIONS.get(command, {}):
            raise RobustDistillError(f"{source}: {key} was replaced: {REPLACED_OPTIONS[command][name]}")
        if name not in table or name in ("preset", "config"):
            raise RobustDistillError(f"{source}: unknown option {key!r}; see `robustdistill {command} --help`")
        dest, option, repeat = table[name]
        parse = value_type(option)
        try:
            if repeat:
                value = [value] if isinstance(value, str) else list(value)
                value = [parse(v) if isinstance(v, str) else v for v in value]
            elif option.is_flag:
                if not isinstance(value, bool):
                    raise argparse.ArgumentTypeError(f"{value!r} is not true or false")
            elif isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                            and parse is not str):
                value = parse(str(value))
        except argparse.ArgumentTypeError as err:
            raise RobustDistillError(f"{source}: {key}: {err}") from None
        if option.choices is not None and value not in option.choices:
            raise RobustDistillError(f"{source}: {key}: {value!r} is not one of {list(option.choices)}")
        defaults[dest] = value
    return defaults
