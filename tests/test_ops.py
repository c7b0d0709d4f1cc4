"""The fused kernels (``torch.ops.robustdistill.*``) against the pure-PyTorch reference, their
registration (opcheck, gradcheck, torch.compile), the backend switch and the fallback.

Kernel tests skip when the extension is unavailable, except where ROBUSTDISTILL_REQUIRE_EXT=1 (or
CI) is set: then they fail, so a kernel that does not build cannot hide.
"""
from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from robustdistill import _build, _doctor as doctor, _ext, _ops as ops

from support import DEVICES, HAS_CUDA, REQUIRED, need_kernels

LOW_PRECISION = (torch.bfloat16, torch.float16)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    need_kernels(request.param)
    return request.param


@pytest.fixture(autouse=True)
def clean_backend(monkeypatch):
    monkeypatch.delenv(ops.BACKEND_ENV, raising=False)
    monkeypatch.setattr(ops, "_backend_override", None)
    monkeypatch.setattr(ops, "_warned", set())


def fused(x_adv, grad, x, eps, step_size, norm="linf", lo=0.0, hi=1.0):
    """The raw pgd_step op, with float / per-sample eps and step split as the front does."""
    eps_f, eps_t = ops._split_per_sample(eps, x)
    step_f, step_t = ops._split_per_sample(step_size, x)
    return torch.ops.robustdistill.pgd_step(x_adv, grad, x, eps_f, step_f, eps_t, step_t, norm, lo, hi)


def fused_(x_adv, grad, x, eps, step_size, norm="linf", lo=0.0, hi=1.0):
    eps_f, eps_t = ops._split_per_sample(eps, x)
    step_f, step_t = ops._split_per_sample(step_size, x)
    torch.ops.robustdistill.pgd_step_(x_adv, grad, x, eps_f, step_f, eps_t, step_t, norm, lo, hi)


def pgd_inputs(shape, device="cpu", dtype=torch.float32, eps=8 / 255, seed=0, norm="linf"):
    """x in [0, 1]; x_adv around it, partly outside the ε-ball; a gradient with some exact zeros."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen)
    if norm == "linf":
        x_adv = x + (torch.rand(shape, generator=gen) * 2 - 1) * 1.5 * eps
    else:
        noise = torch.randn(shape, generator=gen)
        scale = eps * 1.5 * torch.rand(shape[0], generator=gen) / noise.flatten(1).norm(dim=1).clamp_min(1e-12)
        x_adv = x + noise * scale.reshape(-1, *[1] * (len(shape) - 1))
    x_adv = x_adv.clamp(0, 1)
    grad = torch.randn(shape, generator=gen)
    grad[torch.rand(shape, generator=gen) < 0.1] = 0
    return [t.to(device=device, dtype=dtype) for t in (x_adv, grad, x)]


def per_sample(values, device):
    return torch.tensor(values, dtype=torch.float32, device=device)


SHAPES = [(1, 1), (7, 5), (4, 3, 8, 8), (3, 1, 28, 28), (2, 3, 17, 5), (16, 3, 32, 32)]


# ---------------------------------------------------------------------------------------------
# pgd_step: fused vs reference


@pytest.mark.parametrize("shape", SHAPES + [(9,)])
@pytest.mark.parametrize("per_sample_eps", [False, True])
def test_pgd_linf_fp32_is_bit_identical(device, shape, per_sample_eps):
    x_adv, grad, x = pgd_inputs(shape, device)
    eps = torch.linspace(0.0, 0.1, shape[0], device=device) if per_sample_eps else 8 / 255
    step = torch.linspace(0.001, 0.05, shape[0], device=device) if per_sample_eps else 2 / 255
    out = fused(x_adv, grad, x, eps, step)
    assert torch.equal(out, ops.pgd_step_ref(x_adv, grad, x, eps, step))


@pytest.mark.parametrize("shape", [s for s in SHAPES])
@pytest.mark.parametrize("per_sample_eps", [False, True])
def test_pgd_l2_fp32_matches_reference(device, shape, per_sample_eps):
    x_adv, grad, x = pgd_inputs(shape, device, eps=0.5, norm="l2")
    eps = torch.linspace(0.05, 1.0, shape[0], device=device) if per_sample_eps else 0.5
    step = torch.linspace(0.01, 0.3, shape[0], device=device) if per_sample_eps else 0.1
    out = fused(x_adv, grad, x, eps, step, "l2")
    torch.testing.assert_close(out, ops.pgd_step_ref(x_adv, grad, x, eps, step, "l2"), rtol=0, atol=1e-6)


def test_pgd_float64(device):
    x_adv, grad, x = pgd_inputs((4, 3, 8, 8), device, torch.float64)
    assert torch.equal(fused(x_adv, grad, x, 0.03, 0.01), ops.pgd_step_ref(x_adv, grad, x, 0.03, 0.01))
    torch.testing.assert_close(fused(x_adv, grad, x, 0.3, 0.1, "l2"), ops.pgd_step_ref(x_adv, grad, x, 0.3, 0.1, "l2"),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("shape", [(5, 7), (8, 3, 16, 16)])
def test_pgd_low_precision(device, dtype, norm, shape):
    """fp16/bf16 kernels compute in fp32 and round once: equal to the fp32 reference on the upcast
    inputs rounded to the dtype (L2: within one rounding), and within two ulps of the reference run
    in the low-precision dtype (which rounds after every op)."""
    eps_value = 8 / 255 if norm == "linf" else 0.5
    x_adv, grad, x = pgd_inputs(shape, device, dtype, eps=eps_value, norm=norm)
    ulp = torch.finfo(dtype).eps
    for eps, step in [(eps_value, eps_value / 4), (torch.linspace(0, 2 * eps_value, shape[0], device=device), 0.01)]:
        out = fused(x_adv, grad, x, eps, step, norm)
        assert out.dtype == dtype
        # the kernels round eps and the step to the input dtype first, scalars and per-sample values alike
        ref32 = ops.pgd_step_ref(x_adv.float(), grad.float(), x.float(), rounded(eps, dtype), rounded(step, dtype),
                                 norm).to(dtype)
        if norm == "linf":
            assert torch.equal(out, ref32)
        else:
            torch.testing.assert_close(out, ref32, rtol=0, atol=ulp)
        torch.testing.assert_close(out, ops.pgd_step_ref(x_adv, grad, x, eps, step, norm), rtol=0, atol=2 * ulp)


def rounded(value, dtype):
    """A scalar or per-sample value rounded to dtype, as float32."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype).float()
    return torch.tensor(value, dtype=torch.float32).to(dtype).item()


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_scalar_and_per_sample_values_round_alike(device, dtype, norm):
    """A scalar eps / step and the same values per sample give the same fp16/bf16 result."""
    eps, step = (8 / 255, 2 / 255) if norm == "linf" else (0.3, 0.1)
    x_adv, grad, x = pgd_inputs((6, 256), device, dtype, eps=eps, norm=norm)
    scalar = fused(x_adv, grad, x, eps, step, norm)
    for eps_t, step_t in [(torch.full((6,), eps, device=device), torch.full((6,), step, device=device)),
                          (torch.tensor(eps, device=device), step),
                          (eps, torch.full((6,), step, dtype=torch.float64, device=device))]:
        assert torch.equal(fused(x_adv, grad, x, eps_t, step_t, norm), scalar)


@pytest.mark.parametrize("seed", range(6))
def test_pgd_l2_projection_is_exact_under_cancellation(device, seed):
    """x_adv + α·g/‖g‖ nearly cancels x: ‖δ‖ = 1e-4 from terms of 0.4. The projected step must still
    have norm ε (fp32 rounding of outputs near 0.5 alone moves this case by up to about 1 %)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(1, 3072, generator=gen, dtype=torch.float64)
    v /= v.norm()
    x = torch.full((1, 3072), 0.5, device=device)
    x_adv = (0.5 + 0.4 * v).float().to(device)
    grad = (-v).float().to(device)
    eps = 5e-5
    out = fused(x_adv, grad, x, eps, 0.4 - 1e-4, "l2")
    norm = (out.double() - x.double()).norm().item()
    assert abs(norm - eps) <= 0.01 * eps, f"‖δ‖ = {norm:.3e} for ε = {eps:.1e}"
    torch.testing.assert_close(out, ops.pgd_step_ref(x_adv, grad, x, eps, 0.4 - 1e-4, "l2"), rtol=0, atol=1e-6)


def test_pgd_l2_norms_of_large_samples_are_precise(device):
    """The L2 norms of a 16M-element sample sum float terms in float at most 64 at a time (then in
    double), on the CPU and on CUDA: a pure projection of identical elements lands on the ε-sphere
    to 2e-6 (a float sum of 1024 such terms is off by 1.4e-5, which moves the norm by 7e-6)."""
    n = 1 << 24
    x = torch.full((1, n), 0.25, device=device)
    x_adv = torch.full((1, n), 0.35, device=device)
    u = float(torch.tensor(0.35) - torch.tensor(0.25))  # x_adv - x in float32
    eps = 0.5 * u * n ** 0.5
    out = fused(x_adv, torch.zeros_like(x), x, eps, 0.1, "l2")
    assert torch.equal(out, out[:, :1].expand_as(out)), "identical elements stay identical"
    norm = (out[0, 0].double() - 0.25).item() * n ** 0.5
    assert abs(norm / eps - 1) < 2e-6, f"‖δ‖/ε - 1 = {norm / eps - 1:.2e}"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_edge_cases(device, norm):
    x_adv, grad, x = pgd_inputs((6, 3, 5, 5), device, norm=norm, eps=0.2)
    eps = 0.2

    def check(xa, g, xx, e=eps, s=0.05, lo=0.0, hi=1.0):
        out = fused(xa, g, xx, e, s, norm, lo, hi)
        ref = ops.pgd_step_ref(xa, g, xx, e, s, norm, lo, hi)
        if norm == "linf":
            assert torch.equal(out, ref)
        else:
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
        return out

    # exactly on the boundary of the ε-ball, gradient pointing outwards and inwards
    sign = torch.where(torch.rand_like(x) < 0.5, -1.0, 1.0)
    mid = torch.full_like(x, 0.5)
    if norm == "linf":
        on_boundary = mid + eps * sign
    else:
        on_boundary = mid + eps * sign / sign.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    check(on_boundary, sign, mid)
    check(on_boundary, -sign, mid)
    # zero gradient: a pure projection; inside the ball nothing moves
    out = check(x_adv, torch.zeros_like(grad), x)
    inside = (x_adv - x).abs() <= eps if norm == "linf" else None
    if inside is not None:
        assert torch.equal(out[inside], x_adv[inside])
    # ε = 0: back to x
    assert torch.equal(check(x_adv, grad, x, e=0.0), x)
    # inputs at 0 and 1, and another box
    corners = torch.where(torch.rand_like(x) < 0.5, 0.0, 1.0)
    check(corners, grad, corners)
    check(corners.clone(), -grad, corners, lo=0.0, hi=1.0)
    check(x_adv * 2 - 1, grad, x * 2 - 1, lo=-1.0, hi=1.0)
    # NaN gradients: the reference's sign(NaN) is 0, and a NaN L2 norm gives no step
    nan_grad = grad.clone()
    nan_grad[0] = float("nan")
    check(x_adv, nan_grad, x)


def test_pgd_per_sample_shapes(device):
    x_adv, grad, x = pgd_inputs((4, 3, 8, 8), device)
    ref = ops.pgd_step_ref(x_adv, grad, x, 0.03, 0.01)
    for eps in (torch.tensor(0.03, device=device), torch.tensor([0.03], device=device),
                torch.full((4,), 0.03, device=device), torch.full((4,), 0.03, dtype=torch.float64, device=device)):
        assert torch.equal(fused(x_adv, grad, x, eps, 0.01), ref)
    with pytest.raises(RuntimeError, match="one value per sample"):
        fused(x_adv, grad, x, torch.full((3,), 0.03, device=device), 0.01)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("per_sample_eps", [False, True])
def test_pgd_channels_last(device, norm, per_sample_eps):
    x_adv, grad, x = (t.contiguous(memory_format=torch.channels_last)
                      for t in pgd_inputs((4, 3, 9, 7), device, norm=norm, eps=0.3))
    eps = torch.tensor([0.0, 0.1, 0.3, 1.0], device=device) if per_sample_eps else 0.3
    out = fused(x_adv, grad, x, eps, 0.05, norm)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ops.pgd_step_ref(x_adv, grad, x, eps, 0.05, norm), rtol=0,
                               atol=0 if norm == "linf" else 1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_non_contiguous_and_mixed_layouts(device, norm):
    """Strided views, mixed layouts and a dense layout with the batch not outermost are handled."""
    base = pgd_inputs((4, 3, 10, 12), device, norm=norm, eps=0.3)
    x_adv, grad, x = (t[:, :, ::2, 1::2] for t in base)  # strided views
    eps = torch.tensor([0.05, 0.1, 0.2, 0.3], device=device)
    cases = [
        (x_adv, grad, x),
        (x_adv.contiguous(), grad.contiguous(memory_format=torch.channels_last), x.contiguous()),
        (x_adv.contiguous(), grad.transpose(2, 3).contiguous().transpose(2, 3), x),
        # dense but the batch is not the outermost dimension in memory
        tuple(t.transpose(0, 1).contiguous().transpose(0, 1) for t in (x_adv, grad, x)),
        # an expanded (overlapping) x
        (x_adv, grad, x[:1].expand_as(x)),
    ]
    for xa, g, xx in cases:
        for e in (0.2, eps):
            out = fused(xa, g, xx, e, 0.05, norm)
            torch.testing.assert_close(out, ops.pgd_step_ref(xa, g, xx, e, 0.05, norm), rtol=0,
                                       atol=0 if norm == "linf" else 1e-6)


def test_pgd_rejects_what_it_cannot_do(device):
    x_adv, grad, x = pgd_inputs((2, 3), device)
    with pytest.raises(RuntimeError, match="share one dtype"):
        fused(x_adv, grad.double(), x, 0.1, 0.01)
    with pytest.raises(RuntimeError, match="same shape"):
        fused(x_adv, grad[:1], x, 0.1, 0.01)
    with pytest.raises(RuntimeError, match="unknown norm"):
        fused(x_adv, grad, x, 0.1, 0.01, "l3")
    with pytest.raises(RuntimeError, match="float32, float64, float16 and bfloat16"):
        fused(x_adv.int(), grad.int(), x.int(), 0.1, 0.01)


def on_cpu_kernel(op, *args):
    """Call the CPU kernel of a robustdistill op whatever the devices of its arguments."""
    return op.default.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args)


def test_kernels_reject_tensors_on_another_device():
    """The dispatcher picks a kernel from every tensor argument, an optional one included: a kernel
    given a tensor of another device says so instead of reading memory it cannot (here the CPU kernel
    with a tensor on the meta device; the CUDA kernel runs the same checks, see the cuda tests)."""
    need_kernels("cpu")
    x_adv, grad, x = pgd_inputs((3, 4))
    meta = torch.full((3,), 0.1, device="meta")
    with pytest.raises(RuntimeError, match="eps_per_sample is on meta but x_adv, grad and x are on cpu"):
        on_cpu_kernel(torch.ops.robustdistill.pgd_step, x_adv, grad, x, 0.0, 0.01, meta, None, "linf", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="step_per_sample is on meta"):
        on_cpu_kernel(torch.ops.robustdistill.pgd_step_, x_adv, grad, x, 0.1, 0.0, None, meta, "l2", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="x_adv, grad and x are on meta but another argument is on cpu"):
        on_cpu_kernel(torch.ops.robustdistill.pgd_step, *(t.to("meta") for t in (x_adv, grad, x)), 0.1, 0.01,
                      None, None, "linf", 0.0, 1.0)
    logits = fd_inputs(2, 5, requires_grad=False)
    with pytest.raises(RuntimeError, match="grad is on meta but the logits are on cpu"):
        on_cpu_kernel(torch.ops.robustdistill.fd_align_backward, torch.tensor(1.0, device="meta"), *logits, "kl")
    with pytest.raises(RuntimeError, match="the logits are on meta but another argument is on cpu"):
        on_cpu_kernel(torch.ops.robustdistill.fd_align, *(t.to("meta") for t in logits), "kl")


def test_front_rejects_per_sample_values_on_another_device():
    """Whatever the backend: a per-sample tensor is created on the inputs' device once, not copied
    on every step (a 0-dim CPU tensor is a number and is accepted)."""
    x_adv, grad, x = pgd_inputs((3, 4))
    for backend in ("ref", "auto"):
        ops.set_backend(backend)
        with pytest.raises(ValueError, match="eps is a tensor on meta but the inputs are on cpu"):
            ops.pgd_step(x_adv, grad, x, torch.full((3,), 0.1, device="meta"), 0.01)
        with pytest.raises(ValueError, match="step_size is a tensor on meta"):
            ops.pgd_step_(x_adv.clone(), grad, x, 0.1, torch.tensor(0.01, device="meta"))
        assert torch.equal(ops.pgd_step(x_adv, grad, x, torch.tensor(0.1), 0.01), ops.pgd_step_ref(x_adv, grad, x, 0.1, 0.01))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_kernels_reject_host_memory_and_never_copy_per_sample_values():
    need_kernels("cuda")
    x_adv, grad, x = pgd_inputs((3, 4), "cuda")
    eps_cpu = torch.full((3,), 0.1)
    # CPU inputs with a CUDA per-sample tensor: the dispatcher picks the CUDA kernel, which refuses them
    with pytest.raises(RuntimeError, match="x_adv, grad and x are on cpu but another argument is on cuda"):
        torch.ops.robustdistill.pgd_step(x_adv.cpu(), grad.cpu(), x.cpu(), 0.0, 0.01, eps_cpu.cuda(), None, "linf",
                                         0.0, 1.0)
    # CUDA inputs with a CPU per-sample tensor: an error, not a host synchronisation on every call
    with pytest.raises(RuntimeError, match="eps_per_sample is on cpu but x_adv, grad and x are on cuda"):
        torch.ops.robustdistill.pgd_step(x_adv, grad, x, 0.0, 0.01, eps_cpu, None, "linf", 0.0, 1.0)
    with pytest.raises(ValueError, match="eps is a tensor on cpu but the inputs are on cuda"):
        ops.pgd_step(x_adv, grad, x, eps_cpu, 0.01)
    # a 0-dim CPU tensor is a number: read on the host, also inside CUDA-graph capture
    want = fused(x_adv, grad, x, 0.1, 0.01)
    assert torch.equal(fused(x_adv, grad, x, torch.tensor(0.1), 0.01), want)
    out = torch.empty_like(x)
    fused(x_adv, grad, x, torch.tensor(0.1), 0.01)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out.copy_(fused(x_adv, grad, x, torch.tensor(0.1), 0.01))
    graph.replay()
    assert torch.equal(out, want)
    logits = fd_inputs(2, 5, "cuda", requires_grad=False)
    with pytest.raises(RuntimeError, match="grad is on cpu but the logits are on cuda"):
        torch.ops.robustdistill.fd_align_backward(torch.tensor(1.0), *logits, "kl")
    with pytest.raises(RuntimeError, match="the logits are on cpu but another argument is on cuda"):
        torch.ops.robustdistill.fd_align_backward(torch.tensor(1.0, device="cuda"), *(t.cpu() for t in logits), "kl")


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_pgd_inplace_writes_every_element_and_nothing_else(device, norm, layout):
    x_adv, grad, x = pgd_inputs((5, 3, 6, 6), device, norm=norm, eps=0.3)
    x = x * 0.8 + 0.1  # in [0.1, 0.9]: a missed element keeps x_adv != x
    poison = torch.full((7, 3, 6, 9), float("nan"), device=device)
    if layout == "channels_last":
        poison = poison.contiguous(memory_format=torch.channels_last)
    view = poison[1:-1, :, :, 1:7] if layout == "strided" else poison[1:-1, :, :, :6]
    if layout == "contiguous":
        poison = torch.full((7, 3, 6, 6), float("nan"), device=device)
        view = poison[1:-1]
    for eps, expect in ((0.0, x), (0.3, None)):
        view.copy_(x_adv)
        before = view.clone()
        fused_(view, grad, x, eps, 0.05, norm)
        ref = ops.pgd_step_ref(before, grad, x, eps, 0.05, norm)
        torch.testing.assert_close(view, ref, rtol=0, atol=0 if norm == "linf" else 1e-6)
        if expect is not None:
            assert torch.equal(view, expect)
        outside = torch.ones_like(poison, dtype=torch.bool)
        columns = slice(1, 7) if layout == "strided" else slice(0, 6)
        outside[1:-1, :, :, columns] = False
        assert torch.isnan(poison[outside]).all(), "the in-place step wrote outside x_adv"


def test_pgd_functional_writes_every_element(device):
    x_adv, grad, x = pgd_inputs((33, 3, 7, 7), device)
    x = x * 0.8 + 0.1
    if device == "cuda":  # the caching allocator hands the freed poisoned block to the op
        torch.full_like(x, float("nan"))
    for eps in (0.0, torch.zeros(33, device=device)):
        assert torch.equal(fused(x_adv, grad, x, eps, 0.01), x)
        assert torch.equal(fused(x_adv, grad, x, eps, 0.1, "l2"), x)


def test_pgd_inplace_aliasing(device):
    """x_adv may be x itself (first step without random start)."""
    _, grad, x = pgd_inputs((4, 3, 5, 5), device)
    xa = x.clone()
    ref = ops.pgd_step_ref(xa, grad, xa, 0.03, 0.01)
    fused_(xa, grad, xa, 0.03, 0.01)
    assert torch.equal(xa, ref)


# ---------------------------------------------------------------------------------------------
# fd_align


def fd_inputs(rows, cols, device="cpu", s_dtype=torch.float32, t_dtype=torch.float32, seed=0, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(rows, cols, generator=gen) * 3
    t = torch.randn(rows, cols, generator=gen) * 3
    s_plus = (s + torch.randn(rows, cols, generator=gen)).to(device, s_dtype)
    s_minus = s.to(device, s_dtype)
    t_plus = (t + torch.randn(rows, cols, generator=gen)).to(device, t_dtype)
    t_minus = t.to(device, t_dtype)
    if requires_grad:
        s_plus.requires_grad_(True)
        s_minus.requires_grad_(True)
    return s_plus, s_minus, t_plus, t_minus


FD_CASES = [(1, 1), (4, 10), (128, 10), (33, 100), (8, 1000), (3, 37)]


@pytest.mark.parametrize("distance", ops.FD_DISTANCES)
@pytest.mark.parametrize("rows,cols", FD_CASES)
def test_fd_align_matches_reference(device, distance, rows, cols):
    inputs = fd_inputs(rows, cols, device)
    out = torch.ops.robustdistill.fd_align(*inputs, distance)
    ref = ops.fd_align_ref(*inputs, distance)
    assert out.dtype == torch.float32 and out.shape == ()
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=1e-6)
    grads = torch.autograd.grad(out * 1.7, inputs[:2])
    ref_grads = torch.autograd.grad(ref * 1.7, inputs[:2])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("distance", ops.FD_DISTANCES)
@pytest.mark.parametrize("s_dtype,t_dtype", [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
                                             (torch.float16, torch.float16), (torch.float32, torch.bfloat16),
                                             (torch.float16, torch.float64)])
def test_fd_align_mixed_and_low_precision(device, distance, s_dtype, t_dtype):
    """Computed in fp32 from the logits as given; gradients come back in the student's dtype."""
    inputs = fd_inputs(16, 10, device, s_dtype, t_dtype)
    out = torch.ops.robustdistill.fd_align(*inputs, distance)
    ref = ops.fd_align_ref(*inputs, distance)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=1e-6)
    grads = torch.autograd.grad(out, inputs[:2])
    ref_grads = torch.autograd.grad(ref, inputs[:2])
    for got, want in zip(grads, ref_grads):
        assert got.dtype == s_dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=torch.finfo(s_dtype).eps, atol=1e-6)


@pytest.mark.parametrize("distance", ops.FD_DISTANCES)
def test_fd_align_gradcheck_double(distance):
    need_kernels("cpu")
    s_plus, s_minus, t_plus, t_minus = fd_inputs(5, 7, "cpu", torch.float64, torch.float64)
    assert torch.ops.robustdistill.fd_align(s_plus, s_minus, t_plus, t_minus, distance).dtype == torch.float64
    torch.autograd.gradcheck(lambda a, b: torch.ops.robustdistill.fd_align(a, b, t_plus, t_minus, distance),
                             (s_plus, s_minus))


def test_fd_align_teacher_gets_no_gradient(device):
    s_plus, s_minus, t_plus, t_minus = fd_inputs(4, 10, device)
    t_plus.requires_grad_(True)
    torch.ops.robustdistill.fd_align(s_plus, s_minus, t_plus, t_minus, "kl").backward()
    assert t_plus.grad is None and s_plus.grad is not None and s_minus.grad is not None
    torch.testing.assert_close(s_minus.grad, -s_plus.grad)


def test_fd_align_non_contiguous(device):
    big = fd_inputs(8, 20, device, requires_grad=False)
    inputs = [t[:, ::2] for t in big[:2]] + [t.t().contiguous().t()[:, :10] for t in big[2:]]
    for distance in ops.FD_DISTANCES:
        torch.testing.assert_close(torch.ops.robustdistill.fd_align(*inputs, distance),
                                   ops.fd_align_ref(*inputs, distance), rtol=2e-6, atol=1e-6)


def test_fd_align_rejects_bad_input(device):
    inputs = fd_inputs(4, 10, device, requires_grad=False)
    with pytest.raises(RuntimeError, match="unknown distance"):
        torch.ops.robustdistill.fd_align(*inputs, "cos")
    with pytest.raises(RuntimeError, match="one shape"):
        torch.ops.robustdistill.fd_align(inputs[0], inputs[1][:2], *inputs[2:], "kl")
    with pytest.raises(RuntimeError, match=r"\[B, C\]"):
        torch.ops.robustdistill.fd_align(*(t[0] for t in inputs), "kl")


# ---------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile


def pgd_samples(device):
    x_adv, grad, x = pgd_inputs((4, 3, 6, 6), device)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x_adv, grad, x)]
    eps_t = torch.tensor([0.0, 0.01, 0.03, 0.1], device=device)
    return [
        (x_adv, grad, x, 0.03, 0.01, None, None, "linf", 0.0, 1.0),
        (*cl, 0.03, 0.01, eps_t, None, "linf", 0.0, 1.0),
        (x_adv, grad, x, 0.0, 0.0, eps_t, eps_t / 4, "l2", -1.0, 2.0),
        (x_adv.bfloat16(), grad.bfloat16(), x.bfloat16(), 0.03, 0.01, None, None, "linf", 0.0, 1.0),
        (x_adv[:, :, ::2], grad[:, :, ::2], x[:, :, ::2], 0.03, 0.01, None, None, "l2", 0.0, 1.0),
    ]


def test_opcheck_pgd_step(device):
    for args in pgd_samples(device):
        torch.library.opcheck(torch.ops.robustdistill.pgd_step.default, args)
        torch.library.opcheck(torch.ops.robustdistill.pgd_step_.default, (args[0].clone(), *args[1:]))


def test_opcheck_fd_align(device):
    for distance in ops.FD_DISTANCES:
        for s_dtype, t_dtype in [(torch.float32, torch.float32), (torch.bfloat16, torch.float32)]:
            inputs = fd_inputs(6, 10, device, s_dtype, t_dtype)
            torch.library.opcheck(torch.ops.robustdistill.fd_align.default, (*inputs, distance))
            grad = torch.tensor(1.3, device=device)
            plain = [t.detach() for t in inputs]
            torch.library.opcheck(torch.ops.robustdistill.fd_align_backward.default, (grad, *plain, distance))


def test_front_under_torch_compile(device):
    """The Python front traces into the custom ops (fake kernels, no graph break)."""
    ops.set_backend("ext")
    x_adv, grad, x = pgd_inputs((4, 3, 8, 8), device)
    s_plus, s_minus, t_plus, t_minus = fd_inputs(4, 10, device)
    eps = torch.tensor([0.01, 0.02, 0.03, 0.04], device=device)

    def step(xa, g, xx, e):
        return ops.pgd_step(xa, g, xx, e, 0.01), ops.pgd_step(xa, g, xx, 0.5, 0.1, "l2")

    def loss(a, b, c, d):
        return ops.fd_align(a, b, c, d, "kl") * 2

    torch._dynamo.reset()
    compiled_step = torch.compile(step, backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled_step(x_adv, grad, x, eps), step(x_adv, grad, x, eps)):
        assert torch.equal(got, want)
    compiled_loss = torch.compile(loss, backend="aot_eager", fullgraph=True)
    got = compiled_loss(s_plus, s_minus, t_plus, t_minus)
    want = loss(s_plus, s_minus, t_plus, t_minus)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got, (s_plus, s_minus)), torch.autograd.grad(want, (s_plus, s_minus))):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# The Python front: backend switch, fallback, report


@pytest.fixture
def counting_refs(monkeypatch):
    if _ext.available("cpu")[0]:
        doctor.kernel_status("cpu")  # the self-check (which calls the references) has run
    calls = {"pgd_step": 0, "fd_align": 0}
    real_pgd, real_fd = ops.pgd_step_ref, ops.fd_align_ref

    def pgd(*args, **kwargs):
        calls["pgd_step"] += 1
        return real_pgd(*args, **kwargs)

    def fd(*args, **kwargs):
        calls["fd_align"] += 1
        return real_fd(*args, **kwargs)

    monkeypatch.setattr(ops, "pgd_step_ref", pgd)
    monkeypatch.setattr(ops, "fd_align_ref", fd)
    return calls


def _call_both():
    x_adv, grad, x = pgd_inputs((2, 3, 4, 4))
    ops.pgd_step(x_adv, grad, x, 0.03, 0.01)
    ops.fd_align(*fd_inputs(3, 5))


def test_backend_switch_and_env(monkeypatch, counting_refs):
    need_kernels("cpu")
    assert ops.get_backend() == "auto"
    _call_both()
    assert counting_refs == {"pgd_step": 0, "fd_align": 0}, "auto should use the kernels on CPU"
    monkeypatch.setenv(ops.BACKEND_ENV, "ref")
    assert ops.get_backend() == "ref"
    _call_both()
    assert counting_refs == {"pgd_step": 1, "fd_align": 1}
    ops.set_backend("ext")  # wins over the environment
    _call_both()
    assert counting_refs == {"pgd_step": 1, "fd_align": 1}
    ops.set_backend(None)
    assert ops.get_backend() == "ref"
    monkeypatch.setenv(ops.BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match="unknown ops backend 'fast'"):
        ops.get_backend()
    with pytest.raises(ValueError, match="unknown ops backend"):
        ops.set_backend("gpu")


def test_front_matches_reference_whatever_the_backend():
    x_adv, grad, x = pgd_inputs((3, 2, 5, 5))
    eps = torch.tensor([0.01, 0.05, 0.1])
    inputs = fd_inputs(4, 6, requires_grad=False)
    results = {}
    for backend in ("ref", "auto"):
        ops.set_backend(backend)
        xa = x_adv.clone()
        ops.pgd_step_(xa, grad, x, eps, 0.02)
        results[backend] = (ops.pgd_step(x_adv, grad, x, eps, 0.02), ops.pgd_step(x_adv, grad, x, 0.3, 0.1, "l2"),
                            xa, ops.fd_align(*inputs, "kl"))
    for a, b in zip(results["ref"], results["auto"]):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-6)
    with pytest.raises(ValueError, match="unknown norm"):
        ops.pgd_step(x_adv, grad, x, 0.1, 0.1, "l3")
    with pytest.raises(ValueError, match="unknown distance"):
        ops.fd_align(*inputs, "cos")


def test_auto_takes_the_reference_for_calls_the_kernels_do_not_cover(counting_refs):
    need_kernels("cpu")
    x_adv, grad, x = pgd_inputs((2, 3, 4, 4))
    ops.pgd_step(x_adv, grad.double(), x, 0.03, 0.01)  # mixed dtypes
    ops.pgd_step(x_adv, grad, x[:1], 0.03, 0.01)  # broadcasting
    with torch.enable_grad():
        ops.pgd_step(x_adv.requires_grad_(), grad, x, 0.03, 0.01)  # differentiable use
    assert counting_refs["pgd_step"] == 3
    ops.set_backend("ext")
    with pytest.raises(ops.ExtensionUnavailableError, match="do not cover"):
        ops.pgd_step(x_adv.detach(), grad.double(), x, 0.03, 0.01)


def test_fallback_when_extension_absent(monkeypatch, counting_refs):
    monkeypatch.setattr(_ext, "_status", _ext.ExtStatus(loaded=False, error="simulated: no compiler"))
    x_adv, grad, x = pgd_inputs((2, 3, 4, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            out = ops.pgd_step(x_adv, grad, x, 0.03, 0.01)
            ops.fd_align(*fd_inputs(3, 5))
    relevant = [w for w in caught if "fused kernels not used" in str(w.message)]
    assert len(relevant) == 1 and "simulated: no compiler" in str(relevant[0].message)
    assert counting_refs == {"pgd_step": 3, "fd_align": 3}
    assert torch.equal(out, ops.pgd_step_ref(x_adv, grad, x, 0.03, 0.01))
    report = doctor.backend_report()
    assert report["ops"]["pgd_step"]["cpu"]["backend"] == "ref"
    assert "simulated" in report["ops"]["fd_align"]["cpu"]["reason"]
    ops.set_backend("ext")
    with pytest.raises(ops.ExtensionUnavailableError, match="simulated: no compiler"):
        ops.pgd_step(x_adv, grad, x, 0.03, 0.01)
    assert doctor.backend_report()["ops"]["pgd_step"]["cpu"]["backend"] == "error"


def test_self_check_passes_on_the_cpu():
    need_kernels("cpu")
    status = doctor.kernel_status("cpu")
    assert status["self_check"] == "passed" and status["backend"] == "ext", status
    assert ops.select_backend("ext", torch.device("cpu"))["pgd_step"] == "ext"
    assert "self-check on cpu: passed" in doctor.doctor_lines()


@pytest.fixture
def fresh_self_checks(monkeypatch):
    need_kernels("cpu")
    monkeypatch.setattr(ops, "_self_checks", {})


@pytest.mark.parametrize("failure", ["wrong result", "exception"])
def test_failing_self_check_makes_auto_use_the_reference(monkeypatch, fresh_self_checks, failure):
    """A kernel that computes something else, or raises (e.g. "no kernel image is available" on a GPU
    it was not compiled for), fails the device's self-check: one warning naming the reason, then the
    reference runs; 'ext' refuses; the report and doctor say why."""
    def broken(x_adv, grad, x, *args):
        if failure == "exception":
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
        return x_adv.clone()

    monkeypatch.setattr(torch.ops.robustdistill, "pgd_step", broken)
    reason = "no kernel image is available" if failure == "exception" else r"pgd_step \(L∞\) differs from the reference"
    x_adv, grad, x = pgd_inputs((2, 3, 4, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [ops.pgd_step(x_adv, grad, x, 0.03, 0.01) for _ in range(3)]
        ops.fd_align(*fd_inputs(3, 5))
    relevant = [str(w.message) for w in caught if "fused kernels not used" in str(w.message)]
    assert len(relevant) == 1 and "self-check of the fused kernels on cpu failed" in relevant[0], relevant
    assert re.search(reason, relevant[0])
    for out in outs:
        assert torch.equal(out, ops.pgd_step_ref(x_adv, grad, x, 0.03, 0.01))
    status = doctor.kernel_status("cpu")
    assert status["backend"] == "ref" and status["self_check"].startswith("failed: ")
    assert ops.select_backend("auto", torch.device("cpu")) == {"requested": "auto", "pgd_step": "ref",
                                                               "fd_align": "ref"}
    assert any(line.startswith("self-check on cpu: failed") for line in doctor.doctor_lines())
    with pytest.raises(ops.ExtensionUnavailableError, match="self-check"):
        ops.select_backend("ext", torch.device("cpu"))
    with pytest.raises(ops.ExtensionUnavailableError, match="self-check"):
        ops.pgd_step(x_adv, grad, x, 0.03, 0.01)


def test_self_check_runs_once_per_device(monkeypatch, fresh_self_checks):
    runs = []
    real = ops._run_self_check
    monkeypatch.setattr(ops, "_run_self_check", lambda device: runs.append(str(device)) or real(device))
    x_adv, grad, x = pgd_inputs((2, 3))
    for _ in range(3):
        ops.pgd_step(x_adv, grad, x, 0.03, 0.01)
        ops.fd_align(*fd_inputs(3, 5))
    doctor.kernel_status("cpu")
    assert runs == ["cpu"]


def test_self_check_under_torch_compile(fresh_self_checks):
    """The first use may be while torch.compile traces the front: the self-check runs eagerly then."""
    x_adv, grad, x = pgd_inputs((4, 3, 8, 8))
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, g, b: ops.pgd_step(a, g, b, 0.03, 0.01), backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x_adv, grad, x), ops.pgd_step_ref(x_adv, grad, x, 0.03, 0.01))
    assert ops._self_checks == {"cpu": None}


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_self_check_and_capture(monkeypatch):
    need_kernels("cuda")
    status = doctor.kernel_status("cuda")
    assert status["self_check"] == "passed", status
    assert status["runs"] in status["cuda_archs"], status
    # a first use inside CUDA-graph capture cannot self-check: 'auto' takes the reference, with a warning
    monkeypatch.setattr(ops, "_self_checks", {})
    x_adv, grad, x = pgd_inputs((4, 3, 8, 8), "cuda")
    graph, out = torch.cuda.CUDAGraph(), torch.empty_like(x)
    with pytest.warns(RuntimeWarning, match="inside CUDA-graph capture"):
        with torch.cuda.graph(graph):
            out.copy_(ops.pgd_step(x_adv, grad, x, 0.03, 0.01))
    graph.replay()
    assert torch.equal(out, ops.pgd_step_ref(x_adv, grad, x, 0.03, 0.01))
    assert "cuda:0" not in ops._self_checks
    assert doctor.kernel_status("cuda")["self_check"] == "passed"


def test_cuda_tensors_without_cuda_kernels_take_the_reference(monkeypatch):
    monkeypatch.setattr(_ext, "_status", _ext.ExtStatus(loaded=True, origin="aot", path="x", devices=("cpu",)))
    ok, reason = _ext.available("cuda")
    assert not ok and "no CUDA kernels" in reason
    assert doctor.backend_report()["ops"]["pgd_step"]["cuda"]["backend"] == "ref"


def test_backend_report_and_doctor():
    report = doctor.backend_report()
    json.dumps(report)
    assert report["requested"] == "auto" and set(report["ops"]) == {"pgd_step", "fd_align"}
    for per_device in report["ops"].values():
        assert set(per_device) == {"cpu", "cuda"}
        for choice in per_device.values():
            assert choice["backend"] in ("ext", "ref") and choice["reason"]
    ops.set_backend("ref")
    assert doctor.backend_report()["ops"]["fd_align"]["cpu"] == {"backend": "ref", "reason": "'ref' requested (set_backend())"}
    ops.set_backend(None)
    lines = doctor.doctor_lines()
    assert any(line.startswith("torch ") for line in lines)
    assert any("extension" in line for line in lines) and any("ninja" in line for line in lines)


def test_extension_present_when_required():
    """Where required (CI), the kernels are built, with CUDA kernels wherever nvcc was there to build
    them (registering them needs no GPU), so a CUDA source that stops compiling cannot go unnoticed."""
    st = _ext.status()
    if not REQUIRED:
        if not st.loaded:
            pytest.skip(f"extension unavailable: {st.error}")
        return
    assert st.loaded and "cpu" in st.devices, f"extension required but: {st.error}; tried {st.notes}"
    nvcc = _build.nvcc_path(_build.find_cuda_home())
    if HAS_CUDA or (nvcc and torch.version.cuda and not _build.env_flag(_build.NO_CUDA_ENV)):
        assert "cuda" in st.devices, f"the extension ({st.origin}: {st.path}) has no CUDA kernels (nvcc: {nvcc})"


def test_extension_required_switch(monkeypatch):
    monkeypatch.delenv(_build.REQUIRE_ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert not _build.extension_required()
    monkeypatch.setenv("CI", "true")
    assert _build.extension_required()
    monkeypatch.setenv(_build.REQUIRE_ENV, "0")
    assert not _build.extension_required()
    monkeypatch.delenv("CI")
    monkeypatch.setenv(_build.REQUIRE_ENV, "1")
    assert _build.extension_required()


def test_jit_cache_name_is_keyed_by_the_sources_and_architectures(monkeypatch, tmp_path):
    monkeypatch.delenv(_build.ARCH_LIST_ENV, raising=False)
    name = _ext.jit_name(False)
    assert name == _ext.jit_name(False) and name != _ext.jit_name(True)
    monkeypatch.setenv(_build.ARCH_LIST_ENV, "8.0")
    sm80 = _ext.jit_name(True)
    monkeypatch.setenv(_build.ARCH_LIST_ENV, "8.0;9.0+PTX")
    assert _ext.jit_name(True) != sm80 and _ext.jit_name(False) == name
    monkeypatch.setattr(_build, "CSRC", tmp_path)
    assert _ext.jit_name(False) != name


NVCC_13_0 = [(7, 5), (8, 0), (8, 6), (8, 7), (8, 8), (8, 9), (9, 0), (10, 0), (10, 3), (11, 0), (12, 0), (12, 1)]
NVCC_11_8 = [(3, 5), (3, 7), (5, 0), (5, 2), (5, 3), (6, 0), (6, 1), (6, 2), (7, 0), (7, 2), (7, 5), (8, 0), (8, 6),
             (8, 7), (8, 9), (9, 0)]


@pytest.fixture
def no_visible_gpu(monkeypatch):
    monkeypatch.delenv(_build.ARCH_LIST_ENV, raising=False)
    monkeypatch.setattr(_build, "_visible_capabilities", lambda: [])
    _build._cuda_targets.cache_clear()
    yield
    _build._cuda_targets.cache_clear()


def test_cuda_targets_without_a_visible_gpu_cover_current_gpus_and_newer_ones(monkeypatch, no_visible_gpu):
    monkeypatch.setattr(_build, "nvcc_archs", lambda nvcc: NVCC_13_0)
    targets = _build.cuda_targets()
    assert targets.codes == ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_110", "sm_120", "compute_121")
    assert "-gencode=arch=compute_121,code=compute_121" in targets.flags and "default list" in targets.source
    runs = {cap: _build.runs_on(targets.codes, cap) for cap in
            [(7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (10, 3), (11, 0), (12, 0), (12, 1), (13, 0)]}
    assert runs == {(7, 5): "sm_75", (8, 0): "sm_80", (8, 6): "sm_86", (8, 7): "sm_86", (8, 9): "sm_86",
                    (9, 0): "sm_90", (10, 0): "sm_100", (10, 3): "sm_100", (11, 0): "sm_110", (12, 0): "sm_120",
                    (12, 1): "sm_120", (13, 0): "compute_121"}
    # an older nvcc: the architectures it knows, PTX of its newest
    monkeypatch.setattr(_build, "nvcc_archs", lambda nvcc: NVCC_11_8)
    _build._cuda_targets.cache_clear()
    assert _build.cuda_targets().codes == ("sm_75", "sm_80", "sm_86", "sm_90", "compute_90")
    assert _build.runs_on(_build.cuda_targets().codes, (12, 0)) == "compute_90"
    assert _build.runs_on(_build.cuda_targets().codes, (7, 0)) is None


def test_cuda_targets_follow_the_arch_list_and_torchs_gpu_detection(monkeypatch, no_visible_gpu):
    """The old default (8.0;9.0, no PTX) ran on neither a T4 nor a Blackwell GPU."""
    assert _build.runs_on(("sm_80", "sm_90"), (7, 5)) is None and _build.runs_on(("sm_80", "sm_90"), (12, 0)) is None
    monkeypatch.setenv(_build.ARCH_LIST_ENV, "7.5;Hopper")
    targets = _build.cuda_targets()
    assert targets.codes == ("sm_75", "sm_90", "compute_90") and _build.ARCH_LIST_ENV in targets.source
    # a visible T4: PyTorch's own detection, machine code and PTX for it
    monkeypatch.delenv(_build.ARCH_LIST_ENV)
    monkeypatch.setattr(_build, "_visible_capabilities", lambda: [(7, 5)])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_90", "sm_120"])
    targets = _build.cuda_targets()
    assert targets.codes == ("sm_75", "compute_75") and "visible GPUs (sm_75)" in targets.source
    assert "-DROBUSTDISTILL_CUDA_ARCHS=sm_75,compute_75" in _build.cxx_flags(True)
    assert set(targets.flags) <= set(_build.nvcc_flags())


def test_built_library_records_its_gpu_code():
    st = _ext.status()
    if "cuda" not in st.devices:
        pytest.skip("no CUDA kernels built")
    assert st.cuda_archs and all(re.fullmatch(r"(sm|compute)_\d+", code) for code in st.cuda_archs), st.cuda_archs
    assert any(line.startswith("CUDA kernels compiled for: ") for line in doctor.doctor_lines())


def test_ahead_of_time_build_is_not_stale():
    """An in-place build older than csrc/ would test old kernels: rebuild (pip install -e .)."""
    st = _ext.status()
    if st.origin != "aot":
        pytest.skip(f"no ahead-of-time build in use ({st.origin})")
    stale = _ext._stale_build(st.path)
    if stale and not REQUIRED:
        pytest.skip(stale)
    assert stale is None, stale
