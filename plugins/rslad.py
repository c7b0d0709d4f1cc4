"""RSLAD — Robust Soft Label Adversarial Distillation (Zi et al., ICCV 2021; methods-ad §2.2).

    L = 5/6 · kl̄(S(x′), T(x)) + 1/6 · kl̄(S(x), T(x)),   kl(a, b) = b·(log(b + 1e-5) − log σ(a))

The teacher's soft labels on **clean** x replace the hard labels everywhere (no CE). Inner attack:
student in eval mode, x′ = x + 0.001·N(0, I) (unclipped, as the code), maximise Σ KL(σ(T(x)) ‖ σ(S(x′))) (IGDM Eq. 16).
``kl̄`` is the official code's ``torch.mean`` over the B×C elements (``--rslad-reduction mean``);
``batchmean`` is the per-sample sum. The official CIFAR-100 script multiplies both terms by 10
("to keep consistent with CIFAR-10"), and so does the IGDM code's RSLAD base (IGDM's α = 3 for RSLAD on
CIFAR-100 assumes it): ``--rslad-scale`` resolves to 10 on 100-class data and 1 on every other dataset
(the CIFAR-10 script's). Paper schedule: 300 epochs, lr ÷10 at
215, 260, 285 (code: 210, 258, 285); weight decay 2e-4.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import (KL_REDUCTIONS, Attack, DatasetInfo, Default, LossTerm, Method, Objective, Option,
                               StepContext, kl_objective, kl_per_sample, reduce_kl)


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name="rslad", summary="RSLAD: 5/6·KL(S(x′), T(x)) + 1/6·KL(S(x), T(x)), KL-to-teacher attack",
                    needs_teacher=True, attack="teacher-kl"))


@hookimpl
def register_attacks(register: Callable) -> None:
    register(Attack(name="teacher-kl", objective=teacher_kl_objective, needs_teacher=True,
                    summary="KL(T(x) ‖ S(x′)) to the teacher's clean soft labels (RSLAD)"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--rslad-adv-weight", default=5 / 6,
                    help="weight of the adversarial term; the clean term gets 1 − it (paper: 5/6)"))
    register(Option(flag="--rslad-reduction", default="mean", choices=KL_REDUCTIONS,
                    help="KL reduction: mean over B×C elements (RSLAD code) or batchmean"))
    register(Option(flag="--rslad-scale", default=None, type=float,
                    help="multiplies both terms (default: 10 on 100-class data as the official CIFAR-100 script and "
                         "the IGDM code, else 1 as the CIFAR-10 script)"))


def official_scale(num_classes: int) -> Default:
    """The official scripts' factor on both terms: ×10 in the CIFAR-100 script, ×1 in the CIFAR-10 one."""
    if num_classes == 100:
        return Default(value=10.0, source="the RSLAD CIFAR-100 script (×10 on both terms)")
    return Default(value=1.0, source="the RSLAD CIFAR-10 script")


@hookimpl
def resolve_options(dataset: DatasetInfo) -> dict[str, Any]:
    return {"scale": official_scale(dataset.num_classes)}


def rslad_kl_elements(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """The official element-wise ``b·(log(b + 1e-5) − log σ(a))`` ``[B, C]``."""
    b = teacher_probs.detach().float()
    return b * (torch.log(b + 1e-5) - F.log_softmax(student_logits.float(), dim=1))


def rslad_kl(student_logits: Tensor, teacher_probs: Tensor, reduction: str) -> Tensor:
    """The official element-wise ``b·(log(b + 1e-5) − log σ(a))``, reduced."""
    return reduce_kl(rslad_kl_elements(student_logits, teacher_probs), reduction)


def teacher_kl_objective(ctx: StepContext) -> Objective:
    """Σ KL(σ(T(x)) ‖ σ(S(x′))) with the teacher's soft labels on clean x (IGDM Eq. 16)."""
    return kl_objective(ctx.attack_student, F.softmax(ctx.teacher_out("clean", ctx.x).logits, dim=1))


@hookimpl
def attack(ctx: StepContext) -> Tensor:
    return ctx.perturb(ctx.attack_objective(), init="normal", bn="eval", clip_start=False)


@hookimpl
def student_inputs(ctx: StepContext) -> dict[str, Tensor]:
    return {"adv": ctx.x_adv, "clean": ctx.x}


@hookimpl
def loss(ctx: StepContext) -> list[LossTerm]:
    opts = ctx.config.rslad
    soft_labels = F.softmax(ctx.teacher_out("clean", ctx.x).logits, dim=1)
    adv = rslad_kl_elements(ctx.student_out("adv"), soft_labels)
    clean = rslad_kl_elements(ctx.student_out("clean"), soft_labels)
    return [LossTerm("kl_adv", reduce_kl(adv, opts.reduction), weight=opts.scale * opts.adv_weight,
                     per_sample=lambda: kl_per_sample(adv, opts.reduction)),
            LossTerm("kl_clean", reduce_kl(clean, opts.reduction), weight=opts.scale * (1 - opts.adv_weight),
                     per_sample=lambda: kl_per_sample(clean, opts.reduction))]
