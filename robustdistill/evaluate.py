"""Robust-accuracy evaluation: clean, FGSM, PGD-20, CW∞ and AutoAttack, and ``robustdistill eval``.

An evaluation attack is an :class:`~robustdistill.registry.EvalAttack` whose
``run(model, x, y, settings)`` returns adversarial inputs for a batch ``x`` (float, in
``[0, 1]``, on the model's device); the model is already in eval mode. An attack that batches
internally (AutoAttack) marks its ``run`` with a true ``whole_set`` attribute: it then receives
the whole evaluation set at once, on the CPU, plus the keywords ``batch_size`` and ``verbose``,
and moves its batches to the model's device itself.

Every adversarial batch is checked to lie in ``[0, 1]`` and within ε of the clean input.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import attacks
from .checkpoint import atomic_write_text
from .config import add_fold_bn_argument, add_ops_backend_argument, parse_number, resolve_device
from .folding import fold_or_keep, folded_pairs
from .ops import select_backend
from .registry import EvalAttack, Registry, RobustDistillError
from .zoo import add_source_arguments, load_model_spec, open_source

NORMS = ("linf", "l2")
AUTOATTACK_MISSING = ("autoattack needs the pyautoattack package: pip install 'robustdistill[autoattack]' "
                      "(or pip install pyautoattack)")
AUTOATTACK_SEED = 0
"""Seed handed to AutoAttack so that its random starts, and so its result, are reproducible."""

RESULT_METADATA_KEYS = frozenset({"eps", "n", "dataset", "checkpoint", "arch", "normalization", "settings",
                                  "seconds"})


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

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise RobustDistillError(f"unknown norm {self.norm!r}; use one of: {', '.join(NORMS)}")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise RobustDistillError(f"eps must be a finite number >= 0; got {self.eps}")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise RobustDistillError(f"step size must be a finite number > 0; got {self.step_size}")
        if self.pgd_steps < 1 or self.cw_steps < 1:
            raise RobustDistillError(f"attack steps must be >= 1; got pgd {self.pgd_steps}, cw {self.cw_steps}")
        if self.restarts < 1:
            raise RobustDistillError(f"restarts must be >= 1; got {self.restarts}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Built-in attacks
# ---------------------------------------------------------------------------------------------

def _clean(model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings) -> Tensor:
    """No attack: the clean inputs."""
    return x


def _fgsm(model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings) -> Tensor:
    """One gradient step of size ε (sign step for L∞, normalised gradient for L2)."""
    if settings.norm == "linf":
        return attacks.fgsm(model, x, y, eps=settings.eps)
    with attacks.model_mode(model, train=False):
        return attacks.perturb(attacks.ce_objective(model, y), x, eps=settings.eps, step_size=settings.eps,
                               steps=1, norm=settings.norm, init="none")


def _pgd(model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings) -> Tensor:
    """PGD on cross-entropy from a uniform random start, with restarts."""
    return attacks.pgd(model, x, y, eps=settings.eps, step_size=settings.step_size, steps=settings.pgd_steps,
                       norm=settings.norm, loss="ce", init="uniform", restarts=settings.restarts)


def _cw(model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings) -> Tensor:
    """CW∞: PGD on the C&W margin loss with confidence κ."""
    return attacks.pgd(model, x, y, eps=settings.eps, step_size=settings.step_size, steps=settings.cw_steps,
                       norm=settings.norm, loss="cw", kappa=settings.kappa, init="uniform",
                       restarts=settings.restarts)


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


@contextlib.contextmanager
def _autoattack_logging(verbose: bool) -> Iterator[None]:
    """Route AutoAttack's log to stderr with a prefix: everything if verbose, else its warnings only."""
    logger = logging.getLogger("auto-attack")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("AutoAttack: %(message)s"))
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger.propagate = False
    try:
        with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.level, logger.propagate, logger.handlers = saved[0], saved[1], saved[2]


class _AutoAttackRun:
    """Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) via the ``pyautoattack`` package."""

    whole_set = True

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings, *,
                 batch_size: int = 256, verbose: bool = False) -> Tensor:
        AutoAttack = _import_autoattack()
        device = _model_device(model)
        with attacks.model_mode(model, train=False):
            with torch.no_grad():
                num_classes = int(model(x[:1].to(device)).shape[1])
            if num_classes < 4:
                raise RobustDistillError(
                    f"standard AutoAttack needs at least 4 classes (its targeted DLR loss); "
                    f"the model has {num_classes}. Use the other attacks for this model")
            targets = min(9, num_classes - 1)
            with _preserved_global_state(device), _autoattack_logging(verbose):
                adversary = AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[settings.norm], eps=settings.eps,
                                       version="standard", device=device, seed=AUTOATTACK_SEED)
                adversary.verbose = verbose
                # The standard version attacks the 9 most likely other classes; fewer exist below 10 classes.
                adversary.apgd_targeted.n_target_classes = targets
                adversary.fab.n_target_classes = targets
                x_adv, _ = adversary.run_standard_evaluation(x, y.long(), batch_size=batch_size)
        return x_adv.detach()


BUILTIN_EVAL_ATTACKS: list[EvalAttack] = [
    EvalAttack("clean", _clean, "no attack: accuracy on the clean inputs"),
    EvalAttack("fgsm", _fgsm, "FGSM: one gradient step of size eps"),
    EvalAttack("pgd20", _pgd, "PGD on cross-entropy, --pgd-steps steps (20) of --step-size, random start"),
    EvalAttack("cw", _cw, "CW-inf: PGD on the C&W margin loss, --cw-steps steps (30), kappa --kappa"),
    EvalAttack("autoattack", _AutoAttackRun(),
               "standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square); needs pip install pyautoattack"),
]


def attack_details(name: str, settings: EvalSettings) -> dict[str, Any]:
    """The parameters a built-in attack runs with (empty for attacks registered by plugins)."""
    details: dict[str, dict[str, Any]] = {
        "clean": {},
        "fgsm": {"steps": 1, "step_size": settings.eps, "norm": settings.norm},
        "pgd20": {"loss": "ce", "steps": settings.pgd_steps, "step_size": settings.step_size,
                  "restarts": settings.restarts, "init": "uniform", "norm": settings.norm},
        "cw": {"loss": "cw", "steps": settings.cw_steps, "step_size": settings.step_size, "kappa": settings.kappa,
               "restarts": settings.restarts, "init": "uniform", "norm": settings.norm},
        "autoattack": {"version": "standard", "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"],
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


def runs_on_whole_set(attack: EvalAttack) -> bool:
    """Whether the attack takes the whole evaluation set at once (it batches internally)."""
    return bool(getattr(attack.run, "whole_set", False))


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


def run_evaluation(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks_to_run: list[EvalAttack],
    settings: EvalSettings,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> EvalResult:
    """Like :func:`evaluate`, also returning the seconds spent per attack."""
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
    n = int(x.shape[0])
    correct = {name: 0 for name in names}
    seconds = {name: 0.0 for name in names}
    per_batch = [a for a in attacks_to_run if not runs_on_whole_set(a)]
    whole_set = [a for a in attacks_to_run if runs_on_whole_set(a)]
    y = y.long()

    def count_correct(x_adv: Tensor, labels: Tensor) -> int:
        with torch.no_grad():
            return int((model(x_adv).argmax(dim=1) == labels).sum())

    with attacks.model_mode(model, train=False), _frozen_parameters(model), torch.enable_grad():
        if per_batch and n:
            from tqdm.auto import tqdm

            starts = range(0, n, batch_size)
            for start in tqdm(starts, desc="eval", unit="batch", disable=not progress, leave=False):
                xb = to_unit_float(x[start:start + batch_size].to(device, non_blocking=True))
                yb = y[start:start + batch_size].to(device, non_blocking=True)
                for attack in per_batch:
                    _synchronize(device)
                    began = time.perf_counter()
                    x_adv = attack.run(model, xb, yb, settings)
                    check_adversarial(attack.name, x_adv, xb, settings)
                    correct[attack.name] += count_correct(x_adv, yb)
                    seconds[attack.name] += time.perf_counter() - began
        if whole_set and n:
            x_all = to_unit_float(x.cpu())
            y_all = y.cpu()
            for attack in whole_set:
                _synchronize(device)
                began = time.perf_counter()
                x_adv = attack.run(model, x_all, y_all, settings, batch_size=batch_size, verbose=progress)
                x_adv = x_adv.detach().cpu()
                check_adversarial(attack.name, x_adv, x_all, settings)
                for start in range(0, n, batch_size):
                    correct[attack.name] += count_correct(x_adv[start:start + batch_size].to(device),
                                                          y_all[start:start + batch_size].to(device))
                seconds[attack.name] += time.perf_counter() - began
    accuracy = {name: (correct[name] / n if n else float("nan")) for name in names}
    return EvalResult(accuracy=accuracy, seconds=seconds, n=n)


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

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``robustdistill eval`` to ``parser``."""
    parser.add_argument("checkpoint", metavar="SPEC",
                        help="checkpoint written by `robustdistill train`, a run directory (its last.pt), a plain "
                             "state_dict with --arch, or robustbench:NAME (a RobustBench model for --dataset and --norm)")
    parser.add_argument("--attacks", default="clean,fgsm,pgd20,cw", metavar="LIST",
                        help="comma-separated attacks: clean, fgsm, pgd20, cw, autoattack, or any a plugin "
                             "registers (default: %(default)s)")
    parser.add_argument("--subset", type=_positive_int, default=None, metavar="N",
                        help="evaluate on the first N test images (default: the whole test set)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results to this JSON file")
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="dataset to evaluate on (default: the checkpoint's training dataset)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="where the dataset lives (default: the checkpoint's data directory)")
    parser.add_argument("--batch-size", type=_positive_int, default=256, metavar="N",
                        help="images per batch (default: %(default)s)")
    parser.add_argument("--eps", type=parse_number, default=None, metavar="EPS",
                        help="perturbation radius, e.g. 8/255 (default: the checkpoint's, else the dataset's)")
    parser.add_argument("--step-size", type=parse_number, default=None, metavar="ALPHA",
                        help="PGD/CW step size, e.g. 2/255 (default: the checkpoint's, else the dataset's)")
    parser.add_argument("--pgd-steps", type=_positive_int, default=20, metavar="N",
                        help="steps of the pgd20 attack (default: %(default)s)")
    parser.add_argument("--cw-steps", type=_positive_int, default=30, metavar="N",
                        help="steps of the cw attack (default: %(default)s)")
    parser.add_argument("--kappa", type=parse_number, default=50.0, metavar="K",
                        help="confidence of the C&W margin loss (default: %(default)s)")
    parser.add_argument("--restarts", type=_positive_int, default=1, metavar="N",
                        help="random restarts of pgd20 and cw (default: %(default)s)")
    parser.add_argument("--norm", choices=NORMS, default=None,
                        help="threat model (default: the checkpoint's, else linf)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    add_ops_backend_argument(parser)
    add_fold_bn_argument(parser, "the evaluated model")
    parser.add_argument("--arch", default=None, metavar="NAME",
                        help="architecture of a plain state_dict from another tool (e.g. wrn-34-10, "
                             "torchvision:resnet50, or official-wrn for a WideResNet from the TRADES, ARD, RSLAD or "
                             "IGDM code); classes and input shape then come from --dataset")
    add_source_arguments(parser, prefix="", what="the model")
    parser.add_argument("--download", action="store_true",
                        help="download the dataset, and robustbench:NAME weights, if they are not found locally")
    parser.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts (default: %(default)s)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar and AutoAttack's log (default: when stderr is a terminal)")


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


def _print_table(result: EvalResult) -> None:
    width = max(len("attack"), *(len(name) for name in result.accuracy))
    print(f"{'attack':<{width}}  {'accuracy':>9}  {'seconds':>8}")
    for name, acc in result.accuracy.items():
        print(f"{name:<{width}}  {100 * acc:>8.2f}%  {result.seconds[name]:>8.1f}")


def eval_command(args: argparse.Namespace, registry: Registry) -> int:
    """Run ``robustdistill eval``: print an accuracy table and optionally write JSON. Returns 0."""
    selected = _select_attacks(args.attacks, registry)
    if any(isinstance(a.run, _AutoAttackRun) for a in selected):
        _import_autoattack()  # fail before loading anything
    device = resolve_device(args.device)
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
                            kappa=args.kappa, restarts=args.restarts, norm=norm)

    n_total = int(test_x.shape[0])
    n = n_total if args.subset is None else min(args.subset, n_total)
    if args.subset is not None and args.subset > n_total:
        print(f"note: --subset {args.subset} exceeds the {n_total} test images; using all of them")
    progress = sys.stderr.isatty() if args.progress is None else bool(args.progress)

    model.to(device).eval()
    if args.fold_bn == "on":
        model = fold_or_keep(model, live=False, what="evaluated model")
    torch.manual_seed(args.seed)
    print(f"{path}: {arch.name} on {info.name} ({n} test images), eps {_format_eps(eps)} {norm}, "
          f"step {_format_eps(step_size)}, device {device}; input normalisation {loaded.normalization}")
    result = run_evaluation(model, test_x[:n], test_y[:n], selected, settings, batch_size=args.batch_size,
                            device=device, progress=progress)
    _print_table(result)

    if args.json:
        report: dict[str, Any] = dict(result.accuracy)
        report.update({
            "eps": eps,
            "n": n,
            "dataset": info.name,
            "checkpoint": path,
            "arch": arch.name,
            "normalization": loaded.normalization,
            "settings": {
                **settings.to_dict(),
                "batch_size": args.batch_size,
                "seed": args.seed,
                "ops_backend": ops_backend,
                "folded_conv_bn": folded_pairs(model),
                "attacks": {a.name: attack_details(a.name, settings) for a in selected},
            },
            "seconds": {name: round(value, 3) for name, value in result.seconds.items()},
        })
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


__all__ = [
    "AUTOATTACK_MISSING", "BUILTIN_EVAL_ATTACKS", "EvalResult", "EvalSettings", "add_eval_arguments",
    "attack_details", "check_adversarial", "eval_command", "evaluate", "run_evaluation", "runs_on_whole_set",
]
