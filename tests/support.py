"""Helpers the tests share: markers for optional data, attacks written out, and the options of the trained models
several test files use (the session fixtures that train them are in ``conftest.py``)."""
import os

import pytest
import torch

from robustdistill import _build, _ext
from robustdistill.testing import tiny_model

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# the Debian package's files, or a copy in a $ROBUSTDISTILL_DATA directory (where the loaders look too)
HAS_FASHION_MNIST = any(
    os.path.exists(os.path.join(d, name))
    for d in [FASHION_MNIST_DIR, *filter(None, os.environ.get("ROBUSTDISTILL_DATA", "").split(os.pathsep))]
    for name in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"))
needs_fashion_mnist = pytest.mark.skipif(
    not HAS_FASHION_MNIST, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


# -- the fused kernels: the devices to test them on, and a skip (or, where they are required, a failure) -------

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")])]
REQUIRED = _build.extension_required()


def need_kernels(device: str) -> None:
    """Skip unless the fused kernels run on ``device``; fail instead where they are required
    (``ROBUSTDISTILL_REQUIRE_EXT=1`` or CI), so a kernel that does not build cannot hide."""
    ok, reason = _ext.available(str(device))
    if ok:
        return
    if REQUIRED:
        pytest.fail(f"fused kernels required ({_build.REQUIRE_ENV} or CI) but unavailable on {device}: {reason}")
    pytest.skip(f"fused kernels unavailable on {device}: {reason}")


# -- models whose outputs are known in closed form -------------------------------------------------------------

class Scaled(torch.nn.Module):
    """A 'network' whose logits are ``scale · x``: its outputs are known in closed form."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale
        self.arch = tiny_model().arch

    def forward(self, x, return_features=False):
        out = self.scale * x
        return (out, out) if return_features else out


# -- attacks written out, for tests that check the plugins' attacks against them ------------------------------

def reference_pgd(objective, x, eps, step, steps, init, clip_start=True):
    """Sign-gradient PGD written out: start (clamped to [0, 1] if ``clip_start``), ascent steps, projection as
    pgd_step_ref."""
    import torch

    noise = torch.empty_like(x).uniform_(-eps, eps) if init == "uniform" else 0.001 * torch.randn_like(x)
    x_adv = (x + noise).clamp(0, 1) if clip_start else x + noise
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x_adv).sum(), x_adv)
        x_adv = (x + (x_adv.detach() + step * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


def seeded(function, *args, seed=5):
    """``function(*args)`` after seeding torch's generator with ``seed``."""
    import torch

    torch.manual_seed(seed)
    return function(*args)


# -- trained models that several slow test files need, trained once per session ------------------------------

TEACHER_TRAIN = ["--dataset", "fashion-mnist", "--model", "cnn", "--subset", "4096", "--epochs", "3",
                 "--lr", "0.05", "--seed", "0", "--val-split", "200"]
NATURAL_STUDENT = ["--dataset", "fashion-mnist", "--model", "cnn", "--subset", "2048", "--epochs", "2",
                   "--lr", "0.05", "--seed", "0", "--val-split", "100"]
