"""IGDM — Indirect Gradient Distillation Module (Lee et al., ICLR 2025; methods-ad §1).

    L_min = L_base + T(α)·D(S(x+δ) − S(x−δ), T(x+δ) − T(x−δ)),   T(α) = α · epoch / epochs   (Eqs. 8–9)

δ = x_adv − x is the perturbation the **base method's** own attack already crafted (no new attack);
the student and teacher logit differences across ±δ approximate their input gradients along δ, so
matching them transfers the teacher's local linear behaviour. D is the KL of the softmaxes of the
differences (batchmean, τ = 1, teacher side detached — the paper's and the code's choice); L1 and L2
are options ("nearly indistinguishable", §4.1). x + δ = x_adv is already in [0, 1]; x − δ is **not
clipped**, as in the code (``--igdm-clip-minus`` clips it). The student runs in train mode for the
±δ forwards, as in the code. ``--igdm-beta``/``--igdm-gamma`` scale +δ and −δ (code: 1, 1).

Selected alone, IGDM composes on top of PGD-AT (the paper's IGDM_PGD-AT); ``--plugin rslad
--plugin igdm`` is IGDM_RSLAD, and so on for every base.

α (App. B.2, ResNet-18 student, LTD teacher) is a per-base default, chosen by the number of classes:

    base       PGD-AT  TRADES  ARD  RSLAD  AdaAD
    CIFAR-10     60      20     5    0.9     5      (used for every dataset without 100 classes)
    CIFAR-100   100       5    50    3      15

The full table (BDM-AT / IKL-AT teachers, MobileNetV2, SVHN: PGD-AT 60, TRADES 30, ARD 50, RSLAD 3,
AdaAD 9; Tiny-ImageNet: 30, 20, 10, 1, 10) is in methods-ad §1.5; pass ``--igdm-alpha`` to override.
Where the official code differs: the ramp denominator is hard-coded (200 epochs; 300 for RSLAD) —
``--igdm-ramp-epochs``; weight decay 2e-4 (paper 5e-4) — ``--weight-decay``.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from robustdistill import (DatasetInfo, LossTerm, Method, Option, RobustDistillError, RunConfig, RunView,
                           StepContext, hookimpl)
from robustdistill._config import FD_DISTANCES

ALPHA_CIFAR10 = {"at": 60.0, "trades": 20.0, "ard": 5.0, "rslad": 0.9, "adaad": 5.0}
ALPHA_CIFAR100 = {"at": 100.0, "trades": 5.0, "ard": 50.0, "rslad": 3.0, "adaad": 15.0}


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name="igdm", needs_teacher=True, default_base="at",
                    summary="IGDM: + T(α)·KL(S(x+δ)−S(x−δ), T(x+δ)−T(x−δ)) on the base's δ; composes on any base"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--igdm-alpha", default=None, type=float,
                    help="α; default per base method and dataset (App. B.2, see the plugin docs)"))
    register(Option(flag="--igdm-distance", default="kl", choices=FD_DISTANCES,
                    help="D: kl of softmaxes (paper and code), l1 or l2"))
    register(Option(flag="--igdm-ramp-epochs", default=None, type=int,
                    help="denominator of the α ramp α·epoch/E (paper: --epochs; official code: 200, or 300 for RSLAD)"))
    register(Option(flag="--igdm-beta", default=1.0, help="scale of +δ (code: 1)"))
    register(Option(flag="--igdm-gamma", default=1.0, help="scale of −δ (code: 1)"))
    register(Option(flag="--igdm-clip-minus", default=False, help="clip x−δ to [0, 1] (code: not clipped)"))


def default_alpha(base: str, num_classes: int) -> float:
    table = ALPHA_CIFAR100 if num_classes == 100 else ALPHA_CIFAR10
    if base not in table:
        raise RobustDistillError(f"igdm has no default α for base method {base!r}; pass --igdm-alpha")
    return table[base]


def ramp(alpha: float, epoch: int, ramp_epochs: int) -> float:
    """T(α) = α · epoch / E with a 1-based epoch, so the last epoch (epoch = E) weighs exactly α."""
    return alpha * epoch / ramp_epochs


@hookimpl
def resolve_options(config: RunConfig, dataset: DatasetInfo, base_method: str | None) -> dict[str, Any]:
    """α from the base method and the number of classes (App. B.2); the ramp over the run's epochs."""
    values: dict[str, Any] = {"ramp_epochs": config.epochs}
    if base_method in ALPHA_CIFAR10:
        values["alpha"] = default_alpha(base_method, dataset.num_classes)
    return values


@hookimpl
def train_start(run: RunView) -> None:
    if run.base_method is None:
        raise RobustDistillError("igdm needs a base method that runs an attack (at, trades, ard, rslad, adaad) "
                                 "to take δ from; add e.g. --plugin at")
    if run.config.igdm.alpha is None:
        default_alpha(run.base_method, run.arch.num_classes)  # names the fix: pass --igdm-alpha


def shifted_inputs(ctx: StepContext) -> dict[str, Tensor]:
    """``{"adv" or "x+βδ": x + β·δ, "x-δ": x − γ·δ}`` (x−γδ clipped to [0, 1] only with ``--igdm-clip-minus``)."""
    opts = ctx.config.igdm
    x_plus = ctx.x_adv if opts.beta == 1 else ctx.x + opts.beta * ctx.delta
    x_minus = ctx.x - opts.gamma * ctx.delta
    if opts.clip_minus:
        x_minus = x_minus.clamp(0, 1)
    return {"adv" if opts.beta == 1 else "x+βδ": x_plus, "x-δ": x_minus}


@hookimpl
def student_inputs(ctx: StepContext) -> dict[str, Tensor]:
    return shifted_inputs(ctx)


@hookimpl
def loss(ctx: StepContext) -> LossTerm:
    from robustdistill._ops import fd_align  # the fused kernel (or its reference); loaded on first use

    opts = ctx.config.igdm
    plus_key = "adv" if opts.beta == 1 else "x+βδ"
    teacher = ctx.teacher_outs({plus_key: ctx.student_input(plus_key), "x-δ": ctx.student_input("x-δ")})
    value = fd_align(ctx.student_out(plus_key), ctx.student_out("x-δ"),
                     teacher[plus_key].logits, teacher["x-δ"].logits, opts.distance)
    return LossTerm("igdm", value, weight=ramp(opts.alpha, ctx.epoch, opts.ramp_epochs))
