"""The command line of every ``robustdistill`` command, and nothing else: building it imports no torch, so
``--help`` answers at once."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, NoReturn, Sequence

from . import __version__
from ._catalog import Catalog
from ._config import (AUTOATTACK_VERSIONS, BACKEND_ENV, BACKENDS, NORMS, ROBUSTBENCH_DEFAULT_DIR, add_run_arguments,
                     parse_number)
from ._presets import add_presets_arguments
from ._registry import RobustDistillError

DEBUG_ENV = "ROBUSTDISTILL_DEBUG"


class Parser(argparse.ArgumentParser):
    """Parse errors as one line and a pointer to ``--help``, not the whole usage block. ``commands`` holds the
    parsers of the subcommands by name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        raise RobustDistillError(f"{message} (see `{self.prog} --help`)")


HELP = ("-h", "--help")


@dataclass(frozen=True)
class PreParsed:
    """What is read of a command line before its parser exists: the subcommand, whether help is asked for,
    ``--debug``, and the option files (``--preset``, ``--config``) whose values become the parser's defaults.
    ``argv`` is the command line without ``--debug`` (accepted anywhere)."""

    argv: list[str]
    command: str | None
    help: bool
    debug: bool
    preset: str | None
    config: str | None
    plugin_given: bool


def pre_parse(argv: Sequence[str]) -> PreParsed:
    """The one look at ``argv`` before parsing (see :class:`PreParsed`)."""
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    rest = argv[argv.index(command) + 1:] if command is not None else []
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(rest)
    return PreParsed(argv, command, any(arg in HELP for arg in argv), debug, known.preset,
                     known.config if command == "train" else None,
                     any(arg.split("=", 1)[0] == "--plugin" for arg in rest))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``robustdistill eval`` to ``parser``."""
    parser.add_argument("checkpoint", metavar="CKPT",
                        help="checkpoint written by `robustdistill train`, or a plain state_dict with --arch")
    parser.add_argument("--attacks", default="clean,fgsm,pgd20,cw", metavar="LIST",
                        help="comma-separated attacks: clean, fgsm, pgd20, cw, autoattack, apgd-ce+apgd-t, or any a "
                             "plugin registers (default: %(default)s)")
    parser.add_argument("--subset", type=_positive_int, default=None, metavar="N",
                        help="evaluate on the first N test images (default: the whole test set)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="write the results to this JSON file, after each finished attack; when it exists, "
                             "the attacks already in it are skipped (the settings must match)")
    parser.add_argument("--redo", action="store_true",
                        help="evaluate every attack again and start the --json file over")
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="dataset to evaluate on (default: the checkpoint's training dataset)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="where the dataset lives (default: the checkpoint's data directory)")
    parser.add_argument("--batch-size", type=_positive_int, default=256, metavar="N",
                        help="images per batch (default: %(default)s)")
    parser.add_argument("--eps", type=parse_number, default=None, metavar="EPS",
                        help="perturbation radius, e.g. 8/255 (default: the checkpoint's, else the dataset's)")
    parser.add_argument("--step-size", type=parse_number, default=None, metavar="ALPHA",
                        help="PGD/CW step size, e.g. 2/255 (default: the checkpoint's, else the dataset's)")
    parser.add_argument("--pgd-steps", type=_positive_int, default=20, metavar="N",
                        help="steps of the pgd20 attack (default: %(default)s)")
    parser.add_argument("--cw-steps", type=_positive_int, default=30, metavar="N",
                        help="steps of the cw attack (default: %(default)s)")
    parser.add_argument("--kappa", type=parse_number, default=50.0, metavar="K",
                        help="confidence of the C&W margin loss (default: %(default)s)")
    parser.add_argument("--restarts", type=_positive_int, default=1, metavar="N",
                        help="random restarts of pgd20, and of cw unless --cw-restarts is given (default: %(default)s)")
    parser.add_argument("--cw-restarts", type=_positive_int, default=None, metavar="N",
                        help="random restarts of cw (default: --restarts; IGDM's evaluation: 10)")
    parser.add_argument("--autoattack-version", choices=AUTOATTACK_VERSIONS, default="standard",
                        help="AutoAttack version of the autoattack attack (default: %(default)s, as every paper here)")
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help="a paper's evaluation protocol as defaults: attacks, ε, steps, restarts, AutoAttack "
                             "version (`robustdistill presets` lists them; other options given here win)")
    parser.add_argument("--norm", choices=NORMS, default=None,
                        help="threat model (default: the checkpoint's, else linf)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    add_ops_backend_argument(parser)
    add_fold_bn_argument(parser, "the evaluated model")
    parser.add_argument("--arch", default=None, metavar="NAME",
                        help="architecture of a plain state_dict from another tool (e.g. wrn-34-10, "
                             "torchvision:resnet50, or official-wrn for a WideResNet from the TRADES, ARD, RSLAD or "
                             "IGDM code); classes and input shape then come from --dataset")
    add_source_arguments(parser, prefix="", what="the model")
    parser.add_argument("--download", action="store_true",
                        help="download the dataset, and robustbench:NAME weights, if they are not found locally")
    parser.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts (default: %(default)s)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="report on stderr each attack as it starts and ends, the progress within long "
                             "attacks (AutoAttack's log, a line every 30 s, a bar on a terminal) and the time "
                             "left (default: on)")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by `robustdistill train`")
    parser.add_argument("--out", default="runs/report", metavar="DIR",
                        help="where to write the report (default: %(default)s)")
    parser.add_argument("--eval-json", default="eval.json", metavar="NAME",
                        help="the evaluation file in each run directory (default: %(default)s)")
    parser.add_argument("--eps", default=None, metavar="LIST",
                        help="radii of the robust-accuracy curve, e.g. 0,0.05,0.1,8/255 "
                             "(default: 0, ¼, ½, ¾, 1, 1.5, 2 × each run's training ε)")
    parser.add_argument("--pgd-steps", type=int, default=20, help="PGD steps of the curve (default: %(default)s)")
    parser.add_argument("--subset", type=int, default=1000, metavar="N",
                        help="test images for the curve (default: %(default)s)")
    parser.add_argument("--grad-images", type=int, default=6, metavar="K",
                        help="test images in the gradient figure (default: %(default)s)")
    parser.add_argument("--teacher", default=None, metavar="SPEC",
                        help="teacher whose gradients are shown: a checkpoint, a run directory or robustbench:NAME "
                             "(default: the first run's --teacher, loaded with that run's options)")
    parser.add_argument("--teacher-arch", default=None, metavar="NAME",
                        help="architecture of a --teacher that is a plain state_dict (as for train)")
    add_source_arguments(parser)
    parser.add_argument("--no-models", action="store_true",
                        help="skip the figures that load models (robust accuracy vs ε, gradients)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="TEACHER_CKPT",
                        help="teacher trained on another task (label set): a checkpoint or a run directory")
    parser.add_argument("--dataset", required=True, help="the target dataset whose classes the new head predicts")
    parser.add_argument("--out", required=True, metavar="PATH", help="where to write the new teacher checkpoint")
    parser.add_argument("--epochs", type=int, default=5, help="epochs over the target training set (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per head step (default: %(default)s, as the official code)")
    parser.add_argument("--lr", type=parse_number, default=1e-3, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--weight-decay", type=parse_number, default=2e-4,
                        help="L2 on the head's weights (default: %(default)s)")
    parser.add_argument("--subset", type=int, default=None, metavar="N", help="use only the first N training images")
    parser.add_argument("--val-size", type=int, default=1000, metavar="N",
                        help="test images for the clean accuracy printed at the end (default: %(default)s; 0: none)")
    parser.add_argument("--data-dir", default=None, metavar="DIR", help="where the dataset files are")
    parser.add_argument("--download", action="store_true", help="download the dataset if it is not found locally")
    parser.add_argument("--arch", default=None, metavar="NAME",
                        help="architecture of a teacher that is a plain state_dict from another tool (a model name, "
                             "or official-wrn for a WideResNet from the TRADES, ARD, RSLAD or IGDM code)")
    parser.add_argument("--normalize", default=None, metavar="none|dataset|MEAN/STD",
                        help="input normalisation of such a state_dict when it does not record it")
    parser.add_argument("--source-classes", type=int, default=None, metavar="K",
                        help="classes of such a plain state_dict's head (default: the target's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--seed", type=int, default=0)


def add_source_arguments(parser: Any, *, prefix: str = "teacher-", what: str = "the teacher") -> None:
    """Add ``--{prefix}normalize`` and ``--robustbench-dir`` to a command's parser (or argument group)."""
    parser.add_argument(f"--{prefix}normalize", default=None, metavar="none|dataset|MEAN/STD",
                        help=f"input normalisation of {what} when it is a plain state_dict that does not record it: "
                             "none (images in [0, 1] as they are), dataset (the dataset's mean and std), or "
                             "MEAN/STD, e.g. 0.4914,0.4822,0.4465/0.2471,0.2435,0.2616")
    parser.add_argument("--robustbench-dir", default=None, metavar="DIR",
                        help=f"where robustbench:NAME weights are, in RobustBench's layout DIR/DATASET/THREAT/NAME.pt "
                             f"(default: RobustBench's own {ROBUSTBENCH_DEFAULT_DIR})")


def add_fold_bn_argument(parser: argparse._ActionsContainer, what: str) -> None:
    """Add ``--fold-bn on|off`` (see :mod:`robustdistill._folding`)."""
    parser.add_argument("--fold-bn", default="on", choices=("on", "off"),
                        help=f"fold eval-mode BatchNorm into the preceding convolutions of {what} "
                             "(the same function, less memory traffic) (default: %(default)s)")


def add_ops_backend_argument(parser: argparse._ActionsContainer) -> None:
    """Add ``--ops-backend`` (the choice of :func:`robustdistill._ops.set_backend`)."""
    parser.add_argument("--ops-backend", default=None, choices=BACKENDS,
                        help="fused kernels for the PGD step and IGDM's loss: auto (when built for the device), "
                             f"ext (require them), ref (pure PyTorch) (default: ${BACKEND_ENV}, else auto)")


class Replaced(argparse.Action):
    """An option that no longer exists: using it says what replaced it (on the command line and in --config)."""

    def __init__(self, option_strings: list[str], dest: str, replaced_by: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.replaced_by = replaced_by

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        raise RobustDistillError(f"{option_string} was replaced: {self.replaced_by}")


VAL_SIZE_REPLACED = ("--val-split N holds out N training images for the per-epoch check (the test set is for "
                     "evaluation), and --val-test N monitors the first N test images")


def add_train_arguments(parser: argparse.ArgumentParser, catalog: Catalog) -> None:
    """Add the options of ``robustdistill train``: the core ones and those of the plugins in ``catalog``."""
    add_run_arguments(parser, catalog.options, catalog.known())
    parser.add_argument("--val-size", action=Replaced, replaced_by=VAL_SIZE_REPLACED, dest="replaced_val_size")
    g = parser.add_argument_group("this command")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt (a run "
                   "directory without one starts anew, so the same command relaunches a preempted job)")
    g.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="options from a YAML file (keys are option names); the command line overrides it")


def build_parser(catalog: Catalog) -> Parser:
    """The whole command line; ``train``'s plugin options are those of ``catalog``."""
    parser = Parser(prog="robustdistill",
                    description="Transfer adversarial robustness from a robust teacher to a student.")
    parser.add_argument("--version", action="version", version=f"robustdistill {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback of plugin errors (also ${DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser.commands[name] = sub.add_parser(name, **kwargs)
        return parser.commands[name]

    train = command("train", help="train a model with one or more method plugins",
                    usage="robustdistill train [--plugin NAME ...] [options]")
    add_train_arguments(train, catalog)
    add_eval_arguments(command("eval", help="evaluate a checkpoint under attacks"))
    add_finetune_arguments(command("finetune-head", help="finetune a new linear head on a frozen teacher's features "
                                   "for another label set (cross-task transfer)"))
    add_report_arguments(command("report", help="figures (curves, robust accuracy vs ε, input-gradient maps) and a "
                                 "results table for run directories"))
    doctor = command("doctor", help="show torch, CUDA, compiler and fused-kernel status, and which backend each op "
                                    "uses")
    doctor.add_argument("--json", action="store_true", help="print the backend report as JSON")
    add_presets_arguments(command("presets", help="list the presets of the papers' training and evaluation protocols "
                                  "(train/eval --preset NAME) and their sources"))
    plugins = command("plugins", help="list the loaded plugins, their versions and hooks")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    return parser
