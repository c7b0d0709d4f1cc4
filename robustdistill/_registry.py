"""What plugins register at start-up: methods, models, datasets, attacks and options.

Every registration hook receives a ``register`` callback and calls it with one of the
entries below; the plugin manager records which plugin registered what.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import torch
    from torch import nn


class RobustDistillError(Exception):
    """A user-facing error: the message names the problem and the fix."""


@dataclass(frozen=True)
class ModelArch:
    """Everything needed to rebuild a model; stored in every checkpoint."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    activation: str = "relu"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "activation": self.activation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelArch":
        return cls(
            name=str(d["name"]),
            num_classes=int(d["num_classes"]),
            in_channels=int(d["in_channels"]),
            image_size=int(d["image_size"]),
            activation=str(d.get("activation", "relu")),
            mean=tuple(float(v) for v in d.get("mean", (0.0,))),
            std=tuple(float(v) for v in d.get("std", (1.0,))),
        )


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """A model family. ``pattern`` (a regex) lets one entry serve names like ``wrn-34-10``."""

    name: str
    factory: Callable[[ModelArch], nn.Module]
    summary: str
    pattern: str | None = None

    def matches(self, name: str) -> bool:
        if self.pattern is not None:
            return re.fullmatch(self.pattern, name) is not None
        return name == self.name


@dataclass(frozen=True)
class DatasetInfo:
    """Shape, normalisation and the attack defaults that make sense for a dataset."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps: float
    step_size: float
    attack_steps: int
    augment: str = "none"  # "none" | "crop-flip"


@dataclass
class ImageData:
    """A dataset held in memory as uint8 images ``[N, C, H, W]`` and int64 labels.

    In a training run, ``train_x``/``train_y`` are the images that train and ``val_x``/``val_y`` the
    validation split held out from the end of the training set (``--val-split``; empty when 0).
    """

    info: DatasetInfo
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None


@dataclass(frozen=True, kw_only=True)
class DatasetEntry:
    """A dataset: ``load(data_dir, download)`` returns :class:`ImageData`."""

    name: str
    load: Callable[[str | None, bool], ImageData]
    summary: str


@dataclass(frozen=True, kw_only=True)
class Option:
    """A command-line option of ``robustdistill train``.

    A plugin's options live in its own namespace: plugin ``igdm`` registers ``--igdm-alpha`` (the flag
    must start with ``--<plugin name>-``) and reads it as ``config.igdm.alpha``. The value's type is
    ``type`` when given, else taken from the default: ``bool`` becomes a flag pair
    (``--igdm-clip-minus`` / ``--no-igdm-clip-minus``), ``float`` accepts ``0.1`` and ``8/255``, ``int``
    and ``str`` parse as such; a ``None`` default needs ``type``. ``fixed_on_resume`` (the default) means
    the value changes the run, so ``--resume`` refuses a new value; set it to ``False`` for options
    that only change logging or speed.
    """

    flag: str
    default: Any
    help: str
    type: Callable[[str], Any] | None = None
    choices: tuple[Any, ...] | None = None
    fixed_on_resume: bool = True
    metavar: str | None = None

    @property
    def dest(self) -> str:
        """The flag as an identifier: ``--igdm-alpha`` → ``igdm_alpha``."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def is_flag(self) -> bool:
        """A boolean option without an explicit type: given as ``--name`` / ``--no-name``."""
        return self.type is None and isinstance(self.default, bool)


@dataclass(frozen=True, kw_only=True)
class Method:
    """A training method selectable with ``--plugin NAME``.

    The plugin that registers a method is the plugin made active when the method is selected.
    ``default_base`` names the method that supplies the attack when this one is selected alone
    (IGDM on top of PGD-AT); ``needs_teacher`` makes the default teacher (``--teacher SPEC``) required;
    ``teachers`` names further teacher roles the method distils from, each given as
    ``--teacher ROLE=SPEC`` (MTARD: ``("robust", "clean")``). ``attack`` names the registered training
    :class:`Attack` whose objective the method's ``attack`` hook maximises unless ``--attack`` names
    another (PGD-AT: ``ce``; RSLAD: ``teacher-kl``).
    """

    name: str
    summary: str
    needs_teacher: bool = False
    teachers: tuple[str, ...] = ()
    default_base: str | None = None
    attack: str | None = None


@dataclass(frozen=True, kw_only=True)
class Composition:
    """What an add-on method changes in a base method it composes with.

    When ``addon`` and ``base`` are selected together (on a dataset with ``num_classes`` classes, when given),
    each of ``options`` — the base plugin's option keys as it reads them (``{"tau": 1.0}`` for
    ``--ard-tau``) — takes its value wherever the user left that option unset, before the base resolves
    its own defaults. ``source`` says where the values come from; ``config.json`` records it. ``base`` may
    also name a plugin that registers no method (``average``): its options then take the values whenever
    ``addon`` is selected (SAAD's SWA from epoch 95: ``base="average"``).
    """

    addon: str
    base: str
    options: Mapping[str, Any]
    source: str
    num_classes: int | None = None


@dataclass(frozen=True, kw_only=True)
class Default:
    """A value returned from ``resolve_options`` together with where it comes from.

    ``source`` is recorded in ``config.json``. ``borrowed=True`` marks a value taken from another setting
    than the run's (a paper's CIFAR-10 value on Fashion-MNIST): the run then also prints one line naming
    the option, the value and its source.
    """

    value: Any
    source: str
    borrowed: bool = False


@dataclass(frozen=True, kw_only=True)
class Attack:
    """A training attack's objective, selectable with ``--attack NAME``: ``objective(ctx)`` returns the per-sample
    loss ``x′ ↦ [B]`` that the base method's attack maximises in this step (the run's ε, step and steps
    apply). ``needs_teacher`` refuses runs without ``--teacher``."""

    name: str
    objective: Callable[..., Callable[["torch.Tensor"], "torch.Tensor"]]
    summary: str
    needs_teacher: bool = False


@dataclass(frozen=True, kw_only=True)
class EvalAttack:
    """An evaluation attack: ``run(model, x, y, settings)`` returns adversarial inputs for a batch.

    ``whole_set=True`` marks an attack that batches by itself (AutoAttack): it gets the whole evaluated set
    at once, on the CPU, with the keywords ``batch_size`` and ``verbose``. ``check``, when given, runs before
    anything is loaded and raises ``RobustDistillError`` when the attack cannot run (a missing package).
    """

    name: str
    run: Callable[..., torch.Tensor]
    summary: str
    whole_set: bool = False
    check: Callable[[], object] | None = None


@dataclass
class Registry:
    """Everything registered by the loaded plugins, with the plugin that registered it."""

    methods: dict[str, Method] = field(default_factory=dict)
    method_plugin: dict[str, str] = field(default_factory=dict)
    models: list[ModelEntry] = field(default_factory=list)
    datasets: dict[str, DatasetEntry] = field(default_factory=dict)
    attacks: dict[str, Attack] = field(default_factory=dict)
    eval_attacks: dict[str, EvalAttack] = field(default_factory=dict)
    options: dict[str, list[Option]] = field(default_factory=dict)
    compositions: list[Composition] = field(default_factory=list)

    def model(self, name: str) -> ModelEntry:
        for entry in self.models:
            if entry.matches(name):
                return entry
        known = ", ".join(e.name for e in self.models)
        raise RobustDistillError(f"unknown model {name!r}; known models: {known}")

    def dataset(self, name: str) -> DatasetEntry:
        if name not in self.datasets:
            known = ", ".join(sorted(self.datasets))
            raise RobustDistillError(f"unknown dataset {name!r}; known datasets: {known}")
        return self.datasets[name]
