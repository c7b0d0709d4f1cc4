"""The images of a run: subsets and the held-out validation split, augmentation, and the batch iterator."""
from __future__ import annotations

import hashlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .._registry import ImageData, RobustDistillError
from .descriptions import AUGMENTATIONS


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
