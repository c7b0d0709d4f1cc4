"""A dataset made in memory for plugin tests."""
from __future__ import annotations

import torch
from torch import Tensor

from .._registry import ImageData
from .descriptions import DATASET_INFOS


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
