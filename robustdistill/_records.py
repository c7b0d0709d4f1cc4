"""``metrics.jsonl``: one JSON object per finished epoch, always exactly the history ``last.pt`` holds.

Written after every checkpoint, and again when a run starts (which repairs it after a kill that fell
between the checkpoint and this file); last of the ``train_start`` hooks, so a plugin that refuses the run
leaves no file behind.
"""
from __future__ import annotations

import json

from robustdistill import RunView, hookimpl
from robustdistill._checkpoint import atomic_write_text


def write_metrics(run: RunView) -> None:
    atomic_write_text(run.out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in run.history))


@hookimpl(trylast=True)
def train_start(run: RunView) -> None:
    if run.is_main:
        write_metrics(run)


@hookimpl
def checkpoint_saved(run: RunView) -> None:
    write_metrics(run)
