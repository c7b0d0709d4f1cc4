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


# -- trained models that several slow test files need, trained once per session ------------------------------

TEACHER_TRAIN = ["--dataset", "fashion-mnist", "--model", "cnn", "--subset", "4096", "--epochs", "3",
                 "--lr", "0.05", "--seed", "0", "--val-size", "200"]
NATURAL_STUDENT = ["--dataset", "fashion-mnist", "--model", "cnn", "--subset", "2048", "--epochs", "2",
                   "--lr", "0.05", "--seed", "0", "--val-size", "100"]


@pytest.fixture(scope="session")
def fmnist_teacher(tmp_path_factory):
    """A PGD-AT `cnn` on the first 4096 Fashion-MNIST images, 3 epochs: the teacher of the end-to-end tests."""
    from robustdistill.cli import main

    out = tmp_path_factory.mktemp("teacher") / "at"
    assert main(["train", "--plugin", "at", *TEACHER_TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def fmnist_natural_student(tmp_path_factory):
    """A naturally trained `cnn` student (first 2048 images, 2 epochs) and its clean/PGD-20 accuracy on 500
    test images: the baseline the distilled students are compared with."""
    import json

    from robustdistill.cli import main

    out = tmp_path_factory.mktemp("natural") / "natural"
    assert main(["train", "--plugin", "natural", *NATURAL_STUDENT, "--out", str(out)]) == 0
    assert main(["eval", str(out), "--attacks", "clean,pgd20", "--subset", "500", "--json",
                 str(out / "eval.json")]) == 0
    return json.loads((out / "eval.json").read_text())
