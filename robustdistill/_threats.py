"""Threat models: the ε-balls attacks move in, one class per norm.

A threat model says three things — how an ascent step moves along a gradient (:meth:`ThreatModel.direction`),
how a perturbation is projected back onto the ball (:meth:`ThreatModel.project`), and where a random start
lies (:meth:`ThreatModel.random_delta`) — and from them one projected step (:meth:`ThreatModel.step`) and a
start (:meth:`ThreatModel.start`). The attacks (:mod:`._attacks`), the reference ops (:func:`._ops.pgd_step_ref`)
and the dispatch to the fused kernels (which take the threat model's ``name``) all go through
:func:`threat_model`.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._config import NORMS

INITS = ("uniform", "normal", "none")


def per_sample(value: float | Tensor, x: Tensor) -> float | Tensor:
    """Broadcast a scalar or per-sample ``[B]`` tensor against a batch ``[B, ...]``."""
    if isinstance(value, Tensor) and value.dim() > 0:
        return value.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return value


def _sample_norms(t: Tensor) -> Tensor:
    """Each sample's L2 norm, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).reshape(-1, *([1] * (t.dim() - 1)))


class ThreatModel:
    """An ε-ball around the clean input; subclasses define one norm."""

    name: ClassVar[str]
    """The norm's name on the command line, in results and for the kernels (``linf``, ``l2``)."""
    robustbench: ClassVar[str]
    """RobustBench's and AutoAttack's name of the threat model (``Linf``, ``L2``)."""

    def direction(self, grad: Tensor) -> Tensor:
        """The ascent direction ``d(g)`` of a step along ``grad``."""
        raise NotImplementedError

    def project(self, delta: Tensor, eps: float | Tensor) -> Tensor:
        """``delta`` projected onto the ε-ball (``eps`` a number or per-sample ``[B]``, broadcast)."""
        raise NotImplementedError

    def random_delta(self, x: Tensor, eps: float) -> Tensor:
        """A perturbation drawn uniformly from the ball's radius (the ``uniform`` start)."""
        raise NotImplementedError

    def size(self, delta: Tensor) -> Tensor:
        """Each sample's perturbation size in this norm ``[B]``."""
        raise NotImplementedError

    def step(self, x_adv: Tensor, grad: Tensor, x: Tensor, eps: float | Tensor, step_size: float | Tensor,
             lo: float = 0.0, hi: float = 1.0) -> Tensor:
        """One projected ascent step: ``clamp(x + Π_ε(x_adv + α·d(g) − x), lo, hi)`` (per-sample ε, α allowed)."""
        delta = x_adv + per_sample(step_size, x) * self.direction(grad) - x
        return (x + self.project(delta, per_sample(eps, x))).clamp(lo, hi)

    def start(self, x: Tensor, eps: float, init: str, *, clip: bool = True, lo: float = 0.0,
              hi: float = 1.0) -> Tensor:
        """The attack's starting point: ``x + U(ball)`` (``uniform``), ``x + 0.001·N(0, I)`` (``normal``, TRADES')
        or ``x`` itself (``none``); clipped to ``[lo, hi]`` unless ``clip`` is false (the first gradient is then
        taken at the unclipped point, as the TRADES, ARD, RSLAD and AdaAD codes take it)."""
        if init == "none":
            return x.clone()
        if init == "normal":
            start = x + 0.001 * torch.randn_like(x)
        elif init == "uniform":
            start = x + self.random_delta(x, eps)
        else:
            raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
        return start.clamp(lo, hi) if clip else start


class Linf(ThreatModel):
    """The L∞ ball: sign steps, element-wise clipping of ``x_adv − x`` to ``[−ε, ε]``."""

    name = "linf"
    robustbench = "Linf"

    def direction(self, grad: Tensor) -> Tensor:
        return grad.sign()

    def project(self, delta: Tensor, eps: float | Tensor) -> Tensor:
        return delta.clamp(-eps, eps)

    def random_delta(self, x: Tensor, eps: float) -> Tensor:
        return torch.empty_like(x).uniform_(-eps, eps)

    def size(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).abs().amax(dim=1)


class L2(ThreatModel):
    """The L2 ball: steps along ``g / ‖g‖₂`` per sample (no step for a zero gradient), rescaling onto the ball."""

    name = "l2"
    robustbench = "L2"

    def direction(self, grad: Tensor) -> Tensor:
        g_norm = _sample_norms(grad)
        return torch.where(g_norm > 0, grad / g_norm.clamp_min(1e-12), torch.zeros_like(grad))

    def project(self, delta: Tensor, eps: float | Tensor) -> Tensor:
        return delta * torch.clamp(eps / _sample_norms(delta).clamp_min(1e-12), max=1.0)

    def random_delta(self, x: Tensor, eps: float) -> Tensor:
        direction = torch.randn_like(x)
        direction = direction / _sample_norms(direction).clamp_min(1e-12)
        radius = eps * torch.rand(x.shape[0], *[1] * (x.dim() - 1), device=x.device, dtype=x.dtype)
        return radius * direction

    def size(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).norm(dim=1)


THREAT_MODELS: dict[str, ThreatModel] = {model.name: model for model in (Linf(), L2())}
"""One per name in ``NORMS`` (the command line's choices)."""


def threat_model(norm: str) -> ThreatModel:
    """The threat model of ``norm`` (``linf`` or ``l2``)."""
    try:
        return THREAT_MODELS[norm]
    except KeyError:
        raise ValueError(f"unknown norm {norm!r}; use one of: {', '.join(NORMS)}") from None
