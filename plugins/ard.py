"""ARD — Adversarially Robust Distillation (Goldblum et al., AAAI 2020; methods-ad §2.1).

    L = α·τ²·KL(σ(T(x)/τ) ‖ σ(S(x′)/τ)) + (1 − α)·CE(S(x), y)

Teacher on **clean** x, student on the adversarial x′ = PGD-10 on the student's CE with the true
labels from a uniform start, its first gradient taken at the unclipped x + U(−ε, ε) as in the code. KL(p ‖ q) has the teacher as p (PyTorch's ``kl_div(log σ(S), σ(T))``), in
the ARD code and in the IGDM code alike.

The defaults are the ARD code's ARD (``resolve_options``): τ = 30, the legacy element-wise ``mean`` KL
reduction (``nn.KLDivLoss()``), and the attack run with the student in **train** mode (BatchNorm batch
statistics; its running statistics are updated by every PGD iterate, as in the code). An add-on may declare
another base for its composition: ``--plugin ard --plugin igdm`` trains the IGDM code's ARD base (τ = 1,
``batchmean``, eval-mode attack; see the igdm plugin). Any of ``--ard-tau``, ``--ard-kl-reduction``,
``--ard-attack-bn`` given on the command line wins. In both
codes α = 1, and the clean forward S(x) still runs in train mode with weight 0 on its CE, so BatchNorm
running statistics see the clean batch: it is declared in ``student_inputs`` and always runs, after S(x′)
as in the ARD code; the CE term is added only when α ≠ 1 (a zero-weight term is not a term).
Where the codes differ otherwise: the official ``adjust_learning_rate`` decays only once (0.1 → 0.01,
the engine's multistep schedule decays at every milestone); the IGDM code's ARD attack uses the step
2/225 (a typo for 2/255; ``--step-size 2/225`` reproduces it).
"""
from __future__ import annotations

from typing import Any, Callable

import torch.nn.functional as F
from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import (BN_MODES, INITS, KL_REDUCTIONS, Default, LossTerm, Method, Option, StepContext,
                               kl_elements, kl_per_sample, reduce_kl)

ARD_CODE = {"tau": 30.0, "kl_reduction": "mean", "attack_bn": "train"}
"""The ARD code's base (goldblum/AdversariallyRobustDistillation ``main.py``)."""


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name="ard", needs_teacher=True, attack="ce",
                    summary="ARD: α·τ²·KL(T(x)/τ ‖ S(x′)/τ) + (1−α)·CE(S(x), y), PGD-CE attack"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--ard-tau", default=None, type=float,
                    help="distillation temperature τ (default: 30 as the ARD code; 1 with igdm, as the IGDM code's "
                         "ARD base)"))
    register(Option(flag="--ard-alpha", default=1.0,
                    help="α, weight of the KL term; 1 − α weighs clean CE (ARD and IGDM code: 1)"))
    register(Option(flag="--ard-kl-reduction", default=None, type=str, choices=KL_REDUCTIONS,
                    help="KL reduction: mean = element-wise mean over B×C (default: the ARD code, nn.KLDivLoss()) or "
                         "batchmean (default with igdm: the IGDM code)"))
    register(Option(flag="--ard-attack-bn", default=None, type=str, choices=BN_MODES,
                    help="BatchNorm mode of the student while attacking: train (default: the ARD code) or eval "
                         "(default with igdm: the IGDM code)"))
    register(Option(flag="--ard-init", default="uniform", choices=INITS,
                    help="PGD start: uniform in the ε-ball (ARD and IGDM code) or x+0.001·N"))


@hookimpl
def resolve_options() -> dict[str, Any]:
    """The ARD code's ARD (where an add-on's composition has not set these already)."""
    return {key: Default(value=value, source="the ARD code (main.py)") for key, value in ARD_CODE.items()}


@hookimpl
def attack(ctx: StepContext):
    return ctx.perturb(ctx.attack_objective(), init=ctx.config.ard.init, bn=ctx.config.ard.attack_bn, clip_start=False)


@hookimpl
def student_inputs(ctx: StepContext) -> dict[str, Tensor]:
    return {"adv": ctx.x_adv, "clean": ctx.x}


@hookimpl
def loss(ctx: StepContext) -> list[LossTerm]:
    opts = ctx.config.ard
    teacher = ctx.teacher_out("clean", ctx.x).logits
    kl = kl_elements(ctx.student_out("adv"), teacher, opts.tau)
    terms = [LossTerm("kl", reduce_kl(kl, opts.kl_reduction), weight=opts.alpha * opts.tau ** 2,
                      per_sample=lambda: kl_per_sample(kl, opts.kl_reduction))]
    if opts.alpha != 1:
        clean = ctx.student_out("clean")
        terms.append(LossTerm("ce", F.cross_entropy(clean, ctx.y), weight=1 - opts.alpha,
                              per_sample=lambda: F.cross_entropy(clean, ctx.y, reduction="none")))
    return terms
