"""Throughput of one RSLAD+IGDM training step: the engine's step against the official code's step.

On a CUDA GPU, from the repository root::

    python benchmarks/train_step.py --batch-sizes 128,512 --repeats 10 --json out.json

One step is the whole of a training iteration: the PGD inner attack (default 10 steps, ε = 8/255, step
2/255, student in eval mode), the loss forwards, backward and the SGD update, on a random batch of
``--channels``×``--image-size``² images (default CIFAR-shaped 3×32×32, 10 classes), ResNet-18 student,
WRN-34-10 teacher (random weights). Two variants run in the same process:

- ``reference``: :func:`reference_step.reference_step`, the step as the official RSLAD/IGDM scripts write
  it (fp32, eager, NCHW, separate model calls, the PGD update in Python).
- ``engine``: :func:`robustdistill._loop.train_step` on a run built by
  :func:`robustdistill._run.build_run` with ``--plugin rslad --plugin igdm`` (the real plugins) and the
  engine's defaults (bf16 autocast on CUDA, batched teacher forwards, fused ops where built, BatchNorm folded
  into the teacher's and the attacked student's convolutions); ``--amp``, ``--channels-last`` and
  ``--fold-bn`` change them; ``--batch-student-forwards`` runs the student's three training-mode forwards as
  one batch (BatchNorm statistics then differ from the reference's, and so does the first-step loss). The teacher is a random-weights checkpoint written in the native format.

Both start from the same weights and, per batch size, first run one step from identical weights
(BatchNorm buffers included) and the same start noise: the JSON records both losses and their terms
(equal up to rounding in fp32 with ``--amp off`` and NCHW; bf16 moves the engine's, and with
``--channels-last`` its start noise lands on other pixels).
Then ``--warmup`` steps, then ``--repeats`` steps each timed between ``torch.cuda.synchronize()`` calls;
images/s is the batch over the median time, and ``ratio`` is engine ÷ reference images/s.

FLOPs: the formulas of :class:`torch.utils.flop_counter.FlopCounterMode` (its ``flop_registry``, applied
by :class:`FlopCount`) count the matmul and convolution FLOPs of one step of each variant (the forwards,
the attack's input-gradient backward passes and the training backward; element-wise ops are not
counted), divided by the batch. MFU = FLOPs/image × images/s ÷ peak, where the
peak is the best of ``--peak-repeats`` bf16 ``--peak-size``² matmuls (2n³ FLOPs each) timed in the same run.

Targets (printed next to the results): engine ≥ 4× reference at batch 128; engine MFU ≥ 40 % at batch 512.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from reference_step import reference_step
from robustdistill import hookimpl
from robustdistill._checkpoint import save_checkpoint
from robustdistill._config import parse_number
from robustdistill._loop import new_step, start, train_step
from robustdistill._run import Run, build_run
from robustdistill._folding import unfolded
from robustdistill._models import build_model
from robustdistill._registry import DatasetEntry, DatasetInfo, ImageData, ModelArch
from robustdistill.testing import plugin_host, train_config

TARGET_RATIO = 4.0
TARGET_RATIO_BATCH = 128
TARGET_MFU = 0.40
TARGET_MFU_BATCH = 512
DATASET = "random-images"
FLOP_COUNT_METHOD = ("torch.utils.flop_counter's formulas (FlopCounterMode's) over every op of one step of each "
                     "variant: matmul and convolution FLOPs of all forwards and backwards, attack included, "
                     "divided by the batch")


class RandomImages:
    """Registers ``random-images``: uniformly random uint8 images and labels of a given shape."""

    def __init__(self, info: DatasetInfo, count: int, seed: int) -> None:
        self.info = info
        self.count = count
        self.seed = seed

    @hookimpl
    def register_datasets(self, register: Callable[[DatasetEntry], None]) -> None:
        register(DatasetEntry(name=DATASET, load=self.load, summary="random images of a fixed shape (benchmarks)"))

    def load(self, data_dir: str | None, download: bool) -> ImageData:
        """The images and labels, drawn from ``seed``; the test split is the first image."""
        info = self.info
        generator = torch.Generator().manual_seed(self.seed)
        x = torch.randint(0, 256, (self.count, info.in_channels, info.image_size, info.image_size),
                          dtype=torch.uint8, generator=generator)
        y = torch.randint(0, info.num_classes, (self.count,), generator=generator)
        return ImageData(info, x, y, x[:1], y[:1])


def parse_args(argv: Sequence[str] | None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batch-sizes", default="128,512", help="comma-separated batch sizes")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--student", default="resnet18", help="student architecture (model registry name)")
    parser.add_argument("--teacher-arch", default="wrn-34-10", help="teacher architecture (model registry name)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--eps", type=parse_number, default=8 / 255)
    parser.add_argument("--step-size", type=parse_number, default=2 / 255)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant and batch size")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per variant and batch size")
    parser.add_argument("--amp", default="bf16", choices=("bf16", "off"), help="the engine's --amp (CUDA only)")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                        help="the engine's --channels-last (auto: on CUDA); the reference stays NCHW")
    parser.add_argument("--fold-bn", default="on", choices=("on", "off"),
                        help="the engine's --fold-bn; the reference keeps its BatchNorm layers")
    parser.add_argument("--batch-student-forwards", action="store_true",
                        help="the engine's --batch-student-forwards (changes BatchNorm statistics: off by default)")
    parser.add_argument("--peak-size", type=int, default=8192, help="n of the n×n bf16 matmul measuring the peak")
    parser.add_argument("--peak-repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_engine_run(args: Namespace, workdir: Path) -> Run:
    """A run as ``robustdistill train --plugin rslad --plugin igdm`` builds it, on the random dataset, with a
    random-weights teacher checkpoint; ``train_start`` has run."""
    info = DatasetInfo(DATASET, args.num_classes, args.channels, args.image_size, mean=(0.5,), std=(0.25,),
                       eps=args.eps, step_size=args.step_size, attack_steps=args.attack_steps)
    teacher_arch = ModelArch(args.teacher_arch, info.num_classes, info.in_channels, info.image_size,
                             mean=info.mean, std=info.std)
    torch.manual_seed(args.seed + 1)
    save_checkpoint(workdir / "teacher.pt", {"arch": teacher_arch.to_dict(),
                                              "model": build_model(teacher_arch).state_dict(), "config": {}})
    host = plugin_host(RandomImages(info, max(args.batch_sizes), args.seed))
    # --rslad-scale 1: the reference step is the CIFAR-10 script's, also with --num-classes 100
    config = train_config(host, "--plugin", "rslad", "--plugin", "igdm", "--rslad-scale", "1",
                          "--teacher", str(workdir / "teacher.pt"),
                          "--dataset", DATASET, "--model", args.student, "--device", args.device,
                          "--amp", args.amp, "--channels-last", args.channels_last, "--fold-bn", args.fold_bn,
                          *(["--batch-student-forwards"] if args.batch_student_forwards else []),
                          "--epochs", "1", "--batch-size", str(max(args.batch_sizes)), "--val-split", "0",
                          "--seed", str(args.seed), "--out", str(workdir / "run"))
    run = build_run(config, host)
    start(run)
    return run


def time_steps(step: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` synchronised calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


class FlopCount(TorchDispatchMode):
    """Adds up ``torch.utils.flop_counter.flop_registry``'s FLOPs of every op dispatched inside it.

    ``FlopCounterMode`` applies the same formulas but also tracks modules with multi-grad hooks on their
    inputs, which ``torch.autograd.grad`` refuses for a leaf input (the PGD loop's ``x_adv``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(step: Callable[[], Any]) -> int:
    """Matmul and convolution FLOPs of one call of ``step``."""
    with FlopCount() as counter:
        step()
    return counter.total


def measure_peak(device: torch.device, n: int, repeats: int) -> float:
    """bf16 dense FLOP/s: the best time of an n×n by n×n matmul (2n³ FLOPs)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    times = time_steps(lambda: torch.mm(a, b), device, warmup=3, repeats=repeats)
    return 2 * n ** 3 / min(times)


def variant_result(times: list[float], batch: int, flops: int, peak: float, loss: Tensor,
                   terms: dict[str, Tensor]) -> dict[str, Any]:
    median = statistics.median(times)
    flops_per_image = flops / batch
    images_per_s = batch / median
    return {"ms_median": median * 1e3, "ms_min": min(times) * 1e3, "images_per_s": images_per_s,
            "flops_per_image": flops_per_image, "mfu": flops_per_image * images_per_s / peak,
            "first_step_loss": float(loss), "first_step_terms": {k: float(v) for k, v in terms.items()},
            "times_s": times}


def bench_batch(args: Namespace, run: Run, ref_student: torch.nn.Module, ref_teacher: torch.nn.Module,
                batch: int, peak: float) -> dict[str, Any]:
    """Both variants at one batch size: the first-step loss check, the timings and the FLOP counts."""
    device, cfg = run.device, run.config
    x = run.view.data.train_x[:batch].to(device).float() / 255
    y = run.view.data.train_y[:batch].to(device)
    ref_student.load_state_dict(run.student.state_dict())
    ref_optimizer = torch.optim.SGD(ref_student.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
    epoch = 1
    igdm_weight = cfg.igdm.alpha * epoch / cfg.igdm.ramp_epochs

    def reference() -> tuple[Tensor, dict[str, Tensor]]:
        return reference_step(ref_student, ref_teacher, ref_optimizer, x, eps=cfg.eps, step_size=cfg.step_size,
                              steps=cfg.attack_steps, igdm_weight=igdm_weight)

    def engine() -> tuple[Tensor, dict[str, Tensor]]:
        total, terms = train_step(run, new_step(run, x, y, epoch, 0))
        return total, {t.name: t.value.detach() for t in terms}

    torch.manual_seed(args.seed)
    ref_loss, ref_terms = reference()
    torch.manual_seed(args.seed)
    eng_loss, eng_terms = engine()
    rel_diff = abs(float(eng_loss) - float(ref_loss)) / max(abs(float(ref_loss)), 1e-12)
    results = {}
    for name, step, loss, terms in (("reference", reference, ref_loss, ref_terms),
                                    ("engine", engine, eng_loss, eng_terms)):
        times = time_steps(step, device, args.warmup, args.repeats)
        results[name] = variant_result(times, batch, count_flops(step), peak, loss, terms)
    ratio = results["engine"]["images_per_s"] / results["reference"]["images_per_s"]
    return {"batch": batch, **results, "ratio": ratio, "first_step_loss_rel_diff": rel_diff,
            "target_ratio_met": ratio >= TARGET_RATIO if batch == TARGET_RATIO_BATCH else None,
            "target_mfu_met": results["engine"]["mfu"] >= TARGET_MFU if batch == TARGET_MFU_BATCH else None}


def environment(run: Run) -> dict[str, Any]:
    """The engine's run environment plus the TF32 switches that change matmul and convolution speed."""
    return {**run.environment(), "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}


def _target(met: bool | None, goal: str) -> str:
    """`` (target GOAL: met)`` for the batch size a target applies to, else nothing."""
    return "" if met is None else f" (target {goal}: {'met' if met else 'NOT met'})"


def print_table(report: dict[str, Any]) -> None:
    env, s = report["environment"], report["settings"]
    print(f"RSLAD+IGDM training step · student {s['student']} · teacher {s['teacher_arch']} · "
          f"{s['channels']}×{s['image_size']}×{s['image_size']} · PGD-{s['attack_steps']} ε={s['eps']:.4g} "
          f"step {s['step_size']:.4g} · {env['device']} ({env['device_name']}) · torch {env['torch']}")
    print(f"engine: amp {s['amp']}, channels_last {report['engine_channels_last']}, ops {report['engine_ops_backend']}, "
          f"fold_bn {s.get('fold_bn', 'off')}, batch_student_forwards {s.get('batch_student_forwards', False)}; "
          "reference: fp32 eager NCHW")
    print(f"bf16 dense peak ({s['peak_size']}² matmul): {report['peak_bf16_flops'] / 1e12:.4g} TFLOP/s")
    if env["device"] == "cpu":
        print("note: a CPU's bf16 matmul is no roof for fp32 convolutions; MFU is meaningful on a GPU only")
    print(f"FLOPs: {report['flop_count_method']}")
    print(f"{'batch':>5}  {'variant':<9} {'ms/step':>9} {'images/s':>9} {'GFLOP/img':>9} {'TFLOP/s':>8} "
          f"{'MFU':>6}  {'1st-step loss':>13}")
    for row in report["results"]:
        for name in ("reference", "engine"):
            r = row[name]
            print(f"{row['batch']:>5}  {name:<9} {r['ms_median']:>9.2f} {r['images_per_s']:>9.1f} "
                  f"{r['flops_per_image'] / 1e9:>9.3f} {r['flops_per_image'] * r['images_per_s'] / 1e12:>8.4g} "
                  f"{100 * r['mfu']:>5.1f}%  {r['first_step_loss']:>13.6f}")
        ratio_target = _target(row["target_ratio_met"], f"≥{TARGET_RATIO:g}×")
        mfu_target = _target(row["target_mfu_met"], f"≥{100 * TARGET_MFU:g}%")
        print(f"{row['batch']:>5}  engine/reference {row['ratio']:.2f}×{ratio_target}"
              f"  engine MFU {100 * row['engine']['mfu']:.1f}%{mfu_target}"
              f"  first-step loss rel. diff {row['first_step_loss_rel_diff']:.2e}")
    print(f"targets: engine ≥{TARGET_RATIO:g}× reference at batch {TARGET_RATIO_BATCH}; "
          f"engine MFU ≥{100 * TARGET_MFU:g}% at batch {TARGET_MFU_BATCH}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write ``--json``; returns the report."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="train-step-bench-") as tmp:
        run = build_engine_run(args, Path(tmp))
    device = run.device
    ref_student = copy.deepcopy(run.student).to(memory_format=torch.contiguous_format)
    ref_teacher = copy.deepcopy(unfolded(run.view.teacher)).to(memory_format=torch.contiguous_format)
    peak = measure_peak(device, args.peak_size, args.peak_repeats)
    settings = {k: getattr(args, k) for k in ("batch_sizes", "student", "teacher_arch", "channels", "image_size",
                                              "num_classes", "attack_steps", "eps", "step_size", "warmup",
                                              "repeats", "amp", "channels_last", "fold_bn", "batch_student_forwards", "peak_size",
                                              "seed")}
    report = {"command": [sys.executable, *sys.argv] if argv is None else list(argv),
              "environment": environment(run), "settings": settings,
              "engine_ops_backend": run.ops_backend, "engine_channels_last": run.config.channels_last == "on",
              "igdm_alpha": run.config.igdm.alpha,
              "peak_bf16_flops": peak, "flop_count_method": FLOP_COUNT_METHOD,
              "targets": {"ratio": TARGET_RATIO, "ratio_batch": TARGET_RATIO_BATCH, "mfu": TARGET_MFU,
                          "mfu_batch": TARGET_MFU_BATCH},
              "results": [bench_batch(args, run, ref_student, ref_teacher, b, peak) for b in args.batch_sizes]}
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
