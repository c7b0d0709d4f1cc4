"""PGD adversarial training (Madry et al., ICLR 2018; methods-ad §3.1).

    min_θ E[ max_{‖δ‖∞≤ε} CE(f_θ(x+δ), y) ],  x^{t+1} = Π_{B_ε(x)∩[0,1]}(x^t + η·sign ∇ₓCE)

Inner attack: PGD on CE with the true labels, uniform random start in the ε-ball clipped to [0, 1] (Madry,
IGDM); ``--at-init normal`` is AdaAD's ``x + 0.001·N``. BatchNorm runs in eval mode during the
attack as in the IGDM and AdaAD code; ``--at-attack-bn train`` is the Madry / Rice et al. /
ARD variant (the student's training mode is kept while attacking).
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import BN_MODES, INITS, LossTerm, Method, Option, StepContext


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name="at", attack="ce",
                    summary="PGD adversarial training (Madry): CE(f(x_adv), y); trains robust teachers"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--at-init", default="uniform", choices=INITS,
                    help="PGD start: uniform in the ε-ball (Madry) or x+0.001·N (AdaAD)"))
    register(Option(flag="--at-attack-bn", default="eval", choices=BN_MODES,
                    help="BatchNorm mode while attacking: eval (IGDM/AdaAD code) or train (Madry, Rice et al., ARD)"))


@hookimpl
def attack(ctx: StepContext) -> Tensor:
    return ctx.perturb(ctx.attack_objective(), init=ctx.config.at.init, bn=ctx.config.at.attack_bn)


@hookimpl
def student_inputs(ctx: StepContext) -> dict[str, Tensor]:
    return {"adv": ctx.x_adv}


@hookimpl
def loss(ctx: StepContext) -> LossTerm:
    adv = ctx.student_out("adv")
    return LossTerm("ce_adv", F.cross_entropy(adv, ctx.y),
                    per_sample=lambda: F.cross_entropy(adv, ctx.y, reduction="none"))
