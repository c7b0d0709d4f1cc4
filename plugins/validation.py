"""Per-epoch validation: the student's clean and PGD accuracy on the validation split held out from the training
images (``--val-split``), added to each epoch's metrics as ``val_clean`` and ``val_pgd``; with ``--val-test N``
also on the first N test images as ``test_clean`` and ``test_pgd``, for monitoring only (main process)."""
from __future__ import annotations

from typing import Any

from robustdistill import hookimpl
from robustdistill.api import RunView


@hookimpl(tryfirst=True)
def epoch_end(run: RunView, metrics: dict[str, Any]) -> None:
    if not run.is_main:
        return
    for on, prefix in (("split", "val"), ("test", "test")):
        metrics.update({f"{prefix}_{name}": value for name, value in run.validate(run.attack_student, on=on).items()})
