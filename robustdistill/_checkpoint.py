"""Checkpoints: written atomically, loaded with ``weights_only=True`` (a checkpoint is untrusted input)."""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
from torch import nn

from ._registry import ModelArch, RobustDistillError

FORMAT = "robustdistill-checkpoint-v1"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file in the same directory, fsync it, then rename over ``path``.

    The file gets the permissions the user's umask gives new files (``mkstemp`` alone would make it 0600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace a text file atomically: readers see the old or the new content, never a torn one."""
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def atomic_copy(path: str | os.PathLike[str], source: BinaryIO) -> None:
    """Write the bytes of an open file to ``path`` atomically (a decompressing reader works too)."""
    _atomic_write(Path(path), lambda f: shutil.copyfileobj(source, f))


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Save ``payload`` (tensors, numbers, strings, lists, dicts only) atomically."""
    _atomic_write(Path(path), lambda f: torch.save({"format": FORMAT, **payload}, f))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; anything that is not a plain tensor container is refused."""
    path = Path(path)
    if not path.is_file():
        raise RobustDistillError(f"checkpoint {str(path)!r} does not exist; pass the path of a last.pt "
                                 "written by `robustdistill train`")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not zipfile.is_zipfile(path):
            raise RobustDistillError(f"{str(path)!r} is not a readable PyTorch checkpoint (corrupt, truncated, or an "
                                     "old-format file holding objects other than tensors); it was not loaded") from None
        raise RobustDistillError(
            f"refused to load {str(path)!r}: it contains objects other than tensors and plain data, "
            "which could run code when unpickled. Re-save its state_dict with torch.save(model.state_dict(), ...) "
            f"from a trusted environment. ({_unsupported_detail(str(err))})") from None
    except Exception as err:  # torch.load raises many types for damaged files
        raise RobustDistillError(
            f"{str(path)!r} is not a readable PyTorch checkpoint (corrupt or truncated?): "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if not isinstance(obj, dict):
        raise RobustDistillError(f"{str(path)!r} holds a {type(obj).__name__}, not a checkpoint or state_dict")
    return obj


def _unsupported_detail(message: str) -> str:
    """The 'Unsupported ...' line of torch's weights-only error."""
    return next((line.strip() for line in message.splitlines() if "Unsupported" in line), "weights-only load failed")


def is_state_dict(obj: dict[str, Any]) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def weights_in(obj: dict[str, Any]) -> list[str]:
    """The weights a robustdistill checkpoint holds: ``student`` and the models a run declared beside it."""
    return ["student", *obj.get("models", {})]


def checkpoint_weights(obj: dict[str, Any], source: str, weights: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(name, state_dict)`` of ``weights`` in a robustdistill checkpoint; ``None`` is the model the run declares
    final (its weight average when it trained one, else the student)."""
    name = weights or obj.get("final", "student")
    if name == "student":
        return name, obj["model"]
    models = obj.get("models", {})
    if name not in models:
        raise RobustDistillError(f"{source!r} holds no weights named {name!r}; it holds: "
                                 f"{', '.join(weights_in(obj))} (choose with SPEC@NAME)")
    return name, models[name]


def model_from_checkpoint(obj: dict[str, Any], build: Callable[[ModelArch], nn.Module], source: str,
                          weights: str | None = None) -> tuple[nn.Module, ModelArch]:
    """Rebuild the model a robustdistill checkpoint describes (plain state_dicts: :mod:`robustdistill._specs`):
    ``weights`` names which (``student``, or a model the run declared such as ``average``); ``None`` takes the
    run's final model."""
    if obj.get("format") != FORMAT:
        raise RobustDistillError(f"{source!r} is not a robustdistill checkpoint")
    arch = ModelArch.from_dict(obj["arch"])
    _, state = checkpoint_weights(obj, source, weights)
    model = build(arch)
    if not any(k in state for k in ("mean", "std")):  # the arch records them
        state = {**state, "mean": model.mean, "std": model.std}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()
        raise RobustDistillError(
            f"the weights in {source!r} do not fit architecture {arch.name!r} "
            f"({arch.num_classes} classes, {arch.in_channels} channels) it records, so the file was edited or "
            f"damaged; train or finetune it again with robustdistill ({' '.join(first[:2])[:300]})") from None
    return model, arch
