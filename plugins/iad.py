"""IAD — Introspective Adversarial Distillation (Zhu et al., "Reliable Adversarial Distillation with Unreliable
Teachers", ICLR 2022, arXiv 2106.04928; methods-ad2 §2).

The student trusts the teacher only partially: each sample's trust is the teacher's true-class probability at
the adversarial point, ``A_i = σ(T(x′_i))_{y_i}^β`` (a constant: the code converts it to a Python number), and
the rest, ``1 − A_i``, goes to *introspection*, the student's own clean prediction as the target of its
adversarial one. The paper's body was not available; the losses are the official code's (ZFancy/IAD), the two
methods of its README:

``iad`` — IAD-I (``IAD-I.py``, "based on ARD"), with a 0-based epoch ``e`` and ``b`` = ``--iad-begin``:

    L = α·τ²·bm KL(σ(T(x)/τ) ‖ σ(S(x′)/τ)) + 1[e ≥ b]·α·bm[(1 − A_i)·KL_i(σ(S(x)) ‖ σ(S(x′)))] + (1 − α)·CE(S(x), y)

The teacher term sees the teacher at **clean** x and is not weighted by A; the introspection term has no τ and
its target σ(S(x)) is **not detached** (the gradient flows through S(x) and S(x′)); bm is the per-sample sum
averaged over the batch. ``b`` = 60 is the code's 0-based test ``epoch >= begin``: the term is on from the 61st
epoch (1-based ``ctx.epoch > b``). The student's train-mode forwards run in the code's order: the attack's ten,
S(x′) for the loss, one more S(x′) whose output the code discards (it moves BatchNorm's running statistics),
then S(x) for the introspection target (from the 61st epoch) and S(x) for the CE (whose weight is 0 at α = 1).

``iad2`` — IAD-II (``IAD-II.py``, "based on AKD2"), with an adversarially trained teacher T (``--teacher
robust=SPEC``, also the default teacher an add-on such as IGDM reads) and a naturally trained one T_ST
(``--teacher clean=SPEC``), both at x′:

    L = (1 − α₁ − α₂)·CE(S(x′), y) + α₁·τ²·[bm(A_i·KL_i(σ(T(x′)/τ) ‖ σ(S(x′)/τ)))
          + 1[e ≥ b]·bm((1 − A_i)·KL_i(σ(S(x)) ‖ σ(S(x′))))] + α₂·τ²·bm KL(σ(T_ST(x′)/τ) ‖ σ(S(x′)/τ))

with A ≡ 1 before epoch b (then it is Chen et al.'s AKD2); the teacher term *is* weighted by A here, and the
introspection term sits inside the α₁·τ² bracket. Forwards: the attack's, S(x′), then S(x) from epoch b.

Both attack as ARD's code does: PGD-10 on the student's CE (summed) with the student in **train** mode, from
x + U(−ε, ε), the first gradient taken at that **unclipped** start. Defaults are the code's: τ = 1, β = 0.1;
IAD-I α = 1, b = 60; IAD-II α₁ = 0.5, α₂ = 0.25, b = 40 (its ``--alpha`` 0.5 is unused). Protocol (presets):
ResNet-18, SGD 0.1, momentum 0.9, wd 2e-4, batch 128, 200 epochs; the code's learning-rate schedule, inherited
from ARD, decays only once (0.1 → 0.01 from the 101st epoch: ``--milestones 100``, as the presets give it); the
code keeps the checkpoint of best test PGD-10 (here: the last epoch).

IGDM (``--plugin iad --plugin igdm``) is IGDM_IAD: L_IAD + α·e/E·L_IGDM on IAD's δ = x′ − x, α from App. B.2
(IAD column). There is no IGDM code for IAD; IGDM very likely ran IAD-I, on the plugin's defaults here. The
IGDM first author's later re-implementation differs in two places, both options: the attack in eval mode
(``--iad-attack-bn eval``) and a 1-based ``epoch ≥ 60`` gate, one epoch earlier (``--iad-begin 59``).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import (BN_MODES, INITS, Default, LossTerm, Method, Option, RobustDistillError,
                               RunConfig, RunView, StepContext, kl_elements, kl_per_sample)

IAD_I, IAD_II = "iad", "iad2"
ROBUST, CLEAN = "robust", "clean"
"""IAD-II's teachers by role: the adversarially trained one and the naturally (standard-) trained one."""
CODE_DEFAULTS = {IAD_I: {"alpha": 1.0, "begin": 60}, IAD_II: {"alpha": 0.5, "begin": 40, "alpha2": 0.25}}
SOURCES = {IAD_I: "the IAD code (IAD-I.py)", IAD_II: "the IAD code (IAD-II.py)"}


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name=IAD_I, needs_teacher=True, attack="ce",
                    summary="IAD-I: α·τ²·KL(T(x)/τ ‖ S(x′)/τ) + α·(1−A)·KL(S(x) ‖ S(x′)) from epoch b+1, "
                            "A = P_T(y|x′)^β; PGD-CE attack"))
    register(Method(name=IAD_II, needs_teacher=True, teachers=(ROBUST, CLEAN), attack="ce",
                    summary="IAD-II: AKD2 (CE, A-weighted AT teacher, natural teacher, all at x′) + α₁·(1−A)·"
                            "KL(S(x) ‖ S(x′)) from epoch b+1; --teacher robust=AT --teacher clean=ST"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--iad-tau", default=1.0, help="τ of the teacher terms (code: 1)"))
    register(Option(flag="--iad-alpha", default=None, type=float,
                    help="iad: α, weight of the distillation terms, 1 − α weighs CE(S(x), y) (code: 1); iad2: α₁, "
                         "weight of the AT teacher and introspection terms (code: 0.5)"))
    register(Option(flag="--iad-alpha2", default=None, type=float,
                    help="iad2 only: α₂, weight of the natural teacher's term; CE(S(x′), y) gets 1 − α₁ − α₂ "
                         "(code: 0.25)"))
    register(Option(flag="--iad-beta", default=0.1, help="β of the trust A = P_T(y|x′)^β (code: 0.1)"))
    register(Option(flag="--iad-begin", default=None, type=int,
                    help="b: introspection from the (b+1)-th epoch, the code's 0-based epoch ≥ b (code: 60 for iad, "
                         "40 for iad2; the IGDM author's later 1-based epoch ≥ 60 is 59)"))
    register(Option(flag="--iad-attack-bn", default="train", choices=BN_MODES,
                    help="BatchNorm mode of the student while attacking: train (the IAD code) or eval (the IGDM "
                         "author's later re-implementation)"))
    register(Option(flag="--iad-init", default="uniform", choices=INITS,
                    help="PGD start: uniform in the ε-ball (code) or x+0.001·N"))


@hookimpl
def resolve_options(config: RunConfig, base_method: str | None) -> dict[str, Any]:
    """The code's defaults of the selected variant; ``--iad-alpha2`` belongs to IAD-II alone."""
    method = IAD_II if base_method == IAD_II else IAD_I
    if method == IAD_I and config.iad.alpha2 is not None:
        raise RobustDistillError("--iad-alpha2 is the natural teacher's weight of IAD-II: use it with --plugin iad2, "
                                 "or drop it for --plugin iad")
    return {key: Default(value=value, source=SOURCES[method]) for key, value in CODE_DEFAULTS[method].items()}


def check_introspection(prefix: str, opts: Any, code_tau: float) -> None:
    """One-line errors for the τ, β and b options of ``--PREFIX-…`` (IAD's, and AdaIAD's that reuse them)."""
    if opts.tau <= 0:
        raise RobustDistillError(f"--{prefix}-tau must be positive (got {opts.tau:g}); the code uses {code_tau:g}")
    if opts.beta < 0:
        raise RobustDistillError(f"--{prefix}-beta must be ≥ 0 (got {opts.beta:g}); the code uses 0.1")
    if opts.begin < 0:
        raise RobustDistillError(f"--{prefix}-begin must be ≥ 0 (got {opts.begin}); 0 introspects from the first "
                                 "epoch")


@hookimpl
def train_start(run: RunView) -> None:
    check_introspection("iad", run.config.iad, 1.0)


def introspecting(ctx: StepContext, begin: int | None = None) -> bool:
    """Whether the introspection term is on: the code's 0-based ``epoch >= begin``, i.e. 1-based ``ctx.epoch > b``
    (``begin``: IAD's ``--iad-begin`` unless given)."""
    return ctx.epoch > (ctx.config.iad.begin if begin is None else begin)


def trust(teacher_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """``A_i = σ(T(x′_i))_{y_i}^β`` ``[B]``, a constant (the code takes it as a Python number)."""
    return F.softmax(teacher_adv.detach().float(), dim=1).gather(1, y[:, None]).squeeze(1).pow(beta)


def introspection_rows(student_clean: Tensor, student_adv: Tensor) -> Tensor:
    """``KL_i(σ(S(x)) ‖ σ(S(x′)))`` ``[B]`` with the gradient through **both** sides (the target is not detached)."""
    log_p = F.log_softmax(student_clean.float(), dim=1)
    return (log_p.exp() * (log_p - F.log_softmax(student_adv.float(), dim=1))).sum(dim=1)


@hookimpl
def attack(ctx: StepContext) -> Tensor:
    opts = ctx.config.iad
    return ctx.perturb(ctx.attack_objective(), init=opts.init, bn=opts.attack_bn, clip_start=False)


@hookimpl
def student_inputs(ctx: StepContext) -> dict[str, Tensor]:
    """The code's train-mode forwards after the attack, in its order (identical forwards give identical outputs;
    the repeats move BatchNorm's running statistics as the code's do)."""
    if ctx.run.base_method == IAD_II:
        return {"adv": ctx.x_adv, **({"clean": ctx.x} if introspecting(ctx) else {})}
    inputs = {"adv": ctx.x_adv, "adv#2": ctx.x_adv, "clean": ctx.x}
    if introspecting(ctx):
        inputs["clean#2"] = ctx.x
    return inputs


def weighted_kl(name: str, student: Tensor, teacher: Tensor, tau: float, weight: float,
                per_sample_weight: Tensor | None = None) -> LossTerm:
    """``bm[w_i·KL_i(σ(T/τ) ‖ σ(S/τ))]`` as a term of ``weight``."""
    rows = kl_per_sample(kl_elements(student, teacher, tau), "batchmean")
    if per_sample_weight is not None:
        rows = per_sample_weight * rows
    return LossTerm(name, rows.mean(), weight=weight, per_sample=rows)


def introspection_term(ctx: StepContext, a: Tensor, weight: float) -> LossTerm:
    rows = (1 - a) * introspection_rows(ctx.student_out("clean"), ctx.student_out("adv"))
    return LossTerm("introspection", rows.mean(), weight=weight, per_sample=rows)


@hookimpl
def loss(ctx: StepContext) -> list[LossTerm]:
    terms = iad2_terms(ctx) if ctx.run.base_method == IAD_II else iad1_terms(ctx)
    return [t for t in terms if t.weight != 0]


def iad1_terms(ctx: StepContext) -> list[LossTerm]:
    opts = ctx.config.iad
    adv = ctx.student_out("adv")
    terms = [weighted_kl("kl", adv, ctx.teacher_out("clean", ctx.x).logits, opts.tau, opts.alpha * opts.tau ** 2)]
    if introspecting(ctx):
        a = trust(ctx.teacher_out("adv", ctx.x_adv).logits, ctx.y, opts.beta)
        terms.append(introspection_term(ctx, a, opts.alpha))
    if opts.alpha != 1:
        clean = ctx.student_out("clean")
        terms.append(LossTerm("ce", F.cross_entropy(clean, ctx.y), weight=1 - opts.alpha,
                              per_sample=lambda: F.cross_entropy(clean, ctx.y, reduction="none")))
    return terms


def iad2_terms(ctx: StepContext) -> list[LossTerm]:
    opts = ctx.config.iad
    adv = ctx.student_out("adv")
    teacher = ctx.teacher_out("adv", ctx.x_adv, teacher=ROBUST).logits
    on = introspecting(ctx)
    a = trust(teacher, ctx.y, opts.beta) if on else torch.ones_like(ctx.y, dtype=torch.float32)
    scale = opts.tau ** 2
    terms = [LossTerm("ce", F.cross_entropy(adv, ctx.y), weight=1 - opts.alpha - opts.alpha2,
                      per_sample=lambda: F.cross_entropy(adv, ctx.y, reduction="none")),
             weighted_kl("kl", adv, teacher, opts.tau, opts.alpha * scale, a)]
    if on:
        terms.append(introspection_term(ctx, a, opts.alpha * scale))
    terms.append(weighted_kl("kl_natural", adv, ctx.teacher_out("adv", ctx.x_adv, teacher=CLEAN).logits, opts.tau,
                             opts.alpha2 * scale))
    return terms
