"""The fused kernels on each device at the sizes real runs meet: misaligned storage and odd sizes, more than
65,535 samples, more than a million elements per sample, a tensor of more than 2³¹ elements (on a GPU with
the memory), fp64 gradcheck, a PGD loop captured in a CUDA graph and compiled with
``torch.compile(mode="reduce-overhead")`` (on the CPU: traced with ``backend="aot_eager"``), and bf16 training
against fp32 on Fashion-MNIST.

Tests marked ``cuda`` skip without a GPU; ``benchmarks/gpu_check.sh`` runs them on one.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustdistill import _doctor as doctor, _ops as ops

from support import DEVICES, HAS_CUDA, needs_fashion_mnist, need_kernels

NEEDS_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    need_kernels(request.param)
    assert doctor.kernel_status(request.param)["backend"] == "ext"
    return torch.device(request.param)


def fused(x_adv, grad, x, eps, step, norm, inplace=False):
    """The raw op, with number or per-sample ε and step split as the front splits them."""
    eps_f, eps_t = (0.0, eps) if isinstance(eps, torch.Tensor) else (float(eps), None)
    step_f, step_t = (0.0, step) if isinstance(step, torch.Tensor) else (float(step), None)
    if inplace:
        torch.ops.robustdistill.pgd_step_(x_adv, grad, x, eps_f, step_f, eps_t, step_t, norm, 0.0, 1.0)
        return x_adv
    return torch.ops.robustdistill.pgd_step(x_adv, grad, x, eps_f, step_f, eps_t, step_t, norm, 0.0, 1.0)


def inputs(shape, device, norm, seed=0):
    """x in [0, 1]; x_adv around it (partly outside the ball); a gradient with exact zeros."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(shape, generator=gen, device=device)
    noise = torch.randn(shape, generator=gen, device=device)
    if norm == "linf":
        x_adv = x + noise.clamp(-1.5, 1.5) * (8 / 255)
    else:
        x_adv = x + noise * (0.75 / noise.flatten(1).norm(dim=1).clamp_min(1e-12)).reshape(-1, *[1] * (len(shape) - 1))
    grad = torch.randn(shape, generator=gen, device=device)
    grad[torch.rand(shape, generator=gen, device=device) < 0.1] = 0
    return x_adv.clamp(0, 1), grad, x


def rounded(value, dtype):
    """A number or per-sample tensor rounded to ``dtype`` as the kernels round it, back in fp32."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype).float()
    return torch.tensor(value, dtype=torch.float32).to(dtype).item()


def check_against_reference(shape, norm, device, dtype=torch.float32, per_sample=False, offset=0, inplace=False):
    """The fused step on storage ``offset`` elements into its buffer (not 16-byte aligned for odd offsets) against
    the reference: L∞ bit-identical; L2 to 1e-6 (fp32) or one ulp of ``dtype`` (computed in fp32, rounded once)."""
    numel = math.prod(shape)
    views = [torch.empty(numel + offset, dtype=dtype, device=device)[offset:].view(shape) for _ in range(3)]
    for view, values in zip(views, inputs(shape, device, norm)):
        view.copy_(values)
    x_adv, grad, x = views
    eps, step = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.1)
    if per_sample:
        eps = torch.linspace(0.0, 2 * eps, shape[0], device=device)
        step = torch.linspace(step / 4, step, shape[0], device=device)
    before = x_adv.clone()
    out = fused(x_adv, grad, x, eps, step, norm, inplace)
    if dtype == torch.float32:
        want = ops.pgd_step_ref(before, grad, x, eps, step, norm)
        atol = 1e-6
    else:
        want = ops.pgd_step_ref(before.float(), grad.float(), x.float(), rounded(eps, dtype), rounded(step, dtype),
                                norm).to(dtype)
        atol = torch.finfo(dtype).eps
    if norm == "linf":
        assert torch.equal(out, want)
    else:
        assert (out.float() - want.float()).abs().max().item() <= atol


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("per_sample", [False, True], ids=["scalar", "per-sample"])
@pytest.mark.parametrize("shape, offset, inplace", [((3, 5, 7, 11), 1, False), ((2, 3, 33, 31), 3, True)],
                         ids=["odd-misaligned", "odd-misaligned-inplace"])
def test_pgd_step_on_odd_misaligned_storage(device, norm, dtype, per_sample, shape, offset, inplace):
    check_against_reference(shape, norm, device, dtype, per_sample, offset, inplace)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("shape, per_sample", [((70001, 3, 4, 4), True), ((70001, 3, 4, 4), False),
                                               ((2, 3, 700, 700), True), ((1, 3, 1024, 1024), False)],
                         ids=["70001-samples-per-sample", "70001-samples", "1.47M-per-sample", "3.1M-one-sample"])
def test_pgd_step_on_many_samples_and_large_samples(device, norm, shape, per_sample):
    check_against_reference(shape, norm, device, per_sample=per_sample)


@pytest.mark.parametrize("distance", ops.FD_DISTANCES)
def test_fd_align_gradcheck_in_double_on_the_device(device, distance):
    gen = torch.Generator().manual_seed(0)
    logits = [(torch.randn(5, 7, generator=gen, dtype=torch.float64) * 3).to(device) for _ in range(4)]
    s_plus, s_minus = (t.requires_grad_(True) for t in logits[:2])
    t_plus, t_minus = logits[2:]
    assert torch.ops.robustdistill.fd_align(s_plus, s_minus, t_plus, t_minus, distance).dtype == torch.float64
    torch.autograd.gradcheck(lambda a, b: torch.ops.robustdistill.fd_align(a, b, t_plus, t_minus, distance),
                             (s_plus, s_minus))


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NEEDS_CUDA)])
def test_pgd_step_on_more_than_2_to_the_31_elements(device):
    # 5 × 2²⁹ fp32 elements: the flat L∞ kernel, the per-sample one and the three L2 passes, checked chunk by chunk
    # against the reference's arithmetic (L∞ bit-identical; L2 to 1e-6 with the norms summed in double).
    need_kernels(device)
    batch, per, chunk = 5, 1 << 29, 1 << 26
    need = 4 * batch * per * 4 + (4 << 30)
    free, _ = torch.cuda.mem_get_info(device)
    if free < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of GPU memory, {free / 2**30:.0f} GiB free")
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand((batch, per), generator=gen, device=device)
    grad = torch.randn((batch, per), generator=gen, device=device)
    x_adv = torch.empty_like(x)
    pieces = [(b, slice(i, i + chunk)) for b in range(batch) for i in range(0, per, chunk)]
    for piece in pieces:
        x_adv[piece] = (x[piece] + 0.05 * torch.randn(chunk, generator=gen, device=device)).clamp(0, 1)

    def worst(out, want_of):
        return max((out[piece] - want_of(piece)).abs().max().item() for piece in pieces)

    def linf(piece, eps, step):
        return torch.clamp(x[piece] + torch.clamp(x_adv[piece] + step * grad[piece].sign() - x[piece], -eps, eps), 0, 1)

    out = fused(x_adv, grad, x, 8 / 255, 2 / 255, "linf")
    assert worst(out, lambda piece: linf(piece, 8 / 255, 2 / 255)) == 0
    del out
    eps_t = torch.linspace(0.01, 0.05, batch, device=device)
    eps_f = eps_t.tolist()
    out = fused(x_adv, grad, x, eps_t, 2 / 255, "linf")
    assert worst(out, lambda piece: linf(piece, eps_f[piece[0]], 2 / 255)) == 0
    del out
    eps, step = 1000.0, 1000.0
    out = fused(x_adv, grad, x, eps, step, "l2")
    factors = {}
    for b in range(batch):
        rows = [piece for piece in pieces if piece[0] == b]
        g_div = max(torch.tensor(sum(grad[p].double().pow(2).sum().item() for p in rows) ** 0.5,
                                 dtype=torch.float32).item(), 1e-12)
        d_norm = sum((x_adv[p] + step * (grad[p] / g_div) - x[p]).double().pow(2).sum().item() for p in rows) ** 0.5
        factors[b] = (g_div, min(eps / max(d_norm, 1e-12), 1.0))

    def l2(piece):
        g_div, factor = factors[piece[0]]
        return (x[piece] + (x_adv[piece] + step * (grad[piece] / g_div) - x[piece]) * factor).clamp(0, 1)

    assert worst(out, l2) <= 1e-6


def analytic_attack(x_adv, x, w, eps):
    """PGD through ``ops.pgd_step`` with the gradient of Σ cos(w·x_adv): ten L∞ steps and one L2 step."""
    for _ in range(10):
        x_adv = ops.pgd_step(x_adv, -w * torch.sin(w * x_adv), x, eps, 2 / 255)
    return ops.pgd_step(x_adv, -w * torch.sin(w * x_adv), x, 0.5, 0.1, "l2")


def loop_inputs(device):
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=gen, device=device)
    w = torch.randn(3, 32, 32, generator=gen, device=device)
    eps = torch.linspace(2 / 255, 16 / 255, 64, device=device)  # per-sample, on the device: no host copy
    x0 = (x + 0.01 * torch.randn(x.shape, generator=gen, device=device)).clamp(0, 1)
    return x0, x, w, eps


def captured(fn, *args):
    """``fn(*args)`` captured in a CUDA graph after a warm-up on a side stream, replayed once."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*args)
    graph.replay()
    torch.cuda.synchronize()
    return out


@pytest.fixture
def ext_backend():
    ops.set_backend("ext")
    yield
    ops.set_backend(None)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NEEDS_CUDA)])
def test_pgd_loop_in_a_cuda_graph_equals_eager(device, ext_backend):
    need_kernels(device)
    x0, x, w, eps = loop_inputs(device)
    eager = analytic_attack(x0, x, w, eps)
    graphed = captured(analytic_attack, x0.clone(), x, w, eps)
    assert (graphed - eager).abs().max().item() <= 1e-6


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NEEDS_CUDA)])
def test_model_attack_in_a_cuda_graph_equals_eager(device, ext_backend):
    # forward, input gradient and fused step, ten times, captured whole. The same kernels run in both; a zero
    # gradient rounded differently would flip one element's step, hence the allowance.
    need_kernels(device)
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(256, 10)).to(device).eval()
    _, x, _, eps = loop_inputs(device)
    y = torch.arange(x.shape[0], device=device) % 10

    def attack(x_adv):
        for _ in range(10):
            x_adv = x_adv.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
            x_adv = ops.pgd_step(x_adv.detach(), grad, x, eps, 2 / 255)
        return x_adv

    eager = attack(x.clone())
    graphed = captured(attack, x.clone())
    assert (graphed != eager).float().mean().item() <= 1e-5


def test_pgd_loop_under_torch_compile_equals_eager(device, ext_backend):
    # CUDA: mode="reduce-overhead" (CUDA graphs recorded on a later call); CPU: traced whole with aot_eager.
    x0, x, w, eps = loop_inputs(device)
    eager = analytic_attack(x0, x, w, eps)
    mode = {"mode": "reduce-overhead"} if device.type == "cuda" else {"backend": "aot_eager"}
    torch._dynamo.reset()
    compiled = torch.compile(analytic_attack, fullgraph=True, **mode)
    for _ in range(3):
        got = compiled(x0, x, w, eps)
    assert (got - eager).abs().max().item() <= 1e-6


@needs_fashion_mnist
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NEEDS_CUDA)])
def test_bf16_training_is_as_robust_as_fp32(device, tmp_path):
    # PGD-AT of the cnn on 10,000 Fashion-MNIST images for 2 epochs with --amp off and bf16 (same seed), evaluated
    # on 1,000 test images: PGD-20 accuracies within 5 points.
    from robustdistill._cli import main

    accuracy = {}
    for amp in ("off", "bf16"):
        out = tmp_path / amp
        assert main(["train", "--plugin", "at", "--dataset", "fashion-mnist", "--model", "cnn", "--subset", "10000",
                     "--epochs", "2", "--val-split", "200", "--seed", "0", "--device", device, "--amp", amp,
                     "--out", str(out)]) == 0
        assert main(["eval", str(out / "last.pt"), "--attacks", "clean,pgd20", "--subset", "1000", "--device", device,
                     "--json", str(out / "eval.json")]) == 0
        accuracy[amp] = json.loads((out / "eval.json").read_text())
    print(f"\nPGD-20 fp32 {accuracy['off']['pgd20']:.3f}, bf16 {accuracy['bf16']['pgd20']:.3f}; "
          f"clean {accuracy['off']['clean']:.3f} / {accuracy['bf16']['clean']:.3f}")
    assert abs(accuracy["bf16"]["pgd20"] - accuracy["off"]["pgd20"]) <= 0.05
