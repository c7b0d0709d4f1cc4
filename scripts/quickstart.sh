#!/usr/bin/env bash
# Set everything up, then the main job on Fashion-MNIST (ε = 0.1): a PGD-AT teacher, a naturally trained
# baseline and a student distilled from the teacher with IGDM (on top of PGD-AT), all `cnn`; an evaluation of
# the three (clean, FGSM, PGD-20, CW∞) and a report (figures, table) in runs/quickstart/report.
#
#   bash scripts/quickstart.sh            # the first 6,000 training images: minutes on two CPU cores
#   FULL=1 bash scripts/quickstart.sh     # all training images (59,500: 500 validate), longer schedules, AutoAttack
#   DEVICE=cuda bash scripts/quickstart.sh
#
# Finished steps are skipped when it runs again; an interrupted training resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
step_started=$started
step() {  # announce a step, after saying how long the previous one took
    now=$(date +%s)
    [ "$now" = "$started" ] || printf '   (took %dm%02ds)\n' $(( (now - step_started) / 60 )) $(( (now - step_started) % 60 ))
    step_started=$now
    printf '\n== %s (%s)\n' "$1" "$2"
}

step "1/6 setting up .venv, PyTorch, robustdistill and Fashion-MNIST" "a few minutes the first time"
bash scripts/setup.sh

RD=.venv/bin/robustdistill
OUT=runs/quickstart
if [ "${FULL:-0}" = 1 ]; then
    OUT=runs/quickstart-full
    DATA=(--dataset fashion-mnist)
    TEACHER_EPOCHS=5 STUDENT_EPOCHS=5
    ATTACKS=clean,fgsm,pgd20,cw,autoattack
    SIZE="all 59,500 training images (500 held out to validate)"
else
    DATA=(--dataset fashion-mnist --subset 6000)
    TEACHER_EPOCHS=4 STUDENT_EPOCHS=3
    ATTACKS=clean,fgsm,pgd20,cw
    SIZE="the first 6,000 images"
fi
COMMON=("${DATA[@]}" --model cnn --device "${DEVICE:-auto}" --val-split 500 --resume)
scale() { if [ "${FULL:-0}" = 1 ]; then echo "$2"; else echo "$1"; fi; }  # time on two CPU cores: quick, full

step "2/6 training the PGD-AT teacher on $SIZE, $TEACHER_EPOCHS epochs" "$(scale 'about a minute' 'about 10 minutes') on two CPU cores"
$RD train --plugin at --epochs "$TEACHER_EPOCHS" "${COMMON[@]}" --out "$OUT/teacher"

step "3/6 training the natural baseline (no attack), $STUDENT_EPOCHS epochs" "$(scale 'under a minute' 'about 2 minutes')"
$RD train --plugin natural --epochs "$STUDENT_EPOCHS" "${COMMON[@]}" --out "$OUT/natural"

step "4/6 distilling the IGDM student from the teacher, $STUDENT_EPOCHS epochs" "$(scale 'about a minute' 'about 15 minutes')"
$RD train --plugin igdm --teacher "$OUT/teacher" --epochs "$STUDENT_EPOCHS" "${COMMON[@]}" --out "$OUT/igdm"

step "5/6 evaluating the three models on 1,000 test images: $ATTACKS" "$(scale 'about a minute' 'about 35 minutes, most of it AutoAttack')"
for run in teacher natural igdm; do
    $RD eval "$OUT/$run" --attacks "$ATTACKS" --subset 1000 --json "$OUT/$run/eval.json"
done

step "6/6 writing the report: curves, robust accuracy against ε, input gradients, results table" "under a minute"
$RD report "$OUT/natural" "$OUT/igdm" --teacher "$OUT/teacher" --subset 500 --out "$OUT/report"

step "done" "the three numbers that matter"
minutes=$(( ($(date +%s) - started + 59) / 60 ))
.venv/bin/python - "$OUT" "$minutes" <<'EOF'
import json, sys
out, minutes = sys.argv[1], sys.argv[2]
acc = {run: json.load(open(f"{out}/{run}/eval.json")) for run in ("teacher", "natural", "igdm")}
print(f"\nDone in about {minutes} min. PGD-20 accuracy at ε = 0.1 on 1,000 Fashion-MNIST test images:")
for run, label in (("teacher", "PGD-AT teacher"), ("natural", "natural training"), ("igdm", "IGDM student")):
    print(f"  {label:18s} {100 * acc[run]['pgd20']:5.1f}%   (clean {100 * acc[run]['clean']:.1f}%)")
print(f"The IGDM student keeps {100 * (acc['igdm']['pgd20'] - acc['natural']['pgd20']):.1f} points more under "
      f"attack than the naturally trained model.")
print(f"Table: {out}/report/results.md   Figures: {out}/report/*.png   Runs: {out}/<run>/")
EOF
