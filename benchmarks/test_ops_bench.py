"""Fused kernels vs the pure-PyTorch reference (eager and under torch.compile).

Not part of the default test run (``testpaths = ["tests"]``). Run:

    python -m pytest benchmarks/test_ops_bench.py -q -s --benchmark-columns=median,iqr,rounds

Shapes: CIFAR (128×3×32×32) and ImageNet (256×3×224×224; on CPU the batch is
``$RD_BENCH_CPU_IMAGENET_BATCH``, default 32, because the eager reference takes seconds per call
on a small CPU). Logits for ``fd_align``: 128×10 and 256×1000, forward + backward.

Bandwidth is computed from the minimal traffic of the op (pgd_step: read x_adv, grad, x, write the
result: 4 tensors; fd_align: read 4 logit tensors, write 2 gradients), the same byte count for every
implementation, and compared with a measured device-to-device copy (``x.clone()``: 2 tensors). A
summary table with the ratios is printed at the end. ``-k cpu`` / ``-k cuda`` selects a device;
``$RD_BENCH_THREADS`` sets torch's CPU threads.
"""
from __future__ import annotations

import os

import pytest
import torch

from robustdistill import _ext, _ops as ops

HAS_CUDA = torch.cuda.is_available()
CPU_IMAGENET_BATCH = int(os.environ.get("RD_BENCH_CPU_IMAGENET_BATCH", "32"))
if os.environ.get("RD_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["RD_BENCH_THREADS"]))

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]
IMPLS = ["copy", "fused", "fused_inplace", "eager", "compiled"]
FD_IMPLS = ["fused", "eager", "compiled"]
RESULTS: dict[tuple, dict] = {}


def image_shape(name: str, device: str) -> tuple[int, ...]:
    if name == "cifar":
        return (128, 3, 32, 32)
    return (CPU_IMAGENET_BATCH if device == "cpu" else 256, 3, 224, 224)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run(benchmark, device: str, fn, rounds: int | None = None):
    """Time fn (synchronised on CUDA) and return (median, min) in seconds."""
    def target():
        fn()
        synchronize(device)

    target()  # warm-up (and compilation)
    target()
    if rounds is None:
        benchmark(target)
    else:
        benchmark.pedantic(target, rounds=rounds, iterations=1, warmup_rounds=1)
    return benchmark.stats.stats.median, benchmark.stats.stats.min


def need_kernels(device: str) -> None:
    ok, reason = _ext.available(device)
    if not ok:
        pytest.skip(reason)


_compiled: dict[tuple, object] = {}


def compiled(fn, key):
    if key not in _compiled:
        _compiled[key] = torch.compile(fn, dynamic=False)
    return _compiled[key]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("size", ["cifar", "imagenet"])
@pytest.mark.parametrize("device", DEVICES)
def test_pgd_step(benchmark, device, size, dtype, norm, impl):
    if dtype == "bfloat16" and (norm == "l2" or size == "imagenet"):
        pytest.skip("bf16 is measured for L-inf at CIFAR size only")
    if impl.startswith("fused"):
        need_kernels(device)
    shape = image_shape(size, device)
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    x = torch.rand(shape, device=device).to(dt)
    x_adv = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    grad = torch.randn_like(x)
    eps, step = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.1)
    if impl == "copy":
        fn = x.clone
    elif impl == "fused":
        def fn():
            return torch.ops.robustdistill.pgd_step(x_adv, grad, x, eps, step, None, None, norm, 0.0, 1.0)
    elif impl == "fused_inplace":
        buf = x_adv.clone()

        def fn():
            torch.ops.robustdistill.pgd_step_(buf, grad, x, eps, step, None, None, norm, 0.0, 1.0)
    elif impl == "eager":
        def fn():
            return ops.pgd_step_ref(x_adv, grad, x, eps, step, norm)
    else:
        step_fn = compiled(ops.pgd_step_ref, ("pgd", device, size, dtype, norm))

        def fn():
            return step_fn(x_adv, grad, x, eps, step, norm)
    seconds, fastest = run(benchmark, device, fn)
    nbytes = x.numel() * x.element_size() * (2 if impl == "copy" else 4)
    benchmark.extra_info.update(shape=list(shape), dtype=dtype, gbps=nbytes / seconds / 1e9)
    RESULTS[("pgd_step", device, f"{norm} {dtype} {'x'.join(map(str, shape))}", impl)] = {
        "seconds": seconds, "min": fastest, "gbps": nbytes / seconds / 1e9}


@pytest.mark.parametrize("impl", FD_IMPLS)
@pytest.mark.parametrize("distance", ["kl", "l1", "l2"])
@pytest.mark.parametrize("logits", [(128, 10), (256, 1000)])
@pytest.mark.parametrize("device", DEVICES)
def test_fd_align_forward_backward(benchmark, device, logits, distance, impl):
    if impl == "fused":
        need_kernels(device)
    torch.manual_seed(0)
    s_plus, s_minus, t_plus, t_minus = (torch.randn(logits, device=device) for _ in range(4))
    s_plus.requires_grad_(True)
    s_minus.requires_grad_(True)
    if impl == "fused":
        forward = torch.ops.robustdistill.fd_align
    elif impl == "eager":
        forward = ops.fd_align_ref
    else:
        forward = compiled(ops.fd_align_ref, ("fd", device, logits, distance))

    def fn():
        loss = forward(s_plus, s_minus, t_plus, t_minus, distance)
        return torch.autograd.grad(loss, (s_plus, s_minus))

    seconds, fastest = run(benchmark, device, fn)
    nbytes = s_plus.numel() * s_plus.element_size() * 6
    benchmark.extra_info.update(logits=list(logits), gbps=nbytes / seconds / 1e9)
    RESULTS[("fd_align fwd+bwd", device, f"{distance} {logits[0]}x{logits[1]}", impl)] = {
        "seconds": seconds, "min": fastest, "gbps": nbytes / seconds / 1e9}


def summary_lines() -> list[str]:
    """The results table (printed by benchmarks/conftest.py at the end of the run)."""
    if not RESULTS:
        return []
    title = (f"robustdistill kernel benchmarks (median; torch {torch.__version__}, "
             f"CPU threads {torch.get_num_threads()})")
    lines = [title]
    header = (f"{'op':<17} {'device':<6} {'case':<28} {'impl':<14} {'median':>11} {'min':>11} {'GB/s':>8} "
              f"{'vs copy':>8} {'eager/t':>8} {'compiled/t':>10}")
    lines += [header, "-" * len(header)]
    for op, device, case in sorted({key[:3] for key in RESULTS}):
        row = {impl: RESULTS.get((op, device, case, impl)) for impl in IMPLS}
        copy, eager, comp = row.get("copy"), row.get("eager"), row.get("compiled")
        for impl, res in row.items():
            if res is None:
                continue
            other = impl != "copy"
            vs_copy = f"{res['gbps'] / copy['gbps']:.2f}" if copy and other else ""
            vs_eager = f"{eager['seconds'] / res['seconds']:.2f}x" if eager and other else ""
            vs_comp = f"{comp['seconds'] / res['seconds']:.2f}x" if comp and other else ""
            lines.append(f"{op:<17} {device:<6} {case:<28} {impl:<14} {res['seconds'] * 1e3:>9.3f}ms "
                         f"{res['min'] * 1e3:>9.3f}ms {res['gbps']:>8.2f} {vs_copy:>8} {vs_eager:>8} {vs_comp:>10}")
    lines.append("GB/s: minimal traffic of the op / median time; vs copy: that over x.clone()'s GB/s; "
                 "eager/t, compiled/t: the reference's median time over this implementation's")
    return lines
