import os

import pytest

from robustdistill.plugin_manager import DISABLE_AUTOLOAD_ENV

# Tests see only the built-in plugins unless a test installs one itself.
os.environ[DISABLE_AUTOLOAD_ENV] = "1"

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
HAS_FASHION_MNIST = os.path.exists(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"))
needs_fashion_mnist = pytest.mark.skipif(
    not HAS_FASHION_MNIST, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
