"""Fair-ARD — class re-weighted adversarial distillation for robust fairness (Yue, Mou, Wang, Zhao; NeurIPS 2023;
methods-ad2 §6).

The loss of any base method, each of its per-sample terms multiplied by the weight of the sample's class before
the batch reduction:

    L = Σ_terms weight · mean_i( w_{y_i} · term_i )

The class weights come from how hard each class is under the base's **own** training attack (GAIRAT's geometry
value, as the official code ``NISP-official/Fair-ARD`` measures it):

    κ_i  = Σ_{k=0}^{K−1} 1[argmax S(x′_{k,i}) = y_i]       (the start x′_0 counts, the final x′_K does not)
    κ̄_c  = Σ_{i: y_i = c} κ_i / (N / C)                    (over one epoch; N training images, balanced classes)
    w̃_c  = (κ̄_c + 10⁻⁵)^−β
    w_c  = clip(C · w̃_c / Σ_c′ w̃_c′, 5/6, 5/2)             (not renormalised after the clip)

The prediction at each iterate is the one of the attack's own forward (``run.observe_attack``), so its BatchNorm
mode is the base's: train mode for ARD (and IAD), eval mode for RSLAD (and MTARD). The weights are computed at
the end of each epoch and used during the whole next one; the first epoch has w ≡ 1. The counts and the
weights are checkpointed, so a resumed run — at an epoch end or in the middle of one — goes on with the same
weights and the same partial counts.

Every term of the step is re-weighted (every built-in base gives ``per_sample``); with ``--plugin ard`` that is
Fair-ARD, ``--plugin rslad`` Fair-RSLAD, and the same for any base whose terms carry per-sample values. Selected
alone, ``fairard`` trains on ARD (the paper's Fair-ARD). ARD's and RSLAD's defaults are already those of the
Fair-ARD code's bases (ARD: τ = 30, α = 1, element-wise ``mean`` KL, PGD-CE from a uniform start with train-mode
BatchNorm; RSLAD: its attack in eval mode from x + 0.001·N and its ``mean`` KLs), so nothing is composed into them.

Defaults are the official code's: β = 2 (``--beta``), the clip bounds 5/6 and 5/2 (hard-coded), the offset
10⁻⁵ (Fair-ARD.py, Fair-IAD.py, Fair-MTARD.py). Where the official code differs from its bases or between
its scripts:

* Fair-RSLAD.py adds no offset, so it divides by zero when a class never survives an iterate: on RSLAD
  ``--fairard-offset`` defaults to 0 as that script, and such an epoch stops the run with an error naming the
  classes (``--fairard-offset 1e-5`` trains as the other scripts; where every class survives, the offset changes
  the weights by a relative 2·10⁻⁵/κ̄_c at most).
* Fair-RSLAD.py hard-codes a weight vector of 10 classes; here it has the dataset's C.
* Every script trains with Nesterov SGD (``--nesterov``; the presets set it) and ARD/IAD's learning rate decays
  once, 0.1 → 0.01 at epoch 100 (the presets' milestone 100).
* κ̄ divides by N/C, which assumes classes of equal size, as the code.
* Fair-IAD.py (``--plugin iad --plugin fairard``) puts IAD-I's CE on S(x′) and only from epoch b; at IAD's
  default α = 1 that CE weighs 0, so IAD's defaults train the same.
* Fair-MTARD.py (``--plugin mtard --plugin fairard``) takes the clean term's target from the robust teacher at
  x′ instead of the clean teacher at x, a bug not reproduced here; MTARD's balance weights follow its terms
  before the class weights (the mtard plugin computes them in its ``loss``).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import (AttackIterate, Default, LossTerm, Method, Option, RobustDistillError, RunView,
                               StepContext)

NAME = "fairard"
OFFSET = 1e-5
"""The code's 10⁻⁵ in (κ̄_c + 10⁻⁵)^−β (Fair-ARD.py, Fair-IAD.py, Fair-MTARD.py)."""
BASES_WITHOUT_OFFSET = {"rslad": "Fair-RSLAD.py (no offset)"}


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name=NAME, default_base="ard",
                    summary="Fair-ARD: the base's per-sample terms × w_y, class weights from the attack's iterates "
                            "(κ), updated each epoch"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--fairard-beta", default=2.0,
                    help="β: w̃_c = (κ̄_c + offset)^−β, larger for classes that survive fewer iterates (code: 2)"))
    register(Option(flag="--fairard-min-weight", default=5 / 6,
                    help="lower clip bound of the class weights C·w̃_c/Σw̃ (hard-coded in the code: 5/6)"))
    register(Option(flag="--fairard-max-weight", default=5 / 2,
                    help="upper clip bound of the class weights (hard-coded in the code: 5/2)"))
    register(Option(flag="--fairard-offset", default=None, type=float,
                    help="offset added to κ̄_c before the power (default: 1e-5 as Fair-ARD.py, Fair-IAD.py and "
                         "Fair-MTARD.py; 0 on rslad as Fair-RSLAD.py)"))


@hookimpl
def resolve_options(base_method: str | None) -> dict[str, Any]:
    if base_method in BASES_WITHOUT_OFFSET:
        return {"offset": Default(value=0.0, source=BASES_WITHOUT_OFFSET[base_method])}
    return {"offset": Default(value=OFFSET, source="the Fair-ARD code (Fair-ARD.py, Fair-IAD.py, Fair-MTARD.py)")}


def class_difficulty(survived: Tensor, train_images: int) -> Tensor:
    """κ̄_c: each class's surviving iterates summed over the epoch, divided by N/C (float64)."""
    return survived.double() / (train_images / survived.numel())


def class_weights(kappa: Tensor, beta: float, offset: float, low: float, high: float) -> Tensor:
    """w_c = clip(C·w̃_c / Σ w̃, low, high) with w̃_c = (κ̄_c + offset)^−β; not renormalised after the clip."""
    raw = (kappa.double() + offset) ** -beta
    return (len(raw) * raw / raw.sum()).clamp(low, high)


def _check(run: RunView) -> None:
    opts = run.config.fairard
    for flag, value in (("--fairard-beta", opts.beta), ("--fairard-min-weight", opts.min_weight),
                        ("--fairard-max-weight", opts.max_weight), ("--fairard-offset", opts.offset)):
        if value < 0:
            raise RobustDistillError(f"{flag} {value:g} must be 0 or more")
    if opts.min_weight > opts.max_weight:
        raise RobustDistillError(f"--fairard-min-weight {opts.min_weight:g} is above --fairard-max-weight "
                                 f"{opts.max_weight:g}; give bounds low ≤ high (code: 5/6 and 5/2)")
    if len(run.data.train_y) == 0:
        raise RobustDistillError("fairard needs training images to measure its classes' difficulty")


@hookimpl
def train_start(run: RunView) -> None:
    _check(run)
    classes = run.dataset.num_classes
    run.checkpointed.setdefault(NAME, {"survived": torch.zeros(classes, dtype=torch.long, device=run.device),
                                       "weights": torch.ones(classes, device=run.device)})
    run.observe_attack(count_survivors)


def count_survivors(ctx: StepContext, iterate: AttackIterate) -> None:
    """κ_i += 1 where the attacked student still predicts y_i at this iterate (``ctx.state['fairard']``, [B])."""
    logits = iterate.logits
    if logits is None or logits.shape[0] != ctx.y.shape[0]:
        raise RobustDistillError(f"fairard counts the attacked student's predictions at each iterate, but the "
                                 f"objective of the training attack {ctx.run.attack.name if ctx.run.attack else ''!r} "
                                 "does not call ctx.attack_student on the batch; use a base whose attack does "
                                 "(ard, rslad, ...)")
    kappa = ctx.state.setdefault(NAME, torch.zeros_like(ctx.y))
    kappa += logits.argmax(dim=1) == ctx.y


@hookimpl
def sample_weights(ctx: StepContext, terms: list[LossTerm]) -> dict[str, Tensor]:
    weights = ctx.run.checkpointed[NAME]["weights"][ctx.y]
    return {term.name: weights for term in terms}


@hookimpl
def step_end(run: RunView, ctx: StepContext) -> None:
    kappa = ctx.state.get(NAME)
    if kappa is None:
        raise RobustDistillError(f"fairard measures class difficulty from the training attack's iterates, but the "
                                 f"attack of {run.base_method!r} was not observed (it does not run through "
                                 "ctx.perturb); use a base whose attack does (ard, rslad, ...)")
    state = run.checkpointed[NAME]
    counts = torch.zeros_like(state["survived"]).index_add_(0, ctx.y, kappa)
    state["survived"] += run.reduce_sum(counts)  # every process's counts: the same state everywhere


@hookimpl
def epoch_end(run: RunView, metrics: dict[str, Any]) -> None:
    opts = run.config.fairard
    state = run.checkpointed[NAME]
    kappa = class_difficulty(state["survived"], len(run.data.train_y))
    if opts.offset == 0 and bool((kappa == 0).any()):
        never = [int(c) for c in torch.nonzero(kappa == 0).flatten()]
        raise RobustDistillError(f"class(es) {never} survived no attack iterate this epoch, so (κ̄ + 0)^−β is "
                                 "infinite (Fair-RSLAD.py divides by zero here); train again with --fairard-offset "
                                 "1e-5 (as the other Fair-ARD scripts)")
    weights = class_weights(kappa, opts.beta, opts.offset, opts.min_weight, opts.max_weight)
    state["weights"] = weights.to(state["weights"].dtype)
    state["survived"] = torch.zeros_like(state["survived"])
    metrics["fairard_kappa"] = [float(k) for k in kappa]
    metrics["fairard_weights"] = [float(w) for w in state["weights"]]
