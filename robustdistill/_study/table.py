"""The study's table: per grid cell (and searched values) the mean ± sd over seeds of the objective and of the
test evaluation, and paired differences against control rows, each value with its number of runs; written as
``summary.md`` and ``summary.json``."""
from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._checkpoint import atomic_write_text
from .spec import Evaluation, StudySpec
from .trials import read_eval, teacher_command

T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
"""Student's t 97.5 % quantiles for 1–30 degrees of freedom (1.96 beyond): the 95 % intervals of the means."""


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


def column(evaluation: Evaluation, index: int, attack: str) -> str:
    """``test <attack>`` for the first evaluation, ``<name> <attack>`` for the others."""
    return f"{'test' if index == 0 else evaluation.name} {attack}"


def columns(spec: StudySpec) -> list[str]:
    """The objective, then a column per evaluated attack of each evaluation."""
    return [spec.objective.title, *(column(e, i, name.strip()) for i, e in enumerate(spec.evaluate)
                                     for name in e.attacks.split(",") if name.strip())]


def test_values(spec: StudySpec, tests: dict[str, Any]) -> dict[str, float]:
    """The test columns of a trial's (or a teacher's) evaluations, ``{name: read_eval(...)}``."""
    values = {}
    for i, evaluation in enumerate(spec.evaluate):
        for name, accuracy in (tests.get(evaluation.name) or {}).get("accuracy", {}).items():
            values[column(evaluation, i, name)] = float(accuracy)
    return values


def results(spec: StudySpec, trials: Sequence[Any]) -> list[Result]:
    """The table's view of the complete trials (Optuna ``FrozenTrial``s)."""
    found = []
    for trial in trials:
        cell = spec.cell(trial.user_attrs["cell"])
        values = {spec.objective.title: float(trial.value), **test_values(spec, trial.user_attrs.get("test") or {})}
        searched = tuple((s.name, trial.params[s.name]) for s in spec.search)
        found.append(Result(trial.number, cell.row.name, cell.seed, cell.values + searched, cell.values, values,
                            float(trial.value)))
    return sorted(found, key=lambda r: r.number)


def teacher_results(spec: StudySpec, out: Path) -> dict[str, dict[str, float]]:
    """Each teacher's test columns, from the evaluation files in its run directory (those finished so far)."""
    found = {}
    for teacher in spec.teachers:
        run_dir = teacher_command(spec, teacher).run_dir(out)
        tests = {e.name: read_eval(run_dir, e) for e in spec.evaluate if (run_dir / f"{e.name}.json").exists()}
        if tests:
            found[teacher.name] = test_values(spec, tests)
    return found


def stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and the half-width of the mean's 95 % t interval (``None`` for one run), and
    the number of runs."""
    n = len(values)
    sd = statistics.stdev(values) if n > 1 else None
    half = (T_975[n - 2] if n - 1 <= len(T_975) else 1.96) * sd / math.sqrt(n) if sd is not None else None
    return {"mean": statistics.fmean(values), "sd": sd, "ci95": half, "n": n}


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


def summarize(spec: StudySpec, found: Sequence[Result], counts: dict[str, int],
              teachers: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """The table as JSON: the teachers' evaluations, groups of runs over seeds, and paired differences against the
    control rows."""
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
            "columns": titles, "trials": counts, "teachers": teachers or {}, "groups": table,
            "differences": differences}


def _cell(value: dict[str, Any] | None, interval: bool = False) -> str:
    """``mean ± sd (n)`` in points; with ``interval``, the mean's 95 % interval after it."""
    if value is None:
        return "—"
    mean = f"{100 * value['mean']:.2f}"
    if value["sd"] is None:
        return f"{mean} ({value['n']})"
    text = f"{mean} ± {100 * value['sd']:.2f} ({value['n']})"
    if interval and value.get("ci95") is not None:
        low, high = value["mean"] - value["ci95"], value["mean"] + value["ci95"]
        text += f" [{100 * low:.2f}, {100 * high:.2f}]"
    return text


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
    if summary.get("teachers"):
        tests = titles[1:]
        lines += ["Teachers (one run each):", "", "| teacher | " + " | ".join(tests) + " |",
                  "|" + "---|" * (1 + len(tests))]
        for name, values in summary["teachers"].items():
            lines.append(f"| {name} | " + " | ".join(f"{100 * values[t]:.2f}" if t in values else "—"
                                                      for t in tests) + " |")
        lines.append("")
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
        lines += ["", "## Paired differences (same seed)", "", "In points: mean ± sd (pairs) [95 % t interval of the "
                  "mean].", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for diff in summary["differences"]:
            cells = [f"{diff['row']} − {diff['control']}", *(_value(diff["options"].get(n, "")) for n in names),
                     *(_cell(diff["values"].get(t), interval=True) for t in titles)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` and ``summary.md`` under ``out``; returns the Markdown file's path."""
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    path = out / "summary.md"
    atomic_write_text(path, markdown(summary))
    return path


MIRRORED = ("config.json", "metrics.jsonl", "environment.json")
"""What ``--results`` copies of each run besides its evaluation files (never a checkpoint)."""


def mirror(spec: StudySpec, out: Path, trials: Sequence[Any], results_dir: Path) -> None:
    """Copy the small files of every teacher and complete trial into ``results_dir`` — ``TEACHER/``,
    ``ROW/seed-N/`` (``ROW/OPTION=V…/seed-N-K/`` with listed or searched values, ``K`` the cell's K-th trial of a
    search) — with the table (``summary.md``, ``summary.json``). Paths in them below the working directory are
    written relative to it."""
    targets = [(teacher_command(spec, t).run_dir(out), results_dir / t.name) for t in spec.teachers]
    for trial in trials:
        cell = spec.cell(trial.user_attrs["cell"])
        searched = [f"{s.name}={_value(trial.params[s.name])}" for s in spec.search]
        options = "_".join([*(f"{k}={v}" for k, v in cell.values), *searched])
        target = results_dir / cell.row.name / options if options else results_dir / cell.row.name
        slot = trial.user_attrs.get("slot", "")
        suffix = f"-{slot.rsplit('#', 1)[-1]}" if spec.search and "#" in slot else ""
        targets.append((out / trial.user_attrs["run_dir"], target / f"seed-{cell.seed}{suffix}"))
    names = [*MIRRORED, *(f"{e.name}.json" for e in spec.evaluate)]
    shown = os.path.relpath(out)
    shown = shown if not shown.startswith("..") else str(out)
    here = os.getcwd().rstrip("/") + "/"
    for source, target in targets:
        for name in names:
            if (source / name).is_file():
                target.mkdir(parents=True, exist_ok=True)
                text = (source / name).read_text(encoding="utf-8").replace(str(out), shown).replace(here, "")
                atomic_write_text(target / name, text)
    for name in ("summary.md", "summary.json"):
        if (out / name).is_file():
            results_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(results_dir / name, (out / name).read_text(encoding="utf-8"))
