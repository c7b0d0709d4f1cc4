"""Train and evaluate every method under one protocol, writing everything under one folder.

    python scripts/comparison.py --out runs/comparison --device cuda --epochs 30 --teacher-epochs 30

Teachers (PGD-AT and TRADES, one architecture) are trained first; then each student row: natural,
PGD-AT and TRADES from scratch, ARD / RSLAD / AdaAD each with and without IGDM, IGAM, RRM, GradNorm
(GELU and ReLU), EdgeReg and PAG — same student architecture, epochs and schedule for all. Every row
is evaluated with ``robustdistill eval`` into ``ROW/eval.json``, and ``results.md`` is rewritten after
each row, so the table grows as rows finish and an interrupted comparison continues where it stopped
(a finished row is skipped, a half-trained one resumes). ``commands.sh`` records every command run.
``--rows`` picks rows by name; ``--list`` shows them.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TEACHERS = {"teacher-at": ["at"], "teacher-trades": ["trades"]}


@dataclass(frozen=True)
class Row:
    """One student: its plugins, extra train options and which teacher it distils from (if any)."""

    name: str
    plugins: tuple[str, ...]
    options: tuple[str, ...] = ()
    teacher: str | None = None


def student_rows(teacher: str) -> list[Row]:
    """The comparison's student rows, distilling from ``teacher`` where the method needs one."""
    rows = [Row("natural", ("natural",)), Row("at", ("at",)), Row("trades", ("trades",))]
    for base in ("ard", "rslad", "adaad"):
        rows.append(Row(base, (base,), teacher=teacher))
        rows.append(Row(f"{base}+igdm", (base, "igdm"), teacher=teacher))
    rows += [
        Row("igam", ("igam",), teacher=teacher),
        Row("rrm", ("rrm",), teacher=teacher),
        Row("gradnorm-gelu", ("gradnorm",), ("--activation", "gelu")),
        Row("gradnorm-relu", ("gradnorm",), ("--activation", "relu")),
        Row("edgereg", ("edgereg",), ("--activation", "gelu")),
        Row("pag", ("pag",), teacher=teacher),
    ]
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/comparison", help="folder for all runs and the results table")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--teacher-model", default="resnet18")
    parser.add_argument("--student-model", default="cnn")
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=30, help="epochs of every student row")
    parser.add_argument("--teacher", default="teacher-at", choices=sorted(TEACHERS),
                        help="the teacher the distillation rows use")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset", type=int, default=None, help="train on the first N images (quick trials)")
    parser.add_argument("--eval-subset", type=int, default=None, help="evaluate on the first N test images "
                                                                     "(default: all of them)")
    parser.add_argument("--attacks", default="clean,fgsm,pgd20,cw,autoattack")
    parser.add_argument("--rows", default=None, help="comma-separated row names (default: all; see --list)")
    parser.add_argument("--train-option", action="append", default=[], metavar="OPT",
                        help="extra option for every train command, repeatable (e.g. --train-option=--amp=off)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                        help="write the figures of `robustdistill report` at the end")
    return parser.parse_args(argv)


class Comparison:
    """Runs the commands, logging each to ``commands.sh``; skips what is already done."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = self.out / "commands.sh"

    def run(self, command: list[str]) -> None:
        line = shlex.join(["robustdistill", *command])
        with self.log.open("a") as log:
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}\n{line}\n")
        print(f"$ {line}", flush=True)
        result = subprocess.run([sys.executable, "-m", "robustdistill", *command], check=False)
        if result.returncode != 0:
            raise SystemExit(f"comparison: command failed with exit code {result.returncode}: {line}")

    def common(self) -> list[str]:
        a = self.args
        options = ["--dataset", a.dataset, "--device", a.device, "--seed", str(a.seed)]
        if a.data_dir:
            options += ["--data-dir", a.data_dir]
        if a.subset:
            options += ["--subset", str(a.subset)]
        return options + list(a.train_option)

    def train(self, run_dir: Path, plugins: tuple[str, ...] | list[str], model: str, epochs: int,
              options: tuple[str, ...] = (), teacher: Path | None = None) -> None:
        command = ["train", *(f"--plugin={p}" for p in plugins), "--model", model, "--epochs", str(epochs),
                   *self.common(), *options, "--out", str(run_dir)]
        if teacher is not None:
            command += ["--teacher", str(teacher)]
        if (run_dir / "last.pt").exists():
            if _finished_epochs(run_dir) >= epochs:
                return
            command.append("--resume")
        self.run(command)

    def evaluate(self, run_dir: Path) -> None:
        results = run_dir / "eval.json"
        if results.exists() and not json.loads(results.read_text()).get("pending"):
            return  # finished; an interrupted evaluation is continued by eval itself
        command = ["eval", str(run_dir / "last.pt"), "--attacks", self.args.attacks, "--device", self.args.device,
                   "--json", str(run_dir / "eval.json")]
        if self.args.eval_subset:
            command += ["--subset", str(self.args.eval_subset)]
        self.run(command)

    def report(self, run_dirs: list[Path], with_models: bool) -> None:
        command = ["report", *map(str, run_dirs), "--out", str(self.out / "report"), "--device", self.args.device]
        if not with_models:
            command.append("--no-models")
        self.run(command)


def _finished_epochs(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return sum(1 for line in metrics.read_text().splitlines() if line.strip()) if metrics.exists() else 0


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
    order = [*TEACHERS, *(row.name for row in student_rows(args.teacher))]
    comparison = Comparison(args)

    def finished_runs() -> list[Path]:
        """Every run of the folder, this invocation's and earlier ones', in table order."""
        return [comparison.out / name for name in order if (comparison.out / name / "metrics.jsonl").exists()]

    # Both teachers are rows of the full comparison; with --rows, only the teachers those rows need.
    needed = {row.teacher for row in rows if row.teacher} if args.rows else set(TEACHERS)
    for name in sorted(needed):
        run_dir = comparison.out / name
        comparison.train(run_dir, TEACHERS[name], args.teacher_model, args.teacher_epochs)
        comparison.evaluate(run_dir)
        comparison.report(finished_runs(), with_models=False)
    for row in rows:
        run_dir = comparison.out / row.name
        teacher = comparison.out / row.teacher / "last.pt" if row.teacher else None
        comparison.train(run_dir, row.plugins, args.student_model, args.epochs, row.options, teacher)
        comparison.evaluate(run_dir)
        comparison.report(finished_runs(), with_models=False)
    if args.report:
        comparison.report(finished_runs(), with_models=True)
    print(f"comparison: {len(finished_runs())} runs; table in {comparison.out / 'report' / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
