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

from .._registry import DatasetEntry
from .batches import BatchIterator, augment_crop_flip, hold_out, take_subset
from .cifar import load_cifar10, load_cifar100
from .descriptions import AUGMENTATIONS, DATASET_INFOS, DEFAULT_DATASET
from .files import DEBIAN_FASHION_MNIST_DIR, ENV_DATA_DIR, cache_dir, clear_loaded
from .idx import load_fashion_mnist, load_mnist
from .imagefolder import load_imagefolder
from .svhn import load_svhn
from .synthetic import load_synthetic

__all__ = [
    "BUILTIN_DATASETS", "DATASET_INFOS", "DEBIAN_FASHION_MNIST_DIR", "DEFAULT_DATASET", "ENV_DATA_DIR", "AUGMENTATIONS",
    "BatchIterator", "augment_crop_flip", "cache_dir", "clear_loaded", "hold_out", "load_cifar10", "load_cifar100",
    "load_fashion_mnist", "load_imagefolder", "load_mnist", "load_svhn", "load_synthetic", "take_subset",
]

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
