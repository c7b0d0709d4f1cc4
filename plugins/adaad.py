"""AdaAD — Adaptive Adversarial Distillation (Huang et al., CVPR 2023; methods-ad §2.3).

    L = λ·KL(σ(T(x′)) ‖ σ(S(x′))) + (1 − λ)·KL(σ(T(x)) ‖ σ(S(x)))

Inner attack: student **and teacher** in eval mode, x′ = x + 0.001·N(0, I) (unclipped, as the code), sign-gradient ascent on
Σ KL(σ(T(x′)) ‖ σ(S(x′))) with the teacher evaluated at the same perturbed point, so the gradient
flows through both networks (IGDM Eq. 17). λ = 1 as in the official code; the clean forward S(x) still
runs in train mode, before S(x′), as in the code (BatchNorm running statistics see the clean batch), and
the clean term is added only when λ ≠ 1 (a zero-weight term is not a term).

KL reduction (``--adaad-reduction``, resolved per run): the official CIFAR-10 code uses
``nn.KLDivLoss()``'s element-wise ``mean`` and its CIFAR-100 code the per-sample sum (``batchmean``), so
AdaAD gets ``batchmean`` on 100-class data and ``mean`` on every other dataset, unless an add-on's
composition says otherwise (igdm: ``batchmean``, the IGDM code's AdaAD base on which its α was tuned). The official
``main.py`` defaults are ε = 16/255, step 4/255; its README commands (and this plugin, through
``--eps``/``--step-size``) use 8/255, 2/255. Weight decay in the code: 5e-4.
"""
from __future__ import annotations

from typing import Any, Callable

import torch.nn.functional as F
from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import (INITS, KL_REDUCTIONS, Attack, DatasetInfo, Default, LossTerm, Method, Objective, Option,
                               StepContext, kl_elements, kl_per_sample, model_mode, reduce_kl)


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name="adaad", summary="AdaAD: λ·KL(S(x′), T(x′)) + (1−λ)·KL(S(x), T(x)), attack through both nets",
                    needs_teacher=True, attack="adaad-kl"))


@hookimpl
def register_attacks(register: Callable) -> None:
    register(Attack(name="adaad-kl", objective=adaad_objective, needs_teacher=True,
                    summary="KL(T(x′) ‖ S(x′)) with the teacher at the same point: the gradient goes through both "
                            "networks (AdaAD)"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--adaad-lambda", default=1.0, help="λ, weight of the adversarial term (code: always 1)"))
    register(Option(flag="--adaad-reduction", default=None, type=str, choices=KL_REDUCTIONS,
                    help="KL reduction: mean over B×C (default on data without 100 classes: the AdaAD CIFAR-10 code) "
                         "or batchmean (default on 100 classes: the AdaAD CIFAR-100 code; with igdm: the IGDM "
                         "code)"))
    register(Option(flag="--adaad-init", default="normal", choices=INITS,
                    help="attack start: x+0.001·N (code) or uniform in the ε-ball"))


def official_reduction(num_classes: int) -> Default:
    """The KL reduction of the official AdaAD code for this number of classes."""
    if num_classes == 100:
        return Default(value="batchmean", source="the AdaAD CIFAR-100 code")
    return Default(value="mean", source="the AdaAD CIFAR-10 code (nn.KLDivLoss())")


@hookimpl
def resolve_options(dataset: DatasetInfo) -> dict[str, Any]:
    return {"reduction": official_reduction(dataset.num_classes)}


def adaad_objective(ctx: StepContext) -> Objective:
    """Σ KL(σ(T(x′)) ‖ σ(S(x′))): the teacher evaluated at the perturbed point, with gradient to x′ (IGDM Eq. 17)."""
    student, teacher = ctx.attack_student, ctx.teacher

    def objective(x_adv: Tensor) -> Tensor:
        log_q = F.log_softmax(student(x_adv), dim=1)
        p = F.softmax(teacher(x_adv), dim=1)
        return F.kl_div(log_q, p, reduction="none").sum(dim=1)
    return objective


@hookimpl
def attack(ctx: StepContext) -> Tensor:
    with model_mode(ctx.teacher, train=False):
        return ctx.perturb(ctx.attack_objective(), init=ctx.config.adaad.init, bn="eval", clip_start=False)


@hookimpl
def student_inputs(ctx: StepContext) -> dict[str, Tensor]:
    return {"clean": ctx.x, "adv": ctx.x_adv}


@hookimpl
def loss(ctx: StepContext) -> list[LossTerm]:
    opts = ctx.config.adaad
    terms = [kl_term("kl_adv", ctx.student_out("adv"), ctx.teacher_out("adv", ctx.x_adv).logits, opts.reduction,
                     opts.lambda_)]
    if opts.lambda_ != 1:
        terms.append(kl_term("kl_clean", ctx.student_out("clean"), ctx.teacher_out("clean", ctx.x).logits,
                             opts.reduction, 1 - opts.lambda_))
    return terms


def kl_term(name: str, student: Tensor, teacher: Tensor, reduction: str, weight: float) -> LossTerm:
    """KL(σ(T) ‖ σ(S)) reduced as ``reduction``, with its per-sample values."""
    kl = kl_elements(student, teacher)
    return LossTerm(name, reduce_kl(kl, reduction), weight=weight, per_sample=lambda: kl_per_sample(kl, reduction))
