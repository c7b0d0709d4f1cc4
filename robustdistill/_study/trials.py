"""A trial as an ordinary ``robustdistill train`` command, in a run directory named by a hash of its options, so
the same trial launched again (by any worker, after any kill) resumes that directory. This module does not
import torch or Optuna."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .spec import Cell, Evaluation, Objective, StudySpec, Teacher

LOCK = ".trial.lock"
TRAIN_LOG = "train.log"
EVAL_LOG = "eval.log"
METRICS = "metrics.jsonl"
TEACHERS = "teachers"
"""The study folder's subfolder of the teachers' run directories."""


class StudyPath(str):
    """An option value that is a path inside the study folder: hashed as written, passed to ``train`` under the
    study's folder (so a trial's directory name does not depend on where the study lives)."""


def option_argv(options: Mapping[str, Any]) -> list[str]:
    """Option-file values as command-line arguments, by option name: ``{lr: 0.1, amp: off}`` → ``--amp off --lr
    0.1``; ``true``/``false`` → ``--flag``/``--no-flag``; a list → the option once per value."""
    argv = []
    for key in sorted(options):
        value = options[key]
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is True:
                argv.append(f"--{key}")
            elif v is False:
                argv.append(f"--no-{key}")
            else:
                argv += [f"--{key}", str(v)]
    return argv


@dataclass(frozen=True)
class TrialCommand:
    """One trial's ``train`` command: its row's plugins and every option it sets."""

    row: str
    plugins: tuple[str, ...]
    options: dict[str, Any]
    folder: str = "trials"

    @property
    def argv(self) -> list[str]:
        """The train arguments, without ``--out`` (the same trial always gives the same list)."""
        return self._argv(self.options)

    def _argv(self, options: Mapping[str, Any]) -> list[str]:
        return [arg for plugin in self.plugins for arg in ("--plugin", plugin)] + option_argv(options)

    @property
    def digest(self) -> str:
        return hashlib.sha256("\0".join(self.argv).encode()).hexdigest()[:12]

    def run_dir(self, out: Path) -> Path:
        """``OUT/trials/<row>-<hash>`` (a teacher's: ``OUT/teachers/<name>-<hash>``)."""
        return out / self.folder / f"{self.row}-{self.digest}"

    def train(self, out: Path) -> list[str]:
        """The whole train command line: a run directory holding a checkpoint is resumed, else started."""
        options = {k: str(out / v) if isinstance(v, StudyPath) else v for k, v in self.options.items()}
        return [sys.executable, "-m", "robustdistill", "train", *self._argv(options), "--out", str(self.run_dir(out)),
                "--resume"]


def teacher_command(spec: StudySpec, teacher: Teacher) -> TrialCommand:
    """The command of one of the study's teachers: the fixed options (without ``teacher``), then its own."""
    options = {k: v for k, v in spec.train.items() if k != "teacher"}
    return TrialCommand(teacher.name, teacher.plugins, {**options, **teacher.options}, folder=TEACHERS)


def trial_command(spec: StudySpec, cell: Cell, searched: Mapping[str, Any]) -> TrialCommand:
    """The command of a trial of ``cell`` with the searched options' values: the fixed options, then the row's,
    the cell's listed values, the searched values and the seed, each over the ones before; a ``teacher`` that
    names one of the study's teachers is its run directory."""
    options = {**spec.train, **cell.row.options, **dict(cell.values), **searched, "seed": cell.seed}
    teachers = {teacher.name: teacher for teacher in spec.teachers}
    if options.get("teacher") in teachers:
        taught = teacher_command(spec, teachers[options["teacher"]])
        options["teacher"] = StudyPath(taught.run_dir(Path()).as_posix())
    return TrialCommand(cell.row.name, cell.row.plugins, options)


def eval_command(evaluation: Evaluation, run_dir: Path) -> list[str]:
    """``robustdistill eval`` of a finished run on the test set, into ``NAME.json`` (resumable)."""
    argv = [sys.executable, "-m", "robustdistill", "eval", str(run_dir), "--attacks", evaluation.attacks,
            "--json", str(run_dir / f"{evaluation.name}.json"), *option_argv(evaluation.options)]
    return argv + (["--subset", str(evaluation.subset)] if evaluation.subset else [])


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The epochs ``metrics.jsonl`` holds so far (a line still being written is left for the next look)."""
    try:
        text = (run_dir / METRICS).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n") and line.strip()]


def objective_value(records: list[dict[str, Any]], objective: Objective) -> tuple[float, int] | None:
    """The objective's value and epoch: the last epoch's metric, or the best epoch's (``None`` when no epoch
    records the metric)."""
    scored = [(float(r[objective.metric]), int(r["epoch"])) for r in records if r.get(objective.metric) is not None]
    if not scored:
        return None
    if objective.epoch == "last":
        return scored[-1]
    pick = max if objective.direction == "maximize" else min
    return pick(scored, key=lambda item: item[0])


def read_eval(run_dir: Path, evaluation: Evaluation) -> dict[str, Any]:
    """The finished attacks of an evaluation's ``NAME.json`` and the number of images."""
    data = json.loads((run_dir / f"{evaluation.name}.json").read_text(encoding="utf-8"))
    attacks = [name for name in data.get("seconds", {}) if name not in data.get("pending", [])]
    return {"accuracy": {name: data[name] for name in attacks}, "n": data.get("n")}


class RunLock:
    """An exclusive lock on a run directory, held by the worker and inherited by its ``train`` child: a trial
    whose worker died while the child lives on is not run a second time beside it."""

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.file: IO[bytes] = open(run_dir / LOCK, "ab")  # noqa: SIM115 (held until close(), across the trial)

    def acquire(self) -> bool:
        """Take the lock if it is free."""
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        self.file.close()


class Child:
    """A ``train`` or ``eval`` command of a trial, its output appended to a log in the run directory."""

    def __init__(self, argv: list[str], log: Path, env: Mapping[str, str], lock: RunLock) -> None:
        with open(log, "ab") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=dict(env),
                                            pass_fds=(lock.file.fileno(),), stdin=subprocess.DEVNULL)
        self.log = log

    def stop(self) -> None:
        """Ask it to stop as Ctrl-C does: ``train`` writes a checkpoint at its next step and stops, ``eval`` keeps
        its finished attacks."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)

    def last_line(self) -> str:
        lines = [line for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""


def worker_env(index: int, workers: int, gpus: list[str], cpus: int) -> dict[str, str]:
    """The environment of worker ``index``'s trials: its own GPU when there are GPUs (shared round-robin when
    there are more workers than GPUs), else its share of the CPU threads."""
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    else:
        threads = str(max(1, cpus // workers))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env
