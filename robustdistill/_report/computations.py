"""What the report computes from models: input gradients, robust accuracy against ε, the models and test data
it needs."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .._attacks import ce_objective, model_mode
from .._checkpoint import load_checkpoint, model_from_checkpoint
from .._context import exact_input_gradient
from .._eval import (
    EvalSettings,
    run_evaluation,
    weights_fingerprint,
)
from .._folding import fold_or_keep
from .._models import build_model
from .._registry import ImageData, ModelArch, Registry, RobustDistillError
from .records import RunRecord


def input_gradients(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """∇ₓ CE(model(x), y) per image, in eval mode; the model's parameters get no gradient."""
    objective = ce_objective(model, y)
    with model_mode(model, train=False), torch.enable_grad():
        return exact_input_gradient(x.detach(), lambda z: objective(z).sum(), create_graph=False)


def _load_model(path: Path, registry: Registry, device: torch.device) -> tuple[nn.Module, ModelArch, str]:
    """The checkpoint's model on ``device`` in eval mode, BatchNorm folded (the same function, faster attacks),
    its architecture and the digest of its weights."""
    model, arch = model_from_checkpoint(load_checkpoint(path), lambda a: build_model(a, registry.models), str(path))
    digest = weights_fingerprint(model)
    return fold_or_keep(model.to(device).eval(), live=False, what=f"model of {path}"), arch, digest


def _test_data(run: RunRecord, registry: Registry, cache: dict[tuple[str, str | None], ImageData]) -> ImageData:
    name = run.config.get("dataset")
    if not name:
        raise RobustDistillError(f"{run.path}/config.json does not name the dataset; was it written by "
                                 "`robustdistill train`?")
    key = (str(name), run.config.get("data_dir"))
    if key not in cache:
        cache[key] = registry.dataset(str(name)).load(run.config.get("data_dir"), False)
    return cache[key]


def robust_accuracy_curve(model: nn.Module, x: Tensor, y: Tensor, eps_values: list[float], *, steps: int,
                          registry: Registry, batch_size: int, device: torch.device) -> list[float]:
    """PGD accuracy at each ε (step size 2.5·ε/steps; ε = 0 is clean accuracy)."""
    accuracies = []
    for eps in eps_values:
        name = "clean" if eps == 0 else "pgd20"
        settings = EvalSettings(eps=eps, step_size=max(2.5 * eps / steps, 1e-12), pgd_steps=steps)
        result = run_evaluation(model, x, y, [registry.eval_attacks[name]], settings, batch_size=batch_size,
                                device=device)
        accuracies.append(result.accuracy[name])
    return accuracies
