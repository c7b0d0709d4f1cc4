"""Distillation divergences with the reductions the papers' code bases use.

Notation follows the specs: ``KL(p ‖ q) = Σ_c p_c log(p_c / q_c)`` with the **teacher as p**, i.e.
PyTorch's ``kl_div(log_softmax(student), softmax(teacher))``.

* ``batchmean``: sum over classes, mean over the batch (the mathematical KL; IGDM, TRADES, AdaAD-C100).
* ``mean``: PyTorch's legacy element-wise mean over B×C = batchmean / C (``nn.KLDivLoss()`` default, as
  in the ARD, RSLAD and AdaAD-C10 code).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

KL_REDUCTIONS = ("batchmean", "mean")


def reduce_kl(per_element: Tensor, reduction: str) -> Tensor:
    """Reduce element-wise KL terms ``[B, C]``."""
    if reduction == "batchmean":
        return per_element.sum() / per_element.shape[0]
    if reduction == "mean":
        return per_element.mean()
    raise ValueError(f"unknown KL reduction {reduction!r}; choose one of {KL_REDUCTIONS}")


def kl_per_sample(per_element: Tensor, reduction: str) -> Tensor:
    """Each sample's share ``[B]`` of :func:`reduce_kl` (its mean is the reduced value)."""
    if reduction == "batchmean":
        return per_element.sum(dim=1)
    if reduction == "mean":
        return per_element.sum(dim=1) / per_element.shape[1]
    raise ValueError(f"unknown KL reduction {reduction!r}; choose one of {KL_REDUCTIONS}")


def kl_elements(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0) -> Tensor:
    """Element-wise ``KL(σ(T/τ) ‖ σ(S/τ))`` terms ``[B, C]``, the teacher side detached."""
    log_q = F.log_softmax(student_logits.float() / tau, dim=1)
    p = F.softmax(teacher_logits.detach().float() / tau, dim=1)
    return F.kl_div(log_q, p, reduction="none")


def kl_to_teacher(student_logits: Tensor, teacher_logits: Tensor, reduction: str = "batchmean",
                  tau: float = 1.0) -> Tensor:
    """``KL(σ(T/τ) ‖ σ(S/τ))`` with the teacher side detached, reduced."""
    return reduce_kl(kl_elements(student_logits, teacher_logits, tau), reduction)
