"""The evaluation loop: every attack over the evaluated images, each adversarial batch checked, accuracy counted."""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .. import _attacks as attacks
from .._registry import EvalAttack, RobustDistillError
from .._threats import threat_model
from .autoattack import _model_device
from .progress import EvalProgress, attack_cost
from .settings import EvalSettings


@dataclass
class EvalResult:
    """Accuracy in ``[0, 1]`` and seconds spent, per attack name, on ``n`` inputs; ``per_class`` the accuracy on
    each class's inputs (index = label; ``None`` for a class without inputs); ``correct`` per input whether it was
    classified right under the attack (a bool tensor on the CPU)."""

    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    n: int = 0
    per_class: dict[str, list[float | None]] = field(default_factory=dict)
    correct: dict[str, Tensor] = field(default_factory=dict)

    @property
    def worst_case(self) -> float:
        """Accuracy under all the attacks together: an input counts only if every attack left it right."""
        return worst_case_accuracy(list(self.correct.values()))


def worst_case_accuracy(correct: list[Tensor]) -> float:
    """The fraction of inputs classified right under every attack (``correct``: one bool tensor per attack)."""
    if not correct or not correct[0].numel():
        return float("nan")
    return float(torch.stack([c.bool() for c in correct]).all(dim=0).float().mean())


def worst_class(per_class: list[float | None]) -> float | None:
    """The lowest accuracy over the classes that have inputs (``None`` when none has)."""
    present = [acc for acc in per_class if acc is not None]
    return min(present) if present else None


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
    size = float(threat_model(settings.norm).size(x_adv.to(x.device, torch.float32) - x).amax())
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
    progress: bool | EvalProgress = False,
    seed: int | None = None,
    on_attack_end: Callable[[str, float, float, list[float | None], Tensor], None] | None = None,
) -> EvalResult:
    """Like :func:`evaluate`, also returning the seconds spent per attack.

    Attacks run one after the other, in the given order. ``progress`` (True: an :class:`EvalProgress`
    on stderr) reports them; with ``seed``, the torch RNG is seeded with it before each attack, so an
    attack's result does not depend on which attacks ran before it. ``on_attack_end(name, accuracy,
    seconds, per_class, correct)`` is called as each attack finishes (to save results as they come; ``correct``
    as in :class:`EvalResult`). Classes are the model's outputs: ``per_class[c]`` is the accuracy on the inputs
    labelled ``c``.
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

    def count_correct(x_adv: Tensor, labels: Tensor, per_class: Tensor | None) -> tuple[Tensor, Tensor]:
        """Which predictions of the batch are right (on the CPU), also added into ``per_class`` (made on the first
        batch: a count per output of the model)."""
        with torch.no_grad():
            logits = model(x_adv)
        right = logits.argmax(dim=1) == labels
        if per_class is None:
            per_class = torch.zeros(logits.shape[1], dtype=torch.long)
        per_class += torch.bincount(labels[right].cpu(), minlength=len(per_class))[:len(per_class)]
        return right.cpu(), per_class

    with attacks.model_mode(model, train=False), _frozen_parameters(model), torch.enable_grad():
        for attack in attacks_to_run:
            if reporter is not None:
                reporter.attack_started(attack.name)
            if seed is not None:
                torch.manual_seed(seed)
            _synchronize(device)
            began = time.perf_counter()
            rights: list[Tensor] = []
            class_correct, so_far = None, 0
            if n and attack.whole_set:
                x_all, y_all = to_unit_float(x.cpu()), y.cpu()
                x_adv = attack.run(model, x_all, y_all, settings, batch_size=batch_size,
                                   verbose=reporter is not None).detach().cpu()
                check_adversarial(attack.name, x_adv, x_all, settings)
                for start in range(0, n, batch_size):
                    right, class_correct = count_correct(x_adv[start:start + batch_size].to(device),
                                                         y_all[start:start + batch_size].to(device), class_correct)
                    rights.append(right)
            elif n:
                batches = math.ceil(n / batch_size)
                for index, start in enumerate(range(0, n, batch_size), 1):
                    xb = to_unit_float(x[start:start + batch_size].to(device, non_blocking=True))
                    yb = y[start:start + batch_size].to(device, non_blocking=True)
                    x_adv = attack.run(model, xb, yb, settings)
                    check_adversarial(attack.name, x_adv, xb, settings)
                    right, class_correct = count_correct(x_adv, yb, class_correct)
                    rights.append(right)
                    so_far += int(right.sum())
                    if reporter is not None:
                        reporter.batch_finished(index, batches, so_far, min(start + batch_size, n))
            _synchronize(device)
            seconds = time.perf_counter() - began
            correct = torch.cat(rights) if rights else torch.zeros(0, dtype=torch.bool)
            accuracy = int(correct.sum()) / n if n else float("nan")
            per_class = _class_accuracies(class_correct, y)
            result.accuracy[attack.name], result.seconds[attack.name] = accuracy, seconds
            result.per_class[attack.name], result.correct[attack.name] = per_class, correct
            if reporter is not None:
                reporter.attack_finished(attack.name, accuracy, seconds)
            if on_attack_end is not None:
                on_attack_end(attack.name, accuracy, seconds, per_class, correct)
    return result


def _class_accuracies(correct: Tensor | None, y: Tensor) -> list[float | None]:
    """Accuracy per class from the correct counts and the labels (``None`` for a class without inputs)."""
    if correct is None:
        return []
    totals = torch.bincount(y.cpu(), minlength=len(correct))[:len(correct)]
    return [int(c) / int(t) if t else None for c, t in zip(correct, totals)]


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
