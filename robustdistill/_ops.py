"""The inner-loop operations of adversarial training.

``pgd_step_ref`` and ``fd_align_ref`` are the pure-PyTorch definitions of the ops: fused kernels
must match them, and they are the fallback. :func:`pgd_step`, :func:`pgd_step_` and
:func:`fd_align` dispatch to the compiled kernels (``torch.ops.robustdistill.*``, see ``csrc/``
and :mod:`robustdistill._ext`) or to the reference according to the backend:

- ``auto`` (default): the kernels when the extension has them for the tensors' device and they
  pass the device's self-check, else the reference (with one warning per process saying why).
  Calls the kernels do not cover — mixed dtypes or shapes that need broadcasting, integer tensors,
  ``pgd_step`` on inputs that require grad under grad mode — also take the reference.
- ``ext``: the kernels, or a :class:`ExtensionUnavailableError` saying why not.
- ``ref``: always the reference (the extension is never loaded).

Self-check: the first time the kernels would run on a device (``cpu``, ``cuda:0``, ...), a tiny
``pgd_step`` (L∞ and L2) and ``fd_align`` (forward and backward) run there and are compared with the
reference; a failure or an exception (e.g. a GPU the kernels were not compiled for) makes ``auto``
use the reference on that device, with one warning naming the reason (``robustdistill._doctor.kernel_status``
reports it per device). The self-check cannot run inside CUDA-graph capture: call the ops once before
capturing (warm-up), as CUDA graphs require anyway.

Per-sample ``eps`` / ``step_size`` tensors must be on the inputs' device (a 0-dim CPU tensor, which
PyTorch treats as a number, is also accepted and read on the host): copying a tensor from another
device on every step would synchronise with the host and break CUDA-graph capture, so it is an
error. fp16/bf16 inputs round ``eps`` and ``step_size`` to their dtype, scalars and per-sample
values alike.

Choose with :func:`set_backend` or the environment variable ``ROBUSTDISTILL_OPS_BACKEND``
(:func:`set_backend` wins). :mod:`robustdistill._doctor` says per op and device which backend runs and
why, and the toolchain.

Numerics of the kernels: L∞ ``pgd_step`` in fp32/fp64 is bit-identical to the reference; the L2
step differs only by the summation order of its norms. fp16/bf16 inputs are computed in fp32 and
rounded once at the end (the reference rounds after every op, so they differ by a few ulps).
``fd_align`` computes in fp32 like the reference, except when all four inputs are fp64: then it
computes and returns fp64 (the reference returns fp32), so its gradient can be checked in double.
"""
from __future__ import annotations

import os
import threading
import warnings

import torch
from torch import Tensor

from ._config import BACKEND_ENV, BACKENDS, FD_DISTANCES
from ._registry import RobustDistillError
from ._threats import threat_model

OPS = ("pgd_step", "fd_align")
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class ExtensionUnavailableError(RobustDistillError, RuntimeError):
    """The ``ext`` backend was requested but the compiled kernels cannot run."""


# ---------------------------------------------------------------------------------------------
# Reference implementations: the definition of correct.


def pgd_step_ref(
    x_adv: Tensor,
    grad: Tensor,
    x: Tensor,
    eps: float | Tensor,
    step_size: float | Tensor,
    norm: str = "linf",
    lo: float = 0.0,
    hi: float = 1.0,
) -> Tensor:
    """One projected ascent step: ``clamp(Π_{B_ε(x)}(x_adv + α·d(g)), lo, hi)`` in the threat model of ``norm``.

    L∞: ``d(g) = sign(g)`` and the projection clips ``x_adv − x`` to ``[−ε, ε]``.
    L2: ``d(g) = g / ‖g‖₂`` per sample (zero gradient gives no step) and the projection
    rescales ``x_adv − x`` onto the ε-ball when it lies outside. ``eps`` and ``step_size``
    may be per-sample tensors of shape ``[B]``. (See :mod:`robustdistill._threats`.)
    """
    return threat_model(norm).step(x_adv, grad, x, eps, step_size, lo, hi)


def fd_align_ref(s_plus: Tensor, s_minus: Tensor, t_plus: Tensor, t_minus: Tensor, distance: str = "kl") -> Tensor:
    """IGDM's finite-difference gradient alignment ``D(s⁺ − s⁻, t⁺ − t⁻)`` over logits ``[B, C]``.

    ``kl``: ``(1/B)·Σᵢ KL(σ(t⁺ᵢ − t⁻ᵢ) ‖ σ(s⁺ᵢ − s⁻ᵢ))`` (batchmean, temperature 1 — the paper's and its
    code's choice); ``l1``: mean absolute difference; ``l2``: mean squared difference (both over B×C).
    The teacher side is constant: no gradient flows into ``t⁺``/``t⁻``.
    """
    ds = s_plus.float() - s_minus.float()
    dt = (t_plus.float() - t_minus.float()).detach()
    if distance == "kl":
        log_q = torch.log_softmax(ds, dim=1)
        log_p = torch.log_softmax(dt, dim=1)
        return (log_p.exp() * (log_p - log_q)).sum() / ds.shape[0]
    if distance == "l1":
        return (ds - dt).abs().mean()
    if distance == "l2":
        return (ds - dt).pow(2).mean()
    raise ValueError(f"unknown distance {distance!r}; choose one of {FD_DISTANCES}")


def fd_align_per_sample_ref(s_plus: Tensor, s_minus: Tensor, t_plus: Tensor, t_minus: Tensor,
                            distance: str = "kl") -> Tensor:
    """Each sample's share ``[B]`` of :func:`fd_align_ref` (its mean is ``fd_align_ref``'s value)."""
    ds = s_plus.float() - s_minus.float()
    dt = (t_plus.float() - t_minus.float()).detach()
    if distance == "kl":
        log_q = torch.log_softmax(ds, dim=1)
        log_p = torch.log_softmax(dt, dim=1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=1)
    if distance == "l1":
        return (ds - dt).abs().mean(dim=1)
    if distance == "l2":
        return (ds - dt).pow(2).mean(dim=1)
    raise ValueError(f"unknown distance {distance!r}; choose one of {FD_DISTANCES}")


# ---------------------------------------------------------------------------------------------
# Backend selection


_backend_override: str | None = None
_warned: set[str] = set()


def _check_backend(name: str, source: str) -> str:
    value = name.strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"unknown ops backend {name!r} from {source}; choose one of {', '.join(BACKENDS)}")
    return value


def set_backend(name: str | None) -> None:
    """Choose ``auto``, ``ext`` or ``ref`` for this process; ``None`` returns to the environment/default."""
    global _backend_override
    _backend_override = None if name is None else _check_backend(name, "set_backend()")


def get_backend() -> str:
    """The requested backend: :func:`set_backend`, else ``$ROBUSTDISTILL_OPS_BACKEND``, else ``auto``."""
    return _requested()[0]


def _requested() -> tuple[str, str]:
    if _backend_override is not None:
        return _backend_override, "set_backend()"
    env = os.environ.get(BACKEND_ENV)
    if env:
        return _check_backend(env, f"${BACKEND_ENV}"), f"${BACKEND_ENV}"
    return "auto", "default"


def _warn_once(reason: str) -> None:
    if reason in _warned:
        return
    _warned.add(reason)
    warnings.warn(f"robustdistill: fused kernels not used ({reason}); running the pure-PyTorch reference",
                  RuntimeWarning, stacklevel=4)


@torch.compiler.assume_constant_result
def _kernels_for(device: torch.device) -> bool:
    """Whether the selected backend runs the kernels on this device (warns or raises otherwise)."""
    backend, source = _requested()
    if backend == "ref":
        return False
    ok, reason = _kernels_usable(device)
    if ok:
        return True
    if backend == "ext":
        raise ExtensionUnavailableError(f"ops backend 'ext' requested ({source}) but {reason}")
    _warn_once(reason)
    return False


# ---------------------------------------------------------------------------------------------
# Self-check: the kernels against the reference on each device, once


_self_checks: dict[str, str | None] = {}  # device ("cpu", "cuda:0") -> None when passed, else why not
_self_check_lock = threading.Lock()


def _device_key(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return device.type if device.index is None else str(device)


def _device_words(key: str) -> str:
    """``cuda:0 (NVIDIA H100, sm_90)`` or ``cpu``."""
    if not key.startswith("cuda"):
        return key
    try:
        major, minor = torch.cuda.get_device_capability(key)
        return f"{key} ({torch.cuda.get_device_name(key)}, sm_{major}{minor})"
    except Exception:  # noqa: BLE001 - only decoration of a message
        return key


def _self_check_inputs(device: torch.device) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(0)
    f32 = torch.float32
    x = torch.rand(3, 2, 4, 4, generator=gen, dtype=f32)
    x_adv = (x + (torch.rand(x.shape, generator=gen, dtype=f32) * 2 - 1) * 0.1).clamp(0, 1)
    grad = torch.randn(x.shape, generator=gen, dtype=f32)
    grad[0, 0, 0] = 0
    logits = [torch.randn(4, 10, generator=gen, dtype=f32) * 3 for _ in range(4)]
    values = {"x": x, "x_adv": x_adv, "grad": grad, "eps": torch.tensor([0.02, 0.05, 0.1], dtype=f32),
              **{name: t for name, t in zip(("s_plus", "s_minus", "t_plus", "t_minus"), logits)}}
    return {name: t.to(device) for name, t in values.items()}


def _run_self_check(device: torch.device) -> str | None:
    """Tiny calls of each kernel on ``device`` against the reference: None when all agree, else why not."""
    kernels = torch.ops.robustdistill
    v = _self_check_inputs(device)
    x_adv, grad, x, eps = v["x_adv"], v["grad"], v["x"], v["eps"]
    got = kernels.pgd_step(x_adv, grad, x, 0.0, 0.02, eps, None, "linf", 0.0, 1.0)
    if not torch.equal(got, pgd_step_ref(x_adv, grad, x, eps, 0.02, "linf")):
        return "pgd_step (L∞) differs from the reference"
    got = kernels.pgd_step(x_adv, grad, x, 0.1, 0.05, None, None, "l2", 0.0, 1.0)
    if not torch.allclose(got, pgd_step_ref(x_adv, grad, x, 0.1, 0.05, "l2"), rtol=0, atol=1e-6):
        return "pgd_step (L2) differs from the reference"
    logits = [v[name] for name in ("s_plus", "s_minus", "t_plus", "t_minus")]
    with torch.enable_grad():
        students = [t.clone().requires_grad_(True) for t in logits[:2]]
        got = kernels.fd_align(*students, *logits[2:], "kl")
        got_grads = torch.autograd.grad(got * 1.5, students)
        refs = [t.clone().requires_grad_(True) for t in logits[:2]]
        want = fd_align_ref(*refs, *logits[2:], "kl")
        want_grads = torch.autograd.grad(want * 1.5, refs)
    if not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
        return "fd_align differs from the reference"
    if not all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(got_grads, want_grads)):
        return "the gradient of fd_align differs from the reference"
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # an asynchronous launch error surfaces here
    return None


def _self_check(device: torch.device) -> tuple[bool, str]:
    """The device's self-check (run on first use): whether the kernels may run there, and why (not)."""
    key = _device_key(device)
    if key not in _self_checks:
        if key.startswith("cuda") and torch.cuda.is_current_stream_capturing():
            return False, (f"the first use of the fused kernels on {key} is inside CUDA-graph capture, where their "
                           "self-check cannot run; call the op once before capturing")
        with _self_check_lock:
            if key not in _self_checks:
                try:
                    # whatever the caller's modes: no inference mode (the fd_align check differentiates)
                    with torch.inference_mode(False), torch.no_grad(), \
                            torch.autocast(torch.device(key).type, enabled=False):
                        failure = _run_self_check(torch.device(key))
                except Exception as exc:  # noqa: BLE001 - any failure means "do not use the kernels here"
                    failure = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                _self_checks[key] = failure
    failure = _self_checks[key]
    if failure is None:
        return True, f"self-check passed on {key}"
    return False, f"self-check of the fused kernels on {_device_words(key)} failed: {failure}{_built_for(key)}"


def _built_for(key: str) -> str:
    """``; the CUDA kernels were compiled for ...`` for a CUDA device, else nothing."""
    if not key.startswith("cuda"):
        return ""
    from . import _ext

    codes = _ext.status().cuda_archs
    return f"; the CUDA kernels were compiled for {_build_codes_words(codes)}" if codes else ""


def _build_codes_words(codes) -> str:
    machine = [c for c in codes if c.startswith("sm_")]
    ptx = [c for c in codes if c.startswith("compute_")]
    words = ", ".join(machine) or "no machine code"
    return words + (f" + PTX {', '.join(ptx)}" if ptx else " (no PTX)")



def _kernels_usable(device: torch.device) -> tuple[bool, str]:
    """Whether the kernels exist for the device type and pass the device's self-check, with the reason."""
    from . import _ext

    ok, reason = _ext.available(device.type)
    if not ok:
        return False, reason
    ok, check = _self_check(device)
    return ok, (f"{reason}; {check}" if ok else check)


def _unsupported(backend_reason: str) -> bool:
    """An argument combination the kernels do not cover: the reference runs, or 'ext' raises."""
    if get_backend() == "ext":
        raise ExtensionUnavailableError(f"ops backend 'ext': the fused kernels do not cover this call ({backend_reason})")
    return False


def _split_per_sample(value: float | Tensor, x: Tensor) -> tuple[float, Tensor | None]:
    if isinstance(value, Tensor):
        return 0.0, value
    return float(value), None


def _check_per_sample_devices(x: Tensor, **values: float | Tensor) -> None:
    """Per-sample tensors live on the inputs' device (or are 0-dim CPU tensors, i.e. numbers)."""
    for name, value in values.items():
        if (isinstance(value, Tensor) and value.device != x.device
                and not (value.device.type == "cpu" and value.dim() == 0)):
            raise ValueError(f"pgd_step: {name} is a tensor on {value.device} but the inputs are on {x.device}; "
                             f"create it on {x.device} once, outside the attack loop (a copy on every step "
                             "would synchronise with the host and cannot be captured in a CUDA graph)")


def _pgd_kernel_ok(x_adv: Tensor, grad: Tensor, x: Tensor, eps, step_size) -> bool:
    if not (x.dtype in _KERNEL_DTYPES and x_adv.dtype == x.dtype and grad.dtype == x.dtype):
        return _unsupported(f"dtypes {x_adv.dtype}, {grad.dtype}, {x.dtype}: need one of "
                            "float32/float64/float16/bfloat16 for all three")
    if not (x_adv.shape == x.shape and grad.shape == x.shape):
        return _unsupported(f"shapes {tuple(x_adv.shape)}, {tuple(grad.shape)}, {tuple(x.shape)} differ")
    if not (x_adv.device == x.device and grad.device == x.device):
        return _unsupported("tensors on different devices")
    batch = x.shape[0] if x.dim() > 0 else 1
    for value in (eps, step_size):
        if isinstance(value, Tensor) and value.numel() not in (1, batch):
            return _unsupported(f"per-sample value of shape {tuple(value.shape)} for batch {batch}")
    if torch.is_grad_enabled() and (x_adv.requires_grad or grad.requires_grad or x.requires_grad):
        return _unsupported("inputs require grad; the fused step is not differentiable")
    return True


def pgd_step(
    x_adv: Tensor,
    grad: Tensor,
    x: Tensor,
    eps: float | Tensor,
    step_size: float | Tensor,
    norm: str = "linf",
    lo: float = 0.0,
    hi: float = 1.0,
) -> Tensor:
    """One projected ascent step: ``clamp(Π_{B_ε(x)}(x_adv + α·d(g)), lo, hi)`` (see :func:`pgd_step_ref`).

    Runs the fused kernel or the reference according to the backend (module docstring).
    """
    norm = threat_model(norm).name
    _check_per_sample_devices(x, eps=eps, step_size=step_size)
    if _kernels_for(x.device) and _pgd_kernel_ok(x_adv, grad, x, eps, step_size):
        eps_f, eps_t = _split_per_sample(eps, x)
        step_f, step_t = _split_per_sample(step_size, x)
        return torch.ops.robustdistill.pgd_step(x_adv, grad, x, eps_f, step_f, eps_t, step_t, norm, float(lo),
                                                float(hi))
    return pgd_step_ref(x_adv, grad, x, eps, step_size, norm, lo, hi)


def pgd_step_(
    x_adv: Tensor,
    grad: Tensor,
    x: Tensor,
    eps: float | Tensor,
    step_size: float | Tensor,
    norm: str = "linf",
    lo: float = 0.0,
    hi: float = 1.0,
) -> None:
    """In-place :func:`pgd_step`: writes the step into ``x_adv`` (any layout) and returns nothing."""
    norm = threat_model(norm).name
    _check_per_sample_devices(x, eps=eps, step_size=step_size)
    if _kernels_for(x.device) and _pgd_kernel_ok(x_adv, grad, x, eps, step_size):
        eps_f, eps_t = _split_per_sample(eps, x)
        step_f, step_t = _split_per_sample(step_size, x)
        torch.ops.robustdistill.pgd_step_(x_adv, grad, x, eps_f, step_f, eps_t, step_t, norm, float(lo), float(hi))
        return
    with torch.no_grad():
        x_adv.copy_(pgd_step_ref(x_adv, grad, x, eps, step_size, norm, lo, hi))


def _fd_kernel_ok(*logits: Tensor) -> bool:
    first = logits[0]
    if not all(t.dtype in _KERNEL_DTYPES for t in logits):
        return _unsupported("logits must be float32/float64/float16/bfloat16")
    if first.dim() != 2 or not all(t.shape == first.shape for t in logits):
        return _unsupported("fd_align kernels need four logit tensors of one shape [B, C]")
    if not all(t.device == first.device for t in logits):
        return _unsupported("logits on different devices")
    return True


def fd_align(s_plus: Tensor, s_minus: Tensor, t_plus: Tensor, t_minus: Tensor, distance: str = "kl") -> Tensor:
    """IGDM's finite-difference gradient alignment ``D(s⁺ − s⁻, t⁺ − t⁻)`` (see :func:`fd_align_ref`).

    Runs the fused forward/backward kernels or the reference according to the backend (module
    docstring). The teacher side is constant: no gradient flows into ``t⁺``/``t⁻``.
    """
    if distance not in FD_DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; choose one of {FD_DISTANCES}")
    if _kernels_for(s_plus.device) and _fd_kernel_ok(s_plus, s_minus, t_plus, t_minus):
        return torch.ops.robustdistill.fd_align(s_plus, s_minus, t_plus, t_minus, distance)
    return fd_align_ref(s_plus, s_minus, t_plus, t_minus, distance)


# ---------------------------------------------------------------------------------------------
# Choosing the backend for a run


def select_backend(name: str | None, device: torch.device) -> dict[str, str]:
    """Apply a requested backend (``None`` keeps the current choice) for a run on ``device``.

    Returns what each op will use there, e.g. ``{"requested": "auto", "pgd_step": "ext", ...}``,
    and fails now, not mid-run, when ``ext`` is requested and the kernels cannot run on ``device``
    (not built for it, or its self-check fails).
    """
    if name is not None:
        set_backend(name)
    requested, _ = _requested()
    if requested == "ref":
        return {"requested": requested, **{op: "ref" for op in OPS}}
    ok, reason = _kernels_usable(torch.device(device))
    if not ok and requested == "ext":
        raise ExtensionUnavailableError(f"--ops-backend ext: {reason}. Build the kernels with `pip install "
                                        "--no-build-isolation -e .` (see `robustdistill doctor`) or use auto")
    return {"requested": requested, **{op: "ext" if ok else "ref" for op in OPS}}
