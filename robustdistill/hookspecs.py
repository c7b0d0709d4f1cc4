"""The hook points of robustdistill (the reference with examples is ``docs/plugins.md``).

A plugin is a module (or object) with functions marked ``@robustdistill.hookimpl`` whose names are
hook names below. Registration hooks run once at start-up for every loaded plugin; ``resolve_options``,
step and lifecycle hooks run only for the *active* plugins: the plugins of the selected methods
(``--plugin NAME``), plugins that register no method (loggers, observers) and the core plugin.

The engine calls step hooks once per training step, never inside the PGD inner loop: the
``attack`` hook runs the whole inner maximisation itself.

Composition rules:

* ``attack`` is ``firstresult``: at most one selected method may implement it (the base method:
  ``at``, ``trades``, ``rslad`` ...); add-on methods (``igdm``) reuse its ``ctx.x_adv``.
* ``loss`` collects :class:`~robustdistill.api.LossTerm` s from every active plugin; ``sample_weights``
  may re-weight any of them per sample; the engine sums ``weight · value`` and logs each term by name.
* ``register_compositions`` declares what an add-on changes in its base, so that bases never test which
  add-ons are selected.
* ``teacher_forward`` and ``input_gradient`` are ``firstresult`` with core defaults marked
  ``trylast``, so a plugin can replace them by returning a value.

Hooks are called with keyword arguments; an implementation may accept any subset of them.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import Tensor, nn

from .api import (Attack, Composition, DatasetEntry, DatasetInfo, EvalAttack, LossTerm, Method, ModelEntry, Option,
                  RunConfig, RunView, StepContext, TeacherOutput)
from ._markers import PROJECT, hookimpl, hookspec

__all__ = ["PROJECT", "hookimpl", "hookspec"]


# ---------------------------------------------------------------------------------------------
# Registration: once at start-up, every loaded plugin. Each receives a ``register`` callback.
# ---------------------------------------------------------------------------------------------

@hookspec
def register_methods(register: Callable[[Method], None]) -> None:
    """Register the training method(s) this plugin implements; selecting one activates the plugin."""


@hookspec
def register_options(register: Callable[[Option], None]) -> None:
    """Register ``robustdistill train`` options. Plugin ``p``'s flags start with ``--p-``; ``--p-beta`` is read
    as ``config.p.beta``."""


@hookspec
def register_models(register: Callable[[ModelEntry], None]) -> None:
    """Register model families usable with ``--model`` and in checkpoints."""


@hookspec
def register_datasets(register: Callable[[DatasetEntry], None]) -> None:
    """Register datasets usable with ``--dataset``."""


@hookspec
def register_attacks(register: Callable[[Attack], None]) -> None:
    """Register training attacks' objectives, selectable with ``--attack NAME``."""


@hookspec
def register_eval_attacks(register: Callable[[EvalAttack], None]) -> None:
    """Register attacks usable with ``robustdistill eval --attacks``."""


@hookspec
def register_compositions(register: Callable[[Composition], None]) -> None:
    """Register what this plugin's add-on methods change in the base methods they compose with (igdm: ARD's
    τ = 1, ``batchmean`` and eval-mode attack, as the IGDM code trains ARD)."""


# ---------------------------------------------------------------------------------------------
# Building the run: once, active plugins only.
# ---------------------------------------------------------------------------------------------

@hookspec
def resolve_options(config: RunConfig, dataset: DatasetInfo, base_method: str | None) -> Mapping[str, Any] | None:
    """Values for this plugin's options that the user left unset (``None``) and that depend on the run.

    ``config`` has the core options resolved (ε, model, epochs, methods with the default base) and the
    plugins' options as given, with what add-ons declare for their base (``register_compositions``) already
    filled in; ``base_method`` is the selected method that runs the attack (``None``: none does). Return
    ``{option name: value}`` for this plugin's own options (names as read: ``"alpha"`` for ``--igdm-alpha``);
    only unset options take them. A value may be a :class:`~robustdistill.api.Default` that says where it
    comes from (recorded in ``config.json``; a borrowed one is also printed). Raise ``RobustDistillError``
    when no defensible value exists and the user must give one.
    """


# ---------------------------------------------------------------------------------------------
# Step hooks: once per training step, active plugins only.
# ---------------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def teacher_forward(ctx: StepContext, x: Tensor, role: str) -> TeacherOutput | None:
    """Logits (and features) of the teacher of ``role`` (``ctx.teachers[role]``) for ``x``: frozen, eval
    mode, no grad.

    Call it through ``ctx.teacher_out(key, x, teacher=role)``, which caches the result per step.
    """


@hookspec(firstresult=True)
def input_gradient(ctx: StepContext, model: nn.Module, x: Tensor,
                   objective: Callable[[Tensor], Tensor], create_graph: bool) -> Tensor | None:
    """∇ₓ of the scalar ``objective(x)``: exact double backprop by default, or an approximation."""


@hookspec(firstresult=True)
def attack(ctx: StepContext) -> Tensor | None:
    """The inner maximisation: return the detached adversarial batch ``x_adv`` (or ``None``: no attack).

    Attack ``ctx.attack_student`` (the student with eval-mode BatchNorm folded) through ``ctx.perturb``.
    """


@hookspec
def student_inputs(ctx: StepContext) -> dict[str, Tensor] | None:
    """The named inputs this plugin's ``loss`` gives the student in this step (after the attack).

    The engine runs every declared input through the student before the ``loss`` hooks (as one batch
    with ``--batch-student-forwards``); ``loss`` then reads them by key: ``ctx.student_out("adv")``.
    A name means one tensor across plugins (``"clean"``: ``ctx.x``, ``"adv"``: ``ctx.x_adv``).
    """


@hookspec
def loss(ctx: StepContext) -> list[LossTerm] | LossTerm | None:
    """This plugin's named, weighted terms of the training loss for the step."""


@hookspec
def sample_weights(ctx: StepContext, terms: list[LossTerm]) -> Mapping[str, Tensor] | None:
    """Per-sample weights ``[B]`` for loss terms of this step, by term name (``terms`` holds every active
    plugin's terms, before reduction).

    Each named term becomes ``mean(w · term.samples())``; weights from several plugins multiply. A term
    without per-sample values cannot be re-weighted (an error names it). Terms nobody re-weights, and every
    term when no plugin implements this hook, are summed exactly as returned.
    """


# ---------------------------------------------------------------------------------------------
# Lifecycle events: active plugins only.
# ---------------------------------------------------------------------------------------------

@hookspec
def train_start(run: RunView) -> None:
    """Before the first step (of this process): validate (raise RobustDistillError), create per-run state,
    add trainable modules. In a resumed run, ``run.epoch`` and ``run.history`` are already restored."""


@hookspec
def epoch_start(run: RunView, epoch: int) -> None:
    """At the start of each (1-based) epoch; not again when a run resumes in the middle of it."""


@hookspec
def step_end(run: RunView, ctx: StepContext, terms: list[LossTerm]) -> None:
    """After the optimiser step."""


@hookspec
def epoch_end(run: RunView, epoch: int, metrics: dict[str, Any]) -> None:
    """After the epoch's last step; ``metrics`` may be extended before it joins ``run.history``."""


@hookspec
def checkpoint_saved(run: RunView) -> None:
    """After ``last.pt`` was written (main process). Records a plugin keeps beside the checkpoint are written
    here, from what the checkpoint holds, so that no kill leaves them ahead of it; rewrite them in
    ``train_start`` too, which repairs them after a kill between the two writes."""


@hookspec
def train_end(run: RunView) -> None:
    """After the last epoch."""
