"""ARD — Adversarially Robust Distillation (Goldblum et al., AAAI 2020; methods-ad §2.1).

    L = α·τ²·KL(σ(T(x)/τ) ‖ σ(S(x′)/τ)) + (1 − α)·CE(S(x), y)

Teacher on **clean** x, student on the adversarial x′ = PGD-10 on the student's CE with the true
labels from a uniform start. Defaults follow the official code: τ = 30, α = 1 (so the CE term is
off and not computed), the legacy element-wise ``mean`` KL reduction (``nn.KLDivLoss()``), and the
attack run with the student in **train** mode (BatchNorm batch statistics). The IGDM code's ARD base
differs: τ = 1, ``batchmean``, attack in eval mode (``--ard-tau 1 --ard-kl-reduction batchmean
--ard-attack-bn eval``). The official ``adjust_learning_rate`` decays only once (0.1 → 0.01); the
engine's multistep schedule decays at every milestone.
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from robustdistill import LossTerm, Method, Option, StepContext, hookimpl
from robustdistill.attacks import BN_MODES, INITS
from robustdistill.losses import KL_REDUCTIONS, kl_to_teacher


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method("ard", "ARD: α·τ²·KL(T(x)/τ ‖ S(x′)/τ) + (1−α)·CE(S(x), y), PGD-CE attack", needs_teacher=True,
                    attack="ce"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option("--ard-tau", 30.0, "distillation temperature τ (ARD code: 30; IGDM's ARD base: 1)"))
    register(Option("--ard-alpha", 1.0, "α, weight of the KL term; 1 − α weighs clean CE (ARD code: 1)"))
    register(Option("--ard-kl-reduction", "mean", "KL reduction: mean = element-wise mean over B×C "
                    "(ARD code, nn.KLDivLoss()) or batchmean (IGDM code)", choices=KL_REDUCTIONS))
    register(Option("--ard-attack-bn", "train", "BatchNorm mode of the student while attacking: train "
                    "(ARD code) or eval (IGDM code)", choices=BN_MODES))
    register(Option("--ard-init", "uniform", "PGD start: uniform in the ε-ball (ARD code) or x+0.001·N",
                    choices=INITS))


@hookimpl
def attack(ctx: StepContext):
    return ctx.perturb(ctx.attack_objective(), init=ctx.config.ard.init, bn=ctx.config.ard.attack_bn)


@hookimpl
def student_inputs(ctx: StepContext) -> dict[str, Tensor]:
    return {"adv": ctx.x_adv} if ctx.config.ard.alpha == 1 else {"adv": ctx.x_adv, "clean": ctx.x}


@hookimpl
def loss(ctx: StepContext) -> list[LossTerm]:
    opts = ctx.config.ard
    teacher = ctx.teacher_out("clean", ctx.x).logits
    kl = kl_to_teacher(ctx.student_out("adv"), teacher, opts.kl_reduction, opts.tau)
    terms = [LossTerm("kl", kl, weight=opts.alpha * opts.tau ** 2)]
    if opts.alpha != 1:
        terms.append(LossTerm("ce", F.cross_entropy(ctx.student_out("clean"), ctx.y), weight=1 - opts.alpha))
    return terms
