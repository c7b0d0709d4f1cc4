"""Models from outside robustdistill, and where any model comes from.

**Model specs.** Wherever a checkpoint is accepted (``train --teacher``, ``eval``, ``report --teacher``,
``finetune-head``) a spec names the model:

- a checkpoint file written by ``robustdistill train`` or ``finetune-head``;
- a run directory (``robustdistill train --out DIR``): its ``DIR/last.pt``, whose final model is evaluated
  (the weight average when the run trained one, else the student); ``SPEC@student`` or ``SPEC@average``
  chooses;
- a plain state_dict saved by another tool, with its architecture (``--teacher-arch`` / ``--arch``):
  a model name (``wrn-34-10``, ``torchvision:resnet50``, ``timm:resnet18``), or ``official-wrn``, the
  WideResNet of the TRADES, ARD, RSLAD and IGDM code (keys ``conv1``, ``block1.layer.0.…``, ``bn1``,
  ``fc``; depth and width are read from the weights);
- ``robustbench:NAME``: a RobustBench model, built and loaded by the ``robustbench`` package from
  ``--robustbench-dir`` (RobustBench's layout ``DIR/DATASET/THREAT/NAME.pt``), run exactly as
  RobustBench runs it. Nothing is downloaded without ``--download``.

**Input normalisation is never guessed.** Every model takes images in ``[0, 1]``; what it subtracts and
divides by is recorded in its checkpoint (``mean``/``std``), is part of the RobustBench model, is none for
``official-wrn`` (the official code feeds ``[0, 1]`` images), or is given with ``--teacher-normalize``
(``none``, ``dataset`` or ``MEAN/STD``) for a plain state_dict that does not record it. The resolved
normalisation is printed and recorded (``LoadedModel.normalization``).

**Foreign models** (RobustBench's, torchvision's, timm's) are wrapped by :mod:`robustdistill._models.foreign`,
which finds their penultimate features.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import math
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import Tensor, nn

from ._checkpoint import FORMAT, checkpoint_weights, is_state_dict, load_checkpoint, model_from_checkpoint
from ._config import ROBUSTBENCH_DEFAULT_DIR
from ._models import build_model
from ._models.foreign import ForeignModel, convert_official_wrn, wrap_foreign
from ._registry import DatasetInfo, ModelArch, ModelEntry, RobustDistillError
from ._threats import THREAT_MODELS

ROBUSTBENCH = "robustbench:"
OFFICIAL_WRN = "official-wrn"
ROBUSTBENCH_DATASETS = ("cifar10", "cifar100")
ROBUSTBENCH_MISSING = "robustbench:NAME needs the robustbench package: pip install 'robustdistill[robustbench]'"
_WEIGHTS = re.compile(r"^(.+)@([a-z][a-z0-9_-]*)$")
"""``SPEC@NAME``: the weights ``NAME`` of a robustdistill checkpoint (``student``, ``average``)."""


# ---------------------------------------------------------------------------------------------
# Specs and sources
# ---------------------------------------------------------------------------------------------

def resolve_checkpoint_path(spec: str | Path) -> Path:
    """A checkpoint path, or a run directory's ``last.pt``; a clear error when neither exists."""
    path = Path(spec)
    if path.is_dir():
        last = path / "last.pt"
        if not last.is_file():
            raise RobustDistillError(f"{str(path)!r} is a directory without last.pt; expected a run directory written "
                                     "by `robustdistill train --out DIR` (its checkpoint is DIR/last.pt) or the path "
                                     "of a checkpoint file")
        return last
    if not path.exists():
        raise RobustDistillError(f"{str(path)!r} does not exist; pass a run directory written by `robustdistill train "
                                 "--out DIR`, a checkpoint file, or robustbench:NAME")
    return path


@dataclass
class ModelSource:
    """Where a model comes from: a checkpoint file (loaded safely) or a RobustBench name."""

    spec: str
    path: Path | None = None
    checkpoint: dict[str, Any] | None = None
    robustbench: str | None = None
    weights: str | None = None

    @property
    def is_native(self) -> bool:
        """Whether the file is a robustdistill checkpoint (with its architecture and options)."""
        return self.checkpoint is not None and self.checkpoint.get("format") == FORMAT

    @property
    def config(self) -> dict[str, Any]:
        """The options the checkpoint was trained with (empty for anything else)."""
        config = self.checkpoint.get("config") if self.is_native and self.checkpoint is not None else None
        return config if isinstance(config, dict) else {}


def open_source(spec: str | Path) -> ModelSource:
    """Resolve ``spec`` (checkpoint, run directory or ``robustbench:NAME``) and read the checkpoint file."""
    text = str(spec)
    if text.startswith(ROBUSTBENCH):
        name = text[len(ROBUSTBENCH):]
        if not name:
            raise RobustDistillError("robustbench: needs a model name, e.g. robustbench:Standard")
        return ModelSource(text, robustbench=name)
    weights = None
    match = _WEIGHTS.match(text)
    if match and not Path(text).exists():
        text, weights = match.group(1), match.group(2)
    path = resolve_checkpoint_path(text)
    source = ModelSource(str(spec), path=path, checkpoint=load_checkpoint(path), weights=weights)
    if weights is not None and not source.is_native:
        raise RobustDistillError(f"{str(spec)!r}: @{weights} chooses weights of a robustdistill checkpoint, and "
                                 f"{str(path)!r} is not one")
    return source


@dataclass
class LoadedModel:
    """A model ready to run on images in ``[0, 1]``, its architecture and how it normalises inputs."""

    model: nn.Module
    arch: ModelArch
    source: ModelSource
    normalization: str
    weights: str | None = None

    def describe(self) -> dict[str, Any]:
        """What was loaded, for ``environment.json`` and evaluation files (``weights``: which of a checkpoint's)."""
        described = {"spec": self.source.spec, "arch": self.arch.name, "normalization": self.normalization}
        return {**described, "weights": self.weights} if self.weights is not None else described


def _values(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _normalization_text(mean: Sequence[float], std: Sequence[float], how: str) -> str:
    if all(v == 0 for v in mean) and all(v == 1 for v in std):
        return f"none: the model takes images in [0, 1] as they are ({how})"
    return f"mean {_values(mean)}, std {_values(std)} ({how})"


def parse_normalization(text: str, info: DatasetInfo, flag: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``none``, ``dataset`` (the dataset's mean and std) or ``M1,M2,M3/S1,S2,S3`` as ``(mean, std)``."""
    if text == "none":
        return (0.0,), (1.0,)
    if text == "dataset":
        return tuple(info.mean), tuple(info.std)
    try:
        mean_text, std_text = text.split("/")
        mean = tuple(float(v) for v in mean_text.split(","))
        std = tuple(float(v) for v in std_text.split(","))
    except ValueError:
        raise RobustDistillError(f"{flag} {text!r}: use none, dataset, or MEAN/STD with one value or one per "
                                 "channel, e.g. 0.4914,0.4822,0.4465/0.2471,0.2435,0.2616") from None
    for values in (mean, std):
        if len(values) not in (1, info.in_channels) or not all(math.isfinite(v) for v in values):
            raise RobustDistillError(f"{flag} {text!r}: give one finite value or {info.in_channels} (one per channel) "
                                     "on each side of the /")
    if any(v <= 0 for v in std):
        raise RobustDistillError(f"{flag} {text!r}: the std values must be positive")
    return mean, std


# ---------------------------------------------------------------------------------------------
# RobustBench
# ---------------------------------------------------------------------------------------------

def import_robustbench() -> Any:
    """``import robustbench`` as published on PyPI (1.1.1): its ``eval`` module imports ``autoattack``,
    which PyPI's AutoAttack package ``pyautoattack`` provides as ``pyautoattack``, so that module is
    registered under the name ``autoattack`` when no ``autoattack`` module exists; its ``loaders`` module
    imports ``pkg_resources`` (setuptools < 81)."""
    if "robustbench" in sys.modules:
        return sys.modules["robustbench"]
    if importlib.util.find_spec("robustbench") is None:
        raise RobustDistillError(ROBUSTBENCH_MISSING)
    if importlib.util.find_spec("autoattack") is None:
        if importlib.util.find_spec("pyautoattack") is None:
            raise RobustDistillError("robustbench needs AutoAttack: pip install 'robustdistill[robustbench]' "
                                     "(or pip install pyautoattack)")
        pyautoattack = importlib.import_module("pyautoattack")
        sys.modules["autoattack"] = pyautoattack
        sys.modules["autoattack.state"] = importlib.import_module("pyautoattack.state")
    if importlib.util.find_spec("pkg_resources") is None:
        raise RobustDistillError("robustbench imports pkg_resources, which setuptools 81 and later no longer ship: "
                                 "pip install 'setuptools<81' (pip install 'robustdistill[robustbench]' does)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation notes of pkg_resources, torch.jit and timm
            return importlib.import_module("robustbench")
    except ImportError as err:
        raise RobustDistillError(f"robustbench does not import ({err}); reinstall it with "
                                 "pip install 'robustdistill[robustbench]'") from None


def robustbench_weight_files(name: str, dataset: str, threat: str, model_dir: str | Path) -> list[Path]:
    """Where ``robustbench.utils.load_model`` reads (and, when missing, downloads) the weights of ``name``."""
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    models = model_dicts[BenchmarkDataset(dataset)].get(ThreatModel(threat))
    if models is None:
        raise RobustDistillError(f"RobustBench has no {threat} models for {dataset}; choose another --norm")
    if name not in models:
        close = difflib.get_close_matches(name, list(models), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise RobustDistillError(f"RobustBench has no {dataset} {threat} model {name!r}{hint} "
                                 "(the names are those of robustbench.ai's leaderboards)")
    ids = models[name]["gdrive_id"]
    if ids is None:
        raise RobustDistillError(f"RobustBench's {name} is built from timm's hub weights, not from a file; "
                                 "robustdistill loads RobustBench models that come as weight files")
    path = Path(model_dir) / dataset / threat / f"{name}.pt"
    return [Path(f"{path}_m{i}.pt") for i in range(len(ids))] if isinstance(ids, list) else [path]


def load_robustbench(name: str, info: DatasetInfo, *, norm: str, model_dir: str | None,
                     download: bool) -> tuple[nn.Module, str]:
    """RobustBench's ``NAME`` for ``info``'s dataset and the ``norm`` threat model, loaded by
    ``robustbench.utils.load_model`` (which reads the file with ``torch.load``: weights only, the default from
    torch 2.6, which ``pyproject.toml`` requires); returns the
    model in eval mode and a description of where it came from."""
    if info.name not in ROBUSTBENCH_DATASETS:
        raise RobustDistillError(f"robustbench:{name}: RobustBench has models for {', '.join(ROBUSTBENCH_DATASETS)} "
                                 f"(and ImageNet); --dataset {info.name} is not one of them: pass --dataset cifar10")
    if norm not in THREAT_MODELS:
        raise RobustDistillError(f"robustbench:{name}: no RobustBench threat model for norm {norm!r}")
    robustbench = import_robustbench()
    threat = THREAT_MODELS[norm].robustbench
    model_dir = model_dir or ROBUSTBENCH_DEFAULT_DIR
    files = robustbench_weight_files(name, info.name, threat, model_dir)
    missing = [str(f) for f in files if not f.is_file()]
    if missing and not download:
        raise RobustDistillError(f"robustbench:{name}: weights not found at {', '.join(missing)}; rerun with "
                                 f"--download to fetch them into {model_dir}, or point --robustbench-dir at the "
                                 f"folder that holds {info.name}/{threat}/{name}.pt")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            network = robustbench.utils.load_model(name, model_dir=str(model_dir), dataset=info.name,
                                                   threat_model=threat)
    except Exception as err:  # downloads, unpickling and state_dict errors surface with many types
        first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise RobustDistillError(f"robustbench:{name}: RobustBench could not load it from {', '.join(map(str, files))} "
                                 f"({type(err).__name__}: {first})") from None
    return network.eval(), f"RobustBench {name} ({info.name}, {threat}) from {', '.join(map(str, files))}"


# ---------------------------------------------------------------------------------------------
# Loading any spec
# ---------------------------------------------------------------------------------------------

def _plain_state(obj: dict[str, Any]) -> dict[str, Tensor] | None:
    if is_state_dict(obj):
        return obj
    for key in ("state_dict", "model_state_dict"):
        if isinstance(obj.get(key), dict) and is_state_dict(obj[key]):
            return obj[key]
    return None


def _load_into(model: nn.Module, state: dict[str, Tensor], source: str, arch: ModelArch, fix: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = " ".join(str(err).splitlines()[:2])[:300]
        raise RobustDistillError(f"the weights in {source!r} do not fit architecture {arch.name!r} "
                                 f"({arch.num_classes} classes, {arch.in_channels} channels); {fix} ({first})") from None


def load_model_spec(spec: str | Path | ModelSource, *, info: DatasetInfo, models: Sequence[ModelEntry],
                    arch: str | None = None, normalize: str | None = None, robustbench_dir: str | None = None,
                    download: bool = False, norm: str = "linf", activation: str = "relu",
                    flag_prefix: str = "teacher-") -> LoadedModel:
    """Load the model ``spec`` names (see the module docstring) for data described by ``info``.

    ``arch`` names the architecture of a plain state_dict, ``normalize`` its input normalisation
    (``none``, ``dataset`` or ``MEAN/STD``); ``robustbench_dir``, ``download`` and ``norm`` (the threat
    model) apply to ``robustbench:NAME``. ``flag_prefix`` names the options in messages
    (``--teacher-arch`` or ``--arch``). The model is on the CPU, in eval mode.
    """
    source = spec if isinstance(spec, ModelSource) else open_source(spec)
    arch_flag, normalize_flag = f"--{flag_prefix}arch", f"--{flag_prefix}normalize"
    if source.robustbench is not None:
        for flag, value in ((arch_flag, arch), (normalize_flag, normalize)):
            if value is not None:
                raise RobustDistillError(f"{flag} does not apply to {source.spec}: RobustBench builds the model and its "
                                         "input normalisation itself; drop it")
        network, where = load_robustbench(source.robustbench, info, norm=norm, model_dir=robustbench_dir,
                                          download=download)
        model_arch = ModelArch(source.spec, info.num_classes, info.in_channels, info.image_size)
        model = wrap_foreign(model_arch, network, source.spec, need_features=False).eval()
        return LoadedModel(model, model_arch, source,
                           f"inputs in [0, 1]; the RobustBench model normalises them itself where it needs to ({where})")

    assert source.checkpoint is not None
    build = lambda a: build_model(a, models)  # noqa: E731
    if source.is_native:
        if normalize is not None:
            raise RobustDistillError(f"{source.spec!r} records its input normalisation; drop {normalize_flag}")
        weights, _ = checkpoint_weights(source.checkpoint, source.spec, source.weights)
        model, model_arch = model_from_checkpoint(source.checkpoint, build, source.spec, weights)
        return LoadedModel(model.eval(), model_arch, source,
                           _normalization_text(model_arch.mean, model_arch.std, "recorded in the checkpoint"),
                           weights)

    state = _plain_state(source.checkpoint)
    if state is None:
        raise RobustDistillError(f"{source.spec!r} is neither a robustdistill checkpoint nor a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if arch is None:
        raise RobustDistillError(
            f"{source.spec!r} is a plain state_dict without an architecture; name it with {arch_flag} NAME: a model "
            f"name (e.g. wrn-34-10, torchvision:resnet18) or {OFFICIAL_WRN} for a WideResNet from the TRADES, ARD, "
            "RSLAD or IGDM code")
    if arch == OFFICIAL_WRN:
        official = convert_official_wrn(state, source.spec)
        mean, std = parse_normalization(normalize, info, normalize_flag) if normalize else ((0.0,), (1.0,))
        how = f"{normalize_flag} {normalize}" if normalize else "the official code feeds images in [0, 1]"
        model_arch = ModelArch(f"wrn-{official.depth}-{official.widen}", official.num_classes, official.in_channels,
                               32, "relu", mean, std)
        model = build(model_arch)
        _load_into(model, {**official.state, "mean": model.mean, "std": model.std}, source.spec, model_arch,
                   "its layers are not those of the official WideResNet (pre-activation blocks, no bias): load it "
                   f"with the {arch_flag} it was saved from")
        return LoadedModel(model.eval(), model_arch, source, _normalization_text(mean, std, how))

    recorded = "mean" in state or "std" in state
    if recorded and normalize is not None:
        raise RobustDistillError(f"{source.spec!r} records its input normalisation (mean/std in the state_dict); "
                                 f"drop {normalize_flag}")
    if not recorded and normalize is None:
        raise RobustDistillError(
            f"{source.spec!r} is a plain state_dict that does not record its input normalisation; say which with "
            f"{normalize_flag} none (images in [0, 1] as they are, as RobustBench and the TRADES/ARD/RSLAD code), "
            f"{normalize_flag} dataset ({info.name}'s mean and std) or {normalize_flag} MEAN/STD")
    if recorded:
        mean = tuple(float(v) for v in state["mean"].flatten())
        std = tuple(float(v) for v in state["std"].flatten())
        how = "recorded in the state_dict"
    else:
        mean, std = parse_normalization(str(normalize), info, normalize_flag)
        how = f"{normalize_flag} {normalize}"
    model_arch = ModelArch(arch, info.num_classes, info.in_channels, info.image_size, activation, mean, std)
    model = build(model_arch)
    if isinstance(model, ForeignModel) and not any(k.startswith("network.") for k in state):
        state = model.library_keys_to_own(state)
    fix = (f"it is in the layout of the official TRADES/ARD/RSLAD/IGDM WideResNet: use {arch_flag} {OFFICIAL_WRN}"
           if "block1.layer.0.conv1.weight" in state else
           f"name the architecture it was saved from with {arch_flag}, and check that it was trained on {info.name}")
    _load_into(model, {**state, "mean": model.mean, "std": model.std} if not recorded else state, source.spec,
               model_arch, fix)
    return LoadedModel(model.eval(), model_arch, source, _normalization_text(mean, std, how))


def check_teacher_fits(loaded: LoadedModel, info: DatasetInfo, *, resize: bool) -> bool:
    """Refuse a teacher whose classes or channels differ from the data, saying what to do; returns whether
    its image size differs (allowed with ``resize``: the caller resizes inputs inside the teacher)."""
    arch, spec = loaded.arch, loaded.source.spec
    if arch.num_classes != info.num_classes:
        raise RobustDistillError(
            f"teacher {spec!r} has {arch.num_classes} classes but {info.name} has {info.num_classes}; distil from a "
            f"teacher trained on {info.name}, or give this one a new {info.num_classes}-class head with "
            f"`robustdistill finetune-head {spec} --dataset {info.name} --out teacher-{info.name}.pt` and pass that")
    if arch.in_channels != info.in_channels:
        raise RobustDistillError(
            f"teacher {spec!r} takes {arch.in_channels}-channel images but {info.name} has {info.in_channels}-channel "
            f"images; distil from a teacher trained on {info.in_channels}-channel data, e.g. one trained with "
            f"`robustdistill train --plugin at --dataset {info.name} --out runs/teacher`")
    if arch.image_size != info.image_size and not resize:
        raise RobustDistillError(
            f"teacher {spec!r} takes {arch.image_size}×{arch.image_size} images but {info.name} has "
            f"{info.image_size}×{info.image_size}; pass --teacher-resize to resize inputs inside the teacher")
    return arch.image_size != info.image_size


