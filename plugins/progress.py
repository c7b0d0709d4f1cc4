"""What ``train`` prints (main process): a start line, progress during each epoch, and one line per epoch.

On a terminal the progress is a bar; in a log file (stderr not a terminal) it is a line every
``--progress-interval`` seconds (and one early in each launch) with the step, the loss, images/s and the
time left. The epoch line gives the loss as the sum of its **weighted** terms (``weight · value``: the
share each term has in what is minimised), then the validation accuracies.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

from tqdm import tqdm

from robustdistill import hookimpl
from robustdistill.api import LossTerm, Option, RunView, StepContext, format_duration

EARLY_REPORT_STEP = 10  # a log file hears from a new launch after this many steps, whatever the interval


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--progress-interval", default=60.0, fixed_on_resume=False,
                    help="seconds between progress lines when stderr is not a terminal (a log file)"))


def weighted_loss_line(metrics: dict[str, Any]) -> str:
    """``loss 1.8931 = igdm 0.8340 + ce_adv 1.0600``: the loss as the sum of its weighted terms."""
    parts = " + ".join(f"{name} {value:.4f}" for name, value in metrics.get("weighted_terms", {}).items())
    return f"loss {metrics['loss']:.4f}" + (f" = {parts}" if parts else "")


class Progress:
    """Per-launch progress state: timing since this process started stepping, and the terminal bar."""

    def __init__(self, run: RunView) -> None:
        self.run = run
        self.tty = sys.stderr.isatty()
        self.interval = run.config.progress.interval
        self.started = self.last_line = time.monotonic()
        self.steps = 0
        self.images = 0
        self.bar: tqdm | None = None

    def step(self, ctx: StepContext, terms: list[LossTerm]) -> None:
        run = self.run
        self.steps += 1
        self.images += len(ctx.y) * run.world_size
        batch = ctx.step - (ctx.epoch - 1) * run.steps_per_epoch + 1
        now = time.monotonic()
        if self.tty:
            if self.bar is None:
                self.bar = tqdm(total=run.steps_per_epoch, initial=batch - 1, desc=f"epoch {ctx.epoch}/{ctx.epochs}",
                                unit="batch", leave=False)
            self.bar.update(1)
            if batch % 10 == 0:
                self.bar.set_postfix(loss=f"{_total(terms):.4f}", img_s=f"{self.images / (now - self.started):.0f}")
            return
        if now - self.last_line >= self.interval or self.steps == EARLY_REPORT_STEP:
            self.last_line = now
            per_step = (now - self.started) / self.steps
            left_in_epoch = run.steps_per_epoch - batch
            left = left_in_epoch + (ctx.epochs - ctx.epoch) * run.steps_per_epoch
            print(f"epoch {ctx.epoch}/{ctx.epochs}  step {batch}/{run.steps_per_epoch}  loss {_total(terms):.4f}  "
                  f"{self.images / (now - self.started):.0f} img/s  epoch left ~{format_duration(left_in_epoch * per_step)}"
                  f"  run left ~{format_duration(left * per_step)} (training steps only)", file=sys.stderr, flush=True)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _total(terms: list[LossTerm]) -> float:
    return float(sum(t.weight * t.value.detach().float() for t in terms))


@hookimpl
def train_start(run: RunView) -> None:
    if not run.is_main:
        return
    run.state["progress"] = Progress(run)
    config = run.config
    if run.epoch < config.epochs:
        processes = f" × {run.world_size} processes" if run.world_size > 1 else ""
        print(f"training {'+'.join(run.methods)} · {run.arch.name} on {run.dataset.name} "
              f"({len(run.data.train_y)} images, {run.steps_per_epoch} steps per epoch) · ε={config.eps:.4g} · "
              f"{run.device}{processes} → {run.out}", flush=True)
    else:
        print(f"{run.out} has finished its {config.epochs} epochs; pass a larger --epochs with --resume to extend it",
              flush=True)


@hookimpl
def step_end(run: RunView, ctx: StepContext, terms: list[LossTerm]) -> None:
    progress = run.state.get("progress")
    if progress is not None:
        progress.step(ctx, terms)


@hookimpl(trylast=True)
def epoch_end(run: RunView, epoch: int, metrics: dict[str, Any]) -> None:
    progress = run.state.get("progress")
    if progress is None:
        return
    progress.close_bar()
    print(f"epoch {epoch}/{run.config.epochs}  {weighted_loss_line(metrics)}{accuracy_line(metrics)}"
          f"  {metrics['images_per_s']:.0f} img/s", flush=True)


def accuracy_line(metrics: dict[str, Any]) -> str:
    """``  val clean 0.812  val pgd 0.521`` for every clean/PGD pair in the epoch's metrics (the validation split,
    an averaged model's, the monitored test images)."""
    parts = []
    for key in metrics:
        if key.endswith("_clean") and f"{key[:-6]}_pgd" in metrics:
            name = key[:-6].replace("_", " ")
            parts.append(f"  {name} clean {metrics[key]:.3f}  {name} pgd {metrics[key[:-6] + '_pgd']:.3f}")
    return "".join(parts)
