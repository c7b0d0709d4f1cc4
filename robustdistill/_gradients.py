"""Input-gradient helpers for plugins (igam, gradnorm, edgereg, pag use them; public in :mod:`robustdistill.api`).

Every input gradient goes through ``ctx.input_gradient`` (the ``input_gradient`` hook), so one place
decides how gradients are taken: exact autograd by default, double backprop with ``create_graph=True``.
The student's forward that the gradient is taken through is the same forward its loss terms use (one
forward per step, BatchNorm statistics updated once), made under the math attention backend because
the fused attention kernels have no double backward.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from ._attacks import model_mode
from ._context import StepContext


@contextmanager
def math_attention() -> Iterator[None]:
    """Force PyTorch's math scaled-dot-product attention (the only backend with a double backward)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - very old torch
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


def student_forward(ctx: StepContext, key: str, x: Tensor, train: bool | None = None) -> tuple[Tensor, Tensor]:
    """``(x_in, logits)``: the student's logits on a gradient-enabled leaf copy ``x_in`` of ``x``.

    Both are cached per step under ``key`` (the leaf in ``ctx.state``, the logits through
    ``ctx.student_out``), so composed plugins that name the same input share them. ``train=False``
    runs the forward with BatchNorm in eval mode (running statistics: samples are independent);
    ``None`` keeps the student's mode (the engine's training mode).
    """
    x_in = ctx.state.get(("grad-input", key))
    if x_in is None:
        x_in = ctx.state[("grad-input", key)] = x.detach().requires_grad_(True)
    with math_attention(), _mode(ctx.student, train):
        logits = ctx.student_out(key, x_in)
    return x_in, logits


def student_gradient(ctx: StepContext, x_in: Tensor, logits: Tensor, objective: Callable[[Tensor], Tensor],
                     create_graph: bool = True, train: bool | None = None) -> Tensor:
    """∇ₓ objective(student(x)) at ``x_in`` through the ``input_gradient`` hook (double backprop by default).

    ``objective`` maps logits to a scalar. At ``x_in`` itself the forward already made is reused; a hook
    that evaluates the objective elsewhere (finite differences) gets fresh forwards.
    """
    def at(z: Tensor) -> Tensor:
        if z is x_in:
            return objective(logits)
        with math_attention(), _mode(ctx.student, train):
            return objective(ctx.student_forward(z))

    return ctx.input_gradient(ctx.student, x_in, at, create_graph=create_graph)


def _mode(model: nn.Module, train: bool | None):
    return nullcontext() if train is None else model_mode(model, train=train)


def teacher_gradient(ctx: StepContext, x: Tensor, objective: Callable[[Tensor], Tensor],
                     teacher: str | None = None) -> Tensor:
    """∇ₓ objective(T(x)), detached: one ordinary backward through the frozen, eval-mode teacher of role
    ``teacher`` (``None``: the default teacher).

    Only the input receives a gradient; nothing is accumulated in the teacher's parameters.
    """
    teacher = ctx.teachers[ctx._role(teacher)]
    x_t = x.detach().requires_grad_(True)
    with torch.enable_grad():
        grad = ctx.input_gradient(teacher, x_t, lambda z: objective(teacher(z)), create_graph=False)
    return grad.detach()


def log_prob_objective(classes: Tensor) -> Callable[[Tensor], Tensor]:
    """Σᵢ log p(cᵢ | xᵢ): its input gradient holds each sample's ∇ₓ log p(cᵢ|xᵢ) (per-sample forwards)."""
    def objective(logits: Tensor) -> Tensor:
        return torch.log_softmax(logits.float(), dim=1).gather(1, classes[:, None]).sum()
    return objective
