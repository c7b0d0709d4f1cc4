"""The training loop: epochs of steps (attack → student inputs → loss terms → optimiser step), checkpoints at
epoch ends, every ``--checkpoint-every`` steps and every ``--checkpoint-minutes`` of training.

A step is a few phases (:func:`new_step`, :func:`attack`, :func:`student_inputs`, :func:`loss_terms`,
:func:`optimise`); :func:`train_step` runs them in order, and the author kit runs the same functions.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import torch
from torch import Tensor

from ._context import LossTerm, StepContext
from ._config import RunConfig
from ._data import BatchIterator
from ._manager import PluginHost
from ._registry import RobustDistillError
from ._run import Run, build_run
from ._state import CHECKPOINT, EpochProgress


def autocast(run: Run) -> Any:
    if run.config.amp == "bf16" and run.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def new_step(run: Run, x: Tensor, y: Tensor, epoch: int, step: int) -> StepContext:
    """The context of one step over the batch ``(x, y)`` (channels_last where the run uses it)."""
    if run.config.channels_last == "on":
        x = x.contiguous(memory_format=torch.channels_last)
    return StepContext(x=x, y=y, run=run.view, epoch=epoch, step=step, _engine=run)


def attack(run: Run, ctx: StepContext) -> None:
    """The ``attack`` hook (firstresult): sets ``ctx.x_adv``."""
    ctx.x_adv = run.hooks.attack(ctx)


def student_inputs(run: Run, ctx: StepContext) -> None:
    """Run every declared student input through the student (training mode) before the ``loss`` hooks.

    Separately by default, in declaration order — the forwards the losses would make.
    ``--batch-student-forwards`` concatenates them into one forward (not exact: BatchNorm then normalises over
    the whole concatenated batch and updates its running statistics once).
    """
    inputs = run.hooks.student_inputs(ctx)
    ctx._declared.update(inputs)
    missing = {key: x for key, x in inputs.items() if key not in ctx._student_cache}
    if not missing:
        return
    model = run.trainer
    if not run.config.batch_student_forwards or len(missing) == 1:
        for key, x in missing.items():
            logits, feats = model(x, return_features=True)
            ctx._student_cache[key] = logits
            ctx._student_cache[f"{key}|features"] = (logits, feats)
        return
    logits, feats = model(torch.cat(list(missing.values())), return_features=True)
    sizes = [len(x) for x in missing.values()]
    for key, lg, ft in zip(missing, logits.split(sizes), feats.split(sizes)):
        ctx._student_cache[key] = lg
        ctx._student_cache[f"{key}|features"] = (lg, ft)


def loss_terms(run: Run, ctx: StepContext) -> list[LossTerm]:
    """Every active plugin's loss terms, re-weighted per sample where a ``sample_weights`` hook says so."""
    terms = run.hooks.loss(ctx)
    if not terms:
        raise RobustDistillError(f"the selected plugins ({', '.join(run.view.methods)}) contributed no loss term")
    return terms


def total_loss(terms: list[LossTerm]) -> Tensor:
    """Σ weight · value, in float32."""
    return sum(term.weight * term.value.float() for term in terms)  # type: ignore[return-value]


def optimise(run: Run, ctx: StepContext, terms: list[LossTerm]) -> Tensor:
    """Backpropagate the summed loss, step the optimisers (the student's, then those of modules added with
    ``stepped=True``), then call ``step_end``; returns the loss."""
    total = total_loss(terms)
    optimizers = run.optimizers()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    total.backward()
    for optimizer in optimizers:
        optimizer.step()
    run.hooks.event("step_end", run=run.view, ctx=ctx, terms=terms)
    return total.detach()


def train_step(run: Run, ctx: StepContext) -> tuple[Tensor, list[LossTerm]]:
    """One step: attack (firstresult) → declared student inputs → loss terms of every active plugin → optimiser."""
    run.student.train()
    with autocast(run):
        attack(run, ctx)
        student_inputs(run, ctx)
        terms = loss_terms(run, ctx)
    return optimise(run, ctx, terms), terms


def check_finite(run: Run, epoch: int) -> None:
    """Stop before anything is written when a loss term went NaN/Inf since the last checkpoint."""
    progress = run.progress
    sums = {"total": progress.loss_sum, **progress.term_sums}
    bad = [name for name, value in sums.items() if not math.isfinite(float(value))]
    if bad:
        kept = (f"the last good checkpoint in {run.out} is kept" if (run.out / CHECKPOINT).exists()
                else f"no checkpoint was written yet, so {run.out} holds no run to resume")
        raise RobustDistillError(
            f"the loss became non-finite in epoch {epoch} (term(s): {', '.join(bad)}); training stopped and {kept}. "
            "Lower --lr or check that term's plugin options")


class Stopped(KeyboardInterrupt):
    """The run was asked to stop (SIGTERM, SIGINT) and wrote a checkpoint first."""

    def __init__(self, signal_name: str, epoch: int, batch: int) -> None:
        super().__init__(f"stopped by {signal_name} at epoch {epoch}, step {batch} of the epoch, after writing a "
                         "checkpoint; the same command with --resume continues exactly from there")


class CheckpointClock:
    """Mid-epoch checkpoints: every ``--checkpoint-every`` steps, after ``--checkpoint-minutes`` of training, and at
    once when the process is asked to stop (SIGTERM — a scheduler's preemption or time limit — or a first SIGINT;
    a second SIGINT, a second or more later, stops without waiting).

    The time-based and stop decisions are agreed by every process (checked every few steps) in distributed runs.
    """

    AGREE_EVERY = 8  # steps between the processes' agreement on the clock in distributed runs
    REPEAT_AFTER = 1.0  # seconds after a first SIGINT from which a second one stops at once

    def __init__(self, run: Run) -> None:
        self.run = run
        self.every = run.config.checkpoint_every
        self.seconds = run.config.checkpoint_minutes * 60
        self.last = time.monotonic()
        self.signal: str | None = None  # the signal that asked this process to stop
        self.stopping = False  # every process agreed to stop after this checkpoint

    def saved(self) -> None:
        self.last = time.monotonic()

    @contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """Turn SIGTERM and a first SIGINT into a checkpoint and a stop at the next step (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        asked_at = 0.0

        def ask(signum: int, frame: Any) -> None:
            nonlocal asked_at
            if self.signal is not None and signum == signal.SIGINT:
                if time.monotonic() - asked_at > self.REPEAT_AFTER:
                    raise KeyboardInterrupt  # asked twice: stop now, the last checkpoint is kept
                return  # the same Ctrl-C reaching this process twice (a terminal's and a parent's forward)
            self.signal, asked_at = signal.Signals(signum).name, time.monotonic()

        previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def due(self, batch: int) -> bool:
        every = bool(self.every and batch % self.every == 0)
        if self.run.dist.world > 1:
            if batch % self.AGREE_EVERY:
                return every
            self.stopping = self.run.dist.any(self.signal is not None)
            late = bool(self.seconds) and time.monotonic() - self.last >= self.seconds
            return every or self.stopping or self.run.dist.any(self.run.dist.is_main and late)
        self.stopping = self.signal is not None
        return every or self.stopping or (bool(self.seconds) and time.monotonic() - self.last >= self.seconds)

    def stop_at_epoch_end(self) -> bool:
        """Whether every process agrees to stop now that the epoch's checkpoint is written."""
        self.stopping = self.run.dist.any(self.signal is not None) if self.run.dist.world > 1 else \
            self.signal is not None
        return self.stopping


def train_epoch(run: Run, batches: BatchIterator, epoch: int, clock: CheckpointClock) -> dict[str, Any]:
    """Train one epoch from ``run.progress`` (mid-epoch after a resume); returns the epoch's train metrics."""
    progress = run.progress
    started = time.perf_counter() - progress.seconds
    for x, y in batches.batches(start=progress.batch):
        x, y = run.dist.shard(x), run.dist.shard(y)
        ctx = new_step(run, x, y, epoch, (epoch - 1) * len(batches) + progress.batch)
        loss, terms = train_step(run, ctx)
        progress.add(loss, terms, len(y))
        progress.batch += 1
        progress.seconds = time.perf_counter() - started
        if progress.batch < len(batches) and clock.due(progress.batch):
            check_finite(run, epoch)
            run.save()
            clock.saved()
            if clock.stopping:
                raise Stopped(clock.signal or "a signal to another process", epoch, progress.batch)
    check_finite(run, epoch)
    seen = run.dist.sum(float(progress.seen))
    return {"loss": run.dist.sum(float(progress.loss_sum)) / max(seen, 1),
            "terms": {name: run.dist.sum(float(v)) / max(seen, 1) for name, v in progress.term_sums.items()},
            "weighted_terms": {name: run.dist.sum(float(v)) / max(seen, 1)
                               for name, v in progress.weighted_sums.items()},
            "train_seconds": progress.seconds, "images_per_s": seen / max(progress.seconds, 1e-9)}


def _out_of_memory(config: RunConfig) -> RobustDistillError:
    smaller = max(1, config.batch_size // 2)
    return RobustDistillError(f"out of GPU memory at --batch-size {config.batch_size}; try --batch-size {smaller} "
                              "(and --resume to continue from the last checkpoint)")


def train(config: RunConfig, host: PluginHost, resume: bool = False) -> Run:
    """Train as configured (``resume``: continue the run in ``config.out``); returns the finished run."""
    try:
        return _train(config, host, resume)
    except torch.cuda.OutOfMemoryError:
        raise _out_of_memory(config) from None


def start(run: Run) -> None:
    """Return to the checkpoint (if any) and call ``train_start`` — the run's records are written by the last of
    its implementations, so a plugin refusing the run there leaves the directory untouched."""
    if run.resume_from is not None:
        run.restore_training_state()
    run.hooks.event("train_start", run=run.view)
    if run.resume_from is not None:
        run.restore_optimisation_state()


def _train(requested: RunConfig, host: PluginHost, resume: bool) -> Run:
    run = build_run(requested, host, resume)
    config, view = run.config, run.view
    if resume and run.resume_from is None:
        run.dist.print(f"{run.out} holds no checkpoint yet: starting the run", flush=True)
    start(run)
    batches = BatchIterator(view.data.train_x, view.data.train_y, config.batch_size, shuffle=True, seed=config.seed,
                            device=run.device, augment=view.dataset.augment)
    clock = CheckpointClock(run)
    with clock.stop_on_signals():
        _epochs(run, batches, clock)
    run.hooks.event("train_end", run=view)
    run.dist.close()
    return run


def _epochs(run: Run, batches: BatchIterator, clock: CheckpointClock) -> None:
    config, view = run.config, run.view
    while view.epoch < config.epochs:
        epoch = view.epoch + 1
        batches.set_epoch(epoch)
        if run.progress.batch == 0:
            run.hooks.event("epoch_start", run=view, epoch=epoch)
        lr = run.optimizer.param_groups[0]["lr"]
        metrics = {"epoch": epoch, "lr": lr, **train_epoch(run, batches, epoch, clock)}
        run.step_schedules()
        ended = time.perf_counter()
        run.hooks.event("epoch_end", run=view, epoch=epoch, metrics=metrics)
        metrics["seconds"] = metrics["train_seconds"] + time.perf_counter() - ended
        view.history.append(metrics)
        view.epoch = epoch
        run.progress = EpochProgress.start(run.device)
        run.save()
        clock.saved()
        if view.epoch < config.epochs and clock.stop_at_epoch_end():
            raise Stopped(clock.signal or "a signal to another process", epoch + 1, 0)
