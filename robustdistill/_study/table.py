"""The study's table: per grid cell (and searched values) the mean ± sd over seeds of the objective and of the
test evaluation, and paired differences against control rows, each value with its number of runs; written as
``summary.md`` and ``summary.json``."""
from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._checkpoint import atomic_write_text
from .spec import StudySpec


@dataclass(frozen=True)
class Result:
    """One complete trial as the table reads it."""

    number: int
    row: str
    seed: int
    options: tuple[tuple[str, Any], ...]
    """The cell's listed values, then the searched values."""
    grid: tuple[tuple[str, Any], ...]
    values: dict[str, float]
    objective: float


def columns(spec: StudySpec) -> list[str]:
    """The objective, then ``test <attack>`` for each evaluated attack."""
    tests = [f"test {name.strip()}" for name in spec.evaluate.attacks.split(",") if name.strip()] \
        if spec.evaluate else []
    return [spec.objective.title, *tests]


def results(spec: StudySpec, trials: Sequence[Any]) -> list[Result]:
    """The table's view of the complete trials (Optuna ``FrozenTrial``s)."""
    found = []
    for trial in trials:
        cell = spec.cell(trial.user_attrs["cell"])
        values = {spec.objective.title: float(trial.value)}
        for name, accuracy in (trial.user_attrs.get("test") or {}).get("accuracy", {}).items():
            values[f"test {name}"] = float(accuracy)
        searched = tuple((s.name, trial.params[s.name]) for s in spec.search)
        found.append(Result(trial.number, cell.row.name, cell.seed, cell.values + searched, cell.values, values,
                            float(trial.value)))
    return sorted(found, key=lambda r: r.number)


def stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (``None`` for one run) and the number of runs."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def best_per_seed(spec: StudySpec, found: Sequence[Result], row: str, grid: tuple[tuple[str, Any], ...]) \
        -> dict[int, Result]:
    """Per seed, the trial of ``row`` in the cell ``grid`` with the best objective (the only one without a
    search)."""
    better = max if spec.objective.direction == "maximize" else min
    chosen: dict[int, Result] = {}
    for result in found:
        if result.row == row and result.grid == grid:
            chosen[result.seed] = better(chosen.get(result.seed, result), result, key=lambda r: r.objective)
    return chosen


def summarize(spec: StudySpec, found: Sequence[Result], counts: dict[str, int]) -> dict[str, Any]:
    """The table as JSON: groups of runs over seeds, and paired differences against the control rows."""
    titles = columns(spec)
    groups: dict[tuple[str, tuple[tuple[str, Any], ...]], list[Result]] = {}
    for result in found:
        groups.setdefault((result.row, result.options), []).append(result)
    table = []
    for (row, options), runs in groups.items():
        cells = {}
        for title in titles:
            measured = [(r, r.values[title]) for r in runs if title in r.values]
            if measured:
                cells[title] = {**stats([v for _, v in measured]),
                                "runs": [{"trial": r.number, "seed": r.seed, "value": v} for r, v in measured]}
        table.append({"row": row, "options": dict(options), "runs": len(runs), "values": cells})
    differences = []
    for treatment, control in spec.controls:
        for grid in dict.fromkeys(r.grid for r in found):
            ours, theirs = best_per_seed(spec, found, treatment, grid), best_per_seed(spec, found, control, grid)
            seeds = sorted(set(ours) & set(theirs))
            if not seeds:
                continue
            cells = {}
            for title in titles:
                paired = {seed: ours[seed].values[title] - theirs[seed].values[title] for seed in seeds
                          if title in ours[seed].values and title in theirs[seed].values}
                if paired:
                    cells[title] = {**stats(list(paired.values())), "per_seed": paired}
            differences.append({"row": treatment, "control": control, "options": dict(grid), "values": cells})
    return {"study": spec.name, "objective": {"metric": spec.objective.metric, "epoch": spec.objective.epoch,
                                              "direction": spec.objective.direction},
            "columns": titles, "trials": counts, "groups": table, "differences": differences}


def _cell(value: dict[str, Any] | None) -> str:
    if value is None:
        return "—"
    mean = f"{100 * value['mean']:.2f}"
    return f"{mean} ± {100 * value['sd']:.2f} ({value['n']})" if value["sd"] is not None else f"{mean} ({value['n']})"


def _option_names(entries: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(name for entry in entries for name in entry["options"]))


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) and not math.isnan(value) else str(value)


def markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: the counts, the table and the paired differences."""
    titles, counts = summary["columns"], summary["trials"]
    lines = [f"# Study {summary['study']}", "",
             (f"{counts['done']} of {counts['slots']} trials done ({counts['complete']} complete, {counts['pruned']} "
              f"pruned), {counts['failed']} failed. Accuracies in %, as mean ± sd (runs) over seeds. Selected on "
              f"{titles[0]} of the validation split held out from the training data; the test columns are "
              "reported, never selected on."), ""]
    names = _option_names(summary["groups"])
    header = ["row", *names, *titles]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in summary["groups"]:
        cells = [group["row"], *(_value(group["options"].get(n, "")) for n in names),
                 *(_cell(group["values"].get(t)) for t in titles)]
        lines.append("| " + " | ".join(cells) + " |")
    if summary["differences"]:
        names = _option_names(summary["differences"])
        header = ["row − control", *names, *titles]
        lines += ["", "## Paired differences (same seed)", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for diff in summary["differences"]:
            cells = [f"{diff['row']} − {diff['control']}", *(_value(diff["options"].get(n, "")) for n in names),
                     *(_cell(diff["values"].get(t)) for t in titles)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` and ``summary.md`` under ``out``; returns the Markdown file's path."""
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    path = out / "summary.md"
    atomic_write_text(path, markdown(summary))
    return path
