import os

import pytest

from robustdistill._manager import DISABLE_AUTOLOAD_ENV

from support import NATURAL_STUDENT, TEACHER_TRAIN

# Tests see only the built-in plugins unless a test installs one itself.
os.environ[DISABLE_AUTOLOAD_ENV] = "1"


@pytest.fixture(scope="session")
def fmnist_teacher(tmp_path_factory):
    """A PGD-AT `cnn` on the first 4096 Fashion-MNIST images, 3 epochs: the teacher of the end-to-end tests."""
    from robustdistill._cli import main

    out = tmp_path_factory.mktemp("teacher") / "at"
    assert main(["train", "--plugin", "at", *TEACHER_TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def fmnist_natural_student(tmp_path_factory):
    """A naturally trained `cnn` student (first 2048 images, 2 epochs) and its clean/PGD-20 accuracy on 500
    test images: the baseline the distilled students are compared with."""
    import json

    from robustdistill._cli import main

    out = tmp_path_factory.mktemp("natural") / "natural"
    assert main(["train", "--plugin", "natural", *NATURAL_STUDENT, "--out", str(out)]) == 0
    assert main(["eval", str(out), "--attacks", "clean,pgd20", "--subset", "500", "--json",
                 str(out / "eval.json")]) == 0
    return json.loads((out / "eval.json").read_text())
