"""Robust-accuracy evaluation: clean, FGSM, PGD-20, CW∞ and AutoAttack, and ``robustdistill eval``.

An evaluation attack is an :class:`~robustdistill._registry.EvalAttack` whose
``run(model, x, y, settings)`` returns adversarial inputs for a batch ``x`` (float, in
``[0, 1]``, on the model's device); the model is already in eval mode. An attack that batches
internally (AutoAttack) is registered with ``whole_set=True``: it then receives the whole evaluation set
at once, on the CPU, plus the keywords ``batch_size`` and ``verbose``, and moves its batches to the
model's device itself.

Every adversarial batch is checked to lie in ``[0, 1]`` and within ε of the clean input.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import math
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import Tensor, nn

from . import _attacks as attacks
from ._checkpoint import atomic_write_text
from ._folding import fold_or_keep, folded_pairs
from ._config import AUTOATTACK_VERSIONS, NORMS, format_duration, resolve_device
from ._registry import EvalAttack, Registry, RobustDistillError
from ._specs import load_model_spec, open_source

AUTOATTACK_MISSING = ("autoattack needs the pyautoattack package: pip install 'robustdistill[autoattack]' "
                      "(or pip install pyautoattack)")
APGD_ATTACKS = ("apgd-ce", "apgd-t")
"""The first two stages of standard AutoAttack, run on their own as the attack ``apgd-ce+apgd-t``."""
AUTOATTACK_SEED = 0
"""Seed handed to AutoAttack so that its random starts, and so its result, are reproducible."""

RESULT_METADATA_KEYS = frozenset({"eps", "n", "dataset", "checkpoint", "arch", "normalization", "weights_sha256",
                                  "weights", "settings", "seconds", "pending", "preset"})
"""Keys of an ``eval --json`` file that are not attack names."""


@dataclass
class EvalSettings:
    """Threat model and attack budgets shared by the evaluation attacks."""

    eps: float
    step_size: float
    pgd_steps: int = 20
    cw_steps: int = 30
    kappa: float = 50.0
    restarts: int = 1
    norm: str = "linf"
    cw_restarts: int | None = None
    autoattack_version: str = "standard"

    @property
    def cw_runs(self) -> int:
        """Random restarts of CW∞: ``cw_restarts``, else ``restarts``."""
        return self.cw_restarts if self.cw_restarts is not None else self.restarts

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise RobustDistillError(f"unknown norm {self.norm!r}; use one of: {', '.join(NORMS)}")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise RobustDistillError(f"eps must be a finite number >= 0; got {self.eps}")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise RobustDistillError(f"step size must be a finite number > 0; got {self.step_size}")
        if self.pgd_steps < 1 or self.cw_steps < 1:
            raise RobustDistillError(f"attack steps must be >= 1; got pgd {self.pgd_steps}, cw {self.cw_steps}")
        if self.restarts < 1 or self.cw_runs < 1:
            raise RobustDistillError(f"restarts must be >= 1; got {self.restarts} (pgd20), {self.cw_runs} (cw)")
        if self.autoattack_version not in AUTOATTACK_VERSIONS:
            raise RobustDistillError(f"unknown AutoAttack version {self.autoattack_version!r}; use one of: "
                                     f"{', '.join(AUTOATTACK_VERSIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def spec(self, attack: str) -> attacks.AttackSpec:
        """The :class:`~robustdistill._attacks.AttackSpec` of a built-in attack: ``fgsm``, ``pgd20`` or ``cw``."""
        if attack == "fgsm":
            return attacks.fgsm_spec(self.eps, self.norm)
        loss, steps, restarts = {"pgd20": ("ce", self.pgd_steps, self.restarts),
                                 "cw": ("cw", self.cw_steps, self.cw_runs)}[attack]
        return attacks.AttackSpec(eps=self.eps, step_size=self.step_size, steps=steps, norm=self.norm,
                                  init="uniform", restarts=restarts, loss=loss, kappa=self.kappa)


# ---------------------------------------------------------------------------------------------
# Built-in attacks
# ---------------------------------------------------------------------------------------------

def _clean(model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings) -> Tensor:
    """No attack: the clean inputs."""
    return x


def _fgsm(model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings) -> Tensor:
    """One gradient step of size ε (sign step for L∞, normalised gradient for L2)."""
    with attacks.model_mode(model, train=False):
        return settings.spec("fgsm").perturb(attacks.ce_objective(model, y), x)


def _pgd(model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings) -> Tensor:
    """PGD on cross-entropy from a uniform random start, with restarts."""
    return attacks.pgd(model, x, y, settings.spec("pgd20"))


def _cw(model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings) -> Tensor:
    """CW∞: PGD on the C&W margin loss with confidence κ."""
    return attacks.pgd(model, x, y, settings.spec("cw"))


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
            norm = {"linf": "Linf", "l2": "L2"}[settings.norm]
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


BUILTIN_EVAL_ATTACKS: list[EvalAttack] = [
    EvalAttack(name="clean", run=_clean, summary="no attack: accuracy on the clean inputs"),
    EvalAttack(name="fgsm", run=_fgsm, summary="FGSM: one gradient step of size eps"),
    EvalAttack(name="pgd20", run=_pgd,
               summary="PGD on cross-entropy, --pgd-steps steps (20) of --step-size, random start"),
    EvalAttack(name="cw", run=_cw, summary="CW-inf: PGD on the C&W margin loss, --cw-steps steps (30), kappa --kappa"),
    EvalAttack(name="autoattack", run=_autoattack(),
               summary="AutoAttack, --autoattack-version (standard: APGD-CE, APGD-T, FAB-T, Square); needs pip install "
               "pyautoattack", whole_set=True, check=_import_autoattack),
    EvalAttack(name="apgd-ce+apgd-t", run=_autoattack(APGD_ATTACKS),
               summary="the first two stages of standard AutoAttack (APGD-CE, then APGD-T on the 9 most likely other "
               "classes), with its parameters and seed: an upper bound on its accuracy at a fraction of the cost; "
               "needs pip install pyautoattack", whole_set=True, check=_import_autoattack),
]


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
                       "norm": {"linf": "Linf", "l2": "L2"}[settings.norm], "seed": AUTOATTACK_SEED},
        "apgd-ce+apgd-t": {"version": "custom", "attacks": list(APGD_ATTACKS), "restarts": 1,
                           "norm": {"linf": "Linf", "l2": "L2"}[settings.norm], "seed": AUTOATTACK_SEED},
    }
    return details.get(name, {})


# ---------------------------------------------------------------------------------------------
# Evaluation loop
# ---------------------------------------------------------------------------------------------

@dataclass
class EvalResult:
    """Accuracy in ``[0, 1]`` and seconds spent, per attack name, on ``n`` inputs."""

    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    n: int = 0


def to_unit_float(x: Tensor) -> Tensor:
    """uint8 images or floats in [0, 1] as float32 in [0, 1]; a clear error otherwise."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not x.is_floating_point():
        raise RobustDistillError(f"images must be uint8 or float in [0, 1]; got {x.dtype}")
    x = x.float()
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise RobustDistillError(
            f"float images must lie in [0, 1]; got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")
    return x


def check_adversarial(name: str, x_adv: Tensor, x: Tensor, settings: EvalSettings) -> None:
    """Raise if ``x_adv`` leaves ``[0, 1]`` or the ε-ball around ``x`` (a broken attack)."""
    if x_adv.shape != x.shape:
        raise RobustDistillError(f"attack {name!r} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    if x_adv.numel() == 0:
        return
    tol = 1e-5
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -tol or hi > 1.0 + tol:
        raise RobustDistillError(f"attack {name!r} returned inputs outside [0, 1] (range [{lo:.4g}, {hi:.4g}])")
    delta = (x_adv.to(x.device, torch.float32) - x).flatten(1)
    size = float(delta.abs().amax()) if settings.norm == "linf" else float(delta.norm(dim=1).amax())
    if size > settings.eps * (1 + 1e-4) + tol:
        raise RobustDistillError(
            f"attack {name!r} moved inputs by {size:.6g} in {settings.norm}, more than eps = {settings.eps:.6g}")


@contextlib.contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` so attacks that call ``backward`` leave no parameter gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------

FORWARD_COST = 1 / 3
"""A forward pass counted in forward-and-backward passes, for the estimate of the time left."""


def attack_cost(name: str, settings: EvalSettings) -> float | None:
    """Forward-and-backward passes per image a built-in attack takes; None when unknown (AutoAttack's
    length depends on how many images stay robust; a plugin's attack is not known)."""
    forwards = FORWARD_COST * (1 + settings.restarts)  # the final count, plus picking the worst restart
    costs = {"clean": FORWARD_COST, "fgsm": 1 + FORWARD_COST,
             "pgd20": settings.pgd_steps * settings.restarts + forwards,
             "cw": settings.cw_steps * settings.cw_runs + FORWARD_COST * (1 + settings.cw_runs)}
    return costs.get(name)


class EvalProgress:
    """Progress of an evaluation, written to a stream (stderr by default) so that it reads in a log file too.

    One line when each attack starts and ends (accuracy, seconds, attacks left, time left in all), and
    within an attack that runs batch by batch a line every ``every`` seconds with the accuracy so far
    and the time left (on a terminal, a progress bar instead). The time left comes from the seconds
    per forward-and-backward pass measured so far and each attack's passes per image
    (:func:`attack_cost`); attacks of unknown length are named instead of estimated.
    """

    def __init__(self, stream: TextIO | None = None, *, every: float = 30.0, bar: bool | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._stream = stream
        self.every = every
        self.bar = self.stream.isatty() if bar is None else bar
        self.clock = clock
        self._plan: list[tuple[str, float | None]] = []
        self._n = 0
        self._finished: set[str] = set()
        self._spent = 0.0  # seconds of the finished attacks of known cost
        self._work = 0.0  # their passes times images
        self._current: str | None = None
        self._started = 0.0
        self._last_line = 0.0
        self._seen = 0
        self._tqdm: Any = None

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def write(self, message: str) -> None:
        """One line, flushed at once (above the bar on a terminal)."""
        if self._tqdm is not None:
            self._tqdm.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def plan(self, attacks: list[tuple[str, float | None]], n: int) -> None:
        """The attacks about to run with their passes per image (:func:`attack_cost`), on ``n`` images."""
        self._plan, self._n = list(attacks), n

    def _rate(self) -> float | None:
        """Seconds per pass and image, from the finished attacks and the running one."""
        spent, work = self._spent, self._work
        cost = dict(self._plan).get(self._current or "")
        if self._current is not None and cost is not None and self._seen:
            spent += self.clock() - self._started
            work += cost * self._seen
        return spent / work if work > 0 and spent > 0 else None

    def _left(self, *, include_current: bool, current_seconds: float = 0.0) -> str:
        """``about 3m05s``, ``about 3m05s + autoattack`` (attacks of unknown length are named),
        ``unknown (autoattack)``, or ``''`` before anything has been timed."""
        rate = self._rate()
        seconds, unknown, timed = current_seconds, [], current_seconds > 0
        for name, cost in self._plan:
            if name in self._finished or (name == self._current and not include_current):
                continue
            if cost is None:
                unknown.append(name)
                continue
            if rate is None:
                return ""
            todo = self._n - (self._seen if name == self._current else 0)
            seconds, timed = seconds + rate * cost * todo, True
        if not timed:
            return f"unknown ({', '.join(unknown)})" if unknown else ""
        return f"about {format_duration(seconds)}" + "".join(f" + {name}" for name in unknown)

    def attack_started(self, name: str) -> None:
        self._current, self._seen = name, 0
        self._started = self._last_line = self.clock()
        names = [n for n, _ in self._plan]
        place = f" [{names.index(name) + 1}/{len(names)}]" if name in names else ""
        left = self._left(include_current=True)
        self.write(f"eval{place}: {name} on {self._n} images started{'; time left: ' + left if left else ''}")

    def batch_finished(self, done: int, total: int, correct: int, seen: int) -> None:
        """After ``done`` of ``total`` batches: ``correct`` of the ``seen`` images still classified right."""
        self._seen = seen
        now = self.clock()
        accuracy = 100 * correct / max(seen, 1)
        if self.bar:
            if self._tqdm is None:
                from tqdm import tqdm

                self._tqdm = tqdm(total=total, desc=self._current, unit="batch", leave=False, file=self.stream)
            self._tqdm.set_postfix_str(f"accuracy {accuracy:.2f}%", refresh=False)
            self._tqdm.update(done - self._tqdm.n)
            return
        if done == total or now - self._last_line < self.every:
            return
        self._last_line = now
        elapsed = now - self._started
        own = elapsed / done * (total - done)
        left = self._left(include_current=False, current_seconds=own)
        self.write(f"eval: {self._current} batch {done}/{total}, accuracy so far {accuracy:.2f}% ({seen} images), "
                   f"{format_duration(elapsed)}; {self._current} about {format_duration(own)} left"
                   f"{', in all ' + left if left else ''}")

    def attack_finished(self, name: str, accuracy: float, seconds: float) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        cost = dict(self._plan).get(name)
        if cost is not None:
            self._spent += seconds
            self._work += cost * self._n
        self._finished.add(name)
        self._current = None
        remaining = sum(1 for n, _ in self._plan if n not in self._finished)
        tail = ""
        if remaining:
            left = self._left(include_current=False)
            tail = f"; {remaining} attack{'s' if remaining > 1 else ''} left{', time left: ' + left if left else ''}"
        self.write(f"eval: {name} done: {100 * accuracy:.2f}% in {format_duration(seconds)}{tail}")


def run_evaluation(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks_to_run: list[EvalAttack],
    settings: EvalSettings,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool | EvalProgress = False,
    seed: int | None = None,
    on_attack_end: Callable[[str, float, float], None] | None = None,
) -> EvalResult:
    """Like :func:`evaluate`, also returning the seconds spent per attack.

    Attacks run one after the other, in the given order. ``progress`` (True: an :class:`EvalProgress`
    on stderr) reports them; with ``seed``, the torch RNG is seeded with it before each attack, so an
    attack's result does not depend on which attacks ran before it. ``on_attack_end(name, accuracy,
    seconds)`` is called as each attack finishes (to save results as they come).
    """
    names = [a.name for a in attacks_to_run]
    if len(set(names)) != len(names):
        raise RobustDistillError(f"attack names must be unique; got {', '.join(names)}")
    if batch_size < 1:
        raise RobustDistillError(f"batch size must be >= 1; got {batch_size}")
    if x.shape[0] != y.shape[0]:
        raise RobustDistillError(f"{x.shape[0]} images but {y.shape[0]} labels")
    device = _model_device(model) if device is None else torch.device(device)
    model_device = _model_device(model)
    if model_device.type != device.type or (device.index is not None and model_device.index != device.index):
        raise RobustDistillError(f"the model is on {model_device} but evaluation runs on {device}; "
                                 "move it there first with model.to(device)")
    reporter = (progress if isinstance(progress, EvalProgress) else EvalProgress()) if progress else None
    n = int(x.shape[0])
    y = y.long()
    result = EvalResult(n=n)
    if reporter is not None:
        reporter.plan([(name, attack_cost(name, settings)) for name in names], n)

    def count_correct(x_adv: Tensor, labels: Tensor) -> int:
        with torch.no_grad():
            return int((model(x_adv).argmax(dim=1) == labels).sum())

    with attacks.model_mode(model, train=False), _frozen_parameters(model), torch.enable_grad():
        for attack in attacks_to_run:
            if reporter is not None:
                reporter.attack_started(attack.name)
            if seed is not None:
                torch.manual_seed(seed)
            _synchronize(device)
            began = time.perf_counter()
            correct = 0
            if n and attack.whole_set:
                x_all, y_all = to_unit_float(x.cpu()), y.cpu()
                x_adv = attack.run(model, x_all, y_all, settings, batch_size=batch_size,
                                   verbose=reporter is not None).detach().cpu()
                check_adversarial(attack.name, x_adv, x_all, settings)
                for start in range(0, n, batch_size):
                    correct += count_correct(x_adv[start:start + batch_size].to(device),
                                             y_all[start:start + batch_size].to(device))
            elif n:
                batches = math.ceil(n / batch_size)
                for index, start in enumerate(range(0, n, batch_size), 1):
                    xb = to_unit_float(x[start:start + batch_size].to(device, non_blocking=True))
                    yb = y[start:start + batch_size].to(device, non_blocking=True)
                    x_adv = attack.run(model, xb, yb, settings)
                    check_adversarial(attack.name, x_adv, xb, settings)
                    correct += count_correct(x_adv, yb)
                    if reporter is not None:
                        reporter.batch_finished(index, batches, correct, min(start + batch_size, n))
            _synchronize(device)
            seconds = time.perf_counter() - began
            accuracy = correct / n if n else float("nan")
            result.accuracy[attack.name], result.seconds[attack.name] = accuracy, seconds
            if reporter is not None:
                reporter.attack_finished(attack.name, accuracy, seconds)
            if on_attack_end is not None:
                on_attack_end(attack.name, accuracy, seconds)
    return result


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: list[EvalAttack],
    settings: EvalSettings,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Accuracy in ``[0, 1]`` of ``model`` under each attack, keyed by attack name.

    ``x`` holds uint8 images ``[N, C, H, W]`` or floats in ``[0, 1]``; ``y`` the labels. Batches
    of ``batch_size`` move to ``device`` (default: the model's device, where the model must
    already be). The model runs in eval mode and gets its own modes back afterwards; its
    parameters receive no gradient. Attacks marked ``whole_set`` get the whole set at once.
    """
    return run_evaluation(model, x, y, attacks, settings, batch_size=batch_size, device=device,
                          progress=progress).accuracy


# ---------------------------------------------------------------------------------------------
# The ``robustdistill eval`` command
# ---------------------------------------------------------------------------------------------

def _format_eps(eps: float) -> str:
    scaled = eps * 255
    if scaled >= 0.5 and abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{eps:.6g}"


def _config_number(config: dict[str, Any], key: str, default: float) -> float:
    value = config.get(key)
    return float(default) if value is None else float(value)


def _select_attacks(text: str, registry: Registry) -> list[EvalAttack]:
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    known = ", ".join(sorted(registry.eval_attacks)) or "(none registered)"
    if not names:
        raise RobustDistillError(f"--attacks names no attack; known attacks: {known}")
    unknown = [name for name in names if name not in registry.eval_attacks]
    if unknown:
        raise RobustDistillError(f"unknown attack{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                                 f"known attacks: {known}")
    clashing = [name for name in names if name in RESULT_METADATA_KEYS]
    if clashing:
        raise RobustDistillError(f"attack name(s) {', '.join(clashing)} clash with keys of the result file; "
                                 "rename the attack in its plugin")
    return [registry.eval_attacks[name] for name in names]


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's state_dict (names, dtypes, shapes and bytes): the same weights, the same digest."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


SETTING_OPTIONS = {"eps": "--eps", "step_size": "--step-size", "norm": "--norm", "pgd_steps": "--pgd-steps",
                   "cw_steps": "--cw-steps", "kappa": "--kappa", "restarts": "--restarts", "seed": "--seed"}
"""The settings a results file must share with the command that continues it, and their options."""


def _differences(previous: dict[str, Any], current: dict[str, Any], attack_names: list[str]) -> list[str]:
    """What differs between the results file ``previous`` and the evaluation ``current`` would write."""
    def same(a: Any, b: Any) -> bool:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        return bool(a == b)

    found = []
    if previous.get("weights_sha256") != current["weights_sha256"]:
        found.append("the weights differ (another checkpoint, or this one was trained further)"
                     if "weights_sha256" in previous else "the file does not record which weights it evaluated")
    for key, what in (("arch", "architecture"), ("dataset", "--dataset"), ("n", "test images (--subset)")):
        if not same(previous.get(key), current[key]):
            found.append(f"{what} {previous.get(key)} in the file, {current[key]} now")
    before, now = previous.get("settings") or {}, current["settings"]
    for key, option in SETTING_OPTIONS.items():
        if not same(before.get(key), now[key]):
            found.append(f"{option} {before.get(key)} in the file, {now[key]} now")
    for name in attack_names:
        old = (before.get("attacks") or {}).get(name)
        if name in previous and old is not None and old != now["attacks"][name]:
            found.append(f"{name}'s parameters {old} in the file, {now['attacks'][name]} now")
    return found


def _finished_attacks(path: Path, current: dict[str, Any], attack_names: list[str]) -> dict[str, Any]:
    """The results file at ``path`` if it holds results of the same evaluation; a clear error otherwise."""
    how = "rerun with the same options, pass --redo to start it over, or write to another --json file"
    try:
        previous = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RobustDistillError(f"--json {str(path)!r} exists but cannot be read as results of "
                                 f"`robustdistill eval` ({err}); pass --redo to overwrite it or choose another "
                                 "file") from None
    if not isinstance(previous, dict) or not isinstance(previous.get("settings"), dict):
        raise RobustDistillError(f"--json {str(path)!r} exists but is not a results file of `robustdistill eval`; "
                                 "pass --redo to overwrite it or choose another file")
    found = _differences(previous, current, attack_names)
    if found:
        raise RobustDistillError(f"--json {str(path)!r} holds results of another evaluation ({'; '.join(found)}); "
                                 f"{how}")
    return previous


def _results_file(previous: dict[str, Any] | None, current: dict[str, Any], accuracy: dict[str, float],
                  seconds: dict[str, float], pending: list[str]) -> dict[str, Any]:
    """The JSON written after each attack: earlier results first, then this run's, then the metadata."""
    earlier = {k: v for k, v in (previous or {}).items() if k not in RESULT_METADATA_KEYS and k not in accuracy}
    earlier_seconds = {k: v for k, v in ((previous or {}).get("seconds") or {}).items() if k in earlier}
    earlier_attacks = {k: v for k, v in (((previous or {}).get("settings") or {}).get("attacks") or {}).items()
                       if k in earlier}
    result: dict[str, Any] = {**earlier, **accuracy}
    result.update({key: value for key, value in current.items() if key != "settings"})
    result["settings"] = {**current["settings"], "attacks": {**earlier_attacks, **current["settings"]["attacks"]}}
    result["seconds"] = {**earlier_seconds, **{name: round(value, 3) for name, value in seconds.items()}}
    result["pending"] = pending
    return result


def _print_table(accuracy: dict[str, float], seconds: dict[str, float], earlier: set[str]) -> None:
    width = max(len("attack"), *(len(name) for name in accuracy))
    print(f"{'attack':<{width}}  {'accuracy':>9}  {'seconds':>8}")
    for name, acc in accuracy.items():
        note = "  (from the --json file)" if name in earlier else ""
        print(f"{name:<{width}}  {100 * acc:>8.2f}%  {seconds.get(name, float('nan')):>8.1f}{note}")


def eval_command(args: argparse.Namespace, registry: Registry) -> int:
    """Run ``robustdistill eval``: print an accuracy table and optionally write JSON. Returns 0 (130 when
    interrupted: the attacks finished by then are in the ``--json`` file, and a rerun continues)."""
    selected = _select_attacks(args.attacks, registry)
    for attack in selected:
        if attack.check is not None:
            attack.check()  # fail before loading anything
    if args.redo and not args.json:
        raise RobustDistillError("--redo starts a --json file over; without --json every attack runs anyway")
    device = resolve_device(args.device)
    from ._ops import select_backend

    ops_backend = select_backend(args.ops_backend, device)
    path = str(args.checkpoint)
    source = open_source(path)
    config = source.config

    dataset_name = args.dataset or config.get("dataset")
    if not dataset_name:
        raise RobustDistillError(f"{path!r} does not name its dataset; pass --dataset NAME "
                                 f"(known: {', '.join(sorted(registry.datasets))})")
    data_dir = args.data_dir if args.data_dir is not None else config.get("data_dir")
    data = registry.dataset(str(dataset_name)).load(data_dir, args.download)
    info = data.info
    loaded = load_model_spec(source, info=info, models=registry.models, arch=args.arch, normalize=args.normalize,
                             robustbench_dir=args.robustbench_dir, download=args.download,
                             norm=args.norm or "linf", flag_prefix="")
    model, arch = loaded.model, loaded.arch
    test_x, test_y = data.test_x, data.test_y
    if arch.num_classes != info.num_classes:
        raise RobustDistillError(f"{path!r} is a {arch.num_classes}-class model but dataset {info.name!r} has "
                                 f"{info.num_classes} classes; pass the dataset it was trained on with --dataset")
    if test_x.dim() != 4 or test_x.shape[1] != arch.in_channels:
        raise RobustDistillError(f"{path!r} expects {arch.in_channels}-channel images but dataset {info.name!r} "
                                 f"has test images of shape {tuple(test_x.shape[1:])}; pass the right --dataset")

    norm = args.norm or (config.get("norm") if config.get("norm") in NORMS else "linf")
    source_norm = config.get("norm") if config.get("norm") in NORMS else "linf"
    if norm != source_norm and (args.eps is None or args.step_size is None):
        raise RobustDistillError(f"--norm {norm} differs from the {source_norm} threat model the default radius is "
                                 "meant for; give --eps and --step-size for it as well")
    eps = args.eps if args.eps is not None else _config_number(config, "eps", info.eps)
    step_size = args.step_size if args.step_size is not None else _config_number(config, "step_size", info.step_size)
    settings = EvalSettings(eps=eps, step_size=step_size, pgd_steps=args.pgd_steps, cw_steps=args.cw_steps,
                            kappa=args.kappa, restarts=args.restarts, norm=norm, cw_restarts=args.cw_restarts,
                            autoattack_version=args.autoattack_version)

    n_total = int(test_x.shape[0])
    n = n_total if args.subset is None else min(args.subset, n_total)
    if args.subset is not None and args.subset > n_total:
        print(f"note: --subset {args.subset} exceeds the {n_total} test images; using all of them")

    current: dict[str, Any] = {
        "eps": eps, "n": n, "dataset": info.name, "checkpoint": path, "arch": arch.name,
        "normalization": loaded.normalization, "weights_sha256": weights_fingerprint(model), "preset": args.preset,
        "settings": {**settings.to_dict(), "batch_size": args.batch_size, "seed": args.seed,
                     "ops_backend": ops_backend,
                     "attacks": {a.name: attack_details(a.name, settings) for a in selected}},
    }
    if loaded.weights is not None:
        current["weights"] = loaded.weights  # which of the checkpoint's models: the run's final one by default
    json_path = Path(args.json) if args.json else None
    previous = None
    if json_path is not None and json_path.exists() and not args.redo:
        previous = _finished_attacks(json_path, current, [a.name for a in selected])
    earlier = {a.name for a in selected if previous is not None and isinstance(previous.get(a.name), (int, float))}
    to_run = [a for a in selected if a.name not in earlier]

    model.to(device).eval()
    if args.fold_bn == "on":
        model = fold_or_keep(model, live=False, what="evaluated model")
    current["settings"]["folded_conv_bn"] = folded_pairs(model)
    weights = f" ({loaded.weights} weights)" if loaded.weights not in (None, "student") else ""
    print(f"{path}{weights}: {arch.name} on {info.name} ({n} test images), eps {_format_eps(eps)} {norm}, "
          f"step {_format_eps(step_size)}, device {device}; input normalisation {loaded.normalization}", flush=True)
    if earlier:
        print(f"{', '.join(sorted(earlier, key=[a.name for a in selected].index))} already in {json_path}: "
              f"skipped (--redo evaluates {'them' if len(earlier) > 1 else 'it'} again)", flush=True)
    accuracy: dict[str, float] = {}
    seconds: dict[str, float] = {}

    def save(name: str, acc: float, secs: float) -> None:
        accuracy[name], seconds[name] = acc, secs
        if json_path is not None:
            pending = [a.name for a in to_run if a.name not in accuracy]
            atomic_write_text(json_path, json.dumps(_results_file(previous, current, accuracy, seconds, pending),
                                                    indent=2) + "\n")

    if json_path is not None and (to_run or previous is None):
        atomic_write_text(json_path, json.dumps(_results_file(previous, current, {}, {}, [a.name for a in to_run]),
                                                indent=2) + "\n")  # an unwritable path fails before any attack
    progress = EvalProgress() if args.progress else False
    try:
        run_evaluation(model, test_x[:n], test_y[:n], to_run, settings, batch_size=args.batch_size,
                       device=device, progress=progress, seed=args.seed, on_attack_end=save)
    except KeyboardInterrupt:
        kept = f"{len(accuracy)} finished attack(s) are in {json_path}; rerun the same command to continue" \
            if json_path is not None else "nothing is kept without --json FILE"
        print(f"robustdistill: interrupted; {kept}", file=sys.stderr)
        return 130
    table = {a.name: float(previous[a.name]) if a.name in earlier else accuracy[a.name]  # type: ignore[index]
             for a in selected}
    table_seconds = {**((previous or {}).get("seconds") or {}), **seconds}
    _print_table(table, table_seconds, earlier)
    if json_path is not None and to_run:
        print(f"wrote {json_path}")
    return 0


__all__ = [
    "AUTOATTACK_MISSING", "BUILTIN_EVAL_ATTACKS", "EvalProgress", "EvalResult", "EvalSettings",
    "attack_cost", "attack_details", "check_adversarial", "eval_command", "evaluate",
    "run_evaluation", "weights_fingerprint",
]
