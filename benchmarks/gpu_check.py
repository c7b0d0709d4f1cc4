"""The checks of ``benchmarks/gpu_check.sh``: the fused kernels and the GPU path in one run.

``python benchmarks/gpu_check.py OUT_DIR`` runs the stages below in order, each in its own process with
a time limit, and writes ``OUT_DIR/summary.md`` and ``OUT_DIR/summary.json`` (plus one log per stage
in ``OUT_DIR/logs``). It exits non-zero when a stage fails. Without a CUDA device the stages that need
one are skipped (and listed), and the others run on the CPU with sizes that fit a small machine.

- ``build``: the extension is built from this checkout's sources (not stale), has kernels for the
  devices present and passes their self-checks; otherwise it is rebuilt (``pip install
  --no-build-isolation --no-deps -e .``; without a GPU, CPU kernels only) and checked again.
- ``tests``: ``tests/test_ops.py``; with a GPU also every test marked ``cuda``, the CLI tests and the
  resume test (``ROBUSTDISTILL_REQUIRE_EXT=1``: a kernel test cannot skip).
- ``shapes``: misaligned storage and odd sizes, more than 65,535 samples, more than 1M elements per
  sample and, on a GPU with the memory, a tensor of more than 2³¹ elements, against the reference.
- ``gradcheck``: fp64 ``gradcheck`` of ``fd_align`` (kl, l1, l2) on the device.
- ``graphs``: a PGD loop that calls the op, captured in a CUDA graph and compiled with
  ``torch.compile(mode="reduce-overhead")``, equal to eager (without a GPU: traced with
  ``torch.compile(backend="aot_eager", fullgraph=True)``).
- ``train-step`` (GPU): ``benchmarks/train_step.py``, the RSLAD+IGDM engine step against the
  reference step at batch 128 and 512 (images/s, ratio, MFU).
- ``amp`` (GPU): PGD-AT of the ``cnn`` on the first 10,000 Fashion-MNIST training images for 2 epochs
  with ``--amp off`` and with ``--amp bf16`` (same seed), then ``robustdistill eval`` on 1,000 test
  images (clean, PGD-20): the PGD-20 accuracies must agree to 5 points.
- ``kernel-bench``: ``benchmarks/test_ops_bench.py`` (fused vs eager vs ``torch.compile``, the latter
  at CIFAR size and for ``fd_align``, and dropped when less than 150 s are left; on the CPU the small
  cases at one thread, without ``torch.compile``).

Time: at most 8 minutes on an H100/H200 (the build included), 3 minutes on the CPU
(``--budget`` changes it). Fashion-MNIST comes from ``$ROBUSTDISTILL_DATA`` (``gpu_check.sh`` points
it at ``.carry/fashion-mnist`` when that exists) or ``/usr/share/datasets/fashion-mnist``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
GPU_BUDGET_S = 470.0  # 8 minutes with the shell script's start
CPU_BUDGET_S = 180.0
AMP_MAX_GAP = 0.05


@dataclass
class StageResult:
    name: str
    status: str = "skipped"  # passed | failed | skipped
    seconds: float = 0.0
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    log: str | None = None


class Failure(Exception):
    """A check that did not hold; its message goes into the summary."""


# ---------------------------------------------------------------------------------------------
# Helpers for the stages that run in a child process (``gpu_check.py --stage NAME``)


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rounded(value: float, dtype) -> float:
    import torch

    return torch.tensor(value, dtype=torch.float32).to(dtype).item()


def _pgd_inputs(shape, device, dtype, norm: str, seed: int = 0):
    """x in [0, 1]; x_adv around it (L2: up to 1.5 ε away); a gradient with exact zeros."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(shape, generator=gen, device=device)
    noise = torch.randn(shape, generator=gen, device=device)
    if norm == "linf":
        x_adv = x + noise.clamp(-1.5, 1.5) * (8 / 255)
    else:
        scale = 0.75 / noise.flatten(1).norm(dim=1).clamp_min(1e-12)
        x_adv = x + noise * scale.reshape(-1, *[1] * (len(shape) - 1))
    grad = torch.randn(shape, generator=gen, device=device)
    grad[torch.rand(shape, generator=gen, device=device) < 0.1] = 0
    return [t.clamp(0, 1).to(dtype) if t is not grad else t.to(dtype) for t in (x_adv, grad, x)]


def _compare(name: str, out, ref, exact: bool, atol: float = 1e-6) -> dict[str, Any]:
    import torch

    diff = (out.float() - ref.float()).abs().max().item() if out.numel() else 0.0
    ok = torch.equal(out, ref) if exact else diff <= atol
    if not ok:
        raise Failure(f"{name}: max |fused − reference| = {diff:.3g} ({'must be 0' if exact else f'> {atol:g}'})")
    return {"case": name, "max_abs_diff": diff}


def _fused(x_adv, grad, x, eps, step, norm, inplace: bool = False):
    import torch

    eps_f, eps_t = (0.0, eps) if isinstance(eps, torch.Tensor) else (float(eps), None)
    step_f, step_t = (0.0, step) if isinstance(step, torch.Tensor) else (float(step), None)
    if inplace:
        torch.ops.robustdistill.pgd_step_(x_adv, grad, x, eps_f, step_f, eps_t, step_t, norm, 0.0, 1.0)
        return x_adv
    return torch.ops.robustdistill.pgd_step(x_adv, grad, x, eps_f, step_f, eps_t, step_t, norm, 0.0, 1.0)


def _need_kernels(device) -> None:
    from robustdistill import _ops as ops

    status = ops.kernel_status(device)
    if status["backend"] != "ext":
        raise Failure(f"the fused kernels do not run on {status['device']}: {status['reason']}")


def stage_shapes(out_dir: Path) -> dict[str, Any]:
    """Odd and large shapes against the reference (fp32: L∞ bit-identical, L2 to 1e-6)."""
    import torch

    from robustdistill import _ops as ops

    device = _device()
    _need_kernels(device)
    cases: list[dict[str, Any]] = []
    skipped: list[str] = []

    def check(name, shape, norm, dtype=torch.float32, per_sample=False, offset=0, inplace=False):
        numel = 1
        for s in shape:
            numel *= s
        base = [torch.empty(numel + offset, dtype=dtype, device=device) for _ in range(3)]
        x_adv, grad, x = (b[offset:].view(shape) for b in base)  # offset: storage not 16-byte aligned
        for dst, src in zip((x_adv, grad, x), _pgd_inputs(shape, device, dtype, norm)):
            dst.copy_(src)
        eps, step = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.1)
        if per_sample:
            eps = torch.linspace(0.0, 2 * eps, shape[0], device=device)
            step = torch.linspace(step / 4, step, shape[0], device=device)
        before = x_adv.clone()
        out = _fused(x_adv, grad, x, eps, step, norm, inplace)
        if dtype == torch.float32:
            ref = ops.pgd_step_ref(before, grad, x, eps, step, norm)
            cases.append(_compare(name, out, ref, exact=norm == "linf"))
        else:  # computed in fp32 and rounded once: the fp32 reference on the upcast inputs
            r = (lambda v: v.to(dtype).float()) if per_sample else (lambda v: _rounded(v, dtype))
            ref = ops.pgd_step_ref(before.float(), grad.float(), x.float(), r(eps), r(step), norm).to(dtype)
            cases.append(_compare(name, out, ref, exact=norm == "linf", atol=torch.finfo(dtype).eps))
        del base, x_adv, grad, x, before, out, ref

    for norm in ("linf", "l2"):
        for dtype in (torch.float32, torch.bfloat16):
            for per_sample in (False, True):
                tag = f"{norm} {str(dtype)[6:]}{' per-sample' if per_sample else ''}"
                check(f"misaligned odd 3x5x7x11 {tag}", (3, 5, 7, 11), norm, dtype, per_sample, offset=1)
                check(f"misaligned in-place 2x3x33x31 {tag}", (2, 3, 33, 31), norm, dtype, per_sample, offset=3,
                      inplace=True)
        check(f"70001 samples x 3x4x4 {norm} per-sample", (70001, 3, 4, 4), norm, per_sample=True)
        check(f"70001 samples x 3x4x4 {norm}", (70001, 3, 4, 4), norm)
        check(f"2 samples x 3x700x700 (1.47M each) {norm} per-sample", (2, 3, 700, 700), norm, per_sample=True)
        check(f"1 sample x 3x1024x1024 (3.1M) {norm}", (1, 3, 1024, 1024), norm)
    huge = _huge_tensor_case(device)
    if isinstance(huge, str):
        skipped.append(huge)
    else:
        cases.extend(huge)
    throughput = _small_batch_l2_throughput(device)
    return {"cases": cases, "skipped": skipped, "small_batch_l2": throughput,
            "summary": f"{len(cases)} shape cases equal to the reference" + (f"; skipped: {'; '.join(skipped)}"
                                                                                if skipped else "")}


def _huge_tensor_case(device, batch: int = 5, per: int = 1 << 29, chunk: int = 1 << 26) -> list[dict[str, Any]] | str:
    """5 × 2²⁹ fp32 elements (> 2³¹): the flat L∞ kernel, the per-sample one and the three L2 passes,
    checked chunk by chunk against the reference's arithmetic (L∞ bit-identical, L2 to 1e-6)."""
    import torch

    if device.type != "cuda":
        return "tensor of more than 2³¹ elements (CUDA only)"
    numel = batch * per
    need = 4 * numel * 4 + (4 << 30)  # x_adv, grad, x, the result, and room for the checks
    free, _ = torch.cuda.mem_get_info(device)
    if free < need:
        return f"tensor of more than 2³¹ elements (needs {need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free)"
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand((batch, per), generator=gen, device=device)
    grad = torch.randn((batch, per), generator=gen, device=device)
    x_adv = torch.empty_like(x)
    pieces = [(b, slice(i, i + chunk)) for b in range(batch) for i in range(0, per, chunk)]
    for sl in pieces:
        x_adv[sl] = (x[sl] + 0.05 * torch.randn(chunk, generator=gen, device=device)).clamp(0, 1)
    results = []

    def check(name, out, want_of, exact):
        worst = 0.0
        for sl in pieces:
            worst = max(worst, (out[sl] - want_of(sl)).abs().max().item())
        if worst > (0.0 if exact else 1e-6):
            raise Failure(f"{name}: max |fused − reference| = {worst:.3g} ({'must be 0' if exact else '> 1e-6'})")
        results.append({"case": name, "max_abs_diff": worst})

    def linf(sl, eps, step):
        return torch.clamp(x[sl] + torch.clamp(x_adv[sl] + step * grad[sl].sign() - x[sl], -eps, eps), 0, 1)

    out = _fused(x_adv, grad, x, 8 / 255, 2 / 255, "linf")
    check(f"{batch}x{per} ({numel:,} elements) linf", out, lambda sl: linf(sl, 8 / 255, 2 / 255), exact=True)
    del out
    eps_t = torch.linspace(0.01, 0.05, batch, device=device)
    eps_f = eps_t.tolist()
    out = _fused(x_adv, grad, x, eps_t, 2 / 255, "linf")
    check(f"{batch}x{per} linf per-sample", out, lambda sl: linf(sl, eps_f[sl[0]], 2 / 255), exact=True)
    del out
    eps, step = 1000.0, 1000.0
    out = _fused(x_adv, grad, x, eps, step, "l2")
    coefficients = {}
    for b in range(batch):  # the reference's norms, summed chunk by chunk in double
        rows = [sl for sl in pieces if sl[0] == b]
        g_div = max(torch.tensor(sum(grad[sl].double().pow(2).sum().item() for sl in rows) ** 0.5,
                                 dtype=torch.float32).item(), 1e-12)
        d_norm = sum((x_adv[sl] + step * (grad[sl] / g_div) - x[sl]).double().pow(2).sum().item() for sl in rows) ** 0.5
        coefficients[b] = (g_div, min(eps / max(d_norm, 1e-12), 1.0))

    def l2(sl):
        g_div, factor = coefficients[sl[0]]
        return (x[sl] + (x_adv[sl] + step * (grad[sl] / g_div) - x[sl]) * factor).clamp(0, 1)

    check(f"{batch}x{per} l2", out, l2, exact=False)
    return results


def _small_batch_l2_throughput(device) -> list[dict[str, Any]] | None:
    """L2 steps of batch 1 and 2 at ImageNet size: GB/s (4 tensors of traffic) against a copy's."""
    import torch

    if device.type != "cuda":
        return None
    rows = []
    for batch in (1, 2, 128):
        x_adv, grad, x = _pgd_inputs((batch, 3, 224, 224), device, torch.float32, "l2")
        timings = {}
        for name, fn in (("copy", x.clone), ("l2", lambda: _fused(x_adv, grad, x, 0.5, 0.1, "l2"))):
            for _ in range(3):
                fn()
            _sync(device)
            start, reps = time.perf_counter(), 50
            for _ in range(reps):
                fn()
            _sync(device)
            timings[name] = (time.perf_counter() - start) / reps
        nbytes = x.numel() * 4
        rows.append({"batch": batch, "l2_us": timings["l2"] * 1e6, "l2_gbps": 4 * nbytes / timings["l2"] / 1e9,
                     "copy_gbps": 2 * nbytes / timings["copy"] / 1e9})
    return rows


def stage_gradcheck(out_dir: Path) -> dict[str, Any]:
    import torch

    device = _device()
    _need_kernels(device)
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(5, 7, generator=gen, dtype=torch.float64).to(device) * 3 for _ in range(4)]
    s_plus, s_minus = (t.requires_grad_(True) for t in logits[:2])
    t_plus, t_minus = logits[2:]
    for distance in ("kl", "l1", "l2"):
        out = torch.ops.robustdistill.fd_align(s_plus, s_minus, t_plus, t_minus, distance)
        if out.dtype != torch.float64:
            raise Failure(f"fd_align on fp64 logits returned {out.dtype}")
        torch.autograd.gradcheck(lambda a, b: torch.ops.robustdistill.fd_align(a, b, t_plus, t_minus, distance),
                                 (s_plus, s_minus))
    return {"summary": f"fd_align gradcheck (fp64, kl/l1/l2) passed on {device}"}


def stage_graphs(out_dir: Path) -> dict[str, Any]:
    """PGD loops through ops.pgd_step: CUDA graph and torch.compile(mode="reduce-overhead") vs eager."""
    import torch

    from robustdistill import _ops as ops

    device = _device()
    _need_kernels(device)
    ops.set_backend("ext")
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=gen, device=device)
    w = torch.randn(3, 32, 32, generator=gen, device=device)
    eps = torch.linspace(2 / 255, 16 / 255, 64, device=device)  # per-sample, on the device: no host copy

    def analytic_attack(x_adv, x, w, eps):
        """PGD with the gradient of sum(cos(w·x_adv)), ten L∞ steps and one L2 step."""
        for _ in range(10):
            grad = -w * torch.sin(w * x_adv)
            x_adv = ops.pgd_step(x_adv, grad, x, eps, 2 / 255)
        return ops.pgd_step(x_adv, -w * torch.sin(w * x_adv), x, 0.5, 0.1, "l2")

    x0 = (x + 0.01 * torch.randn(x.shape, generator=gen, device=device)).clamp(0, 1)
    eager = analytic_attack(x0, x, w, eps)
    details: dict[str, Any] = {}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        static_x0 = x0.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                analytic_attack(static_x0, x, w, eps)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = analytic_attack(static_x0, x, w, eps)
        graph.replay()
        _sync(device)
        linf_equal = torch.equal(captured, eager)
        details["cuda_graph_max_abs_diff"] = (captured - eager).abs().max().item()
        if not details["cuda_graph_max_abs_diff"] <= 1e-6:
            raise Failure(f"PGD loop in a CUDA graph differs from eager by {details['cuda_graph_max_abs_diff']:.3g}")
        details["cuda_graph_equal"] = linf_equal
        details["model_attack"] = _model_attack_in_graph(device, x, eps)
        mode = {"mode": "reduce-overhead"}
    else:
        mode = {"backend": "aot_eager"}
    torch._dynamo.reset()
    compiled = torch.compile(analytic_attack, fullgraph=True, **mode)
    for _ in range(3):  # reduce-overhead records its CUDA graph on a later call
        got = compiled(x0, x, w, eps)
    _sync(device)
    details["compile"] = mode
    details["compile_max_abs_diff"] = (got - eager).abs().max().item()
    if not details["compile_max_abs_diff"] <= 1e-6:
        raise Failure(f"PGD loop under torch.compile({mode}) differs from eager by {details['compile_max_abs_diff']:.3g}")
    ops.set_backend(None)
    where = "CUDA graph and torch.compile(mode='reduce-overhead')" if device.type == "cuda" else \
        "torch.compile(backend='aot_eager', fullgraph=True)"
    return {"summary": f"PGD loop through the op under {where} equals eager", **details}


def _model_attack_in_graph(device, x, eps) -> dict[str, Any]:
    """A ten-step PGD attack on a small CNN (forward, input gradient, fused step), captured whole."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from robustdistill import _ops as ops

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(256, 10)).to(device).eval()
    y = torch.arange(x.shape[0], device=device) % 10

    def attack(x_adv):
        for _ in range(10):
            with torch.enable_grad():
                x_adv = x_adv.detach().requires_grad_(True)
                grad, = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
            x_adv = ops.pgd_step(x_adv.detach(), grad, x, eps, 2 / 255)
        return x_adv

    eager = attack(x.clone())
    static = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            attack(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = attack(static)
    graph.replay()
    _sync(device)
    differ = (captured != eager).float().mean().item()
    diff = (captured - eager).abs().max().item()
    # The same kernels run in both, so the results should be equal; a gradient at 0 that the two
    # round differently would flip the sign of one step of one element, hence the allowance.
    if differ > 1e-5:
        raise Failure(f"the model's PGD attack in a CUDA graph differs from eager in {differ:.2%} of the elements "
                      f"(max {diff:.3g})")
    return {"max_abs_diff": diff, "fraction_differing": differ}


CHILD_STAGES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "shapes": stage_shapes,
    "gradcheck": stage_gradcheck,
    "graphs": stage_graphs,
}


def run_child_stage(name: str, result_path: Path, out_dir: Path) -> int:
    try:
        details = CHILD_STAGES[name](out_dir)
        status = "passed"
    except Failure as exc:
        details, status = {"summary": str(exc)}, "failed"
    except Exception as exc:  # noqa: BLE001 - any error fails the stage; the traceback goes to its log
        import traceback

        traceback.print_exc()
        details, status = {"summary": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}, "failed"
    result_path.write_text(json.dumps({"status": status, "details": details}, indent=2, default=str) + "\n")
    print(details.get("summary", ""))
    return 0 if status == "passed" else 1


# ---------------------------------------------------------------------------------------------
# The orchestrator


class Runner:
    def __init__(self, out_dir: Path, budget_s: float, python: str, has_cuda: bool, full_suite: bool = False) -> None:
        self.out = out_dir
        self.logs = out_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + budget_s
        self.budget_s = budget_s
        self.python = python
        self.has_cuda = has_cuda
        self.full_suite = full_suite
        self.results: list[StageResult] = []
        # this checkout's package and its ahead-of-time build: kernel tests fail instead of skipping, and
        # a missing build is built by the build stage, not just in time inside another stage
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                        ROBUSTDISTILL_REQUIRE_EXT="1", ROBUSTDISTILL_NO_JIT="1", PYTHONUNBUFFERED="1")
        self.env.pop("ROBUSTDISTILL_OPS_BACKEND", None)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def command(self, result: StageResult, argv: list[str], limit_s: float, env: dict | None = None,
                log_name: str | None = None) -> subprocess.CompletedProcess | None:
        """Run argv (its output into the stage's log); None when it ran out of time."""
        limit = min(limit_s, self.remaining())
        log = self.logs / f"{log_name or result.name}.log"
        result.log = str(log.relative_to(self.out))
        with open(log, "a") as handle:
            handle.write(f"$ {' '.join(argv)}\n")
            handle.flush()
            if limit <= 5:
                handle.write("not run: out of time\n")
                return None
            try:
                return subprocess.run(argv, cwd=ROOT, env=env or self.env, stdout=handle, stderr=subprocess.STDOUT,
                                      timeout=limit, check=False)
            except subprocess.TimeoutExpired:
                handle.write(f"\nstopped after {limit:.0f} s (time limit)\n")
                return None

    def stage(self, name: str, fn: Callable[[StageResult], None], needs_cuda: bool = False,
              skip_reason: str | None = None) -> None:
        result = StageResult(name)
        self.results.append(result)
        if needs_cuda and not self.has_cuda:
            result.summary = "skipped: needs a CUDA GPU"
        elif skip_reason:
            result.summary = f"skipped: {skip_reason}"
        else:
            start = time.monotonic()
            try:
                fn(result)
                if result.status == "skipped":
                    result.status = "passed"
            except Failure as exc:
                result.status, result.summary = "failed", str(exc)
            result.seconds = time.monotonic() - start
        print(f"[{result.status:>7}] {name:<13} {result.seconds:6.1f} s  {result.summary}", flush=True)

    def python_json(self, result: StageResult, code: str, limit_s: float = 120) -> Any:
        """Run Python code in a fresh process; its last stdout line is JSON."""
        try:
            proc = subprocess.run([self.python, "-c", code], cwd=ROOT, env=self.env, capture_output=True, text=True,
                                  timeout=min(limit_s, max(self.remaining(), 5)), check=False)
        except subprocess.TimeoutExpired:
            raise Failure("python ran out of time") from None
        with open(self.logs / f"{result.name}.log", "a") as handle:
            handle.write(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not proc.stdout.strip():
            raise Failure(f"python failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    # -- stages ------------------------------------------------------------------------------

    def environment(self, result: StageResult) -> None:
        info = self.python_json(result, (
            "import json, platform, shutil, subprocess, torch\n"
            "gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] "
            "if torch.cuda.is_available() else []\n"
            "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__, "
            "'cuda': torch.version.cuda, 'gpus': gpus, 'cpus': __import__('os').cpu_count()}))"))
        result.details = info
        result.summary = (f"torch {info['torch']} (CUDA {info['cuda']}), "
                          f"{', '.join(info['gpus']) or 'no GPU'}, {info['cpus']} CPUs")

    def _kernel_report(self, result: StageResult) -> dict:
        return self.python_json(result, (
            "import json\nfrom robustdistill import _ops as ops, _ext\n"
            "report = ops.backend_report()\n"
            "report['stale'] = any('stale' in n for n in (report['extension'] or {}).get('notes', []))\n"
            "print(json.dumps(report))"))

    def _build_problem(self, report: dict) -> str | None:
        ext = report.get("extension") or {}
        if not ext.get("loaded"):
            return f"the extension is not built ({ext.get('error')})"
        if report.get("stale"):
            return "the built extension is stale (older than csrc/)"
        for key, status in report["devices"].items():
            if key.startswith("cuda") and status.get("self_check") != "passed":
                return f"{key}: {status.get('self_check')}"
        if report["devices"].get("cpu", {}).get("self_check") != "passed":
            return f"cpu: {report['devices'].get('cpu', {}).get('self_check')}"
        return None

    def build(self, result: StageResult) -> None:
        problem = self._build_problem(self._kernel_report(result))
        rebuilt = False
        if problem:
            env = dict(self.env, MAX_JOBS=str(os.cpu_count() or 2))
            if not self.has_cuda:
                env["ROBUSTDISTILL_NO_CUDA"] = "1"  # no GPU to run CUDA kernels on: CPU kernels only, quickly
            proc = self.command(result, [self.python, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                                         "-e", "."], 300, env=env)
            if proc is None or proc.returncode != 0:
                raise Failure(f"{problem}; rebuilding it failed (see {result.log})")
            rebuilt = True
            problem = self._build_problem(self._kernel_report(result))
            if problem:
                raise Failure(f"after a rebuild: {problem}")
        report = self._kernel_report(result)
        lines = self.python_json(result, "import json\nfrom robustdistill import _ops as ops\n"
                                         "print(json.dumps(ops.doctor_lines()))")
        (self.logs / "doctor.txt").write_text("\n".join(lines) + "\n")
        result.details = {"rebuilt": rebuilt, "extension": report["extension"], "devices": report["devices"]}
        archs = report["extension"].get("cuda_archs") or []
        result.summary = (("rebuilt; " if rebuilt else "up to date; ") + "self-check passed on "
                          + ", ".join(report["devices"]) + (f"; CUDA code {','.join(archs)}" if archs else ""))

    def tests(self, result: StageResult) -> None:
        runs = [("tests", ["tests/test_ops.py"])]
        if self.full_suite:
            runs = [("tests", ["tests"])]
        elif self.has_cuda:  # every CUDA test, the CPU kernel tests, and the tests only a GPU machine failed
            runs = [("tests-cuda", ["tests", "-m", "cuda"]),
                    ("tests", ["tests/test_ops.py", "tests/test_cli.py::test_run_records_its_environment_and_ops_backend",
                               "tests/test_e2e.py::test_resume_continues_exactly_where_it_stopped", "-m", "not cuda"])]
        totals: dict[str, int] = {}
        for name, selection in runs:
            junit = self.logs / f"{name}.xml"
            proc = self.command(result, [self.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                         f"--junitxml={junit}", *selection], 3600 if self.full_suite else 240)
            for key, value in _junit_counts(junit).items():
                totals[key] = totals.get(key, 0) + value
            result.details = totals
            result.summary = ", ".join(f"{v} {k}" for k, v in totals.items())
            if proc is None:
                raise Failure(f"tests ran out of time ({result.summary})")
            if proc.returncode != 0:
                raise Failure(f"tests failed: {result.summary} (see {result.log})")

    def child(self, name: str, limit_s: float) -> Callable[[StageResult], None]:
        def run(result: StageResult) -> None:
            path = self.out / f"{name}.json"
            path.unlink(missing_ok=True)
            proc = self.command(result, [self.python, str(Path(__file__)), str(self.out), "--stage", name,
                                         "--stage-result", str(path)], limit_s)
            if proc is None:
                raise Failure(f"ran out of time (see {result.log})")
            if not path.exists():
                raise Failure(f"crashed with exit status {proc.returncode} (see {result.log})")
            data = json.loads(path.read_text())
            result.details = data["details"]
            result.summary = data["details"].get("summary", "")
            if data["status"] != "passed":
                raise Failure(result.summary)
        return run

    def train_step(self, result: StageResult) -> None:
        path = self.out / "train_step.json"
        proc = self.command(result, [self.python, "benchmarks/train_step.py", "--batch-sizes", "128,512",
                                     "--warmup", "2", "--repeats", "5", "--json", str(path)], 150)
        if proc is None or proc.returncode != 0 or not path.exists():
            raise Failure(f"benchmarks/train_step.py failed (see {result.log})")
        report = json.loads(path.read_text())
        rows = []
        for row in report["results"]:
            rows.append({"batch": row["batch"], "engine_img_s": row["engine"]["images_per_s"],
                         "reference_img_s": row["reference"]["images_per_s"], "ratio": row["ratio"],
                         "engine_mfu": row["engine"]["mfu"], "targets_met": {"ratio": row.get("target_ratio_met"),
                                                                             "mfu": row.get("target_mfu_met")}})
        result.details = {"results": rows, "ops_backend": report.get("engine_ops_backend")}
        result.summary = "; ".join(f"batch {r['batch']}: {r['engine_img_s']:.0f} img/s, {r['ratio']:.2f}× reference, "
                                   f"MFU {100 * r['engine_mfu']:.1f}%" for r in rows)

    def amp(self, result: StageResult) -> None:
        accuracies = {}
        for amp in ("off", "bf16"):
            run_dir = self.out / f"amp-{amp}"
            shutil.rmtree(run_dir, ignore_errors=True)
            train = [self.python, "-m", "robustdistill", "train", "--plugin", "at", "--dataset", "fashion-mnist",
                     "--model", "cnn", "--subset", "10000", "--epochs", "2", "--val-split", "200", "--seed", "0",
                     "--device", "cuda", "--amp", amp, "--out", str(run_dir)]
            proc = self.command(result, train, 120)
            if proc is None or proc.returncode != 0:
                raise Failure(f"training with --amp {amp} failed (see {result.log})")
            eval_json = run_dir / "eval.json"
            proc = self.command(result, [self.python, "-m", "robustdistill", "eval", str(run_dir / "last.pt"),
                                         "--attacks", "clean,pgd20", "--subset", "1000", "--device", "cuda",
                                         "--json", str(eval_json)], 60)
            if proc is None or proc.returncode != 0:
                raise Failure(f"evaluating the --amp {amp} run failed (see {result.log})")
            accuracies[amp] = json.loads(eval_json.read_text())
        gap = accuracies["bf16"]["pgd20"] - accuracies["off"]["pgd20"]
        result.details = {"fp32": {k: accuracies["off"][k] for k in ("clean", "pgd20")},
                          "bf16": {k: accuracies["bf16"][k] for k in ("clean", "pgd20")}, "pgd20_gap": gap,
                          "max_gap": AMP_MAX_GAP}
        result.summary = (f"PGD-20 fp32 {accuracies['off']['pgd20']:.3f}, bf16 {accuracies['bf16']['pgd20']:.3f} "
                          f"(gap {gap:+.3f}); clean {accuracies['off']['clean']:.3f} / {accuracies['bf16']['clean']:.3f}")
        if abs(gap) > AMP_MAX_GAP:
            raise Failure(f"{result.summary}: the gap exceeds {AMP_MAX_GAP}")

    def kernel_bench(self, result: StageResult) -> None:
        path = self.out / "kernel_bench.json"
        select = "cuda and not (imagenet and compiled)" if self.has_cuda else "cpu and not imagenet and not compiled"
        if self.has_cuda and self.remaining() < 150:  # torch.compile's compilations take most of the time
            select = "cuda and not compiled"
        env = self.env if self.has_cuda else dict(self.env, RD_BENCH_THREADS="1")  # steadier on a shared CPU
        proc = self.command(result, [self.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                     "benchmarks/test_ops_bench.py", "-k", select, "--benchmark-max-time=0.1",
                                     "--benchmark-min-rounds=5", f"--benchmark-json={path}"], 200, env=env)
        table = _bench_table(self.logs / "kernel-bench.log")
        result.details = {"selection": select, "table": table}
        if proc is None or proc.returncode != 0:
            raise Failure(f"kernel benchmarks failed (see {result.log})")
        result.summary = f"{len(table) - 2 if table else 0} rows (-k '{select}')"


def _junit_counts(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    import xml.etree.ElementTree as ET

    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total = int(suite.get("tests", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def _bench_table(log: Path) -> list[str]:
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("robustdistill kernel benchmarks")), None)
    if start is None:
        return []
    table = []
    for line in lines[start + 1:]:
        if not line.strip() or line.startswith("GB/s:"):
            break
        table.append(line)
    return table


def write_summary(runner: Runner, argv: list[str]) -> bool:
    ok = all(r.status != "failed" for r in runner.results)
    summary = {"passed": ok, "command": argv, "device": "cuda" if runner.has_cuda else "cpu",
               "budget_s": runner.budget_s, "seconds": sum(r.seconds for r in runner.results),
               "platform": platform.platform(), "stages": [asdict(r) for r in runner.results]}
    (runner.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    md = [f"# gpu_check: {'passed' if ok else 'FAILED'}", "",
          f"`{' '.join(argv)}` on {'a CUDA GPU' if runner.has_cuda else 'the CPU (no CUDA device)'}; "
          f"{summary['seconds']:.0f} s of a {runner.budget_s:.0f} s budget.", "",
          "| stage | status | seconds | result |", "|---|---|---|---|"]
    for r in runner.results:
        md.append(f"| {r.name} | {r.status} | {r.seconds:.1f} | {r.summary.replace('|', '/')} |")
    skipped = [r for r in runner.results if r.status == "skipped"]
    if skipped:
        md += ["", "Skipped: " + "; ".join(f"{r.name} ({r.summary.removeprefix('skipped: ')})" for r in skipped)]
    for r in runner.results:
        if r.name == "shapes" and r.details.get("skipped"):
            md += ["", "Shapes skipped: " + "; ".join(r.details["skipped"])]
        if r.name == "shapes" and r.details.get("small_batch_l2"):
            md += ["", "L2 step at 3×224×224 (GB/s of 4 tensors of traffic; a copy's GB/s of 2):", "",
                   "| batch | µs | GB/s | copy GB/s |", "|---|---|---|---|"]
            md += [f"| {row['batch']} | {row['l2_us']:.1f} | {row['l2_gbps']:.0f} | {row['copy_gbps']:.0f} |"
                   for row in r.details["small_batch_l2"]]
        if r.name == "train-step" and r.details.get("results"):
            md += ["", "RSLAD+IGDM training step (engine vs reference step):", "",
                   "| batch | engine img/s | reference img/s | ratio | engine MFU |", "|---|---|---|---|---|"]
            md += [f"| {row['batch']} | {row['engine_img_s']:.0f} | {row['reference_img_s']:.0f} | "
                   f"{row['ratio']:.2f}× | {100 * row['engine_mfu']:.1f}% |" for row in r.details["results"]]
        if r.name == "kernel-bench" and r.details.get("table"):
            md += ["", "Kernel benchmarks (median):", "", "```", *r.details["table"], "```"]
    (runner.out / "summary.md").write_text("\n".join(md) + "\n")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("out_dir", help="where summary.md, summary.json and the logs go")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for all stages (default {GPU_BUDGET_S:.0f} with a GPU, {CPU_BUDGET_S:.0f} without)")
    parser.add_argument("--full-suite", action="store_true",
                        help="run the whole test suite (slow tests included) instead of the GPU-relevant tests; "
                             "adds its time to the budget")
    parser.add_argument("--stage", choices=sorted(CHILD_STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--stage-result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.stage:
        return run_child_stage(args.stage, Path(args.stage_result), out)
    import torch

    has_cuda = torch.cuda.is_available()
    budget = args.budget or (GPU_BUDGET_S if has_cuda else CPU_BUDGET_S) + (3600 if args.full_suite else 0)
    runner = Runner(out, budget, sys.executable, has_cuda, args.full_suite)
    print(f"gpu_check: {'CUDA GPU' if has_cuda else 'no CUDA device: CPU part only'}; budget {budget:.0f} s; "
          f"results in {out}", flush=True)
    runner.stage("environment", runner.environment)
    runner.stage("build", runner.build)
    built = runner.results[-1].status == "passed"
    blocked = None if built else "the build stage failed"
    runner.stage("tests", runner.tests, skip_reason=blocked)
    runner.stage("shapes", runner.child("shapes", 120), skip_reason=blocked)
    runner.stage("gradcheck", runner.child("gradcheck", 60), skip_reason=blocked)
    runner.stage("graphs", runner.child("graphs", 120), skip_reason=blocked)
    runner.stage("train-step", runner.train_step, needs_cuda=True, skip_reason=blocked)
    runner.stage("amp", runner.amp, needs_cuda=True)
    runner.stage("kernel-bench", runner.kernel_bench, skip_reason=blocked)
    ok = write_summary(runner, [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    skipped = [r.name for r in runner.results if r.status == "skipped"]
    print(f"gpu_check: {'passed' if ok else 'FAILED'} in {sum(r.seconds for r in runner.results):.0f} s"
          + (f"; skipped: {', '.join(skipped)}" if skipped else "") + f"; summary in {out / 'summary.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
