"""BatchNorm folding: a convolution followed by an eval-mode BatchNorm is one convolution.

In eval mode ``bn(conv(x)) = conv(x; w·s) + (b·s + β − μ·s)`` with ``s = γ / √(σ² + ε)`` per output
channel, so the network computes the same function (up to floating-point rounding) with one pass over
the activations less per folded pair, forward and backward. The attack loops of most methods run the
student in eval mode, and the teacher and evaluated models are always in eval mode, so folding pays in
the costliest part of adversarial training and evaluation.

:func:`fold_batchnorm` traces a model with :mod:`torch.fx`, finds every ``Conv2d → BatchNorm`` pair
whose convolution feeds only that BatchNorm, and returns a :class:`FoldedModel` view:

- ``live=True`` (students): the view shares the model's parameters and statistics and folds them on
  every call, differentiably; a BatchNorm in training mode runs unfolded, so the view equals the model
  in both modes and follows every optimiser step.
- ``live=False`` (frozen teachers, evaluation): the folded weights are computed once; the view is the
  eval-mode network and has no BatchNorm left.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

class FoldError(Exception):
    """The model cannot be folded: it does not trace with torch.fx."""


class NothingToFold(FoldError):
    """The model has no convolution followed directly by a BatchNorm."""


class LiveConvBN(nn.Module):
    """``bn(conv(x))`` as one convolution with weights folded from the live modules on each call.

    In training mode the BatchNorm needs batch statistics, so the pair runs unfolded.
    """

    def __init__(self, conv: nn.Conv2d, bn: _BatchNorm) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn

    def forward(self, x: Tensor) -> Tensor:
        bn = self.bn
        if bn.training or bn.running_var is None:
            return bn(self.conv(x))
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        if self.conv.bias is not None:
            shift = shift + self.conv.bias * scale
        weight = self.conv.weight * scale.reshape(-1, *[1] * (self.conv.weight.dim() - 1))
        return self.conv._conv_forward(x, weight, shift)


class FoldedModel(nn.Module):
    """A classifier with its conv → BatchNorm pairs folded; called like the model it came from.

    ``source`` is the unfolded model; ``folded`` the number of folded pairs.
    """

    def __init__(self, graph: fx.GraphModule, source: nn.Module, folded: int) -> None:
        super().__init__()
        self.graph = graph
        self.folded = folded
        self.__dict__["source"] = source  # not a submodule: its parameters are the graph's, or unused
        if hasattr(source, "arch"):
            self.arch = source.arch

    def forward(self, x: Tensor, return_features: bool = False) -> Any:
        logits, features = self.graph(x, True)
        return (logits, features) if return_features else logits


def fold_batchnorm(model: nn.Module, *, live: bool) -> FoldedModel:
    """Fold every ``Conv2d → BatchNorm`` pair of ``model`` (see the module docstring).

    ``model`` must take ``(x, return_features=True)`` and return ``(logits, features)``, as every model
    of the registry does. Move the model to its device and memory format before folding. Raises
    :class:`FoldError` saying why when the model does not trace, :class:`NothingToFold` when it has
    nothing to fold.
    """
    if not live and model.training:
        raise ValueError("a frozen fold (live=False) is the eval-mode network: call model.eval() first")
    try:
        graph = fx.symbolic_trace(model, concrete_args={"return_features": True})
    except Exception as err:  # fx raises many kinds on untraceable Python
        raise FoldError(f"{type(model).__name__} does not trace with torch.fx ({type(err).__name__}: {err})") from None
    modules = dict(graph.named_modules())
    folded = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm) or len(node.args) != 1:
            continue
        conv_node = node.args[0]
        if not (isinstance(conv_node, fx.Node) and conv_node.op == "call_module"
                and type(modules[conv_node.target]) is nn.Conv2d and len(conv_node.users) == 1):
            continue
        conv, bn = modules[conv_node.target], modules[node.target]
        if bn.running_var is None or bn.num_features != conv.out_channels:
            continue
        if live:
            replacement: nn.Module = LiveConvBN(conv, bn)
        else:
            replacement = fuse_conv_bn_eval(conv, bn)
            replacement.requires_grad_(False)
        name = f"folded_conv_bn_{folded}"
        graph.add_submodule(name, replacement)
        with graph.graph.inserting_before(node):
            new_node = graph.graph.call_module(name, conv_node.args, conv_node.kwargs)
        node.replace_all_uses_with(new_node)
        graph.graph.erase_node(node)
        graph.graph.erase_node(conv_node)
        folded += 1
    if folded == 0:
        raise NothingToFold(f"{type(model).__name__} has no convolution followed directly by a BatchNorm")
    graph.delete_all_unused_submodules()
    graph.recompile()
    view = FoldedModel(graph, model, folded)
    view.train(model.training)
    return view


def fold_or_keep(model: nn.Module, *, live: bool, what: str, log: Any = print) -> nn.Module:
    """:func:`fold_batchnorm`, or ``model`` itself: silently when it has nothing to fold, else with one line
    to ``log`` saying why."""
    try:
        return fold_batchnorm(model, live=live)
    except NothingToFold:
        return model
    except FoldError as err:
        log(f"BatchNorm folding is off for the {what}: {err}")
        return model


def folded_pairs(model: nn.Module | None) -> int:
    """How many conv → BatchNorm pairs ``model`` has folded (0 for any other model, or none)."""
    return model.folded if isinstance(model, FoldedModel) else 0


def unfolded(model: nn.Module) -> nn.Module:
    """The model a :class:`FoldedModel` was made from; any other model itself."""
    return model.source if isinstance(model, FoldedModel) else model
