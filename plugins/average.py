"""Weight averaging of the student: SWA or EMA (``--average swa|ema``), the run's final model when on.

* **SWA** (Izmailov et al., 2018; as SAAD and PeerAiD train it, methods-ad2 §1.4, §5): at the end of every
  epoch from ``--average-start`` on, the equal-weight running mean of the student's parameters (the first
  update copies them); BatchNorm buffers are not averaged but recomputed after every update by one pass over the
  training images in train mode (clean, augmented as in training), with PyTorch's cumulative averaging
  (``torch.optim.swa_utils.update_bn``: each batch weighs the same). SAAD starts at epoch 95 of 200, PeerAiD at
  the first learning-rate decay — the default here (``--average-start``: the first epoch at the decayed rate of
  a multistep schedule, else 75% of the epochs).
* **EMA**: after every optimiser step from ``--average-start`` (default: the first epoch) on,
  ``θ̄ ← d·θ̄ + (1 − d)·θ`` with ``--average-decay d``; BatchNorm buffers averaged the same way by default
  (``--average-bn average``), or recomputed at each epoch end (``refresh``).

The averaged model (``torch.optim.swa_utils.AveragedModel``) is saved in every checkpoint beside the student and
resumes exactly; each epoch it is validated on the validation split (``val_average_clean``, ``val_average_pgd``)
once it holds an average, and from its first update on it is the run's final model: ``robustdistill eval
RUN_DIR`` evaluates it (``RUN_DIR@student`` the student), as the papers report their SWA students.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from robustdistill import hookimpl
from robustdistill.api import Default, Option, RobustDistillError, RunConfig, RunView, StepContext

MODES = ("off", "swa", "ema")
BN_MODES = ("refresh", "average")
NAME = "average"


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--average", default=None, type=str, choices=MODES,
                    help="average the student's weights: swa (equal weights at epoch ends, BatchNorm recomputed; SAAD, "
                         "PeerAiD) or ema (every step); the average is then the run's final model (default: off, "
                         "unless the method's composition turns it on, as saad's)"))
    register(Option(flag="--average-start", default=None, type=float, metavar="E",
                    help="first epoch (1-based) that updates the average, or a fraction of --epochs, e.g. 0.75 "
                         "(default: SWA the first epoch after the first multistep milestone, as PeerAiD, else 75% "
                         "of the epochs; EMA the first epoch)"))
    register(Option(flag="--average-decay", default=0.999, help="EMA decay d: θ̄ ← d·θ̄ + (1 − d)·θ per step"))
    register(Option(flag="--average-bn", default=None, type=str, choices=BN_MODES,
                    help="BatchNorm statistics of the average: refresh (one pass over the training images after each "
                         "update; default for swa) or average (averaged like the weights; default for ema)"))


@hookimpl
def resolve_options(config: RunConfig) -> dict[str, Any]:
    opts = config.average
    if opts.mode in (None, "off"):
        return {"mode": "off"}
    values: dict[str, Any] = {"bn": "refresh" if opts.mode == "swa" else "average"}
    if opts.mode == "ema":
        values["start"] = Default(value=1.0, source="EMA from the first epoch")
    elif config.lr_schedule == "multistep" and config.milestones:
        values["start"] = Default(value=float(min(config.milestones) + 1),
                                  source="the first epoch at the decayed learning rate, as PeerAiD")
    else:
        values["start"] = Default(value=0.75, source="75% of the epochs (SWA's usual start)")
    return values


def start_epoch(start: float, epochs: int) -> int:
    """The first (1-based) epoch that updates the average: ``start`` itself, or that fraction of ``epochs``."""
    if 0 < start < 1:
        return max(1, math.ceil(start * epochs))
    if start >= 1 and start == int(start):
        return int(start)
    raise RobustDistillError(f"--average-start {start:g} is neither an epoch (a whole number from 1) nor a "
                             "fraction of the epochs (between 0 and 1)")


def averaged_model(student: nn.Module, mode: str, decay: float, bn: str) -> AveragedModel:
    """PyTorch's running average of ``student``: equal weights (SWA) or exponential (EMA)."""
    multi_avg_fn = get_ema_multi_avg_fn(decay) if mode == "ema" else None
    return AveragedModel(student, multi_avg_fn=multi_avg_fn, use_buffers=bn == "average")


def refresh_batchnorm(run: RunView, model: nn.Module) -> None:
    """Recompute ``model``'s BatchNorm statistics by one pass over the training images (train mode, no gradient,
    no draw from the global random generators)."""
    devices = [run.device] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        update_bn(run.train_batches(), model)


@hookimpl
def train_start(run: RunView) -> None:
    opts = run.config.average
    if opts.mode == "off":
        return
    if opts.mode == "ema" and not 0 < opts.decay < 1:
        raise RobustDistillError(f"--average-decay {opts.decay} must be between 0 and 1 (e.g. 0.999)")
    start = start_epoch(opts.start, run.config.epochs)
    average = averaged_model(run.student, opts.mode, opts.decay, opts.bn)
    run.state[NAME] = {"model": average, "start": start}
    run.add_module(NAME, average)
    updates = run.checkpointed.setdefault(NAME, {"updates": 0})
    if updates["updates"]:
        run.set_final_model(NAME, average.module)


def update(run: RunView) -> None:
    state = run.state[NAME]
    state["model"].update_parameters(run.student)
    counted = run.checkpointed[NAME]
    counted["updates"] += 1
    if counted["updates"] == 1:
        run.set_final_model(NAME, state["model"].module)


@hookimpl
def step_end(run: RunView, ctx: StepContext) -> None:
    if run.config.average.mode == "ema" and ctx.epoch >= run.state[NAME]["start"]:
        update(run)


@hookimpl
def epoch_end(run: RunView, epoch: int, metrics: dict[str, Any]) -> None:
    opts = run.config.average
    if opts.mode == "off" or epoch < run.state[NAME]["start"]:
        return
    if opts.mode == "swa":
        update(run)
    model = run.state[NAME]["model"].module
    if opts.bn == "refresh":
        refresh_batchnorm(run, model)
    if run.is_main:
        metrics.update({f"val_average_{name}": value for name, value in run.validate(model).items()})
    metrics["average_updates"] = run.checkpointed[NAME]["updates"]
