# 2026-11-23 12:47:50
robustdistill train --plugin=at --model cnn --epochs 4 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/fmnist-cpu/teacher-at
# 2026-11-23 12:50:02
robustdistill eval runs/fmnist-cpu/teacher-at/last.pt --attacks clean,fgsm,pgd20,cw,autoattack --device cpu --json runs/fmnist-cpu/teacher-at/eval.json --subset 500
# 2026-11-23 12:53:27
robustdistill eval runs/fmnist-cpu/teacher-at/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/teacher-at/eval.json --subset 1000
# 2026-11-23 12:53:52
robustdistill report runs/fmnist-cpu/teacher-at --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 12:53:58
robustdistill train --plugin=trades --model cnn --epochs 4 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/fmnist-cpu/teacher-trades
# 2026-11-23 12:56:01
robustdistill eval runs/fmnist-cpu/teacher-trades/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/teacher-trades/eval.json --subset 1000
# 2026-11-23 12:56:21
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 12:56:28
robustdistill train --plugin=natural --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/fmnist-cpu/natural
# 2026-11-23 12:56:56
robustdistill eval runs/fmnist-cpu/natural/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/natural/eval.json --subset 1000
# 2026-11-23 12:57:22
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 12:57:29
robustdistill train --plugin=at --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/fmnist-cpu/at
# 2026-11-23 12:58:42
robustdistill eval runs/fmnist-cpu/at/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/at/eval.json --subset 1000
# 2026-11-23 12:59:04
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural runs/fmnist-cpu/at --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 12:59:10
robustdistill train --plugin=trades --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/fmnist-cpu/trades
# 2026-11-23 13:00:35
robustdistill eval runs/fmnist-cpu/trades/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/trades/eval.json --subset 1000
# 2026-11-23 13:01:03
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural runs/fmnist-cpu/at runs/fmnist-cpu/trades --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 13:01:12
robustdistill train --plugin=ard --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/fmnist-cpu/ard --teacher runs/fmnist-cpu/teacher-at/last.pt
# 2026-11-23 13:02:37
robustdistill eval runs/fmnist-cpu/ard/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/ard/eval.json --subset 1000
# 2026-11-23 13:02:56
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural runs/fmnist-cpu/at runs/fmnist-cpu/trades runs/fmnist-cpu/ard --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 13:03:03
robustdistill train --plugin=ard --plugin=igdm --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/fmnist-cpu/ard+igdm --teacher runs/fmnist-cpu/teacher-at/last.pt
# 2026-11-23 13:04:41
robustdistill eval runs/fmnist-cpu/ard+igdm/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/ard+igdm/eval.json --subset 1000
# 2026-11-23 13:05:02
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural runs/fmnist-cpu/at runs/fmnist-cpu/trades runs/fmnist-cpu/ard runs/fmnist-cpu/ard+igdm --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 13:05:09
robustdistill train --plugin=rslad --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/fmnist-cpu/rslad --teacher runs/fmnist-cpu/teacher-at/last.pt
# 2026-11-23 13:06:22
robustdistill eval runs/fmnist-cpu/rslad/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/rslad/eval.json --subset 1000
# 2026-11-23 13:06:46
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural runs/fmnist-cpu/at runs/fmnist-cpu/trades runs/fmnist-cpu/ard runs/fmnist-cpu/ard+igdm runs/fmnist-cpu/rslad --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 13:06:55
robustdistill train --plugin=rslad --plugin=igdm --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/fmnist-cpu/rslad+igdm --teacher runs/fmnist-cpu/teacher-at/last.pt
# 2026-11-23 13:08:34
robustdistill eval runs/fmnist-cpu/rslad+igdm/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/rslad+igdm/eval.json --subset 1000
# 2026-11-23 13:08:58
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural runs/fmnist-cpu/at runs/fmnist-cpu/trades runs/fmnist-cpu/ard runs/fmnist-cpu/ard+igdm runs/fmnist-cpu/rslad runs/fmnist-cpu/rslad+igdm --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 13:09:07
robustdistill train --plugin=adaad --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/fmnist-cpu/adaad --teacher runs/fmnist-cpu/teacher-at/last.pt
# 2026-11-23 13:12:01
robustdistill eval runs/fmnist-cpu/adaad/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/adaad/eval.json --subset 1000
# 2026-11-23 13:12:28
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural runs/fmnist-cpu/at runs/fmnist-cpu/trades runs/fmnist-cpu/ard runs/fmnist-cpu/ard+igdm runs/fmnist-cpu/rslad runs/fmnist-cpu/rslad+igdm runs/fmnist-cpu/adaad --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 13:12:37
robustdistill train --plugin=adaad --plugin=igdm --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/fmnist-cpu/adaad+igdm --teacher runs/fmnist-cpu/teacher-at/last.pt
# 2026-11-23 13:15:17
robustdistill eval runs/fmnist-cpu/adaad+igdm/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/adaad+igdm/eval.json --subset 1000
# 2026-11-23 13:15:41
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural runs/fmnist-cpu/at runs/fmnist-cpu/trades runs/fmnist-cpu/ard runs/fmnist-cpu/ard+igdm runs/fmnist-cpu/rslad runs/fmnist-cpu/rslad+igdm runs/fmnist-cpu/adaad runs/fmnist-cpu/adaad+igdm --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 13:15:50
robustdistill train --plugin=igam --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/fmnist-cpu/igam --teacher runs/fmnist-cpu/teacher-at/last.pt
# 2026-11-23 13:16:55
robustdistill eval runs/fmnist-cpu/igam/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/igam/eval.json --subset 1000
# 2026-11-23 13:17:20
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural runs/fmnist-cpu/at runs/fmnist-cpu/trades runs/fmnist-cpu/ard runs/fmnist-cpu/ard+igdm runs/fmnist-cpu/rslad runs/fmnist-cpu/rslad+igdm runs/fmnist-cpu/adaad runs/fmnist-cpu/adaad+igdm runs/fmnist-cpu/igam --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 13:17:30
robustdistill train --plugin=rrm --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/fmnist-cpu/rrm --teacher runs/fmnist-cpu/teacher-at/last.pt
# 2026-11-23 13:17:56
robustdistill eval runs/fmnist-cpu/rrm/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/rrm/eval.json --subset 1000
# 2026-11-23 13:18:20
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural runs/fmnist-cpu/at runs/fmnist-cpu/trades runs/fmnist-cpu/ard runs/fmnist-cpu/ard+igdm runs/fmnist-cpu/rslad runs/fmnist-cpu/rslad+igdm runs/fmnist-cpu/adaad runs/fmnist-cpu/adaad+igdm runs/fmnist-cpu/igam runs/fmnist-cpu/rrm --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 13:18:32
robustdistill train --plugin=gradnorm --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --activation gelu --out runs/fmnist-cpu/gradnorm-gelu
# 2026-11-23 13:19:18
robustdistill eval runs/fmnist-cpu/gradnorm-gelu/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/gradnorm-gelu/eval.json --subset 1000
# 2026-11-23 13:19:46
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural runs/fmnist-cpu/at runs/fmnist-cpu/trades runs/fmnist-cpu/ard runs/fmnist-cpu/ard+igdm runs/fmnist-cpu/rslad runs/fmnist-cpu/rslad+igdm runs/fmnist-cpu/adaad runs/fmnist-cpu/adaad+igdm runs/fmnist-cpu/igam runs/fmnist-cpu/rrm runs/fmnist-cpu/gradnorm-gelu --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 13:19:55
robustdistill train --plugin=gradnorm --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --activation relu --out runs/fmnist-cpu/gradnorm-relu
# 2026-11-23 13:20:36
robustdistill eval runs/fmnist-cpu/gradnorm-relu/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/gradnorm-relu/eval.json --subset 1000
# 2026-11-23 13:20:56
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural runs/fmnist-cpu/at runs/fmnist-cpu/trades runs/fmnist-cpu/ard runs/fmnist-cpu/ard+igdm runs/fmnist-cpu/rslad runs/fmnist-cpu/rslad+igdm runs/fmnist-cpu/adaad runs/fmnist-cpu/adaad+igdm runs/fmnist-cpu/igam runs/fmnist-cpu/rrm runs/fmnist-cpu/gradnorm-gelu runs/fmnist-cpu/gradnorm-relu --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 13:21:04
robustdistill train --plugin=edgereg --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --activation gelu --out runs/fmnist-cpu/edgereg
# 2026-11-23 13:21:55
robustdistill eval runs/fmnist-cpu/edgereg/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/edgereg/eval.json --subset 1000
# 2026-11-23 13:22:21
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural runs/fmnist-cpu/at runs/fmnist-cpu/trades runs/fmnist-cpu/ard runs/fmnist-cpu/ard+igdm runs/fmnist-cpu/rslad runs/fmnist-cpu/rslad+igdm runs/fmnist-cpu/adaad runs/fmnist-cpu/adaad+igdm runs/fmnist-cpu/igam runs/fmnist-cpu/rrm runs/fmnist-cpu/gradnorm-gelu runs/fmnist-cpu/gradnorm-relu runs/fmnist-cpu/edgereg --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 13:22:32
robustdistill train --plugin=pag --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/fmnist-cpu/pag --teacher runs/fmnist-cpu/teacher-at/last.pt
# 2026-11-23 13:29:58
robustdistill eval runs/fmnist-cpu/pag/last.pt --attacks clean,fgsm,pgd20,cw --device cpu --json runs/fmnist-cpu/pag/eval.json --subset 1000
# 2026-11-23 13:30:28
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural runs/fmnist-cpu/at runs/fmnist-cpu/trades runs/fmnist-cpu/ard runs/fmnist-cpu/ard+igdm runs/fmnist-cpu/rslad runs/fmnist-cpu/rslad+igdm runs/fmnist-cpu/adaad runs/fmnist-cpu/adaad+igdm runs/fmnist-cpu/igam runs/fmnist-cpu/rrm runs/fmnist-cpu/gradnorm-gelu runs/fmnist-cpu/gradnorm-relu runs/fmnist-cpu/edgereg runs/fmnist-cpu/pag --out runs/fmnist-cpu/report --device cpu --no-models
# 2026-11-23 13:30:40
robustdistill report runs/fmnist-cpu/teacher-at runs/fmnist-cpu/teacher-trades runs/fmnist-cpu/natural runs/fmnist-cpu/at runs/fmnist-cpu/trades runs/fmnist-cpu/ard runs/fmnist-cpu/ard+igdm runs/fmnist-cpu/rslad runs/fmnist-cpu/rslad+igdm runs/fmnist-cpu/adaad runs/fmnist-cpu/adaad+igdm runs/fmnist-cpu/igam runs/fmnist-cpu/rrm runs/fmnist-cpu/gradnorm-gelu runs/fmnist-cpu/gradnorm-relu runs/fmnist-cpu/edgereg runs/fmnist-cpu/pag --out runs/fmnist-cpu/report --device cpu
