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

What IGDM changes in its base (``register_compositions``): the bases the IGDM code trains, on which its α
were tuned — ARD with τ = 1, ``batchmean`` and the attack in eval mode (``ard_IGDM_cifar100.py``); AdaAD
with ``batchmean`` (``adaad_IGDM_cifar100.py``); RSLAD ×10 on 100 classes (``rslad_IGDM_cifar100.py``). The
code has CIFAR-100 scripts only: on 10 classes, RSLAD's ×1 and AdaAD's ``batchmean`` are inferences (the
RSLAD CIFAR-10 script's factor; the reduction the CIFAR-100 script uses).

α (App. B.2) is a default per base and dataset, from the paper's rows (ResNet-18 student and LTD teacher on
CIFAR; the SVHN and Tiny-ImageNet settings):

    base            PGD-AT  TRADES  ARD  IAD  AKD  RSLAD  AdaAD  AdaIAD
    CIFAR-10          60      20     5   50    7    0.9     5      5
    CIFAR-100        100       5    50   20   50    3      15     15
    SVHN              60      30    50   40   10    3       9      9
    Tiny-ImageNet     30      20    10   20   10    1      10     10

Where the paper has no row for the dataset, the run takes the row of the setting with as many classes
(CIFAR-10 for Fashion-MNIST, MNIST and other 10-class data; CIFAR-100 for 100 classes; Tiny-ImageNet for an
image folder of 200 classes) and says so in one line and in ``config.json``; for other class counts, or a
base the paper did not compose, it refuses and asks for ``--igdm-alpha``. The other teachers' and
students' rows (BDM-AT, IKL-AT, MobileNetV2) are in methods-ad §1.5. The IGDM code has no IAD, AKD or AdaIAD
base, so those compose on the base plugins' own defaults (IAD-I's; AKD's later-code form; AdaIAD with the AdaAD
code's τ = 30), with their App. B.2 α (methods-ad2 §8; AdaIAD's is AdaAD's, and the paper's "+IGDM" rows under
AdaIAD are IGDM_AdaAD).
Where the official code differs: the ramp denominator is hard-coded (200 epochs; 300 for RSLAD) —
``--igdm-ramp-epochs``; weight decay 2e-4 (paper 5e-4) — ``--weight-decay``.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import (FD_DISTANCES, Composition, DatasetInfo, Default, LossTerm, Method, Option,
                               RobustDistillError, RunConfig, RunView, StepContext, fd_align, fd_align_per_sample)

ALPHA: dict[str, dict[str, float]] = {
    "cifar10": {"at": 60.0, "trades": 20.0, "ard": 5.0, "iad": 50.0, "akd": 7.0, "rslad": 0.9, "adaad": 5.0,
                "adaiad": 5.0},
    "cifar100": {"at": 100.0, "trades": 5.0, "ard": 50.0, "iad": 20.0, "akd": 50.0, "rslad": 3.0, "adaad": 15.0,
                 "adaiad": 15.0},
    "svhn": {"at": 60.0, "trades": 30.0, "ard": 50.0, "iad": 40.0, "akd": 10.0, "rslad": 3.0, "adaad": 9.0,
             "adaiad": 9.0},
    "tiny-imagenet": {"at": 30.0, "trades": 20.0, "ard": 10.0, "iad": 20.0, "akd": 10.0, "rslad": 1.0,
                      "adaad": 10.0, "adaiad": 10.0},
}
"""IGDM's α per dataset and base method (App. B.2)."""
ROWS = {"cifar10": "CIFAR-10 row (ResNet-18 student, LTD teacher)",
        "cifar100": "CIFAR-100 row (ResNet-18 student, LTD teacher)",
        "svhn": "SVHN row (ResNet-18 student, PGD-AT WRN-34-10 teacher)",
        "tiny-imagenet": "Tiny-ImageNet row (PreAct ResNet-18 student, RiFT WRN-34-10 teacher)"}
BORROWED_BY_CLASSES = {10: "cifar10", 100: "cifar100", 200: "tiny-imagenet"}
"""The row taken for a dataset the paper has none for, by its number of classes."""


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


@hookimpl
def register_compositions(register: Callable) -> None:
    register(Composition(addon="igdm", base="ard", options={"tau": 1.0, "kl_reduction": "batchmean",
                                                            "attack_bn": "eval"},
                         source="the IGDM code's ARD base (ard_IGDM_cifar100.py), on which its α for ARD was tuned"))
    register(Composition(addon="igdm", base="adaad", options={"reduction": "batchmean"},
                         source="the IGDM code's AdaAD base (adaad_IGDM_cifar100.py; on other than 100 classes an "
                                "inference: the code has CIFAR-100 scripts only)"))
    register(Composition(addon="igdm", base="rslad", options={"scale": 10.0}, num_classes=100,
                         source="the IGDM code's RSLAD base (rslad_IGDM_cifar100.py, ×10 as RSLAD's CIFAR-100 script)"))
    register(Composition(addon="igdm", base="rslad", options={"scale": 1.0}, num_classes=10,
                         source="an inference: the IGDM code has CIFAR-100 scripts only; ×1 as RSLAD's CIFAR-10 "
                                "script"))


def default_alpha(base: str, dataset: DatasetInfo) -> Default:
    """α of App. B.2 for ``base`` on ``dataset``: its own row, else the row of the setting with as many classes
    (borrowed: the run says so); raises ``RobustDistillError`` where the paper gives nothing defensible."""
    if base not in ALPHA["cifar10"]:
        raise RobustDistillError(f"igdm has no α for the base method {base!r} (App. B.2 composes IGDM with "
                                 f"{', '.join(ALPHA['cifar10'])}); pass --igdm-alpha")
    row = dataset.name if dataset.name in ALPHA else None
    borrowed = row is None
    if borrowed:
        row = BORROWED_BY_CLASSES.get(dataset.num_classes)
        if row == "tiny-imagenet" and dataset.name != "imagefolder":
            row = None
    if row is None:
        raise RobustDistillError(f"igdm: App. B.2 gives no α for {dataset.name} ({dataset.num_classes} classes) and "
                                 "no setting with as many classes; pass --igdm-alpha")
    source = f"IGDM App. B.2, {ROWS[row]}"
    if borrowed:
        source += f"; the paper has no {dataset.name} setting, this is the one with {dataset.num_classes} classes"
    return Default(value=ALPHA[row][base], source=source, borrowed=borrowed)


def ramp(alpha: float, epoch: int, ramp_epochs: int) -> float:
    """T(α) = α · epoch / E with a 1-based epoch, so the last epoch (epoch = E) weighs exactly α."""
    return alpha * epoch / ramp_epochs


@hookimpl
def resolve_options(config: RunConfig, dataset: DatasetInfo, base_method: str | None) -> dict[str, Any]:
    """α from the base method and the dataset (App. B.2); the ramp over the run's epochs."""
    values: dict[str, Any] = {"ramp_epochs": config.epochs}
    if base_method is not None and config.igdm.alpha is None:
        values["alpha"] = default_alpha(base_method, dataset)
    return values


@hookimpl
def train_start(run: RunView) -> None:
    if run.base_method is None:
        raise RobustDistillError("igdm needs a base method that runs an attack (at, trades, ard, iad, akd, rslad, "
                                 "adaad, adaiad) to take δ from; add e.g. --plugin at")


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
    opts = ctx.config.igdm
    plus_key = "adv" if opts.beta == 1 else "x+βδ"
    teacher = ctx.teacher_outs({plus_key: ctx.student_input(plus_key), "x-δ": ctx.student_input("x-δ")})
    logits = (ctx.student_out(plus_key), ctx.student_out("x-δ"), teacher[plus_key].logits, teacher["x-δ"].logits)
    return LossTerm("igdm", fd_align(*logits, opts.distance), weight=ramp(opts.alpha, ctx.epoch, opts.ramp_epochs),
                    per_sample=lambda: fd_align_per_sample(*logits, opts.distance))
