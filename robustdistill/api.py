"""What hooks see: the run (:class:`RunView`), one training step (:class:`StepContext`) and what a
step's hooks return (:class:`LossTerm`, :class:`TeacherOutput`).

This module and :mod:`robustdistill._registry` (what plugins register) are the whole surface a plugin
depends on; the engine behind them may change without breaking plugins.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch
from torch import Tensor, nn

from ._config import PluginOptions, RunConfig
from ._registry import (Attack, DatasetEntry, DatasetInfo, EvalAttack, ImageData, Method, ModelArch, ModelEntry,
                       Option, RobustDistillError)

from ._attacks import AttackSpec

if TYPE_CHECKING:
    from ._attacks import Objective

__all__ = [
    "RunView", "StepContext", "LossTerm", "TeacherOutput", "RunConfig", "PluginOptions", "exact_input_gradient",
    "Method", "Option", "ModelEntry", "ModelArch", "DatasetEntry", "DatasetInfo", "ImageData", "Attack", "EvalAttack",
    "AttackSpec", "RobustDistillError",
]


@dataclass
class TeacherOutput:
    """Teacher logits and, where the architecture exposes them, penultimate features."""

    logits: Tensor
    features: Tensor | None = None


@dataclass
class LossTerm:
    """One named, weighted term of the training loss; the engine sums ``weight · value``.

    ``value`` is logged as ``terms[name]`` and ``weight · value`` as ``weighted_terms[name]``.
    """

    name: str
    value: Tensor
    weight: float = 1.0


class ModuleSink(Protocol):
    """How a :class:`RunView` hands plugin-owned modules and the learning rate to the engine."""

    def add_module(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer | None,
                   joint: bool) -> None: ...

    def current_lr(self) -> float: ...


@dataclass(eq=False)
class RunView:
    """A training run as lifecycle hooks see it.

    ``config`` is the resolved, read-only configuration; ``data`` the dataset in memory (uint8 images,
    ``data.info`` its description); ``student`` the trained model, ``attack_student`` the same network as
    attacks call it (eval-mode BatchNorm folded with ``--fold-bn on``), ``teacher`` the frozen teacher
    (or ``None``); ``methods`` the selected methods in order and ``base_method`` the one that runs the
    attack, with ``attack`` the training attack it runs (``--attack``, else the method's own). ``epoch``
    counts finished epochs (it is already the resumed epoch in ``train_start`` of a
    resumed run) and ``history`` holds their metrics. ``state`` is for plugins' per-run state, under
    their plugin name (``run.state["igam"]``); it lives as long as the run and is never saved — trainable
    state goes through :meth:`add_module`.
    """

    config: RunConfig
    data: ImageData
    arch: ModelArch
    device: torch.device
    student: nn.Module
    teacher: nn.Module | None
    attack_student: nn.Module
    methods: tuple[str, ...]
    base_method: str | None
    out: Path
    steps_per_epoch: int
    is_main: bool
    world_size: int
    sink: ModuleSink
    attack: Attack | None = None
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset(self) -> DatasetInfo:
        return self.data.info

    @property
    def lr(self) -> float:
        """The student's current learning rate."""
        return self.sink.current_lr()

    def add_module(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                   joint: bool = False) -> nn.Module:
        """Give a plugin-owned trainable module to the run (call it from ``train_start``).

        The module is moved to the device, saved in every checkpoint and restored on ``--resume`` (at
        once, when the run is resumed), and shared across processes in distributed runs (rank 0's
        weights, gradients averaged). ``joint=True`` trains it with the student's optimiser (e.g. RRM's
        projection); otherwise the plugin steps its own ``optimizer`` (e.g. IGAM's discriminator), which is
        checkpointed too. Returns the module.
        """
        self.sink.add_module(name, module, optimizer, joint)
        return module


class StepCalls(Protocol):
    """The hooks a :class:`StepContext` calls on behalf of plugins."""

    def teacher_forward(self, ctx: "StepContext", x: Tensor) -> TeacherOutput: ...

    def input_gradient(self, ctx: "StepContext", model: nn.Module, x: Tensor,
                       objective: Callable[[Tensor], Tensor], create_graph: bool) -> Tensor: ...


@dataclass(eq=False)
class StepContext:
    """One training step. Hooks read the batch and models, and share forwards through the caches.

    ``epoch`` is 1-based and ``step`` counts optimiser steps from 0 over the whole run. ``x_adv`` is set
    by the engine after the ``attack`` hook (``None`` for methods without an attack); ``delta`` is
    ``x_adv − x``. Attacks call ``attack_student``: the same network and weights as ``student``, with its
    eval-mode BatchNorm folded into the convolutions (``--fold-bn``; ``student`` itself when folding is
    off). The loss's student forwards go through :meth:`student_out`, which uses ``trainer`` (the DDP
    wrapper in distributed runs, so gradients are all-reduced once per step and never inside the attack).
    """

    x: Tensor
    y: Tensor
    run: RunView
    epoch: int
    step: int
    hooks: StepCalls
    x_adv: Tensor | None = None
    trainer: nn.Module | None = None
    state: dict[str, Any] = field(default_factory=dict)
    _teacher_cache: dict[str, TeacherOutput] = field(default_factory=dict)
    _student_cache: dict[str, Any] = field(default_factory=dict)
    _declared: dict[str, Tensor] = field(default_factory=dict)

    @property
    def config(self) -> RunConfig:
        return self.run.config

    @property
    def student(self) -> nn.Module:
        return self.run.student

    @property
    def attack_student(self) -> nn.Module:
        return self.run.attack_student

    @property
    def teacher(self) -> nn.Module | None:
        return self.run.teacher

    @property
    def epochs(self) -> int:
        return self.run.config.epochs

    @property
    def steps_per_epoch(self) -> int:
        return self.run.steps_per_epoch

    @property
    def delta(self) -> Tensor:
        if self.x_adv is None:
            raise RuntimeError("no adversarial example in this step: the selected methods run no attack")
        return self.x_adv - self.x

    # -- the teacher ---------------------------------------------------------------------------------

    def teacher_out(self, key: str, x: Tensor) -> TeacherOutput:
        """Teacher outputs for ``x`` through the ``teacher_forward`` hook, computed once per ``key`` per step.

        Keys name the input: ``"clean"`` (``ctx.x``), ``"adv"`` (``ctx.x_adv``); plugins add their own
        (IGDM: ``"x-δ"``).
        """
        if key not in self._teacher_cache:
            self._require_teacher()
            self._teacher_cache[key] = self.hooks.teacher_forward(ctx=self, x=x)
        return self._teacher_cache[key]

    def teacher_outs(self, inputs: dict[str, Tensor]) -> dict[str, TeacherOutput]:
        """Teacher outputs for several named inputs; the uncached ones go through the teacher as one batch
        (exact, because the teacher is frozen in eval mode)."""
        missing = {key: x for key, x in inputs.items() if key not in self._teacher_cache}
        if len(missing) == 1:
            self.teacher_out(*next(iter(missing.items())))
        elif missing:
            self._require_teacher()
            out = self.hooks.teacher_forward(ctx=self, x=torch.cat(list(missing.values())))
            sizes = [len(x) for x in missing.values()]
            logits = out.logits.split(sizes)
            features = out.features.split(sizes) if out.features is not None else [None] * len(sizes)
            for key, lg, ft in zip(missing, logits, features):
                self._teacher_cache[key] = TeacherOutput(lg, ft)
        return {key: self._teacher_cache[key] for key in inputs}

    def _require_teacher(self) -> None:
        if self.teacher is None:
            raise RobustDistillError("this method needs a teacher; pass --teacher CKPT")

    # -- the attack ----------------------------------------------------------------------------------

    def attack_spec(self, init: str) -> AttackSpec:
        """The run's training attack: ``--eps``, ``--step-size``, ``--attack-steps`` from ``init``."""
        cfg = self.config
        return AttackSpec(eps=cfg.eps, step_size=cfg.step_size, steps=cfg.attack_steps, init=init)

    def attack_objective(self) -> "Objective":
        """The objective of the run's training attack (``--attack``, else the base method's own) in this step."""
        if self.run.attack is None:
            raise RobustDistillError("this run has no training attack: the selected methods name none")
        return self.run.attack.objective(self)

    def perturb(self, objective: "Objective", *, init: str, bn: str) -> Tensor:
        """The run's attack (``--eps``, ``--step-size``, ``--attack-steps``) on ``objective``, from ``ctx.x``,
        with the student's BatchNorm in ``bn`` mode (``"eval"`` or ``"train"``); the mode is restored after."""
        from ._attacks import model_mode

        with model_mode(self.student, train=bn == "train"):
            return self.attack_spec(init).perturb(objective, self.x)

    # -- the student ---------------------------------------------------------------------------------

    def student_out(self, key: str, x: Tensor | None = None, features: bool = False) -> Any:
        """Student logits (or ``(logits, features)``) in training mode, computed once per ``key`` per step.

        An input declared in a ``student_inputs`` hook is read by its key alone
        (``ctx.student_out("adv")``); its forward ran before the ``loss`` hooks. Any other input is passed
        as ``x`` and gets a forward of its own. Sharing matters twice: composed plugins do not pay for the
        same forward, and BatchNorm running statistics see each input once.
        """
        if key in self._declared:
            if x is not None and x is not self._declared[key]:
                raise RobustDistillError(f"the student input {key!r} was declared in student_inputs as another "
                                         "tensor; read a declared input by its key alone: ctx.student_out(key)")
            x = self._declared[key]
        elif x is None:
            raise RobustDistillError(f"no student input {key!r} was declared in a student_inputs hook; declare it "
                                     "there or pass it: ctx.student_out(key, x)")
        cache_key = f"{key}|features" if features else key
        if cache_key not in self._student_cache:
            model = self.trainer if self.trainer is not None else self.student
            if features:
                out = model(x, return_features=True)
                self._student_cache[key] = out[0]
            else:
                out = model(x)
            self._student_cache[cache_key] = out
        return self._student_cache[cache_key]

    def student_input(self, key: str) -> Tensor:
        """The tensor declared under ``key`` in a ``student_inputs`` hook this step."""
        try:
            return self._declared[key]
        except KeyError:
            raise RobustDistillError(f"no student input {key!r} was declared in a student_inputs hook") from None

    def run_student_inputs(self, inputs: dict[str, Tensor], batched: bool) -> None:
        """Run the declared ``inputs`` through the student (training mode) before the ``loss`` hooks.

        Separately by default, in declaration order — the forwards the losses would make. ``batched``
        concatenates them into one forward (``--batch-student-forwards``): not exact, BatchNorm then
        normalises over the whole concatenated batch and updates its running statistics once.
        """
        self._declared.update(inputs)
        missing = {key: x for key, x in inputs.items() if key not in self._student_cache}
        if not missing:
            return
        model = self.trainer if self.trainer is not None else self.student
        if not batched or len(missing) == 1:
            for key, x in missing.items():
                logits, feats = model(x, return_features=True)
                self._student_cache[key] = logits
                self._student_cache[f"{key}|features"] = (logits, feats)
            return
        logits, feats = model(torch.cat(list(missing.values())), return_features=True)
        sizes = [len(x) for x in missing.values()]
        for key, lg, ft in zip(missing, logits.split(sizes), feats.split(sizes)):
            self._student_cache[key] = lg
            self._student_cache[f"{key}|features"] = (lg, ft)

    # -- input gradients -----------------------------------------------------------------------------

    def input_gradient(self, model: nn.Module, x: Tensor, objective: Callable[[Tensor], Tensor],
                       create_graph: bool = False) -> Tensor:
        """∇ₓ of ``objective(x)`` (a scalar) through the ``input_gradient`` hook."""
        return self.hooks.input_gradient(ctx=self, model=model, x=x, objective=objective, create_graph=create_graph)


def exact_input_gradient(x: Tensor, objective: Callable[[Tensor], Tensor], create_graph: bool) -> Tensor:
    """Exact ∇ₓ objective(x) by autograd; ``create_graph=True`` keeps it differentiable (double backprop)."""
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(x), x, create_graph=create_graph)
    return grad
