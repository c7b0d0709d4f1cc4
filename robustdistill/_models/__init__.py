"""Model families: the built-in classifiers (:mod:`.builtin`), adapters for other libraries' models
(:mod:`.foreign`), and the registry entries that build them by name. Loading a model from a spec (checkpoints,
state_dicts, RobustBench) is :mod:`robustdistill._specs`.

Every model takes images in ``[0, 1]`` and normalises them itself, so attacks work in pixel space.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from .._registry import ModelArch, ModelEntry, RobustDistillError
from .builtin import (
    ACTIVATIONS,
    BasicBlock,
    Classifier,
    InvertedResidual,
    MobileNetV2,
    PreActBlock,
    ResNet18,
    SmallCNN,
    WideResNet,
    make_activation,
)
from .foreign import build_timm, build_torchvision

__all__ = ["ACTIVATIONS", "BUILTIN_MODELS", "Classifier", "SmallCNN", "ResNet18", "WideResNet", "MobileNetV2",
           "BasicBlock", "PreActBlock", "InvertedResidual", "WRN_PATTERN", "build_model", "make_activation"]

WRN_PATTERN = r"wrn-(\d+)-(\d+)"


def _build_wrn(arch: ModelArch) -> WideResNet:
    match = re.fullmatch(WRN_PATTERN, arch.name)
    if match is None:
        raise RobustDistillError(f"bad WideResNet name {arch.name!r}; use wrn-DEPTH-WIDEN")
    return WideResNet(arch, depth=int(match.group(1)), widen=int(match.group(2)))


BUILTIN_MODELS: list[ModelEntry] = [
    ModelEntry(name="cnn", factory=lambda arch: SmallCNN(arch, ((16,), (32,), (64,)), pooled=3, features=128),
               summary="light 3-conv CNN for 28x28 images; fast enough for adversarial training on a CPU"),
    ModelEntry(name="smallcnn", factory=lambda arch: SmallCNN(arch, ((32, 32), (64, 64)), pooled=4, features=256),
               summary="4-conv CNN in the layout of TRADES' MNIST SmallCNN"),
    ModelEntry(name="resnet18", factory=ResNet18, summary="CIFAR ResNet-18 (11.2M parameters)"),
    ModelEntry(
        name="preact-resnet18",
        factory=lambda arch: ResNet18(arch, preact=True),
        summary="CIFAR pre-activation ResNet-18 (Rice et al.)",
    ),
    ModelEntry(
        name="wrn-D-K",
        factory=_build_wrn,
        summary="CIFAR WideResNet of depth D and widen factor K, e.g. wrn-34-10, wrn-28-10",
        pattern=WRN_PATTERN,
    ),
    ModelEntry(name="mobilenetv2", factory=MobileNetV2, summary="CIFAR MobileNetV2 (2.3M parameters)"),
    ModelEntry(name="torchvision:NAME", factory=build_torchvision,
               summary="any torchvision classification model, random weights (e.g. torchvision:resnet50)",
               pattern=r"torchvision:.+"),
    ModelEntry(name="timm:NAME", factory=build_timm,
               summary="any timm model, random weights (e.g. timm:resnet18; pip install timm)", pattern=r"timm:.+"),
]


def build_model(arch: ModelArch, entries: Sequence[ModelEntry] = BUILTIN_MODELS) -> Classifier:
    """Build ``arch.name`` with the first entry that matches it."""
    for entry in entries:
        if entry.matches(arch.name):
            model = entry.factory(arch)
            if not isinstance(model, Classifier):
                raise RobustDistillError(
                    f"model factory for {arch.name!r} returned {type(model).__name__}; "
                    f"it must return a robustdistill._models.Classifier"
                )
            return model
    known = ", ".join(e.name for e in entries)
    raise RobustDistillError(f"unknown model {arch.name!r}; known models: {known}")
