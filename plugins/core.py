"""Core defaults, registered like any plugin: built-in models, datasets and evaluation attacks,
the teacher forward and the exact input gradient (``trylast``, so a plugin can replace them).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from robustdistill import StepContext, TeacherOutput, hookimpl
from robustdistill.api import exact_input_gradient


@hookimpl
def register_models(register: Callable) -> None:
    from robustdistill.models import BUILTIN_MODELS
    for entry in BUILTIN_MODELS:
        register(entry)


@hookimpl
def register_datasets(register: Callable) -> None:
    from robustdistill.data import BUILTIN_DATASETS
    for entry in BUILTIN_DATASETS:
        register(entry)


@hookimpl
def register_eval_attacks(register: Callable) -> None:
    from robustdistill.evaluate import BUILTIN_EVAL_ATTACKS
    for entry in BUILTIN_EVAL_ATTACKS:
        register(entry)


@hookimpl(trylast=True)
def teacher_forward(ctx: StepContext, x: Tensor) -> TeacherOutput:
    """The frozen teacher in eval mode, without gradient; features where the model exposes them (``None`` for a
    RobustBench model without a final linear classifier, see :mod:`robustdistill.zoo`)."""
    with torch.no_grad():
        logits, features = ctx.teacher(x, return_features=True)
    return TeacherOutput(logits=logits.float(), features=features.float() if features is not None else None)


@hookimpl(trylast=True)
def input_gradient(model: nn.Module, x: Tensor, objective: Callable[[Tensor], Tensor], create_graph: bool) -> Tensor:
    """Exact ∇ₓ by autograd (double backprop when ``create_graph``)."""
    return exact_input_gradient(x, objective, create_graph)
