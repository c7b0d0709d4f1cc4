"""The RSLAD+IGDM training step written the way the official RSLAD and IGDM scripts write it.

The baseline of ``benchmarks/train_step.py``; the engine never uses it. fp32, eager, NCHW, one model
call per input, the PGD update in Python with ``sign``/``max``/``min``/``clamp``:

1. ``T(x)`` without gradient (the caller keeps the teacher in eval mode).
2. Inner attack (RSLAD's ``rslad_inner_loss``): student in eval mode, ``x′ = x + 0.001·N(0, I)``, then
   ``steps`` ascent steps on ``Σ KL(σ(T(x)) ‖ σ(S(x′)))`` (``KLDivLoss`` summed), each
   ``x′ ← clamp(min(max(x′ + α·sign(∇), x − ε), x + ε), 0, 1)``.
3. Student back in train mode: ``S(x′)``, ``S(x + δ)``, ``S(x)``, ``S(x − δ)`` with ``δ = x′ − x``, and the
   teacher's ``T(x + δ)``, ``T(x − δ)`` without gradient, each a separate call as in the IGDM script.
4. ``L = 5/6·mean(kl(S(x′), T(x))) + 1/6·mean(kl(S(x), T(x))) + w·KL(σ(T(x+δ) − T(x−δ)) ‖ σ(S(x+δ) − S(x−δ)))``
   with RSLAD's element-wise ``kl(a, b) = −log σ(a)·σ(b) + log(σ(b) + 1e-5)·σ(b)``, IGDM's KL with
   ``reduction="batchmean"`` and ``w = α·epoch/epochs``.
5. ``zero_grad``, ``backward``, SGD ``step``.

Where it departs from the scripts (none of it adds work): the noise is drawn on ``x``'s device
(``randn_like``; the scripts draw it on the CPU and copy it over); and ``T(x)``, which the IGDM script
computes a second time after the attack, is reused.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rslad_kl(log_student: Tensor, teacher_probs: Tensor) -> Tensor:
    """RSLAD's element-wise ``kl_loss(a, b) = −a·b + log(b + 1e-5)·b`` (``[B, C]``, not reduced)."""
    return -log_student * teacher_probs + torch.log(teacher_probs + 1e-5) * teacher_probs


def rslad_inner_loss(student: nn.Module, teacher_logits: Tensor, x: Tensor, eps: float, step_size: float,
                     steps: int) -> Tensor:
    """RSLAD's PGD on ``Σ KL(σ(T(x)) ‖ σ(S(x′)))`` with the student in eval mode; returns the detached ``x′``."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    student.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)  # not clamped: the first gradient is taken here, as the scripts
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(student(x_adv), dim=1), F.softmax(teacher_logits, dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    student.train()
    return x_adv.detach()


def reference_step(student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, *,
                   eps: float, step_size: float, steps: int, igdm_weight: float) -> tuple[Tensor, dict[str, Tensor]]:
    """One RSLAD+IGDM step; returns the detached total loss and the unweighted terms
    ``kl_adv``, ``kl_clean`` and ``igdm`` (the engine's term names)."""
    with torch.no_grad():
        teacher_logits = teacher(x)
    x_adv = rslad_inner_loss(student, teacher_logits, x, eps, step_size, steps)
    optimizer.zero_grad()
    adv_logits = student(x_adv)
    delta = x_adv - x
    with torch.no_grad():
        teacher_plus = teacher(x + delta)
        teacher_minus = teacher(x - delta)
    student_plus = student(x + delta)
    student_logits = student(x)
    student_minus = student(x - delta)
    igdm = F.kl_div(F.log_softmax(student_plus - student_minus, dim=1),
                    F.softmax(teacher_plus - teacher_minus, dim=1), reduction="batchmean")
    teacher_probs = F.softmax(teacher_logits, dim=1)
    kl_adv = torch.mean(rslad_kl(torch.log(F.softmax(adv_logits, dim=1)), teacher_probs))
    kl_clean = torch.mean(rslad_kl(torch.log(F.softmax(student_logits, dim=1)), teacher_probs))
    loss = 5.0 / 6.0 * kl_adv + 1.0 / 6.0 * kl_clean + igdm_weight * igdm
    loss.backward()
    optimizer.step()
    terms = {"kl_adv": kl_adv.detach(), "kl_clean": kl_clean.detach(), "igdm": igdm.detach()}
    return loss.detach(), terms
