"""Where dataset files are looked for, the errors that say where, the in-process memo of loaded datasets, and
the atomic placement of staged files."""
from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import threading
import zlib
from dataclasses import dataclass
from typing import Callable

import torch

from .._checkpoint import atomic_copy
from .._registry import ImageData, RobustDistillError

ENV_DATA_DIR = "ROBUSTDISTILL_DATA"
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"



def cache_dir() -> str:
    """``$XDG_CACHE_HOME/robustdistill``, or ``~/.cache/robustdistill``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "robustdistill")


@dataclass(frozen=True)
class _Place:
    path: str
    origin: str  # shown in error messages


def _env_dirs() -> list[str]:
    value = os.environ.get(ENV_DATA_DIR, "")
    return [os.path.expanduser(p) for p in value.split(os.pathsep) if p.strip()]


def _candidates(data_dir: str | None, extra: tuple[_Place, ...] = ()) -> list[_Place]:
    places: list[_Place] = []
    if data_dir:
        places.append(_Place(os.path.expanduser(str(data_dir)), "--data-dir"))
    for d in _env_dirs():
        places.append(_Place(d, f"${ENV_DATA_DIR}"))
    places.extend(extra)
    places.append(_Place(cache_dir(), "download cache"))
    return places


def _download_root(data_dir: str | None) -> str:
    if data_dir:
        return os.path.expanduser(str(data_dir))
    env = _env_dirs()
    return env[0] if env else cache_dir()


def _not_found(title: str, looked: list[str], fix: str) -> RobustDistillError:
    looked = list(looked)
    if not os.environ.get(ENV_DATA_DIR):
        at = sum(1 for entry in looked if "(--data-dir)" in entry)
        looked.insert(at, f"${ENV_DATA_DIR} (not set)")
    lines = [f"{title} was not found. Looked in:"]
    lines += [f"  - {entry}" for entry in looked]
    lines.append(f"Fix: {fix}")
    return RobustDistillError("\n".join(lines))


def _download_failed(title: str, root: str, err: BaseException, fix: str) -> RobustDistillError:
    return RobustDistillError(
        f"downloading {title} into {root} failed: {type(err).__name__}: {err}\nFix: {fix}"
    )


def _read_failed(title: str, where: str, err: BaseException) -> RobustDistillError:
    return RobustDistillError(
        f"could not read {title} from {where}: {type(err).__name__}: {err}\n"
        f"Fix: the files look incomplete or corrupt; replace them (or delete them and pass "
        f"--download)."
    )


_READ_ERRORS = (RuntimeError, ValueError, TypeError, OSError, EOFError, KeyError, IndexError,
                AttributeError, AssertionError, pickle.UnpicklingError, zlib.error)

# ---------------------------------------------------------------------------------------
# In-process memo of loaded datasets
# ---------------------------------------------------------------------------------------

_LOADED: dict[tuple, ImageData] = {}
_LOADED_LOCK = threading.Lock()


def clear_loaded() -> None:
    """Forget the datasets kept in memory by earlier loads."""
    with _LOADED_LOCK:
        _LOADED.clear()


def _stamp(paths: list[str]) -> tuple:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((os.path.realpath(p), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((p, -1, -1))
    return tuple(out)


def _memo(key: tuple, load: Callable[[], ImageData]) -> ImageData:
    with _LOADED_LOCK:
        hit = _LOADED.get(key)
    if hit is None:
        hit = load()
        with _LOADED_LOCK:
            _LOADED[key] = hit
    # A shallow copy: callers may rebind fields without touching the memo.
    return dataclasses.replace(hit)


def _check(data: ImageData, where: str) -> ImageData:
    info = data.info
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        if x.shape[0] == 0:
            raise RobustDistillError(
                f"{info.name}: the {split} split read from {where} is empty; "
                f"Fix: point --data-dir at a complete copy of the dataset."
            )
        if x.dtype != torch.uint8 or x.dim() != 4 or y.dtype != torch.int64 or y.shape != x.shape[:1]:
            raise RobustDistillError(
                f"{info.name}: unexpected {split} arrays from {where}: images "
                f"{tuple(x.shape)} {x.dtype}, labels {tuple(y.shape)} {y.dtype}"
            )
        expected = (info.in_channels, info.image_size, info.image_size)
        if tuple(x.shape[1:]) != expected:
            raise RobustDistillError(
                f"{info.name}: {split} images read from {where} have shape {tuple(x.shape[1:])}, "
                f"expected {expected}; Fix: check that --data-dir holds {info.name}."
            )
        if int(y.min()) < 0 or int(y.max()) >= info.num_classes:
            raise RobustDistillError(
                f"{info.name}: {split} labels read from {where} lie outside "
                f"[0, {info.num_classes - 1}]; Fix: check that --data-dir holds {info.name}."
            )
    return data


# ---------------------------------------------------------------------------------------
# Atomic file placement
# ---------------------------------------------------------------------------------------


def _atomic_place(src: str, dst: str) -> None:
    """Put ``src`` at ``dst`` (decompressing a ``.gz``), so that ``dst`` never exists half-written."""
    with (gzip.open if src.endswith(".gz") else open)(src, "rb") as source:
        atomic_copy(dst, source)
