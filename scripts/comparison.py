"""Train and evaluate every method under one protocol, over seeds, writing everything under one folder.

    python scripts/comparison.py --out runs/comparison --device cuda --epochs 30 --teacher-epochs 30 --seeds 0,1,2

Teachers (PGD-AT and TRADES, one architecture, trained once with ``--teacher-seed``) come first; then each
student row — natural, PGD-AT and TRADES from scratch, ARD / RSLAD / AdaAD each with and without IGDM, IGAM,
RRM, GradNorm (GELU and ReLU), EdgeReg and PAG, with the same student architecture, epochs and schedule —
once per seed, in ``OUT/ROW/seed-N``. Every run is evaluated with ``robustdistill eval`` into one JSON file per
``--eval`` (``eval.json`` by default). After each run ``summary.md`` and ``summary.json`` are rewritten: per row
the mean ± standard deviation over the seeds finished so far, and IGDM − base per base (paired by seed).

The comparison is resumable: a finished run is skipped, a half-trained one resumes, an interrupted evaluation
continues (``robustdistill eval`` skips the attacks already in its file), so the same command continues it in
the background after a stop; two invocations on one folder refuse to run at once. ``--results DIR`` mirrors
the small files of every run (config, metrics, environment, evaluations — no checkpoints), ``commands.sh`` and
the summary into DIR, a folder that can be committed. ``--rows`` picks rows by name; ``--list`` shows them.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

TEACHERS = {"teacher-at": ["at"], "teacher-trades": ["trades"]}
BASES = ("at", "trades", "ard", "rslad", "adaad")
IGDM_BASE = "-igdm-base"
IGDM_BASE_OPTIONS = {
    "ard": ("--ard-tau", "1", "--ard-kl-reduction", "batchmean", "--ard-attack-bn", "eval"),
    "adaad": ("--adaad-reduction", "batchmean"),
}
"""Rows ``BASE-igdm-base``: the base as ``BASE+igdm`` trains it (the IGDM code's variant, plugins/ard.py and
plugins/adaad.py) without IGDM's term. Where that variant differs from the base alone, ``BASE+igdm − BASE`` mixes
the variant with IGDM, and ``BASE+igdm − BASE-igdm-base`` is IGDM's term alone."""
ATTACK_TITLES = {"clean": "clean", "fgsm": "FGSM", "pgd20": "PGD-20", "cw": "CW∞", "autoattack": "AutoAttack",
                 "apgd-ce+apgd-t": "APGD-CE+APGD-T"}
SMALL_FILES = ("config.json", "metrics.jsonl", "environment.json")
"""What ``--results`` copies of each run besides its evaluation files (never ``last.pt``)."""


@dataclass(frozen=True)
class Row:
    """One student: its plugins, extra train options and which teacher it distils from (if any)."""

    name: str
    plugins: tuple[str, ...]
    options: tuple[str, ...] = ()
    teacher: str | None = None


@dataclass(frozen=True)
class EvalSpec:
    """One evaluation of every run: ``NAME.json`` with ``attacks`` on the first ``subset`` test images."""

    name: str
    attacks: str
    subset: int | None = None

    @classmethod
    def parse(cls, text: str) -> "EvalSpec":
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise SystemExit(f"comparison: --eval {text!r} is not NAME:ATTACKS[:N] (e.g. aa1000:clean,autoattack:1000)")
        subset = int(parts[2]) if len(parts) == 3 and parts[2] else None
        return cls(parts[0], parts[1], subset)


def student_rows(teacher: str) -> list[Row]:
    """The comparison's student rows, distilling from ``teacher`` where the method needs one."""
    rows = [Row("natural", ("natural",)), Row("at", ("at",)), Row("trades", ("trades",))]
    for base in ("ard", "rslad", "adaad"):
        rows.append(Row(base, (base,), teacher=teacher))
        rows.append(Row(f"{base}+igdm", (base, "igdm"), teacher=teacher))
        if base in IGDM_BASE_OPTIONS:
            rows.append(Row(f"{base}{IGDM_BASE}", (base,), IGDM_BASE_OPTIONS[base], teacher=teacher))
    rows += [
        Row("igam", ("igam",), teacher=teacher),
        Row("rrm", ("rrm",), teacher=teacher),
        Row("gradnorm-gelu", ("gradnorm",), ("--activation", "gelu")),
        Row("gradnorm-relu", ("gradnorm",), ("--activation", "relu")),
        Row("edgereg", ("edgereg",), ("--activation", "gelu")),
        Row("pag", ("pag",), teacher=teacher),
    ]
    return rows


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise SystemExit(f"comparison: --seeds {text!r} is not a comma-separated list of integers (e.g. 0,1,2)")
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"comparison: --seeds {text!r} must name distinct seeds")
    return seeds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/comparison", help="folder for all runs and the tables")
    parser.add_argument("--results", default=None, metavar="DIR",
                        help="also copy every run's small files (config, metrics, environment, evaluations; no "
                             "checkpoints), commands.sh and the summary here, e.g. a folder under docs/")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--teacher-model", default="resnet18")
    parser.add_argument("--student-model", default="cnn")
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=30, help="epochs of every student row")
    parser.add_argument("--teacher", default="teacher-at", choices=sorted(TEACHERS),
                        help="the teacher the distillation rows use")
    parser.add_argument("--seeds", default="0", help="seeds of the student runs, e.g. 0,1,2 (default: 0)")
    parser.add_argument("--teacher-seed", type=int, default=0, help="seed of the teachers (trained once)")
    parser.add_argument("--subset", type=int, default=None, help="train on the first N images (quick trials)")
    parser.add_argument("--eval-subset", type=int, default=None, help="evaluate on the first N test images "
                                                                     "(default: all of them)")
    parser.add_argument("--attacks", default="clean,fgsm,pgd20,cw,autoattack")
    parser.add_argument("--eval", action="append", default=[], metavar="NAME:ATTACKS[:N]",
                        help="an evaluation of every run into NAME.json, repeatable (e.g. --eval eval:clean,pgd20,cw "
                             "--eval aa1000:clean,autoattack:1000); default: eval:--attacks:--eval-subset")
    parser.add_argument("--eval-option", action="append", default=[], metavar="OPT",
                        help="extra option for every eval command, repeatable (e.g. --eval-option=--cw-steps=50)")
    parser.add_argument("--rows", default=None, help="comma-separated row names (default: all; see --list)")
    parser.add_argument("--train-option", action="append", default=[], metavar="OPT",
                        help="extra option for every train command, repeatable (e.g. --train-option=--amp=bf16)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                        help="write the figures of `robustdistill report` at the end")
    args = parser.parse_args(argv)
    args.seeds = parse_seeds(args.seeds)
    args.evals = [EvalSpec.parse(text) for text in args.eval] or [EvalSpec("eval", args.attacks, args.eval_subset)]
    if len({spec.name for spec in args.evals}) != len(args.evals):
        raise SystemExit("comparison: two --eval share a name; each writes NAME.json")
    return args


@dataclass(frozen=True)
class Run:
    """One training run of the comparison: a teacher (``seed`` None) or a row at a seed."""

    name: str
    seed: int | None

    def path(self, out: Path) -> Path:
        return out / self.name if self.seed is None else out / self.name / f"seed-{self.seed}"


class Comparison:
    """Runs the commands, logging each to ``commands.sh``; skips what is already done."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = self.out / "commands.sh"
        self.results = Path(args.results) if args.results else None

    def run(self, command: list[str]) -> None:
        line = shlex.join(["robustdistill", *command])
        with self.log.open("a") as log:
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}\n{line}\n")
        print(f"$ {line}", flush=True)
        result = subprocess.run([sys.executable, "-m", "robustdistill", *command], check=False)
        if result.returncode != 0:
            raise SystemExit(f"comparison: command failed with exit code {result.returncode}: {line}")

    def common(self, seed: int) -> list[str]:
        a = self.args
        options = ["--dataset", a.dataset, "--device", a.device, "--seed", str(seed)]
        if a.data_dir:
            options += ["--data-dir", a.data_dir]
        if a.subset:
            options += ["--subset", str(a.subset)]
        return options + list(a.train_option)

    def train(self, run_dir: Path, plugins: tuple[str, ...] | list[str], model: str, epochs: int, seed: int,
              options: tuple[str, ...] = (), teacher: Path | None = None) -> None:
        command = ["train", *(f"--plugin={p}" for p in plugins), "--model", model, "--epochs", str(epochs),
                   *self.common(seed), *options, "--out", str(run_dir)]
        if teacher is not None:
            command += ["--teacher", str(teacher)]
        if (run_dir / "last.pt").exists():
            if _finished_epochs(run_dir) >= epochs:
                return
            command.append("--resume")
        self.run(command)

    def evaluate(self, run_dir: Path) -> None:
        for spec in self.args.evals:
            results = run_dir / f"{spec.name}.json"
            if results.exists() and not json.loads(results.read_text()).get("pending"):
                continue  # finished; an interrupted evaluation is continued by eval itself
            command = ["eval", str(run_dir / "last.pt"), "--attacks", spec.attacks, "--device", self.args.device,
                       "--json", str(results), *self.args.eval_option]
            if spec.subset:
                command += ["--subset", str(spec.subset)]
            self.run(command)

    def report(self, run_dirs: list[Path], with_models: bool) -> None:
        command = ["report", *map(str, run_dirs), "--out", str(self.out / "report"), "--device", self.args.device]
        if not with_models:
            command.append("--no-models")
        self.run(command)

    def mirror(self, runs: list[Run]) -> None:
        """Copy the small files of ``runs``, commands.sh and the summary into ``--results``."""
        if self.results is None:
            return
        for run in runs:
            source = run.path(self.out)
            target = run.path(self.results)
            names = [*SMALL_FILES, *(p.name for p in eval_files(source, self.args.evals) if p.exists())]
            for name in names:
                if (source / name).exists():
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source / name, target / name)
        for name in ("commands.sh", "summary.md", "summary.json"):
            if (self.out / name).exists():
                self.results.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.out / name, self.results / name)


def _finished_epochs(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return sum(1 for line in metrics.read_text().splitlines() if line.strip()) if metrics.exists() else 0


# -- the summary over seeds ---------------------------------------------------------------------------------

def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(values: list[float]) -> str:
    if not values:
        return "—"
    mean, sd = mean_sd([100 * v for v in values])
    return f"{mean:.2f}" if sd is None else f"{mean:.2f} ± {sd:.2f}"


def _accuracies(path: Path) -> dict[str, float]:
    """Finished attacks of an eval file (accuracy in [0, 1] by attack name)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    pending = set(data.get("pending") or [])
    return {k: float(v) for k, v in data.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in pending and k != "eps"
            and k != "n"}


def seeds_on_disk(out: Path, rows: list[str], seeds: list[int]) -> list[int]:
    """``seeds`` and every other seed a row of the folder has a run directory of (an earlier invocation's)."""
    found = {int(p.name[len("seed-"):]) for row in rows for p in (out / row).glob("seed-*")
             if p.name[len("seed-"):].isdigit()}
    return sorted(set(seeds) | found)


def eval_files(run_dir: Path, evals: list[EvalSpec]) -> list[Path]:
    """The run's evaluation files: the requested ones first, then any other ``robustdistill eval`` result there
    (an evaluation an earlier invocation asked for)."""
    requested = [run_dir / f"{spec.name}.json" for spec in evals]
    others = sorted(p for p in run_dir.glob("*.json") if p not in requested and p.name not in SMALL_FILES)
    return [*requested, *(p for p in others if "settings" in json.loads(p.read_text()))]


def collect(out: Path, rows: list[str], seeds: list[int], evals: list[EvalSpec]) -> dict[str, Any]:
    """Every finished accuracy: ``{row: {column: {seed: accuracy}}}`` with the columns (``EVAL/attack``) in table
    order, and the number of test images of each evaluation."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    columns: list[str] = []
    images: dict[str, int] = {}
    for row in rows:
        for seed in seeds:
            for path in eval_files(Run(row, seed).path(out), evals):
                if not path.exists():
                    continue
                images.setdefault(path.stem, int(json.loads(path.read_text()).get("n", 0)))
                for attack, accuracy in _accuracies(path).items():
                    column = f"{path.stem}/{attack}"
                    if column not in columns:
                        columns.append(column)
                    table.setdefault(row, {}).setdefault(column, {})[seed] = accuracy
    return {"rows": table, "columns": columns, "images": images}


def igdm_differences(table: dict[str, dict[str, dict[int, float]]]) -> dict[str, dict[str, list[float]]]:
    """Per reference row (a base, or its ``-igdm-base`` variant) with ``BASE+igdm`` beside it:
    ``{column: [BASE+igdm − reference of each seed both finished]}``."""
    differences: dict[str, dict[str, list[float]]] = {}
    for base in BASES:
        with_igdm = table.get(f"{base}+igdm")
        if not with_igdm:
            continue
        for reference in (base, f"{base}{IGDM_BASE}"):
            alone = table.get(reference)
            if not alone:
                continue
            for column, by_seed in with_igdm.items():
                paired = [by_seed[s] - alone[column][s] for s in sorted(by_seed) if s in alone.get(column, {})]
                if paired:
                    differences.setdefault(reference, {})[column] = paired
    return differences


def _column_title(column: str, images: dict[str, int]) -> str:
    spec, attack = column.split("/", 1)
    n = images.get(spec)
    return f"{ATTACK_TITLES.get(attack, attack)} ({n})" if n else ATTACK_TITLES.get(attack, attack)


def write_summary(out: Path, rows: list[str], seeds: list[int], evals: list[EvalSpec]) -> None:
    """``summary.md`` and ``summary.json``: mean ± sd over seeds per row, and IGDM − base per base, over every
    seed and evaluation in the folder (also those of earlier invocations)."""
    seeds = seeds_on_disk(out, rows, seeds)
    data = collect(out, rows, seeds, evals)
    table, columns, images = data["rows"], data["columns"], data["images"]
    differences = igdm_differences(table)
    titles = [_column_title(c, images) for c in columns]
    lines = [f"# Summary over seeds {', '.join(map(str, seeds))}", "",
             "Accuracy in %, mean ± sample standard deviation over the seeds finished (the number of test "
             "images in brackets); `seeds` counts the runs with every column finished.", "",
             "| row | seeds | " + " | ".join(titles) + " |", "|---|---|" + "---|" * len(columns)]
    for row in rows:
        cells = table.get(row, {})
        complete = sum(1 for s in seeds if all(s in cells.get(c, {}) for c in columns)) if columns else 0
        lines.append(f"| {row} | {complete} | " + " | ".join(_cell(list(cells.get(c, {}).values())) for c in columns)
                     + " |")
    if differences:
        lines += ["", "IGDM − base in points: `BASE+igdm` minus the row named, mean ± sd over the seeds both runs "
                  "finished, of the difference within each seed (paired: the same seed, hence the same initial "
                  "weights and data order; per-seed values in summary.json). A row `BASE-igdm-base` is the base as "
                  "`BASE+igdm` trains it (the IGDM code's variant), without IGDM's term.", "",
                  "| base | " + " | ".join(titles) + " |", "|---|" + "---|" * len(columns)]
        for base, by_column in differences.items():
            lines.append(f"| {base} | " + " | ".join(_cell(by_column.get(c, [])) for c in columns) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    summary = {"seeds": seeds, "images": images, "columns": columns,
               "rows": {row: {c: {str(s): v for s, v in by_seed.items()} for c, by_seed in cells.items()}
                        for row, cells in table.items()},
               "mean_sd": {row: {c: dict(zip(("mean", "sd"), mean_sd(list(by_seed.values()))))
                                 for c, by_seed in cells.items()} for row, cells in table.items()},
               "igdm_minus_base": {base: {c: {"per_seed": d, **dict(zip(("mean", "sd"), mean_sd(d)))}
                                          for c, d in by_column.items()} for base, by_column in differences.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


# -- main ----------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Hold ``OUT/.comparison.lock`` while running: a second comparison on the same folder stops at once."""
    handle = (out / ".comparison.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SystemExit(f"comparison: another comparison is running in {out}; wait for it or stop it first") \
            from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = student_rows(args.teacher)
    if args.list:
        for row in rows:
            print(f"{row.name:15s} --plugin {' --plugin '.join(row.plugins)} {' '.join(row.options)}"
                  f"{'  (teacher: ' + row.teacher + ')' if row.teacher else ''}")
        return 0
    if args.rows:
        wanted = [name.strip() for name in args.rows.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {row.name for row in rows})
        if unknown:
            raise SystemExit(f"comparison: unknown rows {', '.join(unknown)}; known: "
                             f"{', '.join(row.name for row in rows)}")
        rows = [row for row in rows if row.name in wanted]
    comparison = Comparison(args)
    with _lock(comparison.out):
        run_all(comparison, rows)
    return 0


def run_all(comparison: Comparison, rows: list[Row]) -> None:
    args = comparison.args
    order = [*TEACHERS, *(row.name for row in student_rows(args.teacher))]
    row_names = [row.name for row in rows]

    def finished_runs() -> list[Path]:
        """Every run of the folder, this invocation's and earlier ones', in table order."""
        found = []
        for name in order:
            for run in ([Run(name, None)] if name in TEACHERS else [Run(name, s) for s in args.seeds]):
                if (run.path(comparison.out) / "metrics.jsonl").exists():
                    found.append(run.path(comparison.out))
        return found

    def after(run: Run) -> None:
        write_summary(comparison.out, row_names, args.seeds, args.evals)
        comparison.report(finished_runs(), with_models=False)
        comparison.mirror([run])

    # Both teachers are rows of the full comparison; with --rows, only the teachers those rows need.
    needed = {row.teacher for row in rows if row.teacher} if args.rows else set(TEACHERS)
    for name in sorted(needed):
        teacher = Run(name, None)
        comparison.train(teacher.path(comparison.out), TEACHERS[name], args.teacher_model, args.teacher_epochs,
                         args.teacher_seed)
        comparison.evaluate(teacher.path(comparison.out))
        after(teacher)
    for seed in args.seeds:
        for row in rows:
            run = Run(row.name, seed)
            teacher = Run(row.teacher, None).path(comparison.out) / "last.pt" if row.teacher else None
            comparison.train(run.path(comparison.out), row.plugins, args.student_model, args.epochs, seed,
                             row.options, teacher)
            comparison.evaluate(run.path(comparison.out))
            after(run)
    if args.report:
        comparison.report(finished_runs(), with_models=True)
        comparison.mirror([])
    print(f"comparison: {len(finished_runs())} runs; summary in {comparison.out / 'summary.md'}, every run in "
          f"{comparison.out / 'report' / 'results.md'}")


if __name__ == "__main__":
    sys.exit(main())
