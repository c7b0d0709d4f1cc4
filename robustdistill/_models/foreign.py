"""Models from other libraries, as robustdistill classifiers: torchvision and timm classifiers (``torchvision:NAME``,
``timm:NAME``), the wrapper of RobustBench models, and the WideResNet state_dicts of the official TRADES, ARD,
RSLAD and IGDM code.

**Penultimate features of foreign models** are found by one mechanism: the *classifier* is the ``nn.Linear`` whose
output is the model's output, found by running the model once on a probe batch with forward hooks on every
``nn.Linear`` with as many outputs as classes. The model is then split into ``network`` (the library's module with
that classifier replaced by ``nn.Identity``, so it returns the classifier's input) and ``head`` (the classifier),
and ``model(x, return_features=True)`` returns ``(head(features), features)`` like every built-in model. A model
whose logits are not the output of one final linear layer (an ensemble, say) gives logits and ``None`` features.
Other layers: :func:`layer_outputs`.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._attacks import model_mode
from .._registry import ModelArch, RobustDistillError
from .builtin import Classifier

TORCHVISION = "torchvision:"
TIMM = "timm:"
TIMM_MISSING = "timm:NAME needs the timm package: pip install 'robustdistill[timm]' (or pip install timm)"
PROBE_BATCH = 2

# ---------------------------------------------------------------------------------------------
# Foreign models: one classifier-splitting mechanism for RobustBench, torchvision and timm
# ---------------------------------------------------------------------------------------------

@dataclass
class _Split:
    name: str
    classifier: nn.Linear


def _probe(arch: ModelArch) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(PROBE_BATCH, arch.in_channels, arch.image_size, arch.image_size, generator=generator)


def find_classifier(network: nn.Module, arch: ModelArch, what: str) -> _Split | None:
    """The ``nn.Linear`` whose output is ``network``'s output on a probe batch (called once), or ``None``.

    Runs ``network`` once in eval mode on ``[2, C, S, S]`` random images; a network that cannot run on
    them, or does not return ``[2, num_classes]`` logits, is refused with a clear error.
    """
    candidates = {name: module for name, module in network.named_modules()
                  if isinstance(module, nn.Linear) and module.out_features == arch.num_classes}
    calls: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in candidates}
    handles = [module.register_forward_hook(
        lambda _m, inputs, output, name=name: calls[name].append((inputs[0], output)))
        for name, module in candidates.items()]
    shape = f"{arch.in_channels}×{arch.image_size}×{arch.image_size}"
    try:
        with torch.no_grad(), model_mode(network, train=False):
            logits = network(_probe(arch))
    except Exception as err:  # whatever the library raises for an input it cannot take
        detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise RobustDistillError(f"{what} does not run on {shape} images ({type(err).__name__}: {detail}); "
                                 "choose a model made for images of this size and channel count") from None
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(logits, Tensor) or tuple(logits.shape) != (PROBE_BATCH, arch.num_classes):
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise RobustDistillError(f"{what} returns {got} for {PROBE_BATCH} images of {shape}; robustdistill needs "
                                 f"logits of shape [batch, {arch.num_classes}]")
    found = [name for name, seen in calls.items()
             if len(seen) == 1 and seen[0][0].dim() == 2 and torch.equal(seen[0][1], logits)]
    return _Split(found[-1], candidates[found[-1]]) if found else None


def _replace_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


class ForeignModel(Classifier):
    """A torchvision, timm or RobustBench model called like the built-in ones.

    ``network`` is the library's module with its classifier (see :func:`find_classifier`) replaced by
    ``nn.Identity``; ``head`` is that classifier; ``classifier_name`` its name in the library's module.
    Inputs in ``[0, 1]`` are normalised with the arch's ``mean``/``std`` before ``network``.
    """

    def __init__(self, arch: ModelArch, network: nn.Module, split: _Split) -> None:
        super().__init__(arch, feature_dim=split.classifier.in_features, head=split.classifier)
        _replace_submodule(network, split.name, nn.Identity())
        self.network = network
        self.classifier_name = split.name

    def body(self, x: Tensor) -> Tensor:
        return self.network(x)

    def library_keys_to_own(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A state_dict of the library's module (``fc.weight``, ``layer1.0.conv1.weight``, …) in this
        model's keys (``head.weight``, ``network.layer1.0.conv1.weight``, …)."""
        prefix = self.classifier_name + "."
        return {("head." + k[len(prefix):]) if k.startswith(prefix) else "network." + k: v for k, v in state.items()}


class LogitsOnlyModel(nn.Module):
    """A RobustBench model whose logits are not the output of one final linear layer: no features."""

    def __init__(self, arch: ModelArch, network: nn.Module) -> None:
        super().__init__()
        self.arch = arch
        self.network = network

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, None]:
        logits = self.network(x)
        return (logits, None) if return_features else logits


def wrap_foreign(arch: ModelArch, network: nn.Module, what: str, *, need_features: bool = True) -> nn.Module:
    """``network`` as a :class:`ForeignModel`; a :class:`LogitsOnlyModel` when it has no final linear
    classifier and ``need_features`` is off, else a clear error."""
    split = find_classifier(network, arch, what)
    if split is not None:
        return ForeignModel(arch, network, split)
    if need_features:
        raise RobustDistillError(f"{what}: its logits are not the output of one final nn.Linear layer with "
                                 f"{arch.num_classes} outputs, so its features cannot be separated from its "
                                 "classifier; choose another model")
    return LogitsOnlyModel(arch, network)


@contextmanager
def layer_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of the submodules ``names`` of ``model`` during the block, by forward hooks.

    Names are those of ``model.named_modules()``: ``network.layer4`` of ``torchvision:resnet18``,
    ``layers.7`` of the built-in ``resnet18``. Run the unfolded model (``folding.unfolded(teacher)``):
    a BatchNorm-folded view has other modules. Each output is the module's latest call's.
    """
    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise RobustDistillError(f"{type(model).__name__} has no submodule {', '.join(map(repr, unknown))}; "
                                 "see model.named_modules()")
    outputs: dict[str, Tensor] = {}
    handles = [modules[name].register_forward_hook(
        lambda _m, _inputs, output, name=name: outputs.__setitem__(name, output)) for name in names]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _fixed_activation(arch: ModelArch) -> None:
    if arch.activation != "relu":
        raise RobustDistillError(f"{arch.name} keeps its library's activations; --activation {arch.activation} "
                                 "applies to the built-in models only (drop it)")


def _constructor_extras(network: nn.Module, options: dict[str, Any]) -> dict[str, Any]:
    """The ``options`` that the network's class constructor takes (image size, auxiliary heads)."""
    accepted = inspect.signature(type(network).__init__).parameters
    return {key: value for key, value in options.items() if key in accepted}


def _unknown(kind: str, name: str, known: Sequence[str], listing: str) -> RobustDistillError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return RobustDistillError(f"unknown {kind} model {name!r}{hint} ({listing})")


def build_torchvision(arch: ModelArch) -> ForeignModel:
    """``torchvision:NAME``: a torchvision classification model with random weights for ``arch``."""
    import torchvision.models as tvm

    name = arch.name[len(TORCHVISION):]
    known = tvm.list_models(module=tvm)
    if name not in known:
        raise _unknown("torchvision", name, known, "see torchvision.models.list_models(module=torchvision.models)")
    if arch.in_channels != 3:
        raise RobustDistillError(f"{arch.name} takes 3-channel images but the data has {arch.in_channels} "
                                 "channel(s); use a timm:NAME model (timm builds any channel count, e.g. timm:resnet18) "
                                 "or a built-in model (cnn, resnet18, …)")
    _fixed_activation(arch)
    builder = tvm.get_model_builder(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet's and inception's notes on their initialisation
        network = builder(weights=None, num_classes=arch.num_classes)
        extras = _constructor_extras(network, {"image_size": arch.image_size, "aux_logits": False})
        if extras:
            network = builder(weights=None, num_classes=arch.num_classes, **extras)
    return wrap_foreign(arch, network, arch.name)


def _import_timm() -> Any:
    if importlib.util.find_spec("timm") is None:
        raise RobustDistillError(TIMM_MISSING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("timm")


def build_timm(arch: ModelArch) -> ForeignModel:
    """``timm:NAME``: a timm model with random weights for ``arch`` (any channel count)."""
    timm = _import_timm()
    name = arch.name[len(TIMM):]
    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models(), "see timm.list_models()")
    _fixed_activation(arch)
    options = {"pretrained": False, "num_classes": arch.num_classes, "in_chans": arch.in_channels}
    network = timm.create_model(name, **options)
    extras = _constructor_extras(network, {"img_size": arch.image_size})
    if extras:
        network = timm.create_model(name, **options, **extras)
    return wrap_foreign(arch, network, arch.name)


# ---------------------------------------------------------------------------------------------
# The WideResNet state_dicts of the official TRADES / ARD / RSLAD / IGDM code
# ---------------------------------------------------------------------------------------------

_OFFICIAL_BLOCK = re.compile(r"block([123])\.layer\.(\d+)\.(.+)")


@dataclass
class OfficialWRN:
    """An official-layout WideResNet state_dict converted to the built-in ``wrn-D-K`` keys."""

    depth: int
    widen: int
    in_channels: int
    num_classes: int
    state: dict[str, Tensor] = field(repr=False)


def convert_official_wrn(state: dict[str, Tensor], source: str) -> OfficialWRN:
    """Map ``conv1`` → ``stem``, ``blockB.layer.I`` → ``layers.(B−1)·n+I`` (``convShortcut`` → ``shortcut``),
    ``bn1`` → ``layers.3n``, ``fc`` → ``head``; ``module.`` prefixes and the unused ``sub_block1`` of the
    TRADES code are dropped. Depth ``6n+4`` and widen factor are read from the weights."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("sub_block1.")}
    layout = ("the layout of the official TRADES, ARD, RSLAD and IGDM code: conv1.weight, block1.layer.0.…, "
              "block2.…, block3.…, bn1.…, fc.…")
    required = ("conv1.weight", "block1.layer.0.conv1.weight", "bn1.weight", "fc.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise RobustDistillError(f"{source!r} is not a WideResNet state_dict in {layout} (missing "
                                 f"{', '.join(missing)}); name its architecture with another --teacher-arch/--arch")
    blocks: dict[int, set[int]] = {1: set(), 2: set(), 3: set()}
    for key in state:
        match = _OFFICIAL_BLOCK.fullmatch(key)
        if match:
            blocks[int(match.group(1))].add(int(match.group(2)))
    n = len(blocks[1])
    if any(indices != set(range(n)) for indices in blocks.values()):
        raise RobustDistillError(f"{source!r}: block1, block2 and block3 must each hold layers 0..n−1 "
                                 f"(found {', '.join(f'block{b}: {len(i)}' for b, i in blocks.items())}) in {layout}")
    width = state["block1.layer.0.conv1.weight"].shape[0]
    if state["conv1.weight"].shape[0] != 16 or width % 16:
        raise RobustDistillError(f"{source!r}: a WideResNet has a 16-channel stem and 16·k channels in block1; got "
                                 f"{state['conv1.weight'].shape[0]} and {width}")
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _OFFICIAL_BLOCK.fullmatch(key)
        if match:
            index = (int(match.group(1)) - 1) * n + int(match.group(2))
            converted[f"layers.{index}.{match.group(3).replace('convShortcut.', 'shortcut.')}"] = value
        elif key == "conv1.weight":
            converted["stem.weight"] = value
        elif key.startswith("bn1."):
            converted[f"layers.{3 * n}.{key[len('bn1.'):]}"] = value
        elif key.startswith("fc."):
            converted[f"head.{key[len('fc.'):]}"] = value
        else:
            raise RobustDistillError(f"{source!r}: unexpected key {key!r} for a WideResNet in {layout}")
    return OfficialWRN(6 * n + 4, width // 16, int(state["conv1.weight"].shape[1]), int(state["fc.weight"].shape[0]),
                       converted)


