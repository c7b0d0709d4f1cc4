# 2026-11-29 20:44:32
robustdistill train --plugin=at --model cnn --epochs 4 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/round2-fmnist/teacher-at
# 2026-11-29 20:45:36
robustdistill eval runs/round2-fmnist/teacher-at/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/teacher-at/eval.json
# 2026-11-29 20:47:46
robustdistill eval runs/round2-fmnist/teacher-at/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/teacher-at/apgd1000.json --subset 1000
# 2026-11-29 20:50:14
robustdistill report runs/round2-fmnist/teacher-at --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 20:50:17
robustdistill train --plugin=at --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/round2-fmnist/at/seed-0
# 2026-11-29 20:51:05
robustdistill eval runs/round2-fmnist/at/seed-0/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/at/seed-0/eval.json
# 2026-11-29 20:53:14
robustdistill eval runs/round2-fmnist/at/seed-0/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/at/seed-0/apgd1000.json --subset 1000
# 2026-11-29 20:55:25
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 20:55:29
robustdistill train --plugin=ard --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/round2-fmnist/ard/seed-0 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 20:56:24
robustdistill eval runs/round2-fmnist/ard/seed-0/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/ard/seed-0/eval.json
# 2026-11-29 20:58:24
robustdistill eval runs/round2-fmnist/ard/seed-0/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/ard/seed-0/apgd1000.json --subset 1000
# 2026-11-29 20:59:54
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/ard/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 20:59:58
robustdistill train --plugin=ard --plugin=igdm --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/round2-fmnist/ard+igdm/seed-0 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 21:00:54
robustdistill eval runs/round2-fmnist/ard+igdm/seed-0/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/ard+igdm/seed-0/eval.json
# 2026-11-29 21:02:50
robustdistill eval runs/round2-fmnist/ard+igdm/seed-0/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/ard+igdm/seed-0/apgd1000.json --subset 1000
# 2026-11-29 21:05:04
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard+igdm/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 21:05:08
robustdistill train --plugin=rslad --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/round2-fmnist/rslad/seed-0 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 21:05:59
robustdistill eval runs/round2-fmnist/rslad/seed-0/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/rslad/seed-0/eval.json
# 2026-11-29 21:07:52
robustdistill eval runs/round2-fmnist/rslad/seed-0/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/rslad/seed-0/apgd1000.json --subset 1000
# 2026-11-29 21:09:36
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/rslad/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 21:09:40
robustdistill train --plugin=rslad --plugin=igdm --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/round2-fmnist/rslad+igdm/seed-0 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 21:10:39
robustdistill eval runs/round2-fmnist/rslad+igdm/seed-0/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/rslad+igdm/seed-0/eval.json
# 2026-11-29 21:12:19
robustdistill eval runs/round2-fmnist/rslad+igdm/seed-0/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/rslad+igdm/seed-0/apgd1000.json --subset 1000
# 2026-11-29 21:13:41
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad+igdm/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 21:13:46
robustdistill train --plugin=adaad --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/round2-fmnist/adaad/seed-0 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 21:15:02
robustdistill eval runs/round2-fmnist/adaad/seed-0/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/adaad/seed-0/eval.json
# 2026-11-29 21:16:50
robustdistill eval runs/round2-fmnist/adaad/seed-0/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/adaad/seed-0/apgd1000.json --subset 1000
# 2026-11-29 21:18:23
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/adaad/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 21:18:27
robustdistill train --plugin=adaad --plugin=igdm --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --out runs/round2-fmnist/adaad+igdm/seed-0 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 21:19:42
robustdistill eval runs/round2-fmnist/adaad+igdm/seed-0/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/adaad+igdm/seed-0/eval.json
# 2026-11-29 21:21:24
robustdistill eval runs/round2-fmnist/adaad+igdm/seed-0/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/adaad+igdm/seed-0/apgd1000.json --subset 1000
# 2026-11-29 21:23:17
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad+igdm/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 21:23:21
robustdistill train --plugin=at --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 1 --subset 6000 --out runs/round2-fmnist/at/seed-1
# 2026-11-29 21:24:04
robustdistill eval runs/round2-fmnist/at/seed-1/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/at/seed-1/eval.json
# 2026-11-29 21:25:43
robustdistill eval runs/round2-fmnist/at/seed-1/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/at/seed-1/apgd1000.json --subset 1000
# 2026-11-29 21:27:27
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad+igdm/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 21:27:31
robustdistill train --plugin=ard --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 1 --subset 6000 --out runs/round2-fmnist/ard/seed-1 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 21:28:29
robustdistill eval runs/round2-fmnist/ard/seed-1/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/ard/seed-1/eval.json
# 2026-11-29 21:30:36
robustdistill eval runs/round2-fmnist/ard/seed-1/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/ard/seed-1/apgd1000.json --subset 1000
# 2026-11-29 21:32:07
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad+igdm/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 21:32:12
robustdistill train --plugin=ard --plugin=igdm --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 1 --subset 6000 --out runs/round2-fmnist/ard+igdm/seed-1 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 21:33:09
robustdistill eval runs/round2-fmnist/ard+igdm/seed-1/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/ard+igdm/seed-1/eval.json
# 2026-11-29 21:35:22
robustdistill eval runs/round2-fmnist/ard+igdm/seed-1/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/ard+igdm/seed-1/apgd1000.json --subset 1000
# 2026-11-29 21:37:37
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad+igdm/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 21:37:42
robustdistill train --plugin=rslad --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 1 --subset 6000 --out runs/round2-fmnist/rslad/seed-1 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 21:38:28
robustdistill eval runs/round2-fmnist/rslad/seed-1/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/rslad/seed-1/eval.json
# 2026-11-29 21:40:22
robustdistill eval runs/round2-fmnist/rslad/seed-1/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/rslad/seed-1/apgd1000.json --subset 1000
# 2026-11-29 21:41:47
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad+igdm/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 21:41:52
robustdistill train --plugin=rslad --plugin=igdm --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 1 --subset 6000 --out runs/round2-fmnist/rslad+igdm/seed-1 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 21:42:49
robustdistill eval runs/round2-fmnist/rslad+igdm/seed-1/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/rslad+igdm/seed-1/eval.json
# 2026-11-29 21:44:47
robustdistill eval runs/round2-fmnist/rslad+igdm/seed-1/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/rslad+igdm/seed-1/apgd1000.json --subset 1000
# 2026-11-29 21:46:01
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad+igdm/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 21:46:06
robustdistill train --plugin=adaad --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 1 --subset 6000 --out runs/round2-fmnist/adaad/seed-1 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 21:47:26
robustdistill eval runs/round2-fmnist/adaad/seed-1/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/adaad/seed-1/eval.json
# 2026-11-29 21:48:53
robustdistill eval runs/round2-fmnist/adaad/seed-1/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/adaad/seed-1/apgd1000.json --subset 1000
# 2026-11-29 21:50:26
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad+igdm/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 21:50:32
robustdistill train --plugin=adaad --plugin=igdm --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 1 --subset 6000 --out runs/round2-fmnist/adaad+igdm/seed-1 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 21:51:52
robustdistill eval runs/round2-fmnist/adaad+igdm/seed-1/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/adaad+igdm/seed-1/eval.json
# 2026-11-29 21:53:42
robustdistill eval runs/round2-fmnist/adaad+igdm/seed-1/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/adaad+igdm/seed-1/apgd1000.json --subset 1000
# 2026-11-29 21:56:00
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 21:56:05
robustdistill train --plugin=at --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 2 --subset 6000 --out runs/round2-fmnist/at/seed-2
# 2026-11-29 21:56:47
robustdistill eval runs/round2-fmnist/at/seed-2/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/at/seed-2/eval.json
# 2026-11-29 21:58:27
robustdistill eval runs/round2-fmnist/at/seed-2/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/at/seed-2/apgd1000.json --subset 1000
# 2026-11-29 22:00:35
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:00:40
robustdistill train --plugin=ard --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 2 --subset 6000 --out runs/round2-fmnist/ard/seed-2 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 22:01:45
robustdistill eval runs/round2-fmnist/ard/seed-2/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/ard/seed-2/eval.json
# 2026-11-29 22:03:26
robustdistill eval runs/round2-fmnist/ard/seed-2/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/ard/seed-2/apgd1000.json --subset 1000
# 2026-11-29 22:04:56
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:05:02
robustdistill train --plugin=ard --plugin=igdm --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 2 --subset 6000 --out runs/round2-fmnist/ard+igdm/seed-2 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 22:05:56
robustdistill eval runs/round2-fmnist/ard+igdm/seed-2/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/ard+igdm/seed-2/eval.json
# 2026-11-29 22:08:02
robustdistill eval runs/round2-fmnist/ard+igdm/seed-2/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/ard+igdm/seed-2/apgd1000.json --subset 1000
# 2026-11-29 22:10:04
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:10:10
robustdistill train --plugin=rslad --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 2 --subset 6000 --out runs/round2-fmnist/rslad/seed-2 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 22:11:02
robustdistill eval runs/round2-fmnist/rslad/seed-2/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/rslad/seed-2/eval.json
# 2026-11-29 22:13:14
robustdistill eval runs/round2-fmnist/rslad/seed-2/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/rslad/seed-2/apgd1000.json --subset 1000
# 2026-11-29 22:14:41
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:14:47
robustdistill train --plugin=rslad --plugin=igdm --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 2 --subset 6000 --out runs/round2-fmnist/rslad+igdm/seed-2 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 22:15:41
robustdistill eval runs/round2-fmnist/rslad+igdm/seed-2/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/rslad+igdm/seed-2/eval.json
# 2026-11-29 22:17:23
robustdistill eval runs/round2-fmnist/rslad+igdm/seed-2/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/rslad+igdm/seed-2/apgd1000.json --subset 1000
# 2026-11-29 22:18:39
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:18:45
robustdistill train --plugin=adaad --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 2 --subset 6000 --out runs/round2-fmnist/adaad/seed-2 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 22:19:58
robustdistill eval runs/round2-fmnist/adaad/seed-2/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/adaad/seed-2/eval.json
# 2026-11-29 22:21:42
robustdistill eval runs/round2-fmnist/adaad/seed-2/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/adaad/seed-2/apgd1000.json --subset 1000
# 2026-11-29 22:23:13
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:23:20
robustdistill train --plugin=adaad --plugin=igdm --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 2 --subset 6000 --out runs/round2-fmnist/adaad+igdm/seed-2 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 22:24:46
robustdistill eval runs/round2-fmnist/adaad+igdm/seed-2/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/adaad+igdm/seed-2/eval.json
# 2026-11-29 22:26:40
robustdistill eval runs/round2-fmnist/adaad+igdm/seed-2/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/adaad+igdm/seed-2/apgd1000.json --subset 1000
# 2026-11-29 22:28:38
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:28:48
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:28:55
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:29:02
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:29:09
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:29:17
robustdistill train --plugin=ard --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --ard-tau 1 --ard-kl-reduction batchmean --ard-attack-bn eval --out runs/round2-fmnist/ard-igdm-base/seed-0 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 22:30:07
robustdistill eval runs/round2-fmnist/ard-igdm-base/seed-0/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/ard-igdm-base/seed-0/eval.json
# 2026-11-29 22:32:06
robustdistill eval runs/round2-fmnist/ard-igdm-base/seed-0/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/ard-igdm-base/seed-0/apgd1000.json --subset 1000
# 2026-11-29 22:34:06
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:34:13
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:34:20
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:34:27
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:34:34
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:34:41
robustdistill train --plugin=adaad --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 0 --subset 6000 --adaad-reduction batchmean --out runs/round2-fmnist/adaad-igdm-base/seed-0 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 22:36:03
robustdistill eval runs/round2-fmnist/adaad-igdm-base/seed-0/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/adaad-igdm-base/seed-0/eval.json
# 2026-11-29 22:38:05
robustdistill eval runs/round2-fmnist/adaad-igdm-base/seed-0/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/adaad-igdm-base/seed-0/apgd1000.json --subset 1000
# 2026-11-29 22:40:31
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 runs/round2-fmnist/adaad-igdm-base/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:40:41
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 runs/round2-fmnist/adaad-igdm-base/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:40:48
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 runs/round2-fmnist/adaad-igdm-base/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:40:56
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 runs/round2-fmnist/adaad-igdm-base/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:41:04
robustdistill train --plugin=ard --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 1 --subset 6000 --ard-tau 1 --ard-kl-reduction batchmean --ard-attack-bn eval --out runs/round2-fmnist/ard-igdm-base/seed-1 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 22:42:03
robustdistill eval runs/round2-fmnist/ard-igdm-base/seed-1/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/ard-igdm-base/seed-1/eval.json
# 2026-11-29 22:43:59
robustdistill eval runs/round2-fmnist/ard-igdm-base/seed-1/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/ard-igdm-base/seed-1/apgd1000.json --subset 1000
# 2026-11-29 22:46:11
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/ard-igdm-base/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 runs/round2-fmnist/adaad-igdm-base/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:46:18
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/ard-igdm-base/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 runs/round2-fmnist/adaad-igdm-base/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:46:25
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/ard-igdm-base/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 runs/round2-fmnist/adaad-igdm-base/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:46:32
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/ard-igdm-base/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 runs/round2-fmnist/adaad-igdm-base/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:46:39
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/ard-igdm-base/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 runs/round2-fmnist/adaad-igdm-base/seed-0 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:46:46
robustdistill train --plugin=adaad --model cnn --epochs 3 --dataset fashion-mnist --device cpu --seed 1 --subset 6000 --adaad-reduction batchmean --out runs/round2-fmnist/adaad-igdm-base/seed-1 --teacher runs/round2-fmnist/teacher-at/last.pt
# 2026-11-29 22:48:12
robustdistill eval runs/round2-fmnist/adaad-igdm-base/seed-1/last.pt --attacks clean,pgd20,cw --device cpu --json runs/round2-fmnist/adaad-igdm-base/seed-1/eval.json
# 2026-11-29 22:50:04
robustdistill eval runs/round2-fmnist/adaad-igdm-base/seed-1/last.pt --attacks clean,apgd-ce+apgd-t --device cpu --json runs/round2-fmnist/adaad-igdm-base/seed-1/apgd1000.json --subset 1000
# 2026-11-29 22:52:02
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/ard-igdm-base/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 runs/round2-fmnist/adaad-igdm-base/seed-0 runs/round2-fmnist/adaad-igdm-base/seed-1 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:52:09
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/ard-igdm-base/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 runs/round2-fmnist/adaad-igdm-base/seed-0 runs/round2-fmnist/adaad-igdm-base/seed-1 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:52:16
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/ard-igdm-base/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 runs/round2-fmnist/adaad-igdm-base/seed-0 runs/round2-fmnist/adaad-igdm-base/seed-1 --out runs/round2-fmnist/report --device cpu --no-models
# 2026-11-29 22:52:23
robustdistill report runs/round2-fmnist/teacher-at runs/round2-fmnist/at/seed-0 runs/round2-fmnist/at/seed-1 runs/round2-fmnist/at/seed-2 runs/round2-fmnist/ard/seed-0 runs/round2-fmnist/ard/seed-1 runs/round2-fmnist/ard/seed-2 runs/round2-fmnist/ard+igdm/seed-0 runs/round2-fmnist/ard+igdm/seed-1 runs/round2-fmnist/ard+igdm/seed-2 runs/round2-fmnist/ard-igdm-base/seed-0 runs/round2-fmnist/ard-igdm-base/seed-1 runs/round2-fmnist/rslad/seed-0 runs/round2-fmnist/rslad/seed-1 runs/round2-fmnist/rslad/seed-2 runs/round2-fmnist/rslad+igdm/seed-0 runs/round2-fmnist/rslad+igdm/seed-1 runs/round2-fmnist/rslad+igdm/seed-2 runs/round2-fmnist/adaad/seed-0 runs/round2-fmnist/adaad/seed-1 runs/round2-fmnist/adaad/seed-2 runs/round2-fmnist/adaad+igdm/seed-0 runs/round2-fmnist/adaad+igdm/seed-1 runs/round2-fmnist/adaad+igdm/seed-2 runs/round2-fmnist/adaad-igdm-base/seed-0 runs/round2-fmnist/adaad-igdm-base/seed-1 --out runs/round2-fmnist/report --device cpu --no-models
