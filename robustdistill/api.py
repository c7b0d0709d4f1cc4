"""The plugin API of robustdistill: everything a plugin may use, and nothing else.

What hooks see (:class:`RunView`, :class:`StepContext`) and return (:class:`LossTerm`, :class:`TeacherOutput`),
what plugins register (:class:`Method`, :class:`Option`, :class:`Attack`, :class:`EvalAttack`,
:class:`ModelEntry`, :class:`DatasetEntry`, :class:`Composition`), and the helpers the built-in methods are
written with: attacks and their objectives, BatchNorm mode contexts, KL divergences with the papers'
reductions, input gradients and the fused kernels. The hooks themselves are specified in
:mod:`robustdistill.hookspecs`. The engine's modules (``robustdistill._*``) are private and may change
without notice; this module changes only with :data:`API_VERSION`.

A plugin built for a newer minor version may set ``robustdistill_api = "2.2"`` (a module or object
attribute): robustdistill then warns that it may rely on features this version lacks.
"""
from __future__ import annotations

from torch import Tensor

from ._attacks import (BN_MODES, LABEL_LOSSES, AttackSpec, Objective, ce_objective, cw_margin, cw_objective,
                       fgsm_spec, kl_objective, label_objective, model_mode, perturb, pgd)
from ._checkpoint import atomic_write_text
from ._config import FD_DISTANCES, NORMS, PluginOptions, RunConfig, format_duration, parse_number
from ._context import (DEFAULT_TEACHER, AttackIterate, AttackObserver, LossTerm, RunView, StepContext,
                       TeacherOutput, exact_input_gradient)
from ._gradients import log_prob_objective, math_attention, student_forward, student_gradient, teacher_gradient
from ._losses import KL_REDUCTIONS, kl_elements, kl_per_sample, kl_to_teacher, reduce_kl
from ._registry import (Attack, Composition, DatasetEntry, DatasetInfo, Default, EvalAttack, ImageData, Method,
                        ModelArch, ModelEntry, Option, RobustDistillError)
from ._threats import INITS

API_VERSION = "2.1"
"""The version of this API: the major number changes when something here changes incompatibly, the minor
number when something is added."""

__all__ = [
    "API_VERSION",
    # what hooks see and return
    "RunView", "StepContext", "LossTerm", "TeacherOutput", "AttackIterate", "AttackObserver", "RunConfig",
    "PluginOptions", "DEFAULT_TEACHER",
    # what plugins register
    "Method", "Option", "Attack", "EvalAttack", "ModelEntry", "ModelArch", "DatasetEntry", "DatasetInfo",
    "ImageData", "Composition", "Default", "RobustDistillError",
    # attacks
    "AttackSpec", "Objective", "perturb", "pgd", "fgsm_spec", "model_mode", "ce_objective", "kl_objective",
    "cw_objective", "cw_margin", "label_objective", "INITS", "BN_MODES", "NORMS", "LABEL_LOSSES",
    # divergences
    "KL_REDUCTIONS", "kl_to_teacher", "kl_elements", "kl_per_sample", "reduce_kl",
    # input gradients
    "exact_input_gradient", "student_forward", "student_gradient", "teacher_gradient", "log_prob_objective",
    "math_attention",
    # kernels and files
    "pgd_step", "fd_align", "fd_align_per_sample", "FD_DISTANCES", "atomic_write_text", "parse_number", "format_duration",
]


def pgd_step(x_adv: Tensor, grad: Tensor, x: Tensor, eps: float | Tensor, step_size: float | Tensor,
             norm: str = "linf", lo: float = 0.0, hi: float = 1.0) -> Tensor:
    """One projected step ``clip(Π_{B_ε(x)}(x_adv + step·dir(grad)), lo, hi)`` (``dir`` = sign for ``linf``, the
    per-sample unit vector for ``l2``): the fused kernel where it is built for the device, else its
    pure-PyTorch reference (the same semantics)."""
    from ._ops import pgd_step as step  # loaded on first use: it brings torch.compile's machinery

    return step(x_adv, grad, x, eps, step_size, norm, lo, hi)


def fd_align(s_plus: Tensor, s_minus: Tensor, t_plus: Tensor, t_minus: Tensor, distance: str = "kl") -> Tensor:
    """IGDM's finite-difference alignment ``D(s⁺ − s⁻, t⁺ − t⁻)`` (``kl``: KL of the softmaxes, batchmean, teacher
    side detached; ``l1``, ``l2``): the fused kernel where it is built for the device, else its reference."""
    from ._ops import fd_align as align

    return align(s_plus, s_minus, t_plus, t_minus, distance)


def fd_align_per_sample(s_plus: Tensor, s_minus: Tensor, t_plus: Tensor, t_minus: Tensor,
                        distance: str = "kl") -> Tensor:
    """Each sample's share ``[B]`` of :func:`fd_align` (its mean is ``fd_align``'s value), by the reference."""
    from ._ops import fd_align_per_sample_ref

    return fd_align_per_sample_ref(s_plus, s_minus, t_plus, t_minus, distance)

