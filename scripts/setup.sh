#!/usr/bin/env bash
# Set up robustdistill on a fresh Debian/Ubuntu machine with Python 3.11:
# a virtual environment in .venv with PyTorch, the package (editable, with test and AutoAttack extras),
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
.venv/bin/python -m pip install --quiet --no-build-isolation -e ".[test,autoattack]"
.venv/bin/robustdistill plugins
