"""Attacks for training and evaluation: FGSM, PGD (L∞/L2) on CE, KL-to-target and CW-margin
objectives, random initialisation, restarts. Every attack restores the models' modes.

An :class:`AttackSpec` describes one attack — radius, step, steps, norm, start, restarts and loss — for the
training attack of a run, the per-epoch validation and ``eval``'s ``fgsm``, ``pgd20`` and ``cw`` alike.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._threats import threat_model


Objective = Callable[[Tensor], Tensor]
"""Maps an adversarial batch to per-sample losses ``[B]`` that the attack maximises."""

BN_MODES = ("eval", "train")
LABEL_LOSSES = ("ce", "cw")


@dataclass(frozen=True)
class AttackSpec:
    """One PGD-style attack: ε-ball of ``norm``, ``steps`` of ``step_size`` from ``init``, ``restarts`` (keeping
    each sample's worst case) and, for attacks on the labels (:func:`pgd`), the ``loss``: ``ce`` or ``cw``
    (the C&W margin, capped at ``kappa``); ``clip_start`` false takes the first gradient at the unclipped start."""

    eps: float
    step_size: float
    steps: int
    norm: str = "linf"
    init: str = "uniform"
    restarts: int = 1
    loss: str = "ce"
    kappa: float = 50.0
    clip_start: bool = True

    def perturb(self, objective: "Objective", x: Tensor) -> Tensor:
        """One run of the attack on ``objective`` from ``x`` (no restarts: the objective is not per label)."""
        return perturb(objective, x, eps=self.eps, step_size=self.step_size, steps=self.steps, norm=self.norm,
                       init=self.init, clip_start=self.clip_start)


@contextmanager
def model_mode(*models: nn.Module | None, train: bool) -> Iterator[None]:
    """Put models in train or eval mode and restore every submodule's own mode afterwards."""
    saved = [[(m, m.training) for m in model.modules()] for model in models if model is not None]
    for model in models:
        if model is not None:
            model.train(train)
    try:
        yield
    finally:
        for modes in saved:
            for module, training in modes:
                module.training = training


def ce_objective(model: nn.Module, y: Tensor) -> Objective:
    """Cross-entropy of the true labels."""
    return lambda x_adv: F.cross_entropy(model(x_adv), y, reduction="none")


def kl_objective(model: nn.Module, target_probs: Tensor) -> Objective:
    """KL(target ‖ softmax(model(x'))) per sample: TRADES' and RSLAD's inner objective."""
    def objective(x_adv: Tensor) -> Tensor:
        log_p = F.log_softmax(model(x_adv), dim=1)
        return F.kl_div(log_p, target_probs, reduction="none").sum(dim=1)
    return objective


def cw_margin(logits: Tensor, y: Tensor, kappa: float) -> Tensor:
    """C&W margin ``min(max_{j≠y} z_j − z_y, κ)`` per sample (maximised by the attack)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return torch.clamp(other - true, max=kappa)


def cw_objective(model: nn.Module, y: Tensor, kappa: float = 50.0) -> Objective:
    """The C&W margin objective: PGD on it is the CW∞ attack."""
    return lambda x_adv: cw_margin(model(x_adv), y, kappa)


def perturb(
    objective: Objective,
    x: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    init: str = "uniform",
    clip_start: bool = True,
    lo: float = 0.0,
    hi: float = 1.0,
) -> Tensor:
    """Projected gradient ascent on ``objective`` inside the ε-ball around ``x`` and ``[lo, hi]``.

    The first gradient is taken at the start (clipped to ``[lo, hi]`` unless ``clip_start`` is false); every
    step is projected onto the ball and the range. The caller chooses the models' modes (see
    :func:`model_mode`); parameters receive no gradient. Returns a detached adversarial batch.
    """
    from ._ops import pgd_step  # loaded on first use: listing plugins need not load torch.compile's machinery

    threat = threat_model(norm)
    x = x.detach()
    x_adv = threat.start(x, eps, init, clip=clip_start, lo=lo, hi=hi)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = objective(x_adv).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = pgd_step(x_adv.detach(), grad, x, eps, step_size, threat.name, lo, hi)
    return x_adv.detach()


def label_objective(model: nn.Module, y: Tensor, spec: AttackSpec) -> Objective:
    """The objective of ``spec.loss`` on the true labels: CE, or the C&W margin (capped at ``spec.kappa``)."""
    if spec.loss == "ce":
        return ce_objective(model, y)
    if spec.loss == "cw":
        return cw_objective(model, y, spec.kappa)
    raise ValueError(f"unknown attack loss {spec.loss!r}; use one of {LABEL_LOSSES}")


def _label_loss(logits: Tensor, y: Tensor, spec: AttackSpec) -> Tensor:
    """Per-sample loss of ``spec.loss`` on the true labels, from the logits."""
    if spec.loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if spec.loss == "cw":
        return cw_margin(logits, y, spec.kappa)
    raise ValueError(f"unknown attack loss {spec.loss!r}; use one of {LABEL_LOSSES}")


def best_iterate(model: nn.Module, x: Tensor, y: Tensor, spec: AttackSpec,
                 losses: list[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One run of ``spec`` on the true labels that returns, per sample, its best iterate: the first that fools the
    model, else the one of highest loss (the start counts when it is clipped to the image range). Each iterate is
    judged from the forward pass its gradient needs, so this costs one forward more than the ascent alone.
    Returns the iterates, their losses and whether they fool the model; ``losses``, when given, receives each
    iterate's per-sample loss (the start's first)."""
    from ._ops import pgd_step

    threat = threat_model(spec.norm)
    x = x.detach()
    x_adv = threat.start(x, spec.eps, spec.init, clip=spec.clip_start)
    best = x_adv.clone() if spec.clip_start else x.clone()
    best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for step in range(spec.steps + 1):
        ascend = step < spec.steps
        with torch.enable_grad() if ascend else torch.no_grad():
            x_adv.requires_grad_(ascend)
            logits = model(x_adv)
            loss = _label_loss(logits, y, spec)
            grad = torch.autograd.grad(loss.sum(), x_adv)[0] if ascend else None
        x_adv = x_adv.detach()
        if losses is not None:
            losses.append(loss.detach().float())
        if step > 0 or spec.clip_start:
            with torch.no_grad():
                now_fooled = logits.argmax(dim=1) != y
                take = (~fooled) & (now_fooled | (loss.float() > best_loss))
                best[take] = x_adv[take]
                best_loss = torch.where(take, loss.float().detach(), best_loss)
                fooled |= now_fooled
        if grad is not None:
            x_adv = pgd_step(x_adv, grad, x, spec.eps, spec.step_size, threat.name, 0.0, 1.0)
    return best, best_loss, fooled


def pgd(model: nn.Module, x: Tensor, y: Tensor, spec: AttackSpec, bn_mode: str = "eval") -> Tensor:
    """PGD on the true labels as ``spec`` says (CE or C&W margin), keeping each sample's worst case.

    Within a run a sample keeps its best iterate (:func:`best_iterate`: an iterate that fooled the model is
    returned even if later ones do not); over restarts it keeps the first adversarial example that fools the
    model, else the one with the highest loss.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"unknown bn_mode {bn_mode!r}; choose one of {BN_MODES}")
    if spec.loss not in LABEL_LOSSES:
        raise ValueError(f"unknown attack loss {spec.loss!r}; use one of {LABEL_LOSSES}")
    with model_mode(model, train=bn_mode == "train"):
        best = x.detach().clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(max(1, spec.restarts)):
            x_adv, sample_loss, now_fooled = best_iterate(model, x, y, spec)
            take = (~fooled) & (now_fooled | (sample_loss > best_loss))
            best[take] = x_adv[take]
            best_loss = torch.where(take, sample_loss, best_loss)
            fooled |= now_fooled
            if spec.restarts > 1 and bool(fooled.all()):
                break
    return best


def fgsm_spec(eps: float, norm: str = "linf") -> AttackSpec:
    """FGSM as an attack: one step of size ε from the clean input."""
    return AttackSpec(eps=eps, step_size=eps, steps=1, norm=norm, init="none")


def fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, bn_mode: str = "eval") -> Tensor:
    """Fast Gradient Sign Method: one step of size ε from the clean input."""
    with model_mode(model, train=bn_mode == "train"):
        return fgsm_spec(eps).perturb(ce_objective(model, y), x)
