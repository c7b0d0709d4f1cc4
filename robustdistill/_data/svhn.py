"""SVHN from its .mat files (needs scipy)."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from .._registry import ImageData, RobustDistillError
from .descriptions import DATASET_INFOS
from .files import (
    _READ_ERRORS,
    _candidates,
    _check,
    _download_failed,
    _download_root,
    _memo,
    _not_found,
    _read_failed,
    _stamp,
)

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
