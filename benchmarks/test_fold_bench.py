"""BatchNorm folding: one attack pass (eval-mode forward + backward to the input) with and without it.

Not part of the default test run. Run:

    python -m pytest benchmarks/test_fold_bench.py -q -s --benchmark-columns=median,iqr,rounds

``test_rslad_igdm_step`` times a whole RSLAD+IGDM training step of the engine (as
``benchmarks/train_step.py`` builds it) with its defaults, with ``--fold-bn off`` and with
``--batch-student-forwards``: ``cnn`` student and teacher on 128×1×28×28 on a CPU, ResNet-18 student and
WRN-34-10 teacher on 128×3×32×32 on CUDA.

Variants: ``plain`` (the model with its BatchNorm layers), ``live`` (the student's view, which folds its
live weights on every call) and ``frozen`` (the teacher's and ``eval``'s snapshot). Shapes: ``cnn`` on
128×1×28×28, ``resnet18`` and ``wrn-34-10`` on CIFAR batches (128×3×32×32 on CUDA; on a CPU 32 and 8
images, ``$RD_BENCH_CPU_BATCH`` overrides both). On CUDA the models run as the engine runs them: bf16
autocast and channels_last. A summary with the speed-up over ``plain`` is printed at the end;
``$RD_BENCH_THREADS`` sets torch's CPU threads.
"""
from __future__ import annotations

import os
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustdistill._folding import fold_batchnorm
from robustdistill._models import build_model
from robustdistill._registry import ModelArch

HAS_CUDA = torch.cuda.is_available()
if os.environ.get("RD_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["RD_BENCH_THREADS"]))

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]
MODELS = {"cnn": (1, 28, 128, 128), "resnet18": (3, 32, 32, 128), "wrn-34-10": (3, 32, 8, 128)}
"""name: (channels, image size, CPU batch, CUDA batch)"""
VARIANTS = ["plain", "live", "frozen"]
RESULTS: dict[tuple[str, str, str], float] = {}
STEP_RESULTS: dict[tuple[str, str], float] = {}


def batch_size(name: str, device: str) -> int:
    _, _, cpu, cuda = MODELS[name]
    return cuda if device == "cuda" else int(os.environ.get("RD_BENCH_CPU_BATCH", cpu))


def make_model(name: str, variant: str, device: str) -> nn.Module:
    channels, size, _, _ = MODELS[name]
    torch.manual_seed(0)
    model = build_model(ModelArch(name, 10, channels, size, "relu", [0.5] * channels, [0.25] * channels))
    model.to(device).eval()
    if device == "cuda":
        model.to(memory_format=torch.channels_last)
    return model if variant == "plain" else fold_batchnorm(model, live=variant == "live")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("device", DEVICES)
def test_attack_pass(benchmark, device: str, name: str, variant: str) -> None:
    model = make_model(name, variant, device)
    channels, size, _, _ = MODELS[name]
    b = batch_size(name, device)
    x = torch.rand(b, channels, size, size, device=device)
    if device == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.arange(b, device=device) % 10
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()

    def attack_pass() -> None:
        z = x.clone().requires_grad_(True)
        with autocast:
            loss = F.cross_entropy(model(z), y, reduction="none").sum()
        torch.autograd.grad(loss, z)
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        attack_pass()
    benchmark.pedantic(attack_pass, rounds=10 if device == "cuda" or name == "cnn" else 3, iterations=1,
                       warmup_rounds=1)
    RESULTS[(device, name, variant)] = benchmark.stats.stats.median


STEP_VARIANTS = {"default": [], "fold-bn-off": ["--fold-bn", "off"], "batch-student-forwards": ["--batch-student-forwards"]}


@pytest.mark.parametrize("variant", list(STEP_VARIANTS))
@pytest.mark.parametrize("device", DEVICES)
def test_rslad_igdm_step(benchmark, tmp_path, device: str, variant: str) -> None:
    from train_step import build_engine_run, parse_args

    from robustdistill._loop import new_step, train_step

    models = ["cnn", "cnn", "1", "28"] if device == "cpu" else ["resnet18", "wrn-34-10", "3", "32"]
    args = parse_args(["--device", device, "--batch-sizes", "128", *STEP_VARIANTS[variant],
                       *[a for pair in zip(("--student", "--teacher-arch", "--channels", "--image-size"), models)
                         for a in pair]])
    run = build_engine_run(args, tmp_path)
    x = run.view.data.train_x[:128].to(run.device).float() / 255
    y = run.view.data.train_y[:128].to(run.device)

    def step() -> None:
        train_step(run, new_step(run, x, y, 1, 0))
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    benchmark.pedantic(step, rounds=10, iterations=1, warmup_rounds=1)
    STEP_RESULTS[(device, variant)] = benchmark.stats.stats.median


def summary_lines() -> list[str]:
    lines = []
    for device in dict.fromkeys(d for d, _ in STEP_RESULTS):
        default = STEP_RESULTS.get((device, "default"))
        cells = [f"{variant} {1000 * t:.1f} ms" + (f" ({default / t:.2f}× default)" if default and variant != "default"
                                                   else "")
                 for (d, variant), t in STEP_RESULTS.items() if d == device]
        lines.append(f"RSLAD+IGDM step on {device}: " + ", ".join(cells))
    if not RESULTS:
        return lines
    lines += ["", "attack pass (eval forward + backward to the input), median ms and speed-up over plain:"]
    for device, name in dict.fromkeys((d, n) for d, n, _ in RESULTS):
        plain = RESULTS.get((device, name, "plain"))
        cells = []
        for variant in VARIANTS:
            t = RESULTS.get((device, name, variant))
            if t is not None:
                ratio = f" ({plain / t:.2f}×)" if plain and variant != "plain" else ""
                cells.append(f"{variant} {1000 * t:.2f} ms{ratio}")
        lines.append(f"  {device:4s} {name:10s} batch {batch_size(name, device):4d}: " + ", ".join(cells))
    return lines
