#!/usr/bin/env bash
# Set everything up, then the main job on Fashion-MNIST: train a PGD-AT teacher, distil a student with
# IGDM (on top of PGD-AT), evaluate both and write a report (figures, table) to runs/fmnist-report.
# EPOCHS (default 3) and DEVICE (default auto) change the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RD=.venv/bin/robustdistill
COMMON=(--dataset fashion-mnist --epochs "${EPOCHS:-3}" --device "${DEVICE:-auto}")
[ -e runs/fmnist-teacher/last.pt ] || $RD train --plugin at --model smallcnn "${COMMON[@]}" --out runs/fmnist-teacher
[ -e runs/fmnist-igdm/last.pt ] || $RD train --plugin igdm --teacher runs/fmnist-teacher/last.pt --model cnn \
    "${COMMON[@]}" --out runs/fmnist-igdm
for run in fmnist-teacher fmnist-igdm; do
    $RD eval "runs/$run/last.pt" --attacks clean,fgsm,pgd20,cw,autoattack --subset 1000 --json "runs/$run/eval.json"
done
$RD report runs/fmnist-teacher runs/fmnist-igdm --subset 500 --out runs/fmnist-report
