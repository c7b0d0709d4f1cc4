#!/usr/bin/env bash
# Set up robustdistill on a fresh Debian/Ubuntu machine with Python 3.11:
# a virtual environment in .venv with PyTorch, the package (editable, with test and AutoAttack extras; the test
# extra brings robustbench and timm for the tests of robustbench:NAME and timm:NAME models, and Optuna for the
# tests of `robustdistill study`),
# and Fashion-MNIST from Debian's package dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
.venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
# The editable install also compiles the fused kernels in csrc/ (robustdistill._C; CUDA kernels too when
# nvcc is found; see setup.py). CUDA_HOME must be the toolkit root, which the nvcc on PATH may not
# reveal (a symlink or a wrapper script outside the toolkit): ask robustdistill/_build.py.
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
    CUDA_HOME="$(.venv/bin/python robustdistill/_build.py cuda-home)"
    export CUDA_HOME
fi
# With CI set (or ROBUSTDISTILL_REQUIRE_EXT=1) a kernel that does not compile fails this install, and the
# kernel tests fail instead of skipping; ROBUSTDISTILL_NO_EXT_BUILD=1 skips the build for a quick install.
.venv/bin/python -m pip install --quiet --no-build-isolation -e ".[test,autoattack]"
.venv/bin/robustdistill plugins
