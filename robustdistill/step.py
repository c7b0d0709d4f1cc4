"""What the step hooks see: the batch, the models and a cache of forwards shared by composed plugins."""
from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .plugin_manager import StepHooks


@dataclass
class TeacherOutput:
    """Teacher logits and, where the architecture exposes them, penultimate features."""

    logits: Tensor
    features: Tensor | None = None


@dataclass
class LossTerm:
    """One named, weighted term of the training loss; the engine sums ``weight · value``."""

    name: str
    value: Tensor
    weight: float = 1.0


@dataclass
class StepContext:
    """One training step. Hooks read the batch and models, and share forwards through the caches.

    ``epoch`` is 1-based. ``x_adv`` is set by the engine after the ``attack`` hook (``None`` for
    methods without an attack); ``delta`` is ``x_adv − x``. Attacks call ``attack_student``: the same
    network and weights as ``student``, with its eval-mode BatchNorm folded into the convolutions
    (``--fold-bn``; ``student`` itself when folding is off). The loss's student forwards go through
    :meth:`student_out`, which uses ``trainer`` (the DDP wrapper in distributed runs, so gradients are
    all-reduced once per step and never inside the attack loop).
    """

    x: Tensor
    y: Tensor
    student: nn.Module
    teacher: nn.Module | None
    config: Namespace
    epoch: int
    epochs: int
    step: int
    hooks: "StepHooks"
    x_adv: Tensor | None = None
    trainer: nn.Module | None = None
    attack_student: nn.Module | None = None
    state: dict[str, Any] = field(default_factory=dict)
    _teacher_cache: dict[str, TeacherOutput] = field(default_factory=dict)
    _student_cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.attack_student is None:
            self.attack_student = self.student

    @property
    def delta(self) -> Tensor:
        if self.x_adv is None:
            raise RuntimeError("no adversarial example in this step: the selected methods run no attack")
        return self.x_adv - self.x

    def teacher_out(self, key: str, x: Tensor) -> TeacherOutput:
        """Teacher outputs for ``x`` through the ``teacher_forward`` hook, computed once per ``key`` per step.

        Keys name the input: ``"clean"``, ``"adv"``, ``"x+delta"``, ``"x-delta"``.
        """
        if key not in self._teacher_cache:
            if self.teacher is None:
                raise RuntimeError("this method needs a teacher; pass --teacher CKPT")
            self._teacher_cache[key] = self.hooks.teacher_forward(ctx=self, x=x)
        return self._teacher_cache[key]

    def teacher_outs(self, inputs: dict[str, Tensor]) -> dict[str, TeacherOutput]:
        """Teacher outputs for several named inputs; the uncached ones go through the teacher as one batch.

        Concatenating is exact because the teacher is frozen in eval mode.
        """
        missing = {key: x for key, x in inputs.items() if key not in self._teacher_cache}
        if len(missing) == 1:
            self.teacher_out(*next(iter(missing.items())))
        elif missing:
            if self.teacher is None:
                raise RuntimeError("this method needs a teacher; pass --teacher CKPT")
            out = self.hooks.teacher_forward(ctx=self, x=torch.cat(list(missing.values())))
            sizes = [len(x) for x in missing.values()]
            logits = out.logits.split(sizes)
            features = out.features.split(sizes) if out.features is not None else [None] * len(sizes)
            for key, lg, ft in zip(missing, logits, features):
                self._teacher_cache[key] = TeacherOutput(lg, ft)
        return {key: self._teacher_cache[key] for key in inputs}

    def perturb(self, objective: Callable[[Tensor], Tensor], *, init: str, bn: str) -> Tensor:
        """The run's attack (``--eps``, ``--step-size``, ``--attack-steps``) on ``objective``, from ``ctx.x``,
        with the student's BatchNorm in ``bn`` mode (``"eval"`` or ``"train"``); the mode is restored after."""
        from .attacks import model_mode, perturb

        cfg = self.config
        with model_mode(self.student, train=bn == "train"):
            return perturb(objective, self.x, eps=cfg.eps, step_size=cfg.step_size, steps=cfg.attack_steps, init=init)

    def student_out(self, key: str, x: Tensor, features: bool = False) -> Any:
        """Student logits (or ``(logits, features)``) in training mode, computed once per ``key`` per step.

        Sharing matters twice: composed plugins do not pay for the same forward, and BatchNorm running
        statistics see each input once.
        """
        cache_key = f"{key}|features" if features else key
        model = self.trainer if self.trainer is not None else self.student
        if cache_key not in self._student_cache:
            if features:
                out = model(x, return_features=True)
                self._student_cache[key] = out[0]
            else:
                out = model(x)
            self._student_cache[cache_key] = out
        return self._student_cache[cache_key]

    def prefetch_student(self, inputs: dict[str, Tensor]) -> None:
        """Run the uncached ``inputs`` through the student (training mode) as one batch and cache the
        logits and features under their names, for :meth:`student_out`.

        Not exact with respect to separate forwards: BatchNorm normalises over the whole concatenated
        batch and updates its running statistics once with it (``--batch-student-forwards``).
        """
        missing = {key: x for key, x in inputs.items() if key not in self._student_cache}
        if len(missing) < 2:
            return
        model = self.trainer if self.trainer is not None else self.student
        logits, features = model(torch.cat(list(missing.values())), return_features=True)
        sizes = [len(x) for x in missing.values()]
        for key, lg, ft in zip(missing, logits.split(sizes), features.split(sizes)):
            self._student_cache[key] = lg
            self._student_cache[f"{key}|features"] = (lg, ft)

    def input_gradient(self, model: nn.Module, x: Tensor, objective: Callable[[Tensor], Tensor],
                       create_graph: bool = False) -> Tensor:
        """∇ₓ of ``objective(x)`` (a scalar) through the ``input_gradient`` hook."""
        return self.hooks.input_gradient(ctx=self, model=model, x=x, objective=objective, create_graph=create_graph)


def exact_input_gradient(x: Tensor, objective: Callable[[Tensor], Tensor], create_graph: bool) -> Tensor:
    """Exact ∇ₓ objective(x) by autograd; ``create_graph=True`` keeps it differentiable (double backprop)."""
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(x), x, create_graph=create_graph)
    return grad
