"""The inner-loop operations of adversarial training.

Each function here is the pure-PyTorch definition of an op; fused kernels must match it.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _per_sample(value: float | Tensor, x: Tensor) -> float | Tensor:
    """Broadcast a scalar or per-sample ``[B]`` tensor against a batch ``[B, ...]``."""
    if isinstance(value, Tensor) and value.dim() > 0:
        return value.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return value


def pgd_step(
    x_adv: Tensor,
    grad: Tensor,
    x: Tensor,
    eps: float | Tensor,
    step_size: float | Tensor,
    norm: str = "linf",
    lo: float = 0.0,
    hi: float = 1.0,
) -> Tensor:
    """One projected ascent step: ``clamp(Π_{B_ε(x)}(x_adv + α·d(g)), lo, hi)``.

    L∞: ``d(g) = sign(g)`` and the projection clips ``x_adv − x`` to ``[−ε, ε]``.
    L2: ``d(g) = g / ‖g‖₂`` per sample (zero gradient gives no step) and the projection
    rescales ``x_adv − x`` onto the ε-ball when it lies outside. ``eps`` and ``step_size``
    may be per-sample tensors of shape ``[B]``.
    """
    eps_b = _per_sample(eps, x)
    alpha = _per_sample(step_size, x)
    if norm == "linf":
        stepped = x_adv + alpha * grad.sign()
        delta = (stepped - x).clamp(-eps_b, eps_b)
    elif norm == "l2":
        flat = grad.flatten(1)
        g_norm = flat.norm(dim=1).reshape(-1, *([1] * (x.dim() - 1)))
        direction = torch.where(g_norm > 0, grad / g_norm.clamp_min(1e-12), torch.zeros_like(grad))
        delta = x_adv + alpha * direction - x
        d_norm = delta.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.dim() - 1)))
        delta = delta * torch.clamp(eps_b / d_norm.clamp_min(1e-12), max=1.0)
    else:
        raise ValueError(f"unknown norm {norm!r}; use 'linf' or 'l2'")
    return (x + delta).clamp(lo, hi)


FD_DISTANCES = ("kl", "l1", "l2")


def fd_align(s_plus: Tensor, s_minus: Tensor, t_plus: Tensor, t_minus: Tensor, distance: str = "kl") -> Tensor:
    """IGDM's finite-difference gradient alignment ``D(s⁺ − s⁻, t⁺ − t⁻)`` over logits ``[B, C]``.

    ``kl``: ``(1/B)·Σᵢ KL(σ(t⁺ᵢ − t⁻ᵢ) ‖ σ(s⁺ᵢ − s⁻ᵢ))`` (batchmean, temperature 1 — the paper's and its
    code's choice); ``l1``: mean absolute difference; ``l2``: mean squared difference (both over B×C).
    The teacher side is constant: no gradient flows into ``t⁺``/``t⁻``.
    """
    ds = s_plus.float() - s_minus.float()
    dt = (t_plus.float() - t_minus.float()).detach()
    if distance == "kl":
        log_q = torch.log_softmax(ds, dim=1)
        log_p = torch.log_softmax(dt, dim=1)
        return (log_p.exp() * (log_p - log_q)).sum() / ds.shape[0]
    if distance == "l1":
        return (ds - dt).abs().mean()
    if distance == "l2":
        return (ds - dt).pow(2).mean()
    raise ValueError(f"unknown distance {distance!r}; choose one of {FD_DISTANCES}")
