"""MTARD — Multi-Teacher Adversarial Robustness Distillation (Zhao et al., ECCV 2022), and B-MTARD, its balanced
extension (Zhao, Wang & Wei, TPAMI 2024) as ``--mtard-variant b-mtard`` (methods-ad2 §4).

    L = w_adv·kl̄(S(x′), T_adv(x′)) + w_nat·kl̄(S(x), T_nat(x)),   kl(a, b) = b·(log(b + 1e-5) − log σ(a))

A robust teacher (``--teacher robust=SPEC``) guides the student on adversarial examples, a clean teacher
(``--teacher clean=SPEC``) on clean ones; ``kl̄`` is the codes' mean over the B×C elements. Inner attack: PGD
on the student's CE with the true labels, student in eval mode, from the unclipped x + 0.001·N(0, I)
(``mtard_inner_loss_ce``); then S(x′) and S(x) in train mode, in that order. The CIFAR-100 script multiplies
both terms by 10 (``--mtard-scale``: 10 on 100 classes, else 1).

Normalization loss balance (the codes' update rule; the papers' bodies were not available): L⁰ are the
terms' values at the run's first step, r_k = (L_k / L⁰_k)^b_w, and at every step, **before** the backward and
used in that same step,

    w_nat ← w_nat − η_w·(w_nat − r_nat / (r_adv + r_nat)),   w_adv = 1 − w_nat,   from w = (½, ½),

so the term whose loss has fallen least gains weight (b_w = ``--mtard-ratio-power`` 1, code ``bert``;
η_w = ``--mtard-weight-rate`` 0.025). The weights are plain numbers without gradient.

B-MTARD adds teacher temperatures: σ(T_adv(x′)/τ_adv) and σ(T_nat(x)/τ_nat), the student at τ = 1 and no τ².
Entropy-based balance, after the loss is formed (so from the next step on): with the current temperatures,
h̄_k = mean over B×C of p·log(p + 1e-5), p = σ(T_k/τ_k) (both negative),

    τ_adv ← clip_[1, 10](τ_adv − η_τ·sign(h̄_adv/h̄_nat − 1)),
    τ_nat ← clip_[1, 10](τ_nat − η_τ·sign(h̄_nat/h̄_adv − 1)),

from τ = 1 and η_τ = ``--mtard-temp-rate`` 0.001: the higher-entropy teacher is sharpened, the other softened.
Its weights use l̂_k = L_k/L⁰_k, r_k = l̂_k/mean(l̂); each weight moves towards r_k/Σr by the rule above, then they
are clamped at ≥ 0 and renormalised (in exact arithmetic MTARD's rule with b_w = 1: that the target is the
normalised r is read off this identity; the B-MTARD weight update's timing is taken to be MTARD's).

Both codes multiply the learning rate **and** η_w, η_τ by 0.1 at the end of epochs 215, 260 and 285: the rates
here are multiplied by ``--lr-gamma`` at the end of every ``--milestones`` epoch of the multistep schedule
(``--no-mtard-rate-decay`` keeps them). Weights, first-step losses and temperatures are checkpointed: a resumed
run continues them exactly. In distributed runs the loss and entropy values that drive them are the means over
processes.

Where the codes differ from this plugin: MTARD's CIFAR-100 script calls a WideResNet constructor its model module
lacks and B-MTARD's file imports modules its repository lacks (neither runs as shipped); B-MTARD selects its
"best" checkpoint by (clean + PGD-20)/2 on the test set, which the engine does not do (nothing is selected on
test images); both codes evaluate PGD-20 with step 0.003 (the presets' ``eval`` section).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import (DatasetInfo, Default, LossTerm, Method, Option, RobustDistillError, RunConfig, RunView,
                               StepContext)

from .rslad import rslad_kl_elements  # the codes' element-wise b·(log(b + 1e-5) − log σ(a)), as RSLAD's

NAME = "mtard"
VARIANTS = ("mtard", "b-mtard")
ROBUST, CLEAN = "robust", "clean"
INITIAL = {"first_adv": None, "first_nat": None, "w_adv": 0.5, "w_nat": 0.5, "tau_adv": 1.0, "tau_nat": 1.0}
"""The state at the first step: no reference losses yet, equal weights, temperatures 1."""


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name=NAME, teachers=(ROBUST, CLEAN), attack="ce",
                    summary="MTARD: w_adv·KL(T_robust(x′) ‖ S(x′)) + w_nat·KL(T_clean(x) ‖ S(x)), weights balanced "
                            "from the losses' progress; b-mtard also balances the teachers' temperatures"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--mtard-variant", default="mtard", choices=VARIANTS,
                    help="mtard (ECCV code, no temperatures) or b-mtard (TPAMI extension code: entropy-balanced "
                         "teacher temperatures)"))
    register(Option(flag="--mtard-weight-rate", default=0.025,
                    help="η_w, the step of the loss weights towards their targets (code: 0.025)"))
    register(Option(flag="--mtard-ratio-power", default=1.0,
                    help="b_w (code `bert`): r_k = (L_k/L⁰_k)^b_w; mtard only (code: 1)"))
    register(Option(flag="--mtard-temp-rate", default=0.001, help="η_τ, the temperatures' step; b-mtard (code: 0.001)"))
    register(Option(flag="--mtard-temp-min", default=1.0, help="lower clip of the temperatures; b-mtard (code: 1)"))
    register(Option(flag="--mtard-temp-max", default=10.0, help="upper clip of the temperatures; b-mtard (code: 10)"))
    register(Option(flag="--mtard-rate-decay", default=True,
                    help="multiply η_w and η_τ by --lr-gamma at every multistep milestone, with the learning rate "
                         "(both codes)"))
    register(Option(flag="--mtard-scale", default=None, type=float,
                    help="multiplies both terms (default: 10 on 100 classes as the CIFAR-100 script, else 1 as the "
                         "CIFAR-10 scripts of both codes)"))


@hookimpl
def resolve_options(dataset: DatasetInfo) -> dict[str, Any]:
    if dataset.num_classes == 100:
        return {"scale": Default(value=10.0, source="the MTARD CIFAR-100 script (×10 on both terms)")}
    return {"scale": Default(value=1.0, source="the MTARD and B-MTARD CIFAR-10 scripts")}


@hookimpl
def train_start(run: RunView) -> None:
    opts = run.config.mtard
    if not 0 < opts.weight_rate <= 1:
        raise RobustDistillError(f"--mtard-weight-rate {opts.weight_rate:g} must be in (0, 1] (code: 0.025)")
    if opts.temp_rate < 0:
        raise RobustDistillError(f"--mtard-temp-rate {opts.temp_rate:g} must not be negative (code: 0.001)")
    if not 0 < opts.temp_min <= opts.temp_max:
        raise RobustDistillError(f"--mtard-temp-min {opts.temp_min:g} and --mtard-temp-max {opts.temp_max:g} must "
                                 "satisfy 0 < min ≤ max (code: 1 and 10)")
    run.checkpointed.setdefault(NAME, dict(INITIAL))


def decayed(rate: float, epoch: int, config: RunConfig) -> float:
    """``rate`` times ``--lr-gamma`` for every multistep milestone before the 1-based ``epoch`` (the codes decay the
    balance rates with the learning rate)."""
    if config.mtard.rate_decay and config.lr_schedule == "multistep":
        for milestone in sorted(config.milestones or ()):
            if milestone < epoch:
                rate *= config.lr_gamma
    return rate


def mean_entropy_term(probs: Tensor) -> Tensor:
    """h̄ = mean over B×C of p·log(p + 1e-5) (−H/C on average; negative)."""
    return (probs * torch.log(probs + 1e-5)).mean()


def balanced_weights(state: dict[str, Any], loss_adv: float, loss_nat: float, rate: float, variant: str,
                     power: float) -> tuple[float, float]:
    """``(w_adv, w_nat)`` after one step of the normalization loss balance from ``state``'s weights and first-step
    losses (``loss_*`` are this step's values; at the first step they are the references)."""
    first_adv = state["first_adv"] if state["first_adv"] is not None else loss_adv
    first_nat = state["first_nat"] if state["first_nat"] is not None else loss_nat
    w_adv, w_nat = state["w_adv"], state["w_nat"]
    if variant == "mtard":
        r_adv, r_nat = (loss_adv / first_adv) ** power, (loss_nat / first_nat) ** power
        w_nat = w_nat - rate * (w_nat - r_nat / (r_adv + r_nat))
        return 1 - w_nat, w_nat
    l_adv, l_nat = loss_adv / first_adv, loss_nat / first_nat
    mean = (l_adv + l_nat) / 2
    r_adv, r_nat = l_adv / mean, l_nat / mean
    w_adv = max(w_adv - rate * (w_adv - r_adv / (r_adv + r_nat)), 0.0)
    w_nat = max(w_nat - rate * (w_nat - r_nat / (r_adv + r_nat)), 0.0)
    total = w_adv + w_nat
    return w_adv / total, w_nat / total


def balanced_temperatures(tau_adv: float, tau_nat: float, h_adv: float, h_nat: float, rate: float, low: float,
                          high: float) -> tuple[float, float]:
    """B-MTARD's entropy-based balance: each temperature one step of ``rate`` against the sign of its entropy
    ratio minus one, clipped to ``[low, high]``."""
    def sign(v: float) -> float:
        return float((v > 0) - (v < 0))
    return (min(max(tau_adv - rate * sign(h_adv / h_nat - 1), low), high),
            min(max(tau_nat - rate * sign(h_nat / h_adv - 1), low), high))


def process_mean(run: RunView, values: list[Tensor]) -> list[float]:
    """The means over processes of scalar tensors, as numbers (the same on every process)."""
    stacked = run.reduce_sum(torch.stack([v.detach().float() for v in values])) / run.world_size
    return [float(v) for v in stacked]


@hookimpl
def attack(ctx: StepContext) -> Tensor:
    return ctx.perturb(ctx.attack_objective(), init="normal", bn="eval", clip_start=False)


@hookimpl
def student_inputs(ctx: StepContext) -> dict[str, Tensor]:
    return {"adv": ctx.x_adv, "clean": ctx.x}


@hookimpl
def loss(ctx: StepContext) -> list[LossTerm]:
    opts, run = ctx.config.mtard, ctx.run
    state = run.checkpointed[NAME]
    tempered = opts.variant == "b-mtard"
    tau_adv, tau_nat = (state["tau_adv"], state["tau_nat"]) if tempered else (1.0, 1.0)
    p_adv = F.softmax(ctx.teacher_out("adv", ctx.x_adv, teacher=ROBUST).logits.float() / tau_adv, dim=1)
    p_nat = F.softmax(ctx.teacher_out("clean", ctx.x, teacher=CLEAN).logits.float() / tau_nat, dim=1)
    adv = rslad_kl_elements(ctx.student_out("adv"), p_adv)
    nat = rslad_kl_elements(ctx.student_out("clean"), p_nat)
    loss_adv, loss_nat = adv.mean(), nat.mean()
    values = [loss_adv, loss_nat, *([mean_entropy_term(p_adv), mean_entropy_term(p_nat)] if tempered else [])]
    numbers = process_mean(run, values)
    w_adv, w_nat = balanced_weights(state, numbers[0], numbers[1], decayed(opts.weight_rate, ctx.epoch, ctx.config),
                                    opts.variant, opts.ratio_power)
    update = {"first_adv": state["first_adv"] if state["first_adv"] is not None else numbers[0],
              "first_nat": state["first_nat"] if state["first_nat"] is not None else numbers[1],
              "w_adv": w_adv, "w_nat": w_nat}
    if tempered:
        update["tau_adv"], update["tau_nat"] = balanced_temperatures(
            tau_adv, tau_nat, numbers[2], numbers[3], decayed(opts.temp_rate, ctx.epoch, ctx.config), opts.temp_min,
            opts.temp_max)
    ctx.state[NAME] = update
    return [LossTerm("kl_adv", loss_adv, weight=opts.scale * w_adv, per_sample=lambda: adv.sum(dim=1) / adv.shape[1]),
            LossTerm("kl_clean", loss_nat, weight=opts.scale * w_nat,
                     per_sample=lambda: nat.sum(dim=1) / nat.shape[1])]


@hookimpl
def step_end(run: RunView, ctx: StepContext) -> None:
    """The state this step's loss computed becomes the run's (the weights it used, the temperatures of the next)."""
    run.checkpointed[NAME].update(ctx.state[NAME])


@hookimpl
def epoch_end(run: RunView, metrics: dict[str, Any]) -> None:
    state = run.checkpointed[NAME]
    metrics.update({f"mtard_{key}": state[key] for key in ("w_adv", "w_nat")})
    if run.config.mtard.variant == "b-mtard":
        metrics.update({f"mtard_{key}": state[key] for key in ("tau_adv", "tau_nat")})
