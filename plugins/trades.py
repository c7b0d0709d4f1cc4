"""TRADES (Zhang et al., ICML 2019; methods-ad §3.2, ``yaodongyu/TRADES/trades.py``).

    L = CE(f(x), y) + β · (1/B) Σᵢ KL(σ(f(xᵢ)) ‖ σ(f(x'ᵢ)))

Inner: student in eval mode, x' = x + 0.001·N(0, I) (not clipped to [0, 1] before the first gradient, as in
the code; ``--clip-start on`` clips it), maximise Σ KL(σ(f(x)) ‖ σ(f(x'))) with sign
steps. Outer: student in train mode; the clean target σ(f(x)) is **not detached**, as in the
official code, so the KL term also trains the clean branch. β = 6 (the paper's CIFAR setting).
The official CIFAR script uses step 0.007 and ε 0.031; the AD papers use 2/255 and 8/255.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import Attack, LossTerm, Method, Objective, Option, StepContext, kl_objective, model_mode


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name="trades", attack="trades-kl",
                    summary="TRADES: CE(f(x), y) + β·KL(f(x) ‖ f(x')); trains robust teachers"))


@hookimpl
def register_attacks(register: Callable) -> None:
    register(Attack(name="trades-kl", objective=trades_objective,
                    summary="KL(S(x) ‖ S(x′)) to the student's own clean prediction (TRADES)"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--trades-beta", default=6.0, type=float,
                    help="β, the weight of the robustness KL term (paper: 6)"))


def trades_kl(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """(1/B)·Σ KL(σ(clean) ‖ σ(adv)), gradient flowing into both arguments."""
    return F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(clean_logits, dim=1),
                    reduction="sum") / clean_logits.shape[0]


def trades_kl_per_sample(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """Each sample's KL(σ(clean) ‖ σ(adv)) ``[B]`` (their mean is :func:`trades_kl`)."""
    return F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(clean_logits, dim=1), reduction="none").sum(dim=1)


def trades_objective(ctx: StepContext) -> Objective:
    """Σ KL(σ(S(x)) ‖ σ(S(x′))), the clean prediction taken once, in eval mode, without gradient."""
    with model_mode(ctx.student, train=False), torch.no_grad():
        target = F.softmax(ctx.attack_student(ctx.x), dim=1)
    return kl_objective(ctx.attack_student, target)


@hookimpl
def attack(ctx: StepContext) -> Tensor:
    return ctx.perturb(ctx.attack_objective(), init="normal", bn="eval", clip_start=False)


@hookimpl
def student_inputs(ctx: StepContext) -> dict[str, Tensor]:
    return {"clean": ctx.x, "adv": ctx.x_adv}


@hookimpl
def loss(ctx: StepContext) -> list[LossTerm]:
    clean = ctx.student_out("clean")
    adv = ctx.student_out("adv")
    return [LossTerm("ce", F.cross_entropy(clean, ctx.y),
                     per_sample=lambda: F.cross_entropy(clean, ctx.y, reduction="none")),
            LossTerm("kl", trades_kl(clean, adv), weight=ctx.config.trades.beta,
                     per_sample=lambda: trades_kl_per_sample(clean, adv))]
