"""Per-epoch validation: the student's clean and PGD accuracy on the first ``--val-size`` test images,
added to each epoch's metrics as ``val_clean`` and ``val_pgd`` (main process only)."""
from __future__ import annotations

from typing import Any

import torch

from robustdistill import RunView, hookimpl
from robustdistill._attacks import AttackSpec, model_mode, pgd


def validate(run: RunView) -> dict[str, float]:
    """Clean and PGD-``--val-attack-steps`` accuracy (attack ε and step of the run) of ``run.attack_student``."""
    config = run.config
    n = min(config.val_size, len(run.data.test_y))
    if n == 0:
        return {}
    correct_clean = correct_pgd = 0
    batch = max(config.batch_size, 256)
    model = run.attack_student
    spec = AttackSpec(eps=config.eps, step_size=config.step_size, steps=config.val_attack_steps)
    with model_mode(run.student, train=False):
        for start in range(0, n, batch):
            x = run.data.test_x[start:min(start + batch, n)].to(run.device).float() / 255
            y = run.data.test_y[start:min(start + batch, n)].to(run.device)
            with torch.no_grad():
                correct_clean += int((model(x).argmax(1) == y).sum())
            x_adv = pgd(model, x, y, spec)
            with torch.no_grad():
                correct_pgd += int((model(x_adv).argmax(1) == y).sum())
    return {"val_clean": correct_clean / n, "val_pgd": correct_pgd / n}


@hookimpl(tryfirst=True)
def epoch_end(run: RunView, metrics: dict[str, Any]) -> None:
    if run.is_main:
        metrics.update(validate(run))
