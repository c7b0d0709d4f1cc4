import os

import pytest

from robustdistill.plugin_manager import DISABLE_AUTOLOAD_ENV

# Tests see only the built-in plugins unless a test installs one itself.
os.environ[DISABLE_AUTOLOAD_ENV] = "1"

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# the Debian package's files, or a copy in a $ROBUSTDISTILL_DATA directory (where the loaders look too)
HAS_FASHION_MNIST = any(
    os.path.exists(os.path.join(d, name))
    for d in [FASHION_MNIST_DIR, *filter(None, os.environ.get("ROBUSTDISTILL_DATA", "").split(os.pathsep))]
    for name in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"))
needs_fashion_mnist = pytest.mark.skipif(
    not HAS_FASHION_MNIST, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
