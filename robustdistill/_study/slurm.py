"""The workers of a study as a SLURM array job, through submitit: each array task is one worker whose trials'
environment is made on its node. Before the time limit SLURM signals the task; its ``checkpoint`` stops the running
``train`` as Ctrl-C does (the run keeps its checkpoint), queues the trial again, and the task is requeued."""
from __future__ import annotations

import os
import shutil
import signal
import threading
from dataclasses import replace
from pathlib import Path

import submitit

from .._command_config import StudyConfig
from .._registry import RobustDistillError
from .spec import StudySpec
from .trials import worker_env
from .worker import Worker, WorkerPlan, visible_gpus

PREEMPT_SIGNAL = signal.SIGUSR2
"""The signal SLURM sends before the time limit (submitit's default); the trials never see it."""


def node_env() -> dict[str, str]:
    """The environment of this task's trials: every GPU SLURM gave the task, else the task's CPU threads."""
    gpus = visible_gpus()
    return worker_env(0, 1, [",".join(gpus)] if gpus else [], len(os.sched_getaffinity(0)))


class ArrayWorker(submitit.helpers.Checkpointable):
    """One array task: a worker of the study, run beside the main thread, which stays free for submitit's signal
    handler."""

    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.worker: Worker | None = None
        self.stopping = False
        self.error: BaseException | None = None

    def __reduce__(self) -> tuple[type[ArrayWorker], tuple[WorkerPlan]]:
        """Pickled as its plan: a requeued task starts afresh."""
        return ArrayWorker, (self.plan,)

    def __call__(self, index: int) -> None:
        self.thread = threading.Thread(target=self.work, args=(replace(self.plan, index=index, env=node_env()),),
                                       name=f"worker-{index}")
        self.thread.start()
        while self.thread.is_alive():
            self.thread.join(1.0)  # returns to the main thread now and then, where signal handlers run
        if self.error is not None:
            raise self.error

    def work(self, plan: WorkerPlan) -> None:
        """The worker's thread; the trials it starts inherit its blocked preemption signal."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {PREEMPT_SIGNAL})
        try:
            worker = Worker(plan)
            with self.lock:
                self.worker = worker
                stop = self.stopping
            if stop:
                worker.stop()
            worker.run()
        except BaseException as err:  # noqa: BLE001 (re-raised by the main thread, so that the job reports it)
            self.error = err

    def checkpoint(self, index: int) -> submitit.helpers.DelayedSubmission:
        """Stop the running trial at its checkpoint and queue it again (the worker's own way of stopping), then
        hand submitit a fresh worker of the same task to requeue."""
        with self.lock:
            self.stopping = True
            worker = self.worker
        if worker is not None:
            worker.stop()
        if self.thread is not None:
            self.thread.join()
        return submitit.helpers.DelayedSubmission(ArrayWorker(self.plan), index)


def submit(spec: StudySpec, out: Path, url: str, config: StudyConfig) -> list[submitit.Job[None]]:
    """Submit ``config.workers`` workers of the study as one array job; returns its jobs."""
    cluster = None if config.slurm_cluster == "auto" else config.slurm_cluster
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise RobustDistillError("--slurm: sbatch is not on this machine's PATH; submit from a SLURM login node "
                                 "(--slurm-cluster local runs the jobs on this machine)")
    executor = submitit.AutoExecutor(folder=Path(config.slurm_folder or out / "slurm"), cluster=cluster)
    partition = {"slurm_partition": config.slurm_partition} if config.slurm_partition else {}
    executor.update_parameters(name=f"study-{spec.name}", timeout_min=config.slurm_time, tasks_per_node=1,
                               gpus_per_node=config.slurm_gpus_per_task, slurm_array_parallelism=config.workers,
                               **partition)
    plan = WorkerPlan(spec, str(out), url, config.heartbeat, 0, {})
    return executor.map_array(ArrayWorker(plan), range(config.workers))


def failures(jobs: list[submitit.Job[None]]) -> list[str]:
    """A line for each ended job that did not finish its work: the error's first line and the job's log."""
    lines = []
    for job in jobs:
        try:
            error: Exception | None = job.exception()
        except submitit.core.utils.UncompletedJobError as err:
            error = err
        if error is not None:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            lines.append(f"job {job.job_id} failed: {first} (its log: {job.paths.stderr})")
    return lines
