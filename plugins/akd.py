"""AKD — Adversarial Knowledge Distillation (Maroto, Ortiz-Jiménez, Frossard, arXiv 2203.07159, 2022;
methods-ad2 §7), in the form of the first author's later code (javier-maroto/kdmc ``train/akd.py``).

What is known. The abstract: the student is adversarially trained on a mixture of the original labels and the
teacher's outputs (with early-stopped teachers, teacher ensembles and "weak" adversarial training as
guidelines). The inner maximisation is PGD on the student's cross-entropy (SAAD App. B.1). The later code's
outer loss, at τ = 1, with the teacher at the adversarial point:

    q = α·σ(T(x′)) + (1 − α)·onehot(y),    L = −(1/B)·Σ_i Σ_c q_ic·log σ(S(x′_i))_c

(= α·bm KL(σ(T(x′)) ‖ σ(S(x′))) + (1 − α)·CE(S(x′), y) up to a constant). Its PGD (a torchattacks ``Attack``,
which runs the model in eval mode [inferred from torchattacks' default]) starts at x + U(−ε, ε) and takes its
first gradient there, unclipped; the student's only train-mode forward is S(x′).

What is not known: the paper's body and CIFAR code were not available, so AKD's α and τ on CIFAR, whether its
CIFAR teacher sees x or x′, what "weak AT" means (a smaller ε, fewer steps), the teacher's early-stopping epoch
and the ensemble size are not specified anywhere readable; nor are IGDM's AKD hyperparameters other than its α
(App. B.2: 7 on CIFAR-10, 50 on CIFAR-100). Hence: ``--akd-alpha`` has **no default** (the later code's
``--kt_alpha`` has none either; its ``exec/akd.sh`` runs 1.0 on radio signals) and a run without it is refused;
τ is 1; one teacher (no ensemble); the teacher's input is an option (``--akd-teacher-input``, default x′ as the
later code). Not IAD's ``AKD2.py`` (Chen et al.'s two-teacher distillation: IAD-II before its introspection).
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import (BN_MODES, INITS, LossTerm, Method, Option, RobustDistillError, RunConfig, StepContext)

INPUTS = ("adv", "clean")


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name="akd", needs_teacher=True, attack="ce",
                    summary="AKD (its author's later code): soft CE of S(x′) to α·σ(T(x′)) + (1−α)·onehot(y); "
                            "PGD-CE attack; --akd-alpha required"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--akd-alpha", default=None, type=float,
                    help="α in [0, 1], the teacher's share of the soft label (required: no CIFAR value is known; the "
                         "author's later code runs 1.0 on radio signals)"))
    register(Option(flag="--akd-teacher-input", default="adv", choices=INPUTS,
                    help="where the teacher is evaluated: adv = x′ (the author's later code) or clean = x"))
    register(Option(flag="--akd-attack-bn", default="eval", choices=BN_MODES,
                    help="BatchNorm mode of the student while attacking: eval (torchattacks' default, as the later "
                         "code) or train"))
    register(Option(flag="--akd-init", default="uniform", choices=INITS,
                    help="PGD start: uniform in the ε-ball (the later code) or x+0.001·N"))


@hookimpl
def resolve_options(config: RunConfig) -> None:
    """Refuse a run without the mixing weight: the paper gives none for any image dataset."""
    alpha = config.akd.alpha
    if alpha is None:
        raise RobustDistillError("akd needs the mixing weight α of the teacher's probabilities and the one-hot "
                                 "label, which the AKD paper gives for no image dataset: pass --akd-alpha A "
                                 "(0 ≤ A ≤ 1; the author's later code runs 1.0)")
    if not 0 <= alpha <= 1:
        raise RobustDistillError(f"--akd-alpha must be in [0, 1] (got {alpha:g}): it mixes two distributions")


@hookimpl
def attack(ctx: StepContext) -> Tensor:
    opts = ctx.config.akd
    return ctx.perturb(ctx.attack_objective(), init=opts.init, bn=opts.attack_bn, clip_start=False)


@hookimpl
def student_inputs(ctx: StepContext) -> dict[str, Tensor]:
    return {"adv": ctx.x_adv}


def soft_labels(teacher_logits: Tensor, y: Tensor, alpha: float) -> Tensor:
    """``q = α·σ(T) + (1 − α)·onehot(y)`` ``[B, C]``, a constant."""
    probs = F.softmax(teacher_logits.detach().float(), dim=1)
    return alpha * probs + (1 - alpha) * F.one_hot(y, probs.shape[1]).float()


@hookimpl
def loss(ctx: StepContext) -> LossTerm:
    opts = ctx.config.akd
    x_teacher = ctx.x_adv if opts.teacher_input == "adv" else ctx.x
    q = soft_labels(ctx.teacher_out(opts.teacher_input, x_teacher).logits, ctx.y, opts.alpha)
    rows = -(q * F.log_softmax(ctx.student_out("adv").float(), dim=1)).sum(dim=1)
    return LossTerm("soft_ce", rows.mean(), per_sample=rows)
