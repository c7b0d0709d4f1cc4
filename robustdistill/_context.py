"""What hooks see: the run (:class:`RunView`), one training step (:class:`StepContext`) and what a step's
hooks return (:class:`LossTerm`, :class:`TeacherOutput`); re-exported by :mod:`robustdistill.api`.

Both views hold the engine behind a private reference; everything public on them is documented in
``docs/plugins.md`` and kept stable.
"""
from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol

import torch
from torch import Tensor, nn

from ._attacks import AttackSpec, Objective, model_mode
from ._config import RunConfig
from ._registry import Attack, DatasetInfo, ImageData, ModelArch, RobustDistillError

if TYPE_CHECKING:
    from ._manager import StepHooks

DEFAULT_TEACHER = "teacher"
"""The role of a teacher given without one (``--teacher SPEC`` is ``--teacher teacher=SPEC``)."""


@dataclass
class TeacherOutput:
    """Teacher logits and, where the architecture exposes them, penultimate features."""

    logits: Tensor
    features: Tensor | None = None


@dataclass
class LossTerm:
    """One named, weighted term of the training loss; the engine sums ``weight · value``.

    ``value`` is logged as ``terms[name]`` and ``weight · value`` as ``weighted_terms[name]``. ``per_sample``
    (a ``[B]`` tensor over the step's batch, or a function returning one when asked) holds each sample's
    share, such that ``value == per_sample.mean()``; it lets a ``sample_weights`` hook re-weight the term
    before it is reduced. A term without it cannot be re-weighted.
    """

    name: str
    value: Tensor
    _: KW_ONLY
    weight: float = 1.0
    per_sample: Tensor | Callable[[], Tensor] | None = None

    def samples(self) -> Tensor:
        """The per-sample values (calling ``per_sample`` when it is a function)."""
        if self.per_sample is None:
            raise RobustDistillError(f"the loss term {self.name!r} carries no per-sample values, so it cannot be "
                                     "re-weighted per sample; its plugin must give LossTerm(per_sample=...)")
        return self.per_sample() if callable(self.per_sample) else self.per_sample


@dataclass(frozen=True)
class AttackIterate:
    """One iterate of the run's training attack, as :meth:`RunView.observe_attack` callbacks see it.

    ``index`` counts the iterates at which the attack takes a gradient, from 0 (the start point) to
    ``steps − 1`` (the final point, which takes no gradient, is not an iterate). ``x_adv`` is the iterate and
    ``logits`` the attacked student's output in the objective's own forward at it (``None`` when the
    objective did not call ``ctx.attack_student``); both detached.
    """

    index: int
    x_adv: Tensor
    logits: Tensor | None


AttackObserver = Callable[["StepContext", AttackIterate], None]


class _Engine(Protocol):
    """What the views ask of the engine (a training run, or the author kit's run)."""

    hooks: "StepHooks"
    trainer: nn.Module
    attack_observers: list[AttackObserver]

    def add_module(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer | None,
                   joint: bool, stepped: bool = False) -> None: ...

    def build_model(self, name: str | None) -> nn.Module: ...

    def current_lr(self) -> float: ...

    def set_final_model(self, name: str, module: nn.Module) -> None: ...

    def reduce_sum(self, tensor: Tensor) -> Tensor: ...

    def train_batches(self, augment: bool) -> Iterator[tuple[Tensor, Tensor]]: ...

    def validate(self, model: nn.Module, on: str) -> dict[str, float]: ...


@dataclass(eq=False)
class RunView:
    """A training run as hooks see it.

    ``config`` is the resolved, read-only configuration; ``data`` the images in memory (uint8; ``train_x``
    the images that train, ``val_x`` the held-out validation split) and ``dataset`` their description;
    ``student`` the trained model, ``attack_student`` the same network as attacks call it (eval-mode
    BatchNorm folded with ``--fold-bn on``); ``teachers`` the frozen teachers by role, ``default_teacher`` the
    role that ``teacher`` (and ``ctx.teacher_out`` without a role) means (``None``: no teacher); ``methods`` the
    selected methods in order and ``base_method`` the one that runs the attack, with ``attack`` the training
    attack it runs. ``epoch`` counts finished epochs and ``history`` holds their metrics (both already the
    checkpoint's in ``train_start`` of a resumed run).

    Plugin state: ``state`` is a dict for per-run objects that need not survive a restart (under the plugin's
    name); ``checkpointed`` is a dict whose entries are saved in every checkpoint and restored on
    ``--resume`` before ``train_start`` (tensors, numbers, strings, booleans, ``None`` and lists, tuples and
    str-keyed dicts of them; tensors come back on the run's device). Trainable modules go through
    :meth:`add_module`.
    """

    config: RunConfig
    data: ImageData
    arch: ModelArch
    device: torch.device
    student: nn.Module
    attack_student: nn.Module
    teachers: Mapping[str, nn.Module]
    default_teacher: str | None
    methods: tuple[str, ...]
    base_method: str | None
    attack: Attack | None
    out: Path
    steps_per_epoch: int
    is_main: bool
    world_size: int
    _engine: _Engine = field(repr=False)
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    checkpointed: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset(self) -> DatasetInfo:
        return self.data.info

    @property
    def teacher(self) -> nn.Module | None:
        """The default teacher (``None`` when the run has none)."""
        return self.teachers.get(self.default_teacher) if self.default_teacher is not None else None

    @property
    def lr(self) -> float:
        """The student's current learning rate."""
        return self._engine.current_lr()

    def add_module(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                   joint: bool = False, stepped: bool = False) -> nn.Module:
        """Give a plugin-owned trainable module to the run (call it from ``train_start``).

        The module is moved to the device, saved in every checkpoint and restored on ``--resume`` (right after
        ``train_start``), and shared across processes in distributed runs (rank 0's weights, gradients
        averaged). ``joint=True`` trains it with the student's optimiser (e.g. RRM's projection); otherwise the
        plugin steps its own ``optimizer`` (e.g. IGAM's discriminator), which is checkpointed too — or, with
        ``stepped=True``, the engine does: in every training step it zeroes that optimiser's gradients with the
        student's, backpropagates the summed loss once, and steps it right after the student's, and it schedules
        its learning rates like the student's (``--lr-schedule``, ``--milestones``, ``--lr-gamma``, from the
        optimiser's own rates; fast-forwarded on ``--resume``), e.g. PeerAiD's peer. Returns the module.
        """
        self._engine.add_module(name, module, optimizer, joint, stepped)
        return module

    def build_model(self, name: str | None = None) -> nn.Module:
        """A new, freshly initialised network from the model registry: of the student's architecture, or the
        model ``name`` (a ``--model`` name) with the student's classes, input shape, activation and
        normalisation. Its initial weights are drawn from the global random generator (build it in
        ``train_start``); it is on the run's device, not trained until given to :meth:`add_module`."""
        return self._engine.build_model(name)

    def observe_attack(self, callback: AttackObserver) -> None:
        """Call ``callback(ctx, iterate)`` (an :class:`AttackIterate`) at every iterate of the run's training
        attack (``ctx.perturb``), from now on (call it from ``train_start``). Without observers the attack runs
        as it would without this method."""
        self._engine.attack_observers.append(callback)

    def set_final_model(self, name: str, module: nn.Module) -> None:
        """Declare ``module`` — a network of the student's architecture, e.g. a weight average — the run's final
        model: every checkpoint then stores its weights beside the student's under ``name``, and
        ``robustdistill eval RUN_DIR`` evaluates it (``RUN_DIR@student`` the student). Declare it again in
        ``train_start`` of a resumed run."""
        self._engine.set_final_model(name, module)

    def reduce_sum(self, tensor: Tensor) -> Tensor:
        """The sum of ``tensor`` over the processes of a distributed run (``tensor`` itself in one process), so
        that per-process statistics become the same checkpointed state on every process."""
        return self._engine.reduce_sum(tensor)

    def train_batches(self, *, augment: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over the training images in order, as ``(x, y)`` batches on the device (``x`` in [0, 1],
        augmented as in training when ``augment``); e.g. to refresh BatchNorm statistics. Draws no random
        numbers from the global generators."""
        return self._engine.train_batches(augment)

    def validate(self, model: nn.Module, *, on: str = "split") -> dict[str, float]:
        """Clean and PGD accuracy (the run's ε and step, ``--val-attack-steps`` steps) of ``model`` in eval
        mode, as ``{"clean": ..., "pgd": ...}``: on the validation split (``on="split"``) or on the first
        ``--val-test`` test images (``on="test"``, for monitoring only). Empty when there are no such images.
        Draws no random numbers from the global generators, so validating changes no training step."""
        return self._engine.validate(model, on)


@dataclass(eq=False)
class StepContext:
    """One training step. Hooks read the batch and models, and share forwards through the caches.

    ``epoch`` is 1-based and ``step`` counts optimiser steps from 0 over the whole run. ``x_adv`` is set by
    the engine after the ``attack`` hook (``None`` for methods without an attack); ``delta`` is
    ``x_adv − x``. Attacks call ``attack_student``: the same network and weights as ``student``, with its
    eval-mode BatchNorm folded into the convolutions (``--fold-bn``; ``student`` itself when folding is off).
    The loss's student forwards go through :meth:`student_out`. ``state`` is a dict for this step only.
    """

    x: Tensor
    y: Tensor
    run: RunView
    epoch: int
    step: int
    _engine: _Engine = field(repr=False)
    x_adv: Tensor | None = None
    state: dict[str, Any] = field(default_factory=dict)
    _teacher_cache: dict[tuple[str, str], TeacherOutput] = field(default_factory=dict, repr=False)
    _student_cache: dict[str, Any] = field(default_factory=dict, repr=False)
    _declared: dict[str, Tensor] = field(default_factory=dict, repr=False)

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
    def teachers(self) -> Mapping[str, nn.Module]:
        return self.run.teachers

    @property
    def epochs(self) -> int:
        return self.run.config.epochs

    @property
    def steps_per_epoch(self) -> int:
        return self.run.steps_per_epoch

    @property
    def epoch_progress(self) -> float:
        """Epochs completed before this step, fractional (0 at the first step)."""
        return self.step / self.steps_per_epoch

    @property
    def delta(self) -> Tensor:
        if self.x_adv is None:
            raise RuntimeError("no adversarial example in this step: the selected methods run no attack")
        return self.x_adv - self.x

    # -- teachers -----------------------------------------------------------------------------------

    def _role(self, teacher: str | None) -> str:
        if teacher is None:
            if self.run.default_teacher is None:
                raise RobustDistillError("this method needs a teacher; pass --teacher SPEC")
            return self.run.default_teacher
        if teacher not in self.run.teachers:
            raise RobustDistillError(f"this method needs the teacher {teacher!r}; pass --teacher {teacher}=SPEC")
        return teacher

    def teacher_out(self, key: str, x: Tensor, teacher: str | None = None) -> TeacherOutput:
        """Teacher outputs for ``x`` through the ``teacher_forward`` hook, computed once per ``key`` and teacher
        per step. ``teacher`` names the role (``None``: the default teacher).

        Keys name the input: ``"clean"`` (``ctx.x``), ``"adv"`` (``ctx.x_adv``); plugins add their own
        (IGDM: ``"x-δ"``).
        """
        role = self._role(teacher)
        if (role, key) not in self._teacher_cache:
            self._teacher_cache[role, key] = self._engine.hooks.teacher_forward(ctx=self, x=x, role=role)
        return self._teacher_cache[role, key]

    def teacher_outs(self, inputs: dict[str, Tensor], teacher: str | None = None) -> dict[str, TeacherOutput]:
        """Teacher outputs for several named inputs; the uncached ones go through the teacher as one batch
        (exact, because the teacher is frozen in eval mode)."""
        role = self._role(teacher)
        missing = {key: x for key, x in inputs.items() if (role, key) not in self._teacher_cache}
        if len(missing) == 1:
            self.teacher_out(*next(iter(missing.items())), teacher=role)
        elif missing:
            out = self._engine.hooks.teacher_forward(ctx=self, x=torch.cat(list(missing.values())), role=role)
            sizes = [len(x) for x in missing.values()]
            logits = out.logits.split(sizes)
            features = out.features.split(sizes) if out.features is not None else [None] * len(sizes)
            for key, lg, ft in zip(missing, logits, features):
                self._teacher_cache[role, key] = TeacherOutput(lg, ft)
        return {key: self._teacher_cache[role, key] for key in inputs}

    # -- the attack ----------------------------------------------------------------------------------

    def attack_spec(self, init: str, clip_start: bool = True) -> AttackSpec:
        """The run's training attack: ``--eps``, ``--step-size``, ``--attack-steps`` from ``init``, its start clipped
        to the image range as ``clip_start`` says unless ``--clip-start on|off`` decides for every method."""
        cfg = self.config
        if cfg.clip_start != "code":
            clip_start = cfg.clip_start == "on"
        return AttackSpec(eps=cfg.eps, step_size=cfg.step_size, steps=cfg.attack_steps, init=init,
                          clip_start=clip_start)

    def attack_objective(self) -> Objective:
        """The objective of the run's training attack (``--attack``, else the base method's own) in this step."""
        if self.run.attack is None:
            raise RobustDistillError("this run has no training attack: the selected methods name none")
        return self.run.attack.objective(self)

    def perturb(self, objective: Objective, *, init: str, bn: str, clip_start: bool = True) -> Tensor:
        """The run's attack (``--eps``, ``--step-size``, ``--attack-steps``) on ``objective``, from ``ctx.x``, with
        the student's BatchNorm in ``bn`` mode (``"eval"`` or ``"train"``; restored after). ``clip_start`` is
        where the method's code takes its first gradient: at the start clipped to the image range (true) or at
        the unclipped ``x + 0.001·N`` / ``x + U(−ε, ε)`` (false); ``--clip-start on|off`` overrides it. Observers
        added with :meth:`RunView.observe_attack` see each iterate."""
        observers = self._engine.attack_observers
        spec = self.attack_spec(init, clip_start)
        with model_mode(self.student, train=bn == "train"):
            if not observers:
                return spec.perturb(objective, self.x)
            return spec.perturb(self._observed(objective, observers), self.x)

    def _observed(self, objective: Objective, observers: list[AttackObserver]) -> Objective:
        seen: dict[str, Tensor] = {}
        model = self.attack_student
        index = 0

        def watched(x_adv: Tensor) -> Tensor:
            nonlocal index
            seen.clear()
            handle = model.register_forward_hook(
                lambda module, args, out: seen.__setitem__("logits", out[0] if isinstance(out, tuple) else out))
            try:
                value = objective(x_adv)
            finally:
                handle.remove()
            logits = seen.get("logits")
            iterate = AttackIterate(index, x_adv.detach(), logits.detach() if logits is not None else None)
            for observe in observers:
                observe(self, iterate)
            index += 1
            return value
        return watched

    # -- the student ---------------------------------------------------------------------------------

    def student_out(self, key: str, x: Tensor | None = None, features: bool = False) -> Any:
        """Student logits (or ``(logits, features)``) in training mode, computed once per ``key`` per step.

        An input declared in a ``student_inputs`` hook is read by its key alone (``ctx.student_out("adv")``);
        its forward ran before the ``loss`` hooks. Any other input is passed as ``x`` and gets a forward of its
        own. Sharing matters twice: composed plugins do not pay for the same forward, and BatchNorm running
        statistics see each input once.
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
            model = self._engine.trainer
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

    def student_forward(self, x: Tensor) -> Any:
        """A fresh training-mode student forward of ``x`` through the module the loss trains (the DDP wrapper in
        distributed runs), uncached."""
        return self._engine.trainer(x)

    # -- input gradients -----------------------------------------------------------------------------

    def input_gradient(self, model: nn.Module, x: Tensor, objective: Callable[[Tensor], Tensor],
                       create_graph: bool = False) -> Tensor:
        """∇ₓ of ``objective(x)`` (a scalar) through the ``input_gradient`` hook."""
        return self._engine.hooks.input_gradient(ctx=self, model=model, x=x, objective=objective,
                                                 create_graph=create_graph)


def exact_input_gradient(x: Tensor, objective: Callable[[Tensor], Tensor], create_graph: bool) -> Tensor:
    """Exact ∇ₓ objective(x) by autograd; ``create_graph=True`` keeps it differentiable (double backprop)."""
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(x), x, create_graph=create_graph)
    return grad
