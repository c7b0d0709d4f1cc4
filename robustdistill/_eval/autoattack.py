"""AutoAttack (the ``pyautoattack`` package) as evaluation attacks: its stages, its log turned into progress lines,
the global state it changes kept as it was."""
from __future__ import annotations

import contextlib
import io
import logging
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import _attacks as attacks
from .._config import format_duration
from .._registry import RobustDistillError
from .._threats import threat_model
from .settings import APGD_ATTACKS, AUTOATTACK_MISSING, AUTOATTACK_SEED, EvalSettings


def _import_autoattack() -> Any:
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise RobustDistillError(AUTOATTACK_MISSING) from None
    return AutoAttack


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _preserved_global_state(device: torch.device) -> Iterator[None]:
    """Restore the torch (CPU and ``device``), NumPy and Python RNGs and the trace function."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    trace = sys.gettrace()
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        # AutoAttack's dynamic-defence check installs and then clears a global trace function.
        sys.settrace(trace)
        random.setstate(py_state)
        np.random.set_state(np_state)


class _AutoAttackLog(logging.Handler):
    """AutoAttack's log as ``AutoAttack: ...`` lines on stderr, flushed at once; its per-batch lines
    (``apgd-t - 2/4 - ...``) get the time left in the running stage."""

    BATCH = re.compile(r"^(\S+) - (\d+)/(\d+) - ")
    STAGE = re.compile(r"^running (\S+)")

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__()
        self.clock = clock
        self.stage_started = clock()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.STAGE.match(message):
            self.stage_started = self.clock()
        batch = self.BATCH.match(message)
        if batch:
            done, total = int(batch.group(2)), int(batch.group(3))
            elapsed = self.clock() - self.stage_started
            left = f", about {format_duration(elapsed / done * (total - done))} left of it" if done < total else ""
            message += f" ({format_duration(elapsed)} in this stage{left})"
        print(f"AutoAttack: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _autoattack_logging(verbose: bool) -> Iterator[None]:
    """Route AutoAttack's log to stderr with a prefix: everything if verbose, else its warnings only."""
    logger = logging.getLogger("auto-attack")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    logger.handlers = [_AutoAttackLog()]
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger.propagate = False
    try:
        with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.level, logger.propagate, logger.handlers = saved[0], saved[1], saved[2]


def _autoattack(stages: tuple[str, ...] | None = None) -> Callable[..., Tensor]:
    """AutoAttack via the ``pyautoattack`` package: the version of ``settings.autoattack_version`` (standard:
    APGD-CE, APGD-T, FAB-T, Square), or only the ``stages`` with the standard version's parameters (one restart,
    the 9 most likely other classes as targets)."""
    def run(model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings, *, batch_size: int = 256,
            verbose: bool = False) -> Tensor:
        AutoAttack = _import_autoattack()
        device = _model_device(model)
        with attacks.model_mode(model, train=False):
            with torch.no_grad():
                num_classes = int(model(x[:1].to(device)).shape[1])
            if num_classes < 4:
                raise RobustDistillError(
                    f"AutoAttack's targeted attacks need at least 4 classes (its targeted DLR loss); "
                    f"the model has {num_classes}. Use the other attacks for this model")
            targets = min(9, num_classes - 1)
            norm = threat_model(settings.norm).robustbench
            with _preserved_global_state(device), _autoattack_logging(verbose):
                if stages is None:
                    adversary = AutoAttack(model, norm=norm, eps=settings.eps, version=settings.autoattack_version,
                                           device=device, seed=AUTOATTACK_SEED)
                else:
                    adversary = AutoAttack(model, norm=norm, eps=settings.eps, version="custom",
                                           attacks=list(stages), device=device, seed=AUTOATTACK_SEED)
                    adversary.apgd.n_restarts = 1
                    adversary.apgd_targeted.n_restarts = 1
                adversary.verbose = verbose
                # The standard version attacks the 9 most likely other classes; fewer exist below 10 classes.
                adversary.apgd_targeted.n_target_classes = targets
                adversary.fab.n_target_classes = targets
                x_adv, _ = adversary.run_standard_evaluation(x, y.long(), batch_size=batch_size)
        return x_adv.detach()
    return run


AUTOATTACK_STAGES = {"standard": ["apgd-ce", "apgd-t", "fab-t", "square"],
                     "plus": ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]}


def attack_details(name: str, settings: EvalSettings) -> dict[str, Any]:
    """The parameters a built-in attack runs with (empty for attacks registered by plugins)."""
    details: dict[str, dict[str, Any]] = {
        "clean": {},
        "fgsm": {"steps": 1, "step_size": settings.eps, "norm": settings.norm},
        "pgd20": {"loss": "ce", "steps": settings.pgd_steps, "step_size": settings.step_size,
                  "restarts": settings.restarts, "init": "uniform", "norm": settings.norm},
        "cw": {"loss": "cw", "steps": settings.cw_steps, "step_size": settings.step_size, "kappa": settings.kappa,
               "restarts": settings.cw_runs, "init": "uniform", "norm": settings.norm},
        "autoattack": {"version": settings.autoattack_version,
                       "attacks": AUTOATTACK_STAGES[settings.autoattack_version],
                       "norm": threat_model(settings.norm).robustbench, "seed": AUTOATTACK_SEED},
        "apgd-ce+apgd-t": {"version": "custom", "attacks": list(APGD_ATTACKS), "restarts": 1,
                           "norm": threat_model(settings.norm).robustbench, "seed": AUTOATTACK_SEED},
    }
    return details.get(name, {})
