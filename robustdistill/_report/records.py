"""What a report reads from a run directory: its configuration, metrics and evaluations."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._registry import RobustDistillError

EVAL_COLUMNS = {"clean": "clean", "fgsm": "FGSM", "pgd20": "PGD-20", "cw": "CW∞", "autoattack": "AutoAttack"}
DEFAULT_EPS_FACTORS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


@dataclass
class RunRecord:
    """What the report knows about one run directory."""

    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    evaluation: dict[str, Any] | None
    label: str = ""
    checkpoint: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def methods(self) -> str:
        plugins = self.config.get("plugin") or ["natural"]
        return "+".join(plugins) if isinstance(plugins, list) else str(plugins)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RobustDistillError(f"cannot read {what} {str(path)!r}: {err}") from None


def load_run(path: str | Path, eval_name: str = "eval.json") -> RunRecord:
    """Read a run directory; a clear error when it is not one."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RobustDistillError(f"{str(run_dir)!r} is not a directory; pass run directories written by "
                                 "`robustdistill train --out DIR`")
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise RobustDistillError(f"{str(run_dir)!r} has no metrics.jsonl: not a training run directory "
                                 "(or it has not finished an epoch yet)")
    history = []
    for number, line in enumerate(metrics.read_text().splitlines(), 1):
        if line.strip():
            try:
                history.append(json.loads(line))
            except json.JSONDecodeError:
                raise RobustDistillError(f"{metrics}:{number} is not valid JSON") from None
    config = _read_json(run_dir / "config.json", "run options") if (run_dir / "config.json").is_file() else {}
    eval_path = run_dir / eval_name
    evaluation = _read_json(eval_path, "evaluation") if eval_path.is_file() else None
    checkpoint = run_dir / "last.pt"
    return RunRecord(run_dir, config, history, evaluation, label=run_dir.name,
                     checkpoint=checkpoint if checkpoint.is_file() else None)


def _unique_labels(runs: list[RunRecord]) -> None:
    names = [r.path.name for r in runs]
    for run in runs:
        run.label = run.path.name if names.count(run.path.name) == 1 else str(run.path)
