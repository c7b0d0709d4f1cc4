"""AdaIAD — AdaAD's inner maximisation with IAD-I's outer loss (Huang et al., CVPR 2023; boyellow/AdaAD
``main.py --method AdaAD_with_IAD1``; methods-ad2 §3).

Inner attack: AdaAD's (the ``adaad-kl`` attack of the adaad plugin): student **and teacher** in eval mode,
sign ascent on Σ KL(σ(T(x′)) ‖ σ(S(x′))) through both networks, from x + 0.001·N, its first gradient taken at
that **unclipped** start. Outer loss, student in train mode, 0-based epoch ``e``, ``b`` = ``--adaiad-begin``:

    L = α·τ²·bm KL(σ(T(x′)/τ) ‖ σ(S(x′)/τ)) + 1[e ≥ b]·α·bm[(1 − A_i)·KL_i(σ(S(x)) ‖ σ(S(x′)))] + (1 − α)·CE(S(x), y)

with ``A_i = σ(T(x′_i))_{y_i}^β`` a constant (IAD's trust). The differences from IAD-I: the teacher term sees the
teacher at **x′**, and τ applies to it alone (the introspection term has τ = 1 and no τ²; its target σ(S(x)) is
not detached). bm (per-sample sum, batch mean) on every dataset, unlike AdaAD's CIFAR-10 element mean.

τ: the code's ``--temp`` defaults to 30 and the README's AdaIAD command passes none, so the documented run has
τ = 30 and the teacher term weighs α·τ² = 900; whether the paper's tables used 30 is not stated anywhere
readable (``--adaiad-tau``). The introspection term is on from the 61st epoch (``b`` = 60, the code's 0-based
``epoch >= IAD_begin``). The student's train-mode forwards run in the code's order: S(x) (the code's
training accuracy), S(x′), S(x) for the introspection target (from the 61st epoch) and S(x) for the CE (weight
0 at α = 1). The code runs its teacher forwards outside no_grad, so gradients accumulate in the never-stepped
teacher; the student's update is the same as here. Other settings of the code (presets): ε 8/255, step
2/255, 10 steps as the README command (the argparse defaults are 16/4); SGD 0.1, momentum 0.9, wd 5e-4,
batch 128, 200 epochs, lr ÷10 at 100 and 150; the checkpoint of best test PGD-10 is kept (here: the last).

IGDM: App. B.2 gives IGDM_AdaIAD the α of IGDM_AdaAD, and its "+IGDM" rows under AdaIAD are IGDM_AdaAD
(§4.3); ``--plugin adaiad --plugin igdm`` trains IGDM on AdaIAD itself with that α.
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import (INITS, LossTerm, Method, Option, RunView, StepContext, kl_elements,
                               kl_per_sample, model_mode)

from .iad import check_introspection, introspecting, introspection_rows, trust


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name="adaiad", needs_teacher=True, attack="adaad-kl",
                    summary="AdaIAD: AdaAD's attack; α·τ²·KL(T(x′)/τ ‖ S(x′)/τ) + α·(1−A)·KL(S(x) ‖ S(x′)) from "
                            "epoch b+1, A = P_T(y|x′)^β"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--adaiad-tau", default=30.0,
                    help="τ of the teacher term (code: --temp 30, which the README's AdaIAD command keeps)"))
    register(Option(flag="--adaiad-alpha", default=1.0,
                    help="α, weight of the distillation terms; 1 − α weighs CE(S(x), y) (code: 1)"))
    register(Option(flag="--adaiad-beta", default=0.1, help="β of the trust A = P_T(y|x′)^β (code: 0.1)"))
    register(Option(flag="--adaiad-begin", default=60,
                    help="b: introspection from the (b+1)-th epoch, the code's 0-based epoch ≥ b (code: 60)"))
    register(Option(flag="--adaiad-init", default="normal", choices=INITS,
                    help="attack start: x+0.001·N (code) or uniform in the ε-ball"))


@hookimpl
def train_start(run: RunView) -> None:
    check_introspection("adaiad", run.config.adaiad, 30.0)


@hookimpl
def attack(ctx: StepContext) -> Tensor:
    with model_mode(ctx.teacher, train=False):
        return ctx.perturb(ctx.attack_objective(), init=ctx.config.adaiad.init, bn="eval", clip_start=False)


@hookimpl
def student_inputs(ctx: StepContext) -> dict[str, Tensor]:
    """The code's train-mode forwards, in its order (the repeated S(x) move BatchNorm's statistics as the code's)."""
    inputs = {"clean": ctx.x, "adv": ctx.x_adv, "clean#2": ctx.x}
    if introspecting(ctx, ctx.config.adaiad.begin):
        inputs["clean#3"] = ctx.x
    return inputs


@hookimpl
def loss(ctx: StepContext) -> list[LossTerm]:
    opts = ctx.config.adaiad
    adv = ctx.student_out("adv")
    teacher = ctx.teacher_out("adv", ctx.x_adv).logits
    kl = kl_per_sample(kl_elements(adv, teacher, opts.tau), "batchmean")
    terms = [LossTerm("kl", kl.mean(), weight=opts.alpha * opts.tau ** 2, per_sample=kl)]
    if introspecting(ctx, ctx.config.adaiad.begin):
        rows = (1 - trust(teacher, ctx.y, opts.beta)) * introspection_rows(ctx.student_out("clean"), adv)
        terms.append(LossTerm("introspection", rows.mean(), weight=opts.alpha, per_sample=rows))
    if opts.alpha != 1:
        clean = ctx.student_out("clean")
        terms.append(LossTerm("ce", F.cross_entropy(clean, ctx.y), weight=1 - opts.alpha,
                              per_sample=lambda: F.cross_entropy(clean, ctx.y, reduction="none")))
    return [t for t in terms if t.weight != 0]
