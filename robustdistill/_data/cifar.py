"""CIFAR-10 and CIFAR-100 from the python pickles."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from .._registry import ImageData
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
