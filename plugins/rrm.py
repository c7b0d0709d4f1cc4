"""RRM — Robust Representation Matching (Vaishnavi, Eykholt & Rahmati, USENIX Security 2022; methods-grad §2).

    L = w_ce · CE(f_s(x), y) + w_feat · (1 − (1/B) Σᵢ cos(P·φ_s(xᵢ), φ_t(xᵢ)))

φ are the **penultimate** features (the input of the linear classifier) of the student and of the
frozen robust teacher (eval mode, no gradient), on **clean** inputs only: no adversarial examples are
made, which is the method's point — a step costs one extra teacher forward. The official code adds
``−cos`` (``feat_weight = −1``); ``1 − cos`` has the same gradient and is non-negative.
``--rrm-feat-loss relative-l2`` is the Restricted-ImageNet variant (1/B)·Σ‖Pφ_s − φ_t‖₂ / ‖φ_t‖₂
(with ``feat_weight = +1``). Cosine similarity uses ε = 1e-6 as the code.

Weights (``xent_weight``): 0.005 for CIFAR-10 L∞ (the default), 5e-5 for CIFAR-10 L2, 0.001 for
Restricted-ImageNet (with relative-L2).

Where the widths differ, P is a learned ``Linear(d_s → d_t)`` trained jointly with the student by its
optimiser, saved in every checkpoint and restored on ``--resume`` (P is the identity when the widths
agree). The official code instead changes the architectures so that every penultimate layer is 512
wide (an extra linear layer *before* the classifier of its ResNet-50); here P only serves the matching
and the student's classifier keeps its own features.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustdistill import hookimpl
from robustdistill.api import LossTerm, Method, Option, RobustDistillError, RunView, StepContext, model_mode

FEAT_LOSSES = ("cosine", "relative-l2")


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name="rrm", needs_teacher=True,
                    summary="RRM: w·CE + (1 − cos) match of penultimate features to the teacher's; clean inputs only"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--rrm-xent-weight", default=0.005,
                    help="w_ce, weight of the CE (CIFAR-10 L∞: 0.005, L2: 5e-5, Restricted-ImageNet: 0.001)"))
    register(Option(flag="--rrm-feat-weight", default=1.0,
                    help="w_feat, weight of the feature-matching term (code: 1)"))
    register(Option(flag="--rrm-feat-loss", default="cosine", choices=FEAT_LOSSES,
                    help="1 − cosine similarity (CIFAR) or relative L2 ‖φ_s − φ_t‖/‖φ_t‖ (Restricted-ImageNet)"))


def feature_loss(student: Tensor, teacher: Tensor, kind: str = "cosine") -> Tensor:
    """1 − mean cosine similarity (ε = 1e-6), or the mean relative L2 distance, over the batch."""
    student, teacher = student.float(), teacher.detach().float()
    if kind == "relative-l2":
        return ((student - teacher).norm(dim=1) / teacher.norm(dim=1).clamp_min(1e-12)).mean()
    return 1 - F.cosine_similarity(student, teacher, dim=1, eps=1e-6).mean()


def feature_width(model: nn.Module, x: Tensor) -> int:
    """The model's ``feature_dim`` where it declares one, else the width of its features on ``x``."""
    if isinstance(getattr(model, "feature_dim", None), int):
        return model.feature_dim
    with torch.no_grad(), model_mode(model, train=False):
        _, features = model(x, return_features=True)
    return int(features.shape[1])


def make_projection(student_dim: int, teacher_dim: int) -> nn.Module | None:
    """P: a new ``Linear(d_s → d_t)`` where the widths differ (``None`` otherwise)."""
    return nn.Linear(student_dim, teacher_dim) if student_dim != teacher_dim else None


@hookimpl
def train_start(run: RunView) -> None:
    if run.teacher is None:
        raise RobustDistillError("rrm matches a teacher's features: pass --teacher CKPT")
    probe = run.data.train_x[:2].to(run.device).float() / 255
    d_s, d_t = feature_width(run.student, probe), feature_width(run.teacher, probe)
    projection = run.state["rrm"] = make_projection(d_s, d_t)
    if projection is not None:
        run.add_module("rrm_projection", projection, joint=True)


@hookimpl
def student_inputs(ctx: StepContext) -> dict[str, Tensor]:
    return {"clean": ctx.x}


@hookimpl
def loss(ctx: StepContext) -> list[LossTerm]:
    opts = ctx.config.rrm
    logits, features = ctx.student_out("clean", features=True)
    target = ctx.teacher_out("clean", ctx.x).features
    if target is None:
        raise RobustDistillError("rrm needs the teacher's penultimate features, which its teacher_forward "
                                 "does not provide")
    projection = ctx.run.state.get("rrm")
    if projection is not None:
        features = projection(features.float())
    if features.shape[1] != target.shape[1]:
        raise RobustDistillError(f"student features are {features.shape[1]} wide and the teacher's "
                                 f"{target.shape[1]}; rrm adds its projection in train_start")
    return [LossTerm("ce", F.cross_entropy(logits, ctx.y), weight=opts.xent_weight),
            LossTerm("rrm_feat", feature_loss(features, target, opts.feat_loss), weight=opts.feat_weight)]
