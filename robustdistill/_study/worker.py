"""A worker: takes queued trials one after another and runs each as a ``train`` command (then ``eval``), beating
the trial's heartbeat, following its ``metrics.jsonl`` for pruning, and telling the storage how it ended. A
SIGTERM or SIGINT is passed on to the running child, which checkpoints at its next step and stops; the trial is
queued again."""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from .._config import format_duration
from . import storage as store
from .spec import Searched, StudySpec
from .trials import (
    EVAL_LOG,
    TRAIN_LOG,
    Child,
    RunLock,
    eval_command,
    objective_value,
    read_eval,
    read_metrics,
    teacher_command,
    trial_command,
)

if TYPE_CHECKING:
    import optuna

POLL = 0.5
"""Seconds between looks at a running child and its ``metrics.jsonl``."""


def visible_gpus() -> list[str]:
    """The GPUs the workers are pinned to: those ``CUDA_VISIBLE_DEVICES`` names, else every one torch sees."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    named = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return named[:count] if named else [str(i) for i in range(count)]


@dataclass(frozen=True)
class WorkerPlan:
    """What a worker process needs: the study, where it lives, and the environment of its trials."""

    spec: StudySpec
    out: str
    storage: str
    heartbeat: int
    index: int
    env: dict[str, str]


class Stopped(Exception):
    """The worker was asked to stop while a trial ran."""


class Worker:
    """Runs the queued trials of one study until none is left (see the module's docstring)."""

    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self.spec = plan.spec
        self.out = Path(plan.out)
        self.storage = store.open_storage(plan.storage, plan.heartbeat)
        self.study = store.load(self.spec, self.storage)
        self.beats = store.beats(self.storage)
        self.child: Child | None = None
        self.trial_id = -1
        self.stopping = False

    def say(self, text: str) -> None:
        print(f"worker {self.plan.index}: {text}", flush=True)

    def stop(self) -> None:
        """Stop the running trial (its run keeps its checkpoint), queue it again, and take no other."""
        self.stopping = True
        if self.child is not None:
            self.child.stop()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    def run(self) -> None:
        optuna = store.import_optuna()
        running = (optuna.trial.TrialState.RUNNING,)
        if not self.train_teachers():
            return
        while not self.stopping:
            if self.beats:
                optuna.storages.fail_stale_trials(self.study)
            taken = store.take(self.study, self.storage)
            if taken is not None:
                self.run_trial(*taken)
            elif self.study.get_trials(deepcopy=False, states=running):
                time.sleep(max(POLL, min(5.0, self.plan.heartbeat / 2)))  # another worker's trial may be retried
            else:
                return

    def train_teachers(self) -> bool:
        """Train and evaluate the study's teachers, each by one worker while the others wait for it (a finished one
        is resumed at once, its evaluations skipped); ``False`` when one failed or the worker was stopped."""
        for teacher in self.spec.teachers:
            command = teacher_command(self.spec, teacher)
            run_dir = command.run_dir(self.out)
            lock = RunLock(run_dir)
            try:
                self.wait_for(lock, None)
                self.say(f"teacher {teacher.name} → {run_dir}")
                steps = [(command.train(self.out), TRAIN_LOG)] + [(eval_command(e, run_dir), EVAL_LOG)
                                                                  for e in self.spec.evaluate]
                for argv, log in steps:
                    status = self.follow(Child(argv, run_dir / log, self.plan.env, lock), None)
                    if self.stopping:
                        return False
                    if status != 0:
                        self.say(f"teacher {teacher.name} failed: {argv[3]} exited with status {status} "
                                 f"({run_dir / log}); no trial is run without it")
                        return False
            except Stopped:
                return False
            finally:
                lock.close()
        return True

    def suggest(self, trial: optuna.Trial, searched: Searched) -> float | int:
        if searched.integer:
            return trial.suggest_int(searched.name, int(searched.low), int(searched.high), log=searched.log)
        return trial.suggest_float(searched.name, searched.low, searched.high, log=searched.log)

    def run_trial(self, trial: optuna.Trial, trial_id: int) -> None:
        optuna = store.import_optuna()
        self.trial_id = trial_id
        cell = self.spec.cell(trial.user_attrs["cell"])
        command = trial_command(self.spec, cell, {s.name: self.suggest(trial, s) for s in self.spec.search})
        run_dir = command.run_dir(self.out)
        trial.set_user_attr("run_dir", str(run_dir.relative_to(self.out)))
        trial.set_user_attr("command", " ".join(["robustdistill", "train", *command.argv, "--out", str(run_dir),
                                                 "--resume"]))
        self.say(f"trial {trial.number} ({cell.key}) → {run_dir}")
        started = time.monotonic()
        lock = RunLock(run_dir)
        try:
            self.wait_for(lock, trial)
            outcome = self.train(trial, command.train(self.out), run_dir, lock)
            if outcome is None and self.spec.evaluate:
                outcome = self.evaluate(trial, run_dir, lock)
            self.finish(trial, run_dir, outcome, time.monotonic() - started)
        except Stopped:
            self.tell(trial, optuna.trial.TrialState.FAIL, reason="stopped by a signal; queued again")
            store.retry(self.study, self.storage.get_trial(trial_id))
            self.say(f"trial {trial.number} stopped; its checkpoint is kept and it is queued again")
        finally:
            lock.close()

    def wait_for(self, lock: RunLock, trial: optuna.Trial | None) -> None:
        """Take the run directory's lock, beating meanwhile (a child of a dead worker may still hold it)."""
        while not lock.acquire():
            if self.stopping:
                raise Stopped
            self.beat(trial)
            time.sleep(POLL)

    def beat(self, trial: optuna.Trial | None) -> None:
        if self.beats and trial is not None:
            self.storage.record_heartbeat(self.trial_id)

    def follow(self, child: Child, trial: optuna.Trial | None, prune: bool = False) -> int:
        """Wait for the child to end, beating (and, with ``prune``, stopping it when the pruner says so); returns
        its exit status."""
        self.child = child
        last_beat = time.monotonic()
        try:
            while child.process.poll() is None:
                if self.stopping:
                    child.stop()
                if time.monotonic() - last_beat >= self.plan.heartbeat:
                    self.beat(trial)
                    last_beat = time.monotonic()
                if prune and self.report(trial, decide=True):
                    child.stop()
                time.sleep(POLL)
            return child.process.wait()
        finally:
            self.child = None

    def report(self, trial: optuna.Trial, decide: bool) -> bool:
        """Report the epochs ``metrics.jsonl`` gained to the pruner; with ``decide``, ``True`` (and the reason
        recorded) when the trial is to be pruned."""
        if "pruned" in trial.user_attrs:
            return True
        metric = self.spec.objective.metric
        reported = trial.user_attrs.get("reported", 0)
        for record in read_metrics(Path(self.out, trial.user_attrs["run_dir"])):
            epoch = int(record["epoch"])
            if epoch <= reported or record.get(metric) is None:
                continue
            trial.report(float(record[metric]), epoch)
            trial.set_user_attr("reported", epoch)
            reported = epoch
            if decide and trial.should_prune():
                reason = (f"pruned after epoch {epoch}: {metric} {record[metric]:.4f} not among the best "
                          f"1/{self.spec.pruning.reduction_factor} of the trials at that epoch (successive halving)")
                trial.set_user_attr("pruned", reason)
                return True
        return False

    def train(self, trial: optuna.Trial, argv: list[str], run_dir: Path, lock: RunLock) -> str | None:
        """Run the train command; returns how the trial ended early (``pruned``, ``failed: …``) or ``None``."""
        pruning = self.spec.pruning is not None
        status = self.follow(Child(argv, run_dir / TRAIN_LOG, self.plan.env, lock), trial, prune=pruning)
        if pruning and self.report(trial, decide=False):
            return "pruned"
        if self.stopping:
            raise Stopped
        if status != 0:
            return f"failed: train exited with status {status} ({run_dir / TRAIN_LOG})"
        return None

    def evaluate(self, trial: optuna.Trial, run_dir: Path, lock: RunLock) -> str | None:
        for evaluation in self.spec.evaluate:
            status = self.follow(Child(eval_command(evaluation, run_dir), run_dir / EVAL_LOG, self.plan.env, lock),
                                 trial)
            if self.stopping:
                raise Stopped
            if status != 0:
                return f"failed: eval exited with status {status} ({run_dir / EVAL_LOG})"
        trial.set_user_attr("test", {e.name: read_eval(run_dir, e) for e in self.spec.evaluate})
        return None

    def finish(self, trial: optuna.Trial, run_dir: Path, outcome: str | None, seconds: float) -> None:
        optuna = store.import_optuna()
        trial.set_user_attr("seconds", seconds)
        if outcome == "pruned":
            self.tell(trial, optuna.trial.TrialState.PRUNED)
            self.say(f"trial {trial.number} {trial.user_attrs['pruned']}")
            return
        scored = objective_value(read_metrics(run_dir), self.spec.objective) if outcome is None else None
        if scored is None:
            reason = outcome or (f"failed: metrics.jsonl records no {self.spec.objective.metric} (is a validation "
                                 "split held out?)")
            self.tell(trial, optuna.trial.TrialState.FAIL, reason=reason)
            self.say(f"trial {trial.number} {reason}")
            return
        value, epoch = scored
        trial.set_user_attr("epoch", epoch)
        self.tell(trial, optuna.trial.TrialState.COMPLETE, value)
        self.say(f"trial {trial.number} done in {format_duration(seconds)}: {self.spec.objective.title} "
                 f"{value:.4f} (epoch {epoch})")

    def tell(self, trial: optuna.Trial, state: Any, value: float | None = None, reason: str | None = None) -> None:
        """Record how the trial ended; a trial the storage already failed (its heartbeat went stale and a copy was
        queued) is left to that copy."""
        optuna = store.import_optuna()
        try:
            if reason is not None:
                trial.set_user_attr("failed", reason)
            self.study.tell(trial, value, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.say(f"trial {trial.number} was retried elsewhere while it ran; its copy records the result")


def work(plan: WorkerPlan) -> None:
    """The body of a worker process."""
    worker = Worker(plan)
    signal.signal(signal.SIGTERM, worker.on_signal)
    signal.signal(signal.SIGINT, worker.on_signal)
    worker.run()
