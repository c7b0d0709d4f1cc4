"""MNIST and Fashion-MNIST from the original idx files (gzipped or not), staged where torchvision reads them."""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass

from torch import Tensor

from .._registry import ImageData, RobustDistillError
from . import files as data_files
from .descriptions import DATASET_INFOS
from .files import (
    _READ_ERRORS,
    _atomic_place,
    _candidates,
    _check,
    _download_failed,
    _download_root,
    _memo,
    _not_found,
    _Place,
    _read_failed,
    _stamp,
    cache_dir,
)

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class _IdxSpec:
    name: str
    title: str
    tv_class: str  # torchvision class, also its folder name
    flat_subdirs: tuple[str, ...]
    debian: bool  # also look in DEBIAN_FASHION_MNIST_DIR
    fix: str


def _find_idx_file(folder: str, stem: str) -> str | None:
    for candidate in (os.path.join(folder, stem), os.path.join(folder, stem + ".gz")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _idx_in_tv_layout(root: str, tv_class: str) -> bool:
    raw = os.path.join(root, tv_class, "raw")
    return all(os.path.isfile(os.path.join(raw, f)) for f in _IDX_FILES)


def _stage_idx(files: list[str], tv_class: str) -> str:
    """Copy/decompress the idx files into the cache under ``<key>/<tv_class>/raw``; return the root."""
    key = hashlib.sha256(repr((tv_class, _stamp(files))).encode()).hexdigest()[:16]
    root = os.path.join(cache_dir(), "idx", f"{tv_class}-{key}")
    raw = os.path.join(root, tv_class, "raw")
    for src, stem in zip(files, _IDX_FILES):
        dst = os.path.join(raw, stem)
        if not os.path.isfile(dst):
            try:
                _atomic_place(src, dst)
            except (gzip.BadGzipFile, EOFError, zlib.error) as err:
                raise _read_failed(tv_class, src, err) from err
            except OSError as err:
                raise RobustDistillError(
                    f"could not copy {src} into the cache {raw}: {err}\n"
                    f"Fix: make {cache_dir()} writable, or set XDG_CACHE_HOME to a writable "
                    f"directory."
                ) from err
    return root


def _tv_idx(tv_class: str, root: str, download: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    import torchvision.datasets as tvd

    cls = getattr(tvd, tv_class)
    train = cls(root=root, train=True, download=download)
    test = cls(root=root, train=False, download=False)
    return (train.data.unsqueeze(1).contiguous(), train.targets.long(),
            test.data.unsqueeze(1).contiguous(), test.targets.long())


def _load_idx(spec: _IdxSpec, data_dir: str | None, download: bool) -> ImageData:
    looked: list[str] = []
    extra = (_Place(data_files.DEBIAN_FASHION_MNIST_DIR, "Debian package dataset-fashion-mnist"),)
    for place in _candidates(data_dir, extra if spec.debian else ()):
        base = place.path
        label = f"{base} ({place.origin})"
        if not os.path.isdir(base):
            looked.append(f"{label}: no such directory")
            continue
        # torchvision layout: <base>/<Class>/raw/<files>, or <base> itself being <Class>
        roots = [base]
        if os.path.basename(os.path.normpath(base)) == spec.tv_class:
            roots.append(os.path.dirname(os.path.normpath(base)))
        tv_root = next((r for r in roots if _idx_in_tv_layout(r, spec.tv_class)), None)
        if tv_root is not None:
            raw = os.path.join(tv_root, spec.tv_class, "raw")
            key = (spec.name, "tv", _stamp([os.path.join(raw, f) for f in _IDX_FILES]))
            return _memo(key, lambda r=tv_root: _finish_idx(spec, r, raw))
        # flat layout: the idx files (gz or not) directly in a folder
        missing_report = None
        for sub in spec.flat_subdirs:
            folder = os.path.join(base, sub) if sub else base
            if not os.path.isdir(folder):
                continue
            found = [_find_idx_file(folder, stem) for stem in _IDX_FILES]
            if all(found):
                files = [f for f in found if f is not None]
                key = (spec.name, "flat", _stamp(files))
                return _memo(key, lambda fs=files, fo=folder: _finish_idx(
                    spec, _stage_idx(fs, spec.tv_class), fo))
            if any(found) and missing_report is None:
                missing = [s + "[.gz]" for s, f in zip(_IDX_FILES, found) if f is None]
                missing_report = f"{label}: {folder} lacks {', '.join(missing)}"
        looked.append(missing_report or (
            f"{label}: neither {spec.tv_class}/raw/<idx files> nor the idx files "
            f"({_IDX_FILES[0]}[.gz], ...)"))
    if download:
        root = _download_root(data_dir)
        try:
            os.makedirs(root, exist_ok=True)
            _tv_idx(spec.tv_class, root, download=True)
        except Exception as err:  # network errors come in many types
            raise _download_failed(spec.title, root, err, spec.fix) from err
        raw = os.path.join(root, spec.tv_class, "raw")
        key = (spec.name, "tv", _stamp([os.path.join(raw, f) for f in _IDX_FILES]))
        return _memo(key, lambda: _finish_idx(spec, root, raw))
    raise _not_found(spec.title, looked, spec.fix)


def _finish_idx(spec: _IdxSpec, root: str, where: str) -> ImageData:
    try:
        tx, ty, vx, vy = _tv_idx(spec.tv_class, root)
    except _READ_ERRORS as err:
        raise _read_failed(spec.title, where, err) from err
    return _check(ImageData(DATASET_INFOS[spec.name], tx, ty, vx, vy), where)


_FASHION = _IdxSpec(
    name="fashion-mnist",
    title="Fashion-MNIST",
    tv_class="FashionMNIST",
    flat_subdirs=("", "FashionMNIST/raw", "FashionMNIST", "fashion-mnist"),
    debian=True,
    fix=(
        "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass "
        "--data-dir DIR where DIR holds train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (or torchvision's "
        "FashionMNIST/raw), or pass --download to fetch it."
    ),
)

_MNIST = _IdxSpec(
    name="mnist",
    title="MNIST",
    tv_class="MNIST",
    flat_subdirs=("", "MNIST/raw", "MNIST", "mnist"),
    debian=False,
    fix=(
        "pass --data-dir DIR where DIR holds train-images-idx3-ubyte[.gz], "
        "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] "
        "(or torchvision's MNIST/raw), or pass --download to fetch it."
    ),
)


def load_fashion_mnist(data_dir: str | None = None, download: bool = False) -> ImageData:
    """Fashion-MNIST: 60000 train / 10000 test grey 28×28 images, 10 classes."""
    return _load_idx(_FASHION, data_dir, download)


def load_mnist(data_dir: str | None = None, download: bool = False) -> ImageData:
    """MNIST: 60000 train / 10000 test grey 28×28 digits, 10 classes."""
    return _load_idx(_MNIST, data_dir, download)
