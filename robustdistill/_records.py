"""The run's records beside ``last.pt``: ``config.json`` (the resolved options and the sources of their
defaults), ``environment.json`` (software, hardware, data, teachers) and ``metrics.jsonl`` (one JSON object per
finished epoch). One mechanism writes all three, so that no kill leaves them ahead of the checkpoint:

* when a run starts (the last ``train_start`` implementation, so a plugin that refuses the run leaves the
  directory untouched): from what ``last.pt`` holds when resuming — which repairs a kill that fell between
  the checkpoint and the records — else from the new run;
* after every checkpoint (``checkpoint_saved``): from the checkpoint just written.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ._checkpoint import atomic_write_text
from ._context import RunView
from ._markers import hookimpl

if TYPE_CHECKING:
    from ._run import Run


def _engine(run: RunView) -> "Run":
    return run._engine  # type: ignore[return-value]


def _write(run: RunView, config: dict[str, Any]) -> None:
    atomic_write_text(run.out / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(run.out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in run.history))


@hookimpl(trylast=True)
def train_start(run: RunView) -> None:
    if not run.is_main:
        return
    engine = _engine(run)
    run.out.mkdir(parents=True, exist_ok=True)
    for leftover in run.out.glob(".*.tmp"):  # a kill during a write leaves its temporary file
        leftover.unlink(missing_ok=True)
    resumed = engine.resume_from
    _write(run, resumed["config"] if resumed is not None else engine.config_record())
    atomic_write_text(run.out / "environment.json", json.dumps(engine.environment(), indent=2) + "\n")


@hookimpl
def checkpoint_saved(run: RunView) -> None:
    _write(run, _engine(run).config_record())
