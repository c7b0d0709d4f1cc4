"""Datasets held in memory as uint8 tensors, GPU-side augmentation and a batch iterator.

Loaders
-------
Every built-in dataset is read with ``torchvision.datasets`` and returned as
:class:`~robustdistill._registry.ImageData` (uint8 images ``[N, C, H, W]``, int64 labels).
Files are looked for, in order, in:

1. the ``data_dir`` argument (``--data-dir``);
2. ``$ROBUSTDISTILL_DATA`` (one directory, or several separated by ``os.pathsep``);
3. for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist`` (Debian package
   ``dataset-fashion-mnist``, which holds the original gzipped idx files);
4. the download cache ``$XDG_CACHE_HOME/robustdistill`` (``~/.cache/robustdistill``).

A directory may hold the torchvision layout (``FashionMNIST/raw/...``, ``MNIST/raw/...``,
``cifar-10-batches-py``, ``cifar-100-python``, ``train_32x32.mat``/``test_32x32.mat``) or,
for the idx datasets, the four idx files directly (gzipped or not). Idx files found outside
the torchvision layout are copied (and decompressed) into the cache, where torchvision
expects them; each file is written to a temporary name and moved into place with
``os.replace``, so concurrent processes never see a partial file.

Nothing is downloaded unless ``download=True``; the download goes to ``data_dir``, else the
first ``$ROBUSTDISTILL_DATA`` directory, else the cache.

Loaded datasets are kept in memory per process, keyed by the dataset name and the files it
was read from; the tensors are shared between callers and must not be modified in place.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import gzip
import os
import pickle
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._checkpoint import atomic_copy
from ._registry import DatasetEntry, DatasetInfo, ImageData, RobustDistillError

__all__ = [
    "BUILTIN_DATASETS",
    "DATASET_INFOS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DEFAULT_DATASET",
    "ENV_DATA_DIR",
    "AUGMENTATIONS",
    "BatchIterator",
    "augment_crop_flip",
    "cache_dir",
    "clear_loaded",
    "load_cifar10",
    "load_cifar100",
    "load_fashion_mnist",
    "load_imagefolder",
    "load_mnist",
    "load_svhn",
    "load_synthetic",
    "take_subset",
    "hold_out",
]

DEFAULT_DATASET = "fashion-mnist"
ENV_DATA_DIR = "ROBUSTDISTILL_DATA"
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
AUGMENTATIONS = ("none", "crop-flip")

# ---------------------------------------------------------------------------------------
# Dataset descriptions
# ---------------------------------------------------------------------------------------

_CIFAR_ATTACK = dict(eps=8 / 255, step_size=2 / 255, attack_steps=10)

DATASET_INFOS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist", num_classes=10, in_channels=1, image_size=28,
        mean=(0.2860,), std=(0.3530,), eps=0.1, step_size=0.01, attack_steps=10,
        augment="none",
    ),
    "mnist": DatasetInfo(
        name="mnist", num_classes=10, in_channels=1, image_size=28,
        mean=(0.1307,), std=(0.3081,), eps=0.3, step_size=0.01, attack_steps=40,
        augment="none",
    ),
    "cifar10": DatasetInfo(
        name="cifar10", num_classes=10, in_channels=3, image_size=32,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616),
        augment="crop-flip", **_CIFAR_ATTACK,
    ),
    "cifar100": DatasetInfo(
        name="cifar100", num_classes=100, in_channels=3, image_size=32,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        augment="crop-flip", **_CIFAR_ATTACK,
    ),
    "synthetic": DatasetInfo(
        name="synthetic", num_classes=10, in_channels=1, image_size=8,
        mean=(0.5,), std=(0.25,), eps=0.1, step_size=0.02, attack_steps=3,
        augment="none",
    ),
    # Digits: no horizontal flip.
    "svhn": DatasetInfo(
        name="svhn", num_classes=10, in_channels=3, image_size=32,
        mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
        augment="none", **_CIFAR_ATTACK,
    ),
}

# ImageNet statistics; the class count and image size of an image folder are known only
# once it is read.
IMAGEFOLDER_MEAN = (0.485, 0.456, 0.406)
IMAGEFOLDER_STD = (0.229, 0.224, 0.225)


def _imagefolder_info(num_classes: int, image_size: int) -> DatasetInfo:
    return DatasetInfo(
        name="imagefolder", num_classes=num_classes, in_channels=3, image_size=image_size,
        mean=IMAGEFOLDER_MEAN, std=IMAGEFOLDER_STD, augment="crop-flip", **_CIFAR_ATTACK,
    )


# ---------------------------------------------------------------------------------------
# Where files are looked for
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST (idx files)
# ---------------------------------------------------------------------------------------

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
    extra = (_Place(DEBIAN_FASHION_MNIST_DIR, "Debian package dataset-fashion-mnist"),)
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


# ---------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickles)
# ---------------------------------------------------------------------------------------


def _cifar_reader(name: str):
    """torchvision's CIFAR class, reading without the per-file md5 check.

    The pickles are still parsed by torchvision; only the checksum pass is skipped, which
    keeps loading fast and accepts re-packed copies of the files.
    """
    import torchvision.datasets as tvd

    base = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100

    class Reader(base):  # type: ignore[misc, valid-type]
        train_list = [[f, None] for f, _ in base.train_list]
        test_list = [[f, None] for f, _ in base.test_list]
        meta = {**base.meta, "md5": None}

    return base, Reader


def _cifar_files(name: str) -> tuple[str, list[str]]:
    import torchvision.datasets as tvd

    base = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    files = [f for f, _ in base.train_list + base.test_list] + [base.meta["filename"]]
    return base.base_folder, files


def _load_cifar(name: str, data_dir: str | None, download: bool) -> ImageData:
    title = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    folder, files = _cifar_files(name)
    fix = (
        f"put torchvision's {folder}/ folder (from the python version of {title}) under "
        f"--data-dir DIR, or pass --download to fetch it."
    )
    looked: list[str] = []
    for place in _candidates(data_dir):
        base = place.path
        label = f"{base} ({place.origin})"
        if not os.path.isdir(base):
            looked.append(f"{label}: no such directory")
            continue
        roots = [base]
        if os.path.basename(os.path.normpath(base)) == folder:
            roots.append(os.path.dirname(os.path.normpath(base)))
        hit = None
        for root in roots:
            paths = [os.path.join(root, folder, f) for f in files]
            if all(os.path.isfile(p) for p in paths):
                hit = (root, paths)
                break
        if hit is not None:
            root, paths = hit
            return _memo((name, _stamp(paths)), lambda r=root: _finish_cifar(name, title, r))
        present = os.path.isdir(os.path.join(base, folder))
        if present:
            missing = [f for f in files if not os.path.isfile(os.path.join(base, folder, f))]
            looked.append(f"{label}: {folder}/ lacks {', '.join(missing)}")
        else:
            looked.append(f"{label}: no {folder}/")
    if download:
        root = _download_root(data_dir)
        base_cls, _ = _cifar_reader(name)
        try:
            os.makedirs(root, exist_ok=True)
            base_cls(root=root, train=True, download=True)
        except Exception as err:  # network errors come in many types
            raise _download_failed(title, root, err, fix) from err
        paths = [os.path.join(root, folder, f) for f in files]
        return _memo((name, _stamp(paths)), lambda: _finish_cifar(name, title, root))
    raise _not_found(title, looked, fix)


def _finish_cifar(name: str, title: str, root: str) -> ImageData:
    _, reader = _cifar_reader(name)
    where = os.path.join(root, reader.base_folder)
    try:
        train = reader(root=root, train=True)
        test = reader(root=root, train=False)
    except _READ_ERRORS as err:
        raise _read_failed(title, where, err) from err

    def arrays(ds) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)

    tx, ty = arrays(train)
    vx, vy = arrays(test)
    return _check(ImageData(DATASET_INFOS[name], tx, ty, vx, vy), where)


def load_cifar10(data_dir: str | None = None, download: bool = False) -> ImageData:
    """CIFAR-10: 50000 train / 10000 test colour 32×32 images, 10 classes."""
    return _load_cifar("cifar10", data_dir, download)


def load_cifar100(data_dir: str | None = None, download: bool = False) -> ImageData:
    """CIFAR-100: 50000 train / 10000 test colour 32×32 images, 100 fine classes."""
    return _load_cifar("cifar100", data_dir, download)


# ---------------------------------------------------------------------------------------
# SVHN (.mat files, needs scipy)
# ---------------------------------------------------------------------------------------

_SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def _require_scipy() -> None:
    try:
        import scipy.io  # noqa: F401
    except ImportError as err:
        raise RobustDistillError(
            "SVHN is stored as MATLAB .mat files, which need scipy; Fix: pip install scipy"
        ) from err


def _svhn_reader():
    """torchvision's SVHN class, reading without the md5 pass (see :func:`_cifar_reader`)."""
    import torchvision.datasets as tvd

    class Reader(tvd.SVHN):
        split_list = {k: [v[0], v[1], None] for k, v in tvd.SVHN.split_list.items()}

    return Reader


def load_svhn(data_dir: str | None = None, download: bool = False) -> ImageData:
    """SVHN: 73257 train / 26032 test colour 32×32 digits, 10 classes ('extra' unused)."""
    fix = (
        "put train_32x32.mat and test_32x32.mat (torchvision's SVHN layout) in --data-dir DIR "
        "(or DIR/svhn), or pass --download to fetch them."
    )
    looked: list[str] = []
    for place in _candidates(data_dir):
        base = place.path
        label = f"{base} ({place.origin})"
        if not os.path.isdir(base):
            looked.append(f"{label}: no such directory")
            continue
        for folder in (base, os.path.join(base, "svhn"), os.path.join(base, "SVHN")):
            paths = [os.path.join(folder, f) for f in _SVHN_FILES]
            if all(os.path.isfile(p) for p in paths):
                _require_scipy()
                return _memo(("svhn", _stamp(paths)), lambda fo=folder: _finish_svhn(fo))
        looked.append(f"{label}: no {' and '.join(_SVHN_FILES)} (also looked in svhn/)")
    if download:
        _require_scipy()
        import torchvision.datasets as tvd

        root = _download_root(data_dir)
        try:
            os.makedirs(root, exist_ok=True)
            for split in ("train", "test"):
                tvd.SVHN(root=root, split=split, download=True)
        except Exception as err:  # network errors come in many types
            raise _download_failed("SVHN", root, err, fix) from err
        paths = [os.path.join(root, f) for f in _SVHN_FILES]
        return _memo(("svhn", _stamp(paths)), lambda: _finish_svhn(root))
    raise _not_found("SVHN", looked, fix)


def _finish_svhn(folder: str) -> ImageData:
    reader = _svhn_reader()
    try:
        train = reader(root=folder, split="train")
        test = reader(root=folder, split="test")
    except _READ_ERRORS as err:
        raise _read_failed("SVHN", folder, err) from err

    def arrays(ds) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(ds.data))
        return x, torch.from_numpy(np.asarray(ds.labels, dtype=np.int64))

    tx, ty = arrays(train)
    vx, vy = arrays(test)
    return _check(ImageData(DATASET_INFOS["svhn"], tx, ty, vx, vy), folder)


# ---------------------------------------------------------------------------------------
# Image folders (Tiny-ImageNet or custom data)
# ---------------------------------------------------------------------------------------

_TEST_SPLITS = ("test", "val")


def _imagefolder_root(data_dir: str | None) -> tuple[str, str, str]:
    """Find ``(root, train_dir, test_dir)`` among the candidate directories."""
    looked: list[str] = []
    places = [p for p in _candidates(data_dir) if p.origin != "download cache"]
    for place in places:
        base = place.path
        label = f"{base} ({place.origin})"
        for root in (base, os.path.join(base, "imagefolder")):
            train = os.path.join(root, "train")
            tests = [os.path.join(root, s) for s in _TEST_SPLITS]
            test = next((t for t in tests if os.path.isdir(t)), None)
            if os.path.isdir(train) and test is not None:
                return root, train, test
        looked.append(f"{label}: no train/ with test/ or val/")
    if not data_dir:
        looked.insert(0, "nothing given with (--data-dir)")
    raise _not_found(
        "An image folder dataset", looked,
        "pass --data-dir DIR where DIR/train/<class>/<images> and DIR/test/<class>/<images> "
        "(or DIR/val/...) hold the images; there is nothing to download for 'imagefolder'.",
    )


def _tiny_imagenet_val(test_dir: str) -> list[tuple[str, str]] | None:
    """Tiny-ImageNet's ``val/images`` + ``val/val_annotations.txt``: ``[(path, class)]``."""
    notes = os.path.join(test_dir, "val_annotations.txt")
    images = os.path.join(test_dir, "images")
    if not (os.path.isfile(notes) and os.path.isdir(images)):
        return None
    pairs = []
    with open(notes, encoding="utf-8") as fh:
        for line in fh:
            fields = line.split("\t")
            if len(fields) >= 2:
                pairs.append((os.path.join(images, fields[0].strip()), fields[1].strip()))
    return pairs


def _read_images(paths: list[str], size: int, loader: Callable) -> Tensor:
    from PIL import Image

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def one(i: int) -> None:
        img = loader(paths[i])  # RGB PIL image
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(img, dtype=np.uint8)

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(len(paths))))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def load_imagefolder(
    data_dir: str | None = None, download: bool = False, image_size: int | None = None
) -> ImageData:
    """Images in ``train/<class>/...`` and ``test/<class>/...`` (or ``val/...``), read as RGB.

    Classes are the sub-folders of ``train/`` in sorted order (``torchvision.datasets.ImageFolder``);
    images are found recursively, so Tiny-ImageNet's ``train/<wnid>/images/*.JPEG`` works, and
    its ``val/images`` + ``val_annotations.txt`` is read as the test split. Every image is
    resized (bilinear) to ``S×S``, where ``S`` is ``image_size`` when given, else the shorter
    side of the first training image (64 for Tiny-ImageNet). Mean/std are the ImageNet
    statistics. ``download`` is accepted for a uniform signature; nothing can be downloaded.
    """
    del download
    import torchvision.datasets as tvd
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root, train_dir, test_dir = _imagefolder_root(data_dir)
    try:
        train = tvd.ImageFolder(train_dir)
    except (FileNotFoundError, RuntimeError) as err:
        raise RobustDistillError(
            f"imagefolder: {train_dir} holds no class folders with images ({err}); "
            f"Fix: put images under {train_dir}/<class>/."
        ) from err
    class_to_idx = train.class_to_idx
    tiny = _tiny_imagenet_val(test_dir)
    if tiny is not None:
        unknown = sorted({c for _, c in tiny if c not in class_to_idx})
        if unknown:
            raise RobustDistillError(
                f"imagefolder: {test_dir}/val_annotations.txt names classes absent from "
                f"{train_dir}: {', '.join(unknown[:5])}"
            )
        test_samples = [(p, class_to_idx[c]) for p, c in tiny]
    else:
        extra = sorted(
            d.name for d in os.scandir(test_dir) if d.is_dir() and d.name not in class_to_idx
        )
        if extra:
            raise RobustDistillError(
                f"imagefolder: {test_dir} has class folders absent from {train_dir}: "
                f"{', '.join(extra[:5])}; Fix: use the same class folders in both splits."
            )
        present = {c: i for c, i in class_to_idx.items() if os.path.isdir(os.path.join(test_dir, c))}
        test_samples = tvd.DatasetFolder.make_dataset(
            test_dir, present, extensions=IMG_EXTENSIONS, allow_empty=True
        ) if present else []
    if not train.samples or not test_samples:
        split = "train" if not train.samples else "test"
        raise RobustDistillError(
            f"imagefolder: the {split} split under {root} is empty; Fix: put images "
            f"({', '.join(IMG_EXTENSIONS)}) under {root}/{split}/<class>/."
        )
    train_paths = [p for p, _ in train.samples]
    test_paths = [p for p, _ in test_samples]
    key = ("imagefolder", image_size, root, len(train_paths), len(test_paths),
           _stamp([train_paths[0], train_paths[-1], test_paths[0], test_paths[-1]]))

    def load() -> ImageData:
        try:
            size = image_size or min(train.loader(train_paths[0]).size)
            tx = _read_images(train_paths, size, train.loader)
            vx = _read_images(test_paths, size, train.loader)
        except _READ_ERRORS as err:
            raise _read_failed("the image folder", root, err) from err
        ty = torch.as_tensor([t for _, t in train.samples], dtype=torch.int64)
        vy = torch.as_tensor([t for _, t in test_samples], dtype=torch.int64)
        info = _imagefolder_info(len(train.classes), size)
        return _check(ImageData(info, tx, ty, vx, vy), root)

    return _memo(key, load)


# ---------------------------------------------------------------------------------------
# Registry entries
# ---------------------------------------------------------------------------------------

def load_synthetic(data_dir: str | None = None, download: bool = False) -> ImageData:
    """256 training and 128 test images of 8×8 grey noise, each class brightening its own pixel block:
    learnable in a few steps, made in memory, the same every time (for plugin tests)."""
    generator = torch.Generator().manual_seed(0)
    info = DATASET_INFOS["synthetic"]

    def make(n: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(n) % info.num_classes
        x = torch.rand(n, 1, 8, 8, generator=generator) * 0.5
        for c in range(info.num_classes):
            row, col = divmod(c, 4)
            x[y == c, :, 2 * row:2 * row + 2, 2 * col:2 * col + 2] += 0.5
        return (x * 255).round().to(torch.uint8), y

    train_x, train_y = make(256)
    test_x, test_y = make(128)
    return ImageData(info, train_x, train_y, test_x, test_y)


BUILTIN_DATASETS: list[DatasetEntry] = [
    DatasetEntry(name="fashion-mnist", load=load_fashion_mnist,
                 summary="Fashion-MNIST, 10 classes of grey 28x28 clothing (default; Debian dataset-fashion-mnist)"),
    DatasetEntry(name="mnist", load=load_mnist, summary="MNIST, 10 classes of grey 28x28 handwritten digits"),
    DatasetEntry(name="cifar10", load=load_cifar10, summary="CIFAR-10, 10 classes of colour 32x32 images"),
    DatasetEntry(name="cifar100", load=load_cifar100, summary="CIFAR-100, 100 classes of colour 32x32 images"),
    DatasetEntry(name="svhn", load=load_svhn,
                 summary="SVHN, 10 classes of colour 32x32 house-number digits (needs scipy)"),
    DatasetEntry(name="imagefolder", load=load_imagefolder,
                 summary="DIR/train/<class>/* and DIR/test|val/<class>/*, RGB, e.g. Tiny-ImageNet"),
    DatasetEntry(name="synthetic", load=load_synthetic,
                 summary="10 classes of 8x8 grey patterns made in memory, for plugin tests"),
]


# ---------------------------------------------------------------------------------------
# Subsets
# ---------------------------------------------------------------------------------------


def take_subset(data: ImageData, train: int | None = None, test: int | None = None) -> ImageData:
    """The first ``train`` training and first ``test`` test images (``None``: all of them).

    A count above the number available keeps everything; a count below 1 is an error.
    """
    for what, n in (("training", train), ("test", test)):
        if n is not None and int(n) < 1:
            raise RobustDistillError(
                f"a subset of {n} {what} images is empty; Fix: pass a subset size of at least 1."
            )
    tn = data.train_x.shape[0] if train is None else min(int(train), data.train_x.shape[0])
    vn = data.test_x.shape[0] if test is None else min(int(test), data.test_x.shape[0])
    return ImageData(
        info=data.info,
        train_x=data.train_x[:tn],
        train_y=data.train_y[:tn],
        test_x=data.test_x[:vn],
        test_y=data.test_y[:vn],
    )


def hold_out(data: ImageData, subset: int | None, split: int) -> ImageData:
    """The images of a training run: the last ``split`` training images held out as the validation split, and
    the first ``subset`` (``None``: all the others) training on. The two never overlap (the resolution checks
    it), so a ``--subset N`` run trains on the same first N images whatever the split."""
    total = data.train_x.shape[0]
    train = total - split if subset is None else min(int(subset), total - split)
    return ImageData(info=data.info, train_x=data.train_x[:train], train_y=data.train_y[:train],
                     test_x=data.test_x, test_y=data.test_y,
                     val_x=data.train_x[total - split:], val_y=data.train_y[total - split:])


# ---------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------


def augment_crop_flip(
    x: Tensor,
    padding: int = 4,
    generator: torch.Generator | None = None,
    *,
    flip: bool = True,
) -> Tensor:
    """Random crop from the zero-padded image plus random horizontal flip, per sample.

    ``x`` is a float batch ``[B, C, H, W]`` on any device; the result has the same shape,
    dtype and device. Each sample gets its own offset ``(dy, dx) ∈ [0, 2·padding]²`` into the
    image padded with ``padding`` zeros, and (when ``flip``) is mirrored left-right with
    probability 1/2. The work is one gather, with no Python loop over samples.

    ``generator`` makes the draw reproducible; it must live on ``x.device``
    (``torch.Generator(device=x.device)``), since the random numbers are drawn there.
    ``None`` uses the global RNG of that device. Random numbers are drawn in a fixed order
    (row offsets, column offsets, then flips when ``flip``).
    """
    if x.dim() != 4:
        raise ValueError(f"augment_crop_flip expects [B, C, H, W], got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, c, h, w = x.shape
    if b == 0:
        return x.clone()
    dev = x.device
    span = 2 * padding + 1
    dy = torch.randint(0, span, (b,), generator=generator, device=dev)
    dx = torch.randint(0, span, (b,), generator=generator, device=dev)
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    rows = dy[:, None] + torch.arange(h, device=dev)  # [B, H]
    col = torch.arange(w, device=dev)
    if flip:
        mirror = torch.rand(b, generator=generator, device=dev) < 0.5
        col = torch.where(mirror[:, None], (w - 1) - col, col)  # [B, W]
    cols = dx[:, None] + col  # [B, W]
    wp = w + 2 * padding
    # Flat index into each padded [Hp, Wp] plane, shared across channels.
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    out = padded.reshape(b, c, -1).gather(2, flat)
    return out.reshape(b, c, h, w)


# ---------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------


def _derive_seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class BatchIterator:
    """Batches ``(x, y)`` from in-memory uint8 images, with no CPU data-loading workers.

    The images and labels are moved to ``device`` once, at construction; each batch is then
    indexed, converted to float32 in ``[0, 1]`` and (``augment="crop-flip"``) augmented there.
    ``y`` is int64 on ``device``.

    Determinism: the shuffle order is a function of ``(seed, epoch)`` (drawn with a private
    CPU ``torch.Generator``), and batch ``i``'s augmentation is a function of
    ``(seed, epoch, i)`` (a private generator on ``device``), so neither touches the global
    RNG. Resuming an epoch from batch ``k`` (``batches(start=k)``) yields exactly the batches
    ``k, k+1, ...`` of an uninterrupted epoch, augmentation included. The augmentation draws depend on the device type
    (CPU and CUDA generators differ).
    """

    def __init__(
        self,
        images_u8: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        device: torch.device | str,
        augment: str = "none",
    ) -> None:
        if images_u8.dtype != torch.uint8 or images_u8.dim() != 4:
            raise RobustDistillError(
                f"BatchIterator needs uint8 images [N, C, H, W], got {images_u8.dtype} "
                f"{tuple(images_u8.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != images_u8.shape[0]:
            raise RobustDistillError(
                f"BatchIterator: {images_u8.shape[0]} images but labels of shape {tuple(labels.shape)}"
            )
        if images_u8.shape[0] == 0:
            raise RobustDistillError("BatchIterator: the dataset is empty")
        if int(batch_size) < 1:
            raise RobustDistillError(f"batch size must be at least 1, got {batch_size}")
        if augment not in AUGMENTATIONS:
            raise RobustDistillError(
                f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}"
            )
        self.device = torch.device(device)
        self.images = images_u8.to(self.device)
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.augment = augment
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    def __len__(self) -> int:
        n, bs = self.num_samples, self.batch_size
        return math.ceil(n / bs)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order and augmentation draws of epoch ``epoch``."""
        self.epoch = int(epoch)

    def order(self) -> Tensor:
        """Sample indices (on ``device``) in this epoch's order."""
        if not self.shuffle:
            return torch.arange(self.num_samples, device=self.device)
        g = torch.Generator().manual_seed(_derive_seed("order", self.seed, self.epoch))
        return torch.randperm(self.num_samples, generator=g).to(self.device)

    def _augment_generator(self, batch: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(_derive_seed("augment", self.seed, self.epoch, batch))
        return g

    def batches(self, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield batches ``start, start+1, ...`` of the current epoch."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        bs, n = self.batch_size, self.num_samples
        order = self.order() if self.shuffle else None
        for i in range(start, len(self)):
            lo, hi = i * bs, min((i + 1) * bs, n)
            if order is None:
                xb, yb = self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = self.images[idx], self.labels[idx]
            x = xb.to(torch.float32).div_(255.0)
            if self.augment == "crop-flip":
                x = augment_crop_flip(x, generator=self._augment_generator(i))
            yield x, yb

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.batches()
