"""The engine's defaults, registered like any plugin (named ``core``): built-in models, datasets, the ``ce``
and ``cw`` training attacks, the evaluation attacks, the teacher forward and the exact input gradient
(``trylast``, so a plugin can replace them).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ._attacks import Objective, ce_objective, cw_objective
from ._context import StepContext, TeacherOutput, exact_input_gradient
from ._markers import hookimpl
from ._registry import Attack


@hookimpl
def register_models(register: Callable) -> None:
    from ._models import BUILTIN_MODELS
    for entry in BUILTIN_MODELS:
        register(entry)


@hookimpl
def register_datasets(register: Callable) -> None:
    from ._data import BUILTIN_DATASETS
    for entry in BUILTIN_DATASETS:
        register(entry)


def ce_attack(ctx: StepContext) -> Objective:
    """CE of the true labels (PGD-AT's, ARD's attack)."""
    return ce_objective(ctx.attack_student, ctx.y)


def cw_attack(ctx: StepContext) -> Objective:
    """The C&W margin of the true labels, capped at κ = 50 (CW∞)."""
    return cw_objective(ctx.attack_student, ctx.y)


@hookimpl
def register_attacks(register: Callable) -> None:
    register(Attack(name="ce", objective=ce_attack,
                    summary="PGD on the cross-entropy of the true labels (PGD-AT, ARD)"))
    register(Attack(name="cw", objective=cw_attack, summary="PGD on the C&W margin of the true labels, κ = 50 (CW∞)"))


@hookimpl
def register_eval_attacks(register: Callable) -> None:
    from ._eval import BUILTIN_EVAL_ATTACKS
    for entry in BUILTIN_EVAL_ATTACKS:
        register(entry)


@hookimpl(trylast=True)
def teacher_forward(ctx: StepContext, x: Tensor, role: str) -> TeacherOutput:
    """The frozen teacher of ``role`` in eval mode, without gradient; features where the model exposes them
    (``None`` for a RobustBench model without a final linear classifier, see :mod:`robustdistill._models.foreign`)."""
    with torch.no_grad():
        logits, features = ctx.teachers[role](x, return_features=True)
    return TeacherOutput(logits=logits.float(), features=features.float() if features is not None else None)


@hookimpl(trylast=True)
def input_gradient(model: nn.Module, x: Tensor, objective: Callable[[Tensor], Tensor], create_graph: bool) -> Tensor:
    """Exact ∇ₓ by autograd (double backprop when ``create_graph``)."""
    return exact_input_gradient(x, objective, create_graph)
