#!/usr/bin/env bash
# Verify the fused kernels and the GPU path in one run, from a fresh clone, without internet:
#
#     bash benchmarks/gpu_check.sh OUT_DIR
#
# builds the kernels (for the GPU present), runs the kernel tests and every test marked cuda (odd and large
# shapes, an fp64 gradcheck, PGD loops in CUDA graphs and under torch.compile, bf16 against fp32 training on
# Fashion-MNIST), the engine's training step against the reference step and the kernel benchmarks; writes
# OUT_DIR/summary.md and OUT_DIR/summary.json and exits non-zero on any failure.
# At most 8 minutes on an H100/H200. Without a CUDA device it runs the parts that need none on the
# CPU (at most 3 minutes), lists what it skipped, and passes. Steps: benchmarks/gpu_check.py.
#
# Python: $PYTHON if set; else .venv/bin/python (scripts/setup.sh); else python3 when it imports torch
# (a provisioned environment); else scripts/setup.sh creates .venv (that step needs the internet).
# Fashion-MNIST: $ROBUSTDISTILL_DATA, else .carry/fashion-mnist when present, else the Debian package's
# /usr/share/datasets/fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUT_DIR" >&2
    exit 2
fi
OUT=$1
shift

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then
        PYTHON=.venv/bin/python
    elif python3 -c "import torch" 2>/dev/null; then
        PYTHON=python3
    else
        echo "gpu_check: no Python with PyTorch found; creating .venv with scripts/setup.sh (needs the internet)"
        bash scripts/setup.sh
        PYTHON=.venv/bin/python
    fi
fi
if [ -z "${ROBUSTDISTILL_DATA:-}" ] && [ -d .carry/fashion-mnist ]; then
    export ROBUSTDISTILL_DATA="$PWD/.carry/fashion-mnist"
fi
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
    CUDA_HOME="$("$PYTHON" robustdistill/_build.py cuda-home)"
    export CUDA_HOME
fi
exec "$PYTHON" benchmarks/gpu_check.py "$OUT" "$@"
