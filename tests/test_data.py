"""Dataset loaders, augmentation, batch iteration and subsets.

Loaders are exercised on tiny files written here, in the layouts the loaders accept.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import threading
import time

import numpy as np
import pytest
import torch

from robustdistill import _data as D
from robustdistill._registry import DatasetEntry, ImageData, RobustDistillError

DEBIAN_TRAIN = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


# ---------------------------------------------------------------------------------------
# fixtures and file writers
# ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A private cache, no $ROBUSTDISTILL_DATA, no Debian directory, no memo across tests."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv(D.ENV_DATA_DIR, raising=False)
    monkeypatch.setattr(D.files, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "no-debian-dir"))
    D.clear_loaded()
    yield
    D.clear_loaded()


def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return header + arr.tobytes()


def _fake_idx(n_train: int = 7, n_test: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (n_train,), dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }


def _write_idx(folder, arrays, gz: bool) -> None:
    os.makedirs(folder, exist_ok=True)
    for stem, arr in arrays.items():
        payload = _idx_bytes(arr)
        if gz:
            with gzip.open(os.path.join(folder, stem + ".gz"), "wb") as fh:
                fh.write(payload)
        else:
            with open(os.path.join(folder, stem), "wb") as fh:
                fh.write(payload)


def _check_idx(d: ImageData, arrays, name: str) -> None:
    assert d.info.name == name
    assert d.train_x.shape == (7, 1, 28, 28) and d.test_x.shape == (5, 1, 28, 28)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert torch.equal(d.train_x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(d.train_y, torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long())
    assert torch.equal(d.test_x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert torch.equal(d.test_y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())


def _write_cifar(root, name: str, n_per_batch: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder = os.path.join(root, "cifar-10-batches-py")
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        label_key, classes = "labels", 10
        meta_name, meta = "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}
    else:
        folder = os.path.join(root, "cifar-100-python")
        files = ["train", "test"]
        label_key, classes = "fine_labels", 100
        meta_name, meta = "meta", {"fine_label_names": [f"c{i}" for i in range(100)]}
    os.makedirs(folder)
    written = {}
    for f in files:
        x = rng.integers(0, 256, (n_per_batch, 3 * 32 * 32), dtype=np.uint8)
        y = rng.integers(0, classes, (n_per_batch,)).tolist()
        with open(os.path.join(folder, f), "wb") as fh:
            pickle.dump({"data": x, label_key: y}, fh)
        written[f] = (x, y)
    with open(os.path.join(folder, meta_name), "wb") as fh:
        pickle.dump(meta, fh)
    return written


def _png(path, size, color):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)


# ---------------------------------------------------------------------------------------
# registry entries and defaults
# ---------------------------------------------------------------------------------------


def test_builtin_entries_and_infos():
    names = [e.name for e in D.BUILTIN_DATASETS]
    assert names == ["fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "imagefolder", "synthetic"]
    assert all(isinstance(e, DatasetEntry) and e.summary and "\n" not in e.summary
               for e in D.BUILTIN_DATASETS)
    assert D.DEFAULT_DATASET == "fashion-mnist"
    fm = D.DATASET_INFOS["fashion-mnist"]
    assert (fm.num_classes, fm.in_channels, fm.image_size) == (10, 1, 28)
    assert fm.mean == (0.2860,) and fm.std == (0.3530,)
    assert (fm.eps, fm.step_size, fm.attack_steps, fm.augment) == (0.1, 0.01, 10, "none")
    mn = D.DATASET_INFOS["mnist"]
    assert (mn.eps, mn.step_size, mn.attack_steps, mn.augment) == (0.3, 0.01, 40, "none")
    c10 = D.DATASET_INFOS["cifar10"]
    assert c10.eps == pytest.approx(8 / 255) and c10.step_size == pytest.approx(2 / 255)
    assert c10.augment == "crop-flip" and c10.in_channels == 3 and c10.image_size == 32
    assert D.DATASET_INFOS["cifar100"].num_classes == 100
    synthetic = D.load_synthetic()
    assert synthetic.train_x.shape == (256, 1, 8, 8) and synthetic.train_x.dtype == torch.uint8
    assert torch.equal(synthetic.train_x, D.load_synthetic().train_x), "the same images every time"
    assert synthetic.train_y.bincount().tolist() == [26] * 6 + [25] * 4
    assert D.DATASET_INFOS["svhn"].augment == "none"


# ---------------------------------------------------------------------------------------
# MNIST-like idx files
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_idx_flat_layout(tmp_path, name, gz):
    arrays = _fake_idx()
    src = tmp_path / "flat"
    _write_idx(src, arrays, gz=gz)
    before = sorted(os.listdir(src))
    load = D.load_fashion_mnist if name == "fashion-mnist" else D.load_mnist
    d = load(str(src), False)
    _check_idx(d, arrays, name)
    assert sorted(os.listdir(src)) == before  # the source folder is left alone
    cache = tmp_path / "xdg-cache" / "robustdistill"
    tv_class = "FashionMNIST" if name == "fashion-mnist" else "MNIST"
    staged = list(cache.glob(f"idx/*/{tv_class}/raw/train-images-idx3-ubyte"))
    assert len(staged) == 1
    assert not list(cache.rglob(".tmp-*"))
    # a second load in a fresh process state reads the staged copy
    D.clear_loaded()
    _check_idx(load(str(src), False), arrays, name)


def test_idx_torchvision_layout(tmp_path):
    arrays = _fake_idx()
    _write_idx(tmp_path / "root" / "MNIST" / "raw", arrays, gz=False)
    _check_idx(D.load_mnist(str(tmp_path / "root"), False), arrays, "mnist")
    assert not (tmp_path / "xdg-cache").exists()  # nothing needed staging


def test_idx_torchvision_layout_gz_only(tmp_path):
    arrays = _fake_idx()
    _write_idx(tmp_path / "root" / "FashionMNIST" / "raw", arrays, gz=True)
    _check_idx(D.load_fashion_mnist(str(tmp_path / "root"), False), arrays, "fashion-mnist")


def test_env_var_is_used(tmp_path, monkeypatch):
    arrays = _fake_idx(seed=3)
    _write_idx(tmp_path / "env" / "fashion-mnist", arrays, gz=True)
    monkeypatch.setenv(D.ENV_DATA_DIR, str(tmp_path / "env"))
    _check_idx(D.load_fashion_mnist(None, False), arrays, "fashion-mnist")


def test_data_dir_comes_before_env(tmp_path, monkeypatch):
    first, second = _fake_idx(seed=1), _fake_idx(seed=2)
    _write_idx(tmp_path / "a", first, gz=True)
    _write_idx(tmp_path / "b", second, gz=True)
    monkeypatch.setenv(D.ENV_DATA_DIR, str(tmp_path / "b"))
    _check_idx(D.load_mnist(str(tmp_path / "a"), False), first, "mnist")
    _check_idx(D.load_mnist(None, False), second, "mnist")


def test_debian_dir_is_searched(tmp_path, monkeypatch):
    arrays = _fake_idx(seed=4)
    deb = tmp_path / "debian"
    _write_idx(deb, arrays, gz=True)
    monkeypatch.setattr(D.files, "DEBIAN_FASHION_MNIST_DIR", str(deb))
    os.chmod(deb, 0o555)  # read-only, as installed
    try:
        _check_idx(D.load_fashion_mnist(None, False), arrays, "fashion-mnist")
    finally:
        os.chmod(deb, 0o755)


def test_concurrent_staging(tmp_path):
    arrays = _fake_idx(seed=5)
    _write_idx(tmp_path / "flat", arrays, gz=True)
    files = [str(tmp_path / "flat" / (s + ".gz")) for s in D.idx._IDX_FILES]
    roots, errors = [], []

    def stage():
        try:
            roots.append(D.idx._stage_idx(files, "MNIST"))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=stage) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(roots)) == 1
    raw = os.path.join(roots[0], "MNIST", "raw")
    assert sorted(os.listdir(raw)) == sorted(D.idx._IDX_FILES)


def test_missing_fashion_mnist_error_names_places_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(D.ENV_DATA_DIR, str(tmp_path / "env-dir"))
    with pytest.raises(RobustDistillError) as info:
        D.load_fashion_mnist(str(tmp_path / "given"), False)
    msg = str(info.value)
    for place in ("given", "env-dir", "no-debian-dir", str(tmp_path / "xdg-cache")):
        assert place in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg and "--download" in msg


def test_missing_reports_partial_files(tmp_path):
    arrays = _fake_idx()
    del arrays["t10k-labels-idx1-ubyte"]
    _write_idx(tmp_path / "partial", arrays, gz=True)
    with pytest.raises(RobustDistillError, match="t10k-labels-idx1-ubyte"):
        D.load_mnist(str(tmp_path / "partial"), False)


def test_missing_cifar_error(tmp_path):
    with pytest.raises(RobustDistillError) as info:
        D.load_cifar100(str(tmp_path / "given"), False)
    msg = str(info.value)
    assert "given" in msg and "cifar-100-python" in msg
    assert "--data-dir" in msg and "--download" in msg


def test_empty_split_is_an_error(tmp_path):
    arrays = _fake_idx()
    arrays["t10k-images-idx3-ubyte"] = np.zeros((0, 28, 28), np.uint8)
    arrays["t10k-labels-idx1-ubyte"] = np.zeros((0,), np.uint8)
    _write_idx(tmp_path / "flat", arrays, gz=False)
    with pytest.raises(RobustDistillError, match="empty"):
        D.load_mnist(str(tmp_path / "flat"), False)


def test_corrupt_file_is_an_error(tmp_path):
    _write_idx(tmp_path / "flat", _fake_idx(), gz=False)
    with open(tmp_path / "flat" / "train-images-idx3-ubyte", "wb") as fh:
        fh.write(b"\x00\x00\x08")
    with pytest.raises(RobustDistillError, match="could not read"):
        D.load_mnist(str(tmp_path / "flat"), False)


# ---------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------


def test_cifar10_layout(tmp_path):
    written = _write_cifar(tmp_path, "cifar10")
    d = D.load_cifar10(str(tmp_path), False)
    assert d.info.name == "cifar10" and d.info.num_classes == 10
    assert d.train_x.shape == (20, 3, 32, 32) and d.test_x.shape == (4, 3, 32, 32)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    x1, y1 = written["data_batch_1"]
    assert torch.equal(d.train_x[:4], torch.from_numpy(x1).reshape(4, 3, 32, 32))
    assert d.train_y[:4].tolist() == y1
    xt, yt = written["test_batch"]
    assert torch.equal(d.test_x, torch.from_numpy(xt).reshape(4, 3, 32, 32))
    assert d.test_y.tolist() == yt
    # pointing at the cifar-10-batches-py folder itself works too
    D.clear_loaded()
    assert D.load_cifar10(str(tmp_path / "cifar-10-batches-py"), False).train_x.shape[0] == 20


def test_cifar100_layout(tmp_path, monkeypatch):
    written = _write_cifar(tmp_path / "env", "cifar100", n_per_batch=6)
    monkeypatch.setenv(D.ENV_DATA_DIR, str(tmp_path / "env"))
    d = D.load_cifar100(None, False)
    assert d.info.num_classes == 100 and d.train_x.shape == (6, 3, 32, 32)
    x, y = written["train"]
    assert torch.equal(d.train_x, torch.from_numpy(x).reshape(6, 3, 32, 32))
    assert d.train_y.tolist() == y and d.test_y.tolist() == written["test"][1]


# ---------------------------------------------------------------------------------------
# SVHN
# ---------------------------------------------------------------------------------------


def _has_scipy() -> bool:
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_has_scipy(), reason="checks the message shown without scipy")
def test_svhn_without_scipy_says_how_to_fix(tmp_path):
    for f in ("train_32x32.mat", "test_32x32.mat"):
        (tmp_path / f).write_bytes(b"not really a mat file")
    with pytest.raises(RobustDistillError, match="pip install scipy"):
        D.load_svhn(str(tmp_path), False)


@pytest.mark.skipif(not _has_scipy(), reason="needs scipy")
def test_svhn_layout(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    for f, n in (("train_32x32.mat", 5), ("test_32x32.mat", 3)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10]] + [[i + 1] for i in range(n - 1)], dtype=np.uint8)
        scipy.io.savemat(tmp_path / f, {"X": x, "y": y})
    d = D.load_svhn(str(tmp_path), False)
    assert d.train_x.shape == (5, 3, 32, 32) and d.test_x.shape == (3, 3, 32, 32)
    assert d.train_y.tolist() == [0, 1, 2, 3, 4]


def test_missing_svhn_error(tmp_path):
    with pytest.raises(RobustDistillError, match="train_32x32.mat"):
        D.load_svhn(str(tmp_path), False)


# ---------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------


def test_imagefolder(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "train" / "cat" / "a.png", (12, 12), (255, 0, 0))
    _png(root / "train" / "cat" / "b.png", (20, 16), (255, 0, 0))  # resized to 12x12
    _png(root / "train" / "dog" / "c.png", (12, 12), (0, 0, 255))
    _png(root / "train" / "emu" / "d.png", (12, 12), (0, 255, 0))
    _png(root / "val" / "dog" / "e.png", (12, 12), (0, 0, 255))  # val/ as the test split
    _png(root / "val" / "emu" / "f.png", (12, 12), (0, 255, 0))
    d = D.load_imagefolder(str(root), False)
    assert d.info.name == "imagefolder" and d.info.num_classes == 3
    assert d.info.in_channels == 3 and d.info.image_size == 12 and d.info.augment == "crop-flip"
    assert d.train_x.shape == (4, 3, 12, 12) and d.test_x.shape == (2, 3, 12, 12)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert d.train_y.tolist() == [0, 0, 1, 2]
    assert d.test_y.tolist() == [1, 2]  # indices follow the train classes
    assert d.train_x[1, 0].min() == 255 and d.train_x[1, 1:].max() == 0
    assert d.test_x[0, 2].min() == 255


def test_imagefolder_tiny_imagenet_val(tmp_path):
    root = tmp_path / "tiny"
    _png(root / "train" / "n01" / "images" / "a.JPEG", (8, 8), (10, 20, 30))
    _png(root / "train" / "n02" / "images" / "b.JPEG", (8, 8), (40, 50, 60))
    _png(root / "val" / "images" / "val_0.JPEG", (8, 8), (40, 50, 60))
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t8\t8\n")
    d = D.load_imagefolder(str(root), False)
    assert d.train_y.tolist() == [0, 1] and d.test_y.tolist() == [1]
    assert d.test_x.shape == (1, 3, 8, 8)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(RobustDistillError, match="train/"):
        D.load_imagefolder(str(tmp_path), False)
    _png(tmp_path / "train" / "cat" / "a.png", (8, 8), (0, 0, 0))
    os.makedirs(tmp_path / "test")
    with pytest.raises(RobustDistillError, match="empty"):
        D.load_imagefolder(str(tmp_path), False)


# ---------------------------------------------------------------------------------------
# real Fashion-MNIST
# ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists(DEBIAN_TRAIN), reason="needs apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(D.files, "DEBIAN_FASHION_MNIST_DIR", os.path.dirname(DEBIAN_TRAIN))
    start = time.perf_counter()
    d = D.load_fashion_mnist(None, False)
    elapsed = time.perf_counter() - start
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert d.train_y.shape == (60000,) and d.test_y.shape == (10000,)
    assert d.info.num_classes == 10 and set(d.train_y.unique().tolist()) == set(range(10))
    assert abs(d.train_x.float().mean().item() / 255 - 0.2860) < 1e-3
    assert elapsed < 10.0


# ---------------------------------------------------------------------------------------
# subsets
# ---------------------------------------------------------------------------------------


def _toy(n_train: int = 10, n_test: int = 6) -> ImageData:
    x = torch.arange(n_train, dtype=torch.uint8).reshape(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    xt = torch.arange(n_test, dtype=torch.uint8).reshape(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    return ImageData(D.DATASET_INFOS["mnist"], x, torch.arange(n_train) % 10, xt, torch.arange(n_test) % 10)


def test_take_subset():
    d = _toy()
    s = D.take_subset(d, train=3)
    assert s.train_x.shape[0] == 3 and s.test_x.shape[0] == 6
    assert s.train_y.tolist() == [0, 1, 2] and s.info is d.info
    s = D.take_subset(d, train=100, test=2)
    assert s.train_x.shape[0] == 10 and s.test_y.tolist() == [0, 1]
    assert D.take_subset(d).train_x.shape[0] == 10
    with pytest.raises(RobustDistillError):
        D.take_subset(d, train=0)
    with pytest.raises(RobustDistillError):
        D.take_subset(d, test=-1)


# ---------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------


def test_augment_shape_and_determinism():
    x = torch.rand(16, 3, 8, 8)
    a = D.augment_crop_flip(x, 2, torch.Generator().manual_seed(1))
    b = D.augment_crop_flip(x, 2, torch.Generator().manual_seed(1))
    c = D.augment_crop_flip(x, 2, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_padding_zero_without_flip_is_identity():
    x = torch.rand(5, 2, 6, 7)
    assert torch.equal(D.augment_crop_flip(x, 0, torch.Generator().manual_seed(0), flip=False), x)


def test_augment_flip_only():
    x = torch.rand(64, 3, 5, 6)
    out = D.augment_crop_flip(x, 0, torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 0 < int(mirrored.sum()) < 64  # some flipped, some not


def test_augment_crop_is_a_shifted_window():
    x = torch.rand(32, 1, 6, 6)
    p = 2
    out = D.augment_crop_flip(x, p, torch.Generator().manual_seed(3), flip=False)
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    shifts = set()
    for i in range(32):
        windows = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if torch.equal(out[i, 0], padded[i, 0, dy:dy + 6, dx:dx + 6])]
        assert windows
        shifts.add(windows[0])
    assert len(shifts) > 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_on_cuda():
    x = torch.rand(8, 3, 8, 8, device="cuda")
    g1 = torch.Generator(device="cuda").manual_seed(0)
    g2 = torch.Generator(device="cuda").manual_seed(0)
    a, b = D.augment_crop_flip(x, 4, g1), D.augment_crop_flip(x, 4, g2)
    assert a.device.type == "cuda" and torch.equal(a, b)


# ---------------------------------------------------------------------------------------
# batch iteration
# ---------------------------------------------------------------------------------------


def _ids(n: int = 23):
    # each image carries its own index in pixel (0, 0, 0), so batches reveal the order
    x = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return x, torch.arange(n) % 10


def _order(it) -> list[int]:
    return [int(v) for xb, _ in it for v in (xb[:, 0, 0, 0] * 255).round().long()]


def test_batches_cover_every_sample_once():
    x, y = _ids()
    it = D.BatchIterator(x, y, 5, shuffle=True, seed=0, device="cpu")
    assert len(it) == 5
    batches = list(it)
    assert [b[0].shape[0] for b in batches] == [5, 5, 5, 5, 3]
    xb, yb = batches[0]
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert 0.0 <= float(xb.min()) and float(xb.max()) <= 1.0
    order = _order(batches)
    assert sorted(order) == list(range(23)) and order != list(range(23))
    # labels travel with their images
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.tensor(order) % 10)


def test_no_shuffle_is_in_order():
    x, y = _ids()
    it = D.BatchIterator(x, y, 4, shuffle=False, seed=0, device="cpu")
    assert _order(it) == list(range(23))


def test_epochs_differ_and_repeat():
    x, y = _ids()
    it = D.BatchIterator(x, y, 4, shuffle=True, seed=7, device="cpu")
    it.set_epoch(0)
    e0 = _order(it)
    it.set_epoch(1)
    e1 = _order(it)
    assert e0 != e1
    other = D.BatchIterator(x, y, 4, shuffle=True, seed=7, device="cpu")
    other.set_epoch(1)
    assert _order(other) == e1
    torch.manual_seed(123)  # the global RNG plays no part
    other.set_epoch(0)
    assert _order(other) == e0
    third = D.BatchIterator(x, y, 4, shuffle=True, seed=8, device="cpu")
    assert _order(third) != e0


@pytest.mark.parametrize("augment", ["none", "crop-flip"])
def test_resume_mid_epoch_matches(augment):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(30) % 10

    def make():
        it = D.BatchIterator(x, y, 4, shuffle=True, seed=11, device="cpu", augment=augment)
        it.set_epoch(3)
        return it

    full = list(make())
    tail = list(make().batches(start=5))
    assert len(tail) == len(full) - 5
    for (xa, ya), (xb, yb) in zip(full[5:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_augmentation_changes_images_and_is_repeatable():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.zeros(16, dtype=torch.int64)
    a = D.BatchIterator(x, y, 16, shuffle=False, seed=0, device="cpu", augment="crop-flip")
    plain = D.BatchIterator(x, y, 16, shuffle=False, seed=0, device="cpu")
    xa, _ = next(iter(a))
    xp, _ = next(iter(plain))
    assert not torch.equal(xa, xp)
    assert torch.equal(next(iter(a))[0], xa)
    a.set_epoch(1)
    assert not torch.equal(next(iter(a))[0], xa)


def test_batch_iterator_rejects_bad_input():
    x, y = _ids()
    with pytest.raises(RobustDistillError):
        D.BatchIterator(x.float(), y, 4, shuffle=True, seed=0, device="cpu")
    with pytest.raises(RobustDistillError):
        D.BatchIterator(x, y[:-1], 4, shuffle=True, seed=0, device="cpu")
    with pytest.raises(RobustDistillError):
        D.BatchIterator(x, y, 4, shuffle=True, seed=0, device="cpu", augment="mixup")
    with pytest.raises(RobustDistillError):
        D.BatchIterator(x, y, 0, shuffle=True, seed=0, device="cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batch_iterator_on_cuda():
    x, y = _ids()
    it = D.BatchIterator(x, y, 8, shuffle=True, seed=0, device="cuda", augment="crop-flip")
    it.set_epoch(2)
    full = list(it)
    assert full[0][0].device.type == "cuda" and full[0][1].device.type == "cuda"
    tail = list(it.batches(start=1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[1:], tail))


def test_corrupt_gz_is_an_error(tmp_path):
    _write_idx(tmp_path / "flat", _fake_idx(), gz=True)
    (tmp_path / "flat" / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(RobustDistillError, match="could not read"):
        D.load_fashion_mnist(str(tmp_path / "flat"), False)
