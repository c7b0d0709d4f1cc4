"""Adversarial logit pairing (Kannan, Kurakin & Goodfellow, 2018) as a robustdistill add-on method.

    L = L_base + λ · (1/B) Σᵢ ‖S(x′ᵢ) − S(xᵢ)‖²₂

It adds one term to any base method's loss and reuses the base's adversarial batch x′; selected alone it
composes on top of PGD-AT (``default_base="at"``). ``--logit-pairing-weight`` is λ (paper: 0.5).
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import LossTerm, Method, Option, RobustDistillError, RunView, StepContext

robustdistill_api = "2.0"


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    register(Method(name="logit-pairing", summary="adversarial logit pairing: + λ·‖S(x′) − S(x)‖² on the base's x′",
                    default_base="at"))


@hookimpl
def register_options(register: Callable[[Option], None]) -> None:
    register(Option(flag="--logit-pairing-weight", default=0.5, help="λ, the weight of the pairing term (paper: 0.5)"))


@hookimpl
def train_start(run: RunView) -> None:
    if run.config.logit_pairing.weight < 0:
        raise RobustDistillError(f"--logit-pairing-weight {run.config.logit_pairing.weight} must be at least 0")


@hookimpl
def student_inputs(ctx: StepContext) -> dict[str, Tensor]:
    return {"clean": ctx.x, "adv": ctx.x_adv}


def pairing_per_sample(adv_logits: Tensor, clean_logits: Tensor) -> Tensor:
    """‖aᵢ − cᵢ‖²₂ for each sample ``[B]``."""
    return (adv_logits.float() - clean_logits.float()).pow(2).sum(dim=1)


def pairing(adv_logits: Tensor, clean_logits: Tensor) -> Tensor:
    """(1/B) Σᵢ ‖aᵢ − cᵢ‖²₂."""
    return pairing_per_sample(adv_logits, clean_logits).mean()


@hookimpl
def loss(ctx: StepContext) -> LossTerm | None:
    weight = ctx.config.logit_pairing.weight
    if weight == 0:
        return None  # a zero-weight part of the loss is not a term
    per_sample = pairing_per_sample(ctx.student_out("adv"), ctx.student_out("clean"))
    return LossTerm("logit_pairing", per_sample.mean(), weight=weight, per_sample=per_sample)
