#!/usr/bin/env bash
# Set everything up, then train a PGD-AT model on Fashion-MNIST and evaluate it.
# EPOCHS (default 5) and DEVICE (default auto) change the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/robustdistill train --plugin at --dataset fashion-mnist --model cnn \
    --epochs "${EPOCHS:-5}" --device "${DEVICE:-auto}" --out runs/fmnist-at
.venv/bin/robustdistill eval runs/fmnist-at/last.pt --attacks clean,fgsm,pgd20,cw,autoattack \
    --subset 1000 --json runs/fmnist-at/eval.json
