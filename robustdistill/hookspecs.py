"""The hook points of robustdistill.

A plugin is a module (or object) with functions marked ``@robustdistill.hookimpl`` whose names are
hook names below. Registration hooks run once at start-up for every loaded plugin; step and
lifecycle hooks run only for the *active* plugins: the plugins of the selected methods
(``--plugin NAME``), plugins that register no method (loggers, schedules) and the core plugin.

The engine calls step hooks once per training step, never inside the PGD inner loop: the
``attack`` hook runs the whole inner maximisation itself.

Composition rules:

* ``attack`` is ``firstresult``: at most one selected method may implement it (the base method:
  ``at``, ``trades``, ``rslad`` ...); add-on methods (``igdm``) reuse its ``ctx.x_adv``.
* ``loss`` collects :class:`~robustdistill.step.LossTerm` s from every active plugin; the engine sums
  ``weight · value`` and logs each term by name.
* ``teacher_forward`` and ``input_gradient`` are ``firstresult`` with core defaults marked
  ``trylast``, so a plugin can replace them by returning a value.

Hooks are called with keyword arguments; an implementation may accept any subset of them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from torch import Tensor, nn

    from .engine import Run
    from .registry import DatasetEntry, EvalAttack, Method, ModelEntry, Option
    from .step import LossTerm, StepContext, TeacherOutput

PROJECT = "robustdistill"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------------
# Registration: once at start-up, every loaded plugin. Each receives a ``register`` callback.
# ---------------------------------------------------------------------------------------------

@hookspec
def register_methods(register: Callable[["Method"], None]) -> None:
    """Register the training method(s) this plugin implements; selecting one activates the plugin."""


@hookspec
def register_options(register: Callable[["Option"], None]) -> None:
    """Register ``robustdistill train`` options (``--trades-beta``), read back as ``ctx.config.trades_beta``."""


@hookspec
def register_models(register: Callable[["ModelEntry"], None]) -> None:
    """Register model families usable with ``--model`` and in checkpoints."""


@hookspec
def register_datasets(register: Callable[["DatasetEntry"], None]) -> None:
    """Register datasets usable with ``--dataset``."""


@hookspec
def register_eval_attacks(register: Callable[["EvalAttack"], None]) -> None:
    """Register attacks usable with ``robustdistill eval --attacks``."""


# ---------------------------------------------------------------------------------------------
# Step hooks: once per training step, active plugins only.
# ---------------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def teacher_forward(ctx: "StepContext", x: "Tensor") -> "TeacherOutput | None":
    """Teacher logits (and features) for ``x``: frozen, eval mode, no grad.

    Call it through ``ctx.teacher_out(key, x)``, which caches the result per step.
    """


@hookspec(firstresult=True)
def input_gradient(ctx: "StepContext", model: "nn.Module", x: "Tensor",
                   objective: Callable[["Tensor"], "Tensor"], create_graph: bool) -> "Tensor | None":
    """∇ₓ of the scalar ``objective(x)``: exact double backprop by default, or an approximation."""


@hookspec(firstresult=True)
def attack(ctx: "StepContext") -> "Tensor | None":
    """The inner maximisation: return the detached adversarial batch ``x_adv`` (or ``None``: no attack).

    Attack ``ctx.attack_student`` (the student with eval-mode BatchNorm folded) through ``ctx.perturb``.
    """


@hookspec
def student_inputs(ctx: "StepContext") -> "dict[str, Tensor] | None":
    """The named inputs this plugin's ``loss`` will pass to ``ctx.student_out`` in this step.

    Called after the attack, and only with ``--batch-student-forwards``: the engine then runs every
    declared input through the student as one batch before the ``loss`` hooks. Optional: an input that
    is not declared gets a forward of its own.
    """


@hookspec
def loss(ctx: "StepContext") -> "list[LossTerm] | LossTerm | None":
    """This plugin's named, weighted terms of the training loss for the step."""


# ---------------------------------------------------------------------------------------------
# Lifecycle events: active plugins only.
# ---------------------------------------------------------------------------------------------

@hookspec
def train_start(run: "Run") -> None:
    """Before the first step: validate the configuration (raise RobustDistillError), create state."""


@hookspec
def epoch_start(run: "Run", epoch: int) -> None:
    """At the start of each (1-based) epoch."""


@hookspec
def step_end(run: "Run", ctx: "StepContext", terms: "list[LossTerm]") -> None:
    """After the optimiser step."""


@hookspec
def epoch_end(run: "Run", epoch: int, metrics: dict[str, Any]) -> None:
    """After validation; ``metrics`` may be extended before it is written to ``metrics.jsonl``."""


@hookspec
def train_end(run: "Run") -> None:
    """After the last epoch."""
