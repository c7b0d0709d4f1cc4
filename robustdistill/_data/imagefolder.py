"""Image folders: DIR/train/<class>/* and DIR/test|val/<class>/* (Tiny-ImageNet or custom data)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .._registry import ImageData, RobustDistillError
from .descriptions import _imagefolder_info
from .files import _READ_ERRORS, _candidates, _check, _memo, _not_found, _read_failed, _stamp

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
