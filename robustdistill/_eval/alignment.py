"""The alignment of a model's input gradients with a teacher's: per image, the cosine between ∇ₓ CE(model(x), y)
and ∇ₓ CE(teacher(x), y) at the test image — the quantity IGDM's term matches during training."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _attacks as attacks
from .._context import exact_input_gradient
from .harness import _frozen_parameters, to_unit_float


def _input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    objective = attacks.ce_objective(model, y)
    with torch.enable_grad():
        return exact_input_gradient(x.detach(), lambda z: objective(z).sum(), create_graph=False).flatten(1)


def gradient_cosine(model: nn.Module, teacher: nn.Module, x: Tensor, y: Tensor, *, batch_size: int,
                    device: torch.device | str) -> Tensor:
    """Per image of ``x`` (uint8 or float in [0, 1]), the cosine between the model's and the teacher's input
    gradient of the cross-entropy on the true label (both in eval mode, already on ``device``); 0 where either
    gradient is zero."""
    cosines = []
    with attacks.model_mode(model, teacher, train=False), _frozen_parameters(model), _frozen_parameters(teacher):
        for start in range(0, x.shape[0], batch_size):
            xb = to_unit_float(x[start:start + batch_size].to(device))
            yb = y[start:start + batch_size].to(device).long()
            a, b = _input_gradient(model, xb, yb).double(), _input_gradient(teacher, xb, yb).double()
            cosines.append(F.cosine_similarity(a, b, dim=1, eps=1e-30).float().cpu())
    return torch.cat(cosines) if cosines else torch.zeros(0)
