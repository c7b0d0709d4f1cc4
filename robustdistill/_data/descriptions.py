"""What each built-in dataset is: classes, shape, normalisation, attack defaults and augmentation."""
from __future__ import annotations

from .._registry import DatasetInfo

DEFAULT_DATASET = "fashion-mnist"
AUGMENTATIONS = ("none", "crop-flip")


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
