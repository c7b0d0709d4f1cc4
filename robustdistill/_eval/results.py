"""The resumable results file of ``eval --json``: which attacks are done for the same weights and settings."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._registry import RobustDistillError
from .harness import worst_case_accuracy, worst_class
from .settings import RESULT_METADATA_KEYS


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


def encode_points(correct: torch.Tensor) -> str:
    """Per-input outcomes as text: ``1`` where the input was classified right, ``0`` where the attack fooled it."""
    return "".join("1" if right else "0" for right in correct.bool().tolist())


def decode_points(text: Any, n: int) -> torch.Tensor | None:
    """The outcomes :func:`encode_points` wrote, or ``None`` if ``text`` is not such a record of ``n`` inputs."""
    if not isinstance(text, str) or len(text) != n or set(text) - {"0", "1"}:
        return None
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


def worst_case(correct: dict[str, str], n: int) -> tuple[float | None, list[str]]:
    """The per-example worst case over the attacks with per-input outcomes: its accuracy (``None`` without any)
    and the attacks it covers."""
    decoded = {name: decode_points(text, n) for name, text in correct.items()}
    covered = [name for name, points in decoded.items() if points is not None]
    if not covered:
        return None, []
    return worst_case_accuracy([decoded[name] for name in covered]), covered  # type: ignore[misc]


def _results_file(previous: dict[str, Any] | None, current: dict[str, Any], accuracy: dict[str, float],
                  seconds: dict[str, float], pending: list[str],
                  per_class: dict[str, list[float | None]] | None = None,
                  correct: dict[str, str] | None = None, sanity: dict[str, Any] | None = None,
                  gradient_cosine: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON written after each attack: earlier results first, then this run's, then the metadata — with each
    attack's accuracy per class (``per_class``, index = label) and its lowest (``worst_class``), each input's
    outcome per attack (``correct``, :func:`encode_points`), the accuracy under all of those attacks together
    (``worst_case``, over ``worst_case_attacks``), the checks of ``--sanity`` (``sanity``) and the input-gradient
    cosine with a teacher (``gradient_cosine``), the last two kept from the earlier file unless given)."""
    earlier = {k: v for k, v in (previous or {}).items() if k not in RESULT_METADATA_KEYS and k not in accuracy}
    earlier_seconds = {k: v for k, v in ((previous or {}).get("seconds") or {}).items() if k in earlier}
    earlier_attacks = {k: v for k, v in (((previous or {}).get("settings") or {}).get("attacks") or {}).items()
                       if k in earlier}
    result: dict[str, Any] = {**earlier, **accuracy}
    result.update({key: value for key, value in current.items() if key != "settings"})
    result["settings"] = {**current["settings"], "attacks": {**earlier_attacks, **current["settings"]["attacks"]}}
    result["seconds"] = {**earlier_seconds, **{name: round(value, 3) for name, value in seconds.items()}}
    classes = {**{k: v for k, v in ((previous or {}).get("per_class") or {}).items() if k in earlier},
               **(per_class or {})}
    result["per_class"] = classes
    result["worst_class"] = {name: worst_class(values) for name, values in classes.items()}
    points = {**{k: v for k, v in ((previous or {}).get("correct") or {}).items() if k in earlier},
              **(correct or {})}
    result["correct"] = points
    result["worst_case"], result["worst_case_attacks"] = worst_case(points, int(current["n"]))
    sanity = sanity if sanity is not None else (previous or {}).get("sanity")
    if sanity is not None:
        result["sanity"] = sanity
    gradient_cosine = gradient_cosine if gradient_cosine is not None else (previous or {}).get("gradient_cosine")
    if gradient_cosine is not None:
        result["gradient_cosine"] = gradient_cosine
    result["pending"] = pending
    return result
