"""The inner-loop operations of adversarial training.

``pgd_step_ref`` and ``fd_align_ref`` are the pure-PyTorch definitions of the ops: fused kernels
must match them, and they are the fallback. :func:`pgd_step`, :func:`pgd_step_` and
:func:`fd_align` dispatch to the compiled kernels (``torch.ops.robustdistill.*``, see ``csrc/``
and :mod:`robustdistill._ext`) or to the reference according to the backend:

- ``auto`` (default): the kernels when the extension has them for the tensors' device, else the
  reference (with one warning per process saying why). Calls the kernels do not cover — mixed
  dtypes or shapes that need broadcasting, integer tensors, ``pgd_step`` on inputs that require
  grad under grad mode — also take the reference.
- ``ext``: the kernels, or a :class:`ExtensionUnavailableError` saying why not.
- ``ref``: always the reference (the extension is never loaded).

Choose with :func:`set_backend` or the environment variable ``ROBUSTDISTILL_OPS_BACKEND``
(:func:`set_backend` wins). :func:`backend_report` says per op and device which backend runs and
why; :func:`doctor_lines` adds the toolchain.

Numerics of the kernels: L∞ ``pgd_step`` in fp32/fp64 is bit-identical to the reference; the L2
step differs only by the summation order of its norms. fp16/bf16 inputs are computed in fp32 and
rounded once at the end (the reference rounds after every op, so they differ by a few ulps).
``fd_align`` computes in fp32 like the reference, except when all four inputs are fp64: then it
computes and returns fp64 (the reference returns fp32), so its gradient can be checked in double.
"""
from __future__ import annotations

import os
import platform
import shutil
import warnings

import torch
from torch import Tensor

from .registry import RobustDistillError

BACKENDS = ("auto", "ext", "ref")
BACKEND_ENV = "ROBUSTDISTILL_OPS_BACKEND"
OPS = ("pgd_step", "fd_align")
NORMS = ("linf", "l2")
FD_DISTANCES = ("kl", "l1", "l2")
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class ExtensionUnavailableError(RobustDistillError, RuntimeError):
    """The ``ext`` backend was requested but the compiled kernels cannot run."""


# ---------------------------------------------------------------------------------------------
# Reference implementations: the definition of correct.


def _per_sample(value: float | Tensor, x: Tensor) -> float | Tensor:
    """Broadcast a scalar or per-sample ``[B]`` tensor against a batch ``[B, ...]``."""
    if isinstance(value, Tensor) and value.dim() > 0:
        return value.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return value


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
    """One projected ascent step: ``clamp(Π_{B_ε(x)}(x_adv + α·d(g)), lo, hi)``.

    L∞: ``d(g) = sign(g)`` and the projection clips ``x_adv − x`` to ``[−ε, ε]``.
    L2: ``d(g) = g / ‖g‖₂`` per sample (zero gradient gives no step) and the projection
    rescales ``x_adv − x`` onto the ε-ball when it lies outside. ``eps`` and ``step_size``
    may be per-sample tensors of shape ``[B]``.
    """
    eps_b = _per_sample(eps, x)
    alpha = _per_sample(step_size, x)
    if norm == "linf":
        stepped = x_adv + alpha * grad.sign()
        delta = (stepped - x).clamp(-eps_b, eps_b)
    elif norm == "l2":
        flat = grad.flatten(1)
        g_norm = flat.norm(dim=1).reshape(-1, *([1] * (x.dim() - 1)))
        direction = torch.where(g_norm > 0, grad / g_norm.clamp_min(1e-12), torch.zeros_like(grad))
        delta = x_adv + alpha * direction - x
        d_norm = delta.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.dim() - 1)))
        delta = delta * torch.clamp(eps_b / d_norm.clamp_min(1e-12), max=1.0)
    else:
        raise ValueError(f"unknown norm {norm!r}; use 'linf' or 'l2'")
    return (x + delta).clamp(lo, hi)


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
def _kernels_for(device_type: str) -> bool:
    """Whether the selected backend runs the kernels on this device type (warns or raises otherwise)."""
    backend, source = _requested()
    if backend == "ref":
        return False
    from . import _ext

    ok, reason = _ext.available(device_type)
    if ok:
        return True
    if backend == "ext":
        raise ExtensionUnavailableError(f"ops backend 'ext' requested ({source}) but {reason}")
    _warn_once(reason)
    return False


def _unsupported(backend_reason: str) -> bool:
    """An argument combination the kernels do not cover: the reference runs, or 'ext' raises."""
    if get_backend() == "ext":
        raise ExtensionUnavailableError(f"ops backend 'ext': the fused kernels do not cover this call ({backend_reason})")
    return False


def _split_per_sample(value: float | Tensor, x: Tensor) -> tuple[float, Tensor | None]:
    if isinstance(value, Tensor):
        return 0.0, value.reshape(-1).to(x.device)
    return float(value), None


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
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use 'linf' or 'l2'")
    if _kernels_for(x.device.type) and _pgd_kernel_ok(x_adv, grad, x, eps, step_size):
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
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use 'linf' or 'l2'")
    if _kernels_for(x.device.type) and _pgd_kernel_ok(x_adv, grad, x, eps, step_size):
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
    if _kernels_for(s_plus.device.type) and _fd_kernel_ok(s_plus, s_minus, t_plus, t_minus):
        return torch.ops.robustdistill.fd_align(s_plus, s_minus, t_plus, t_minus, distance)
    return fd_align_ref(s_plus, s_minus, t_plus, t_minus, distance)


# ---------------------------------------------------------------------------------------------
# Reporting


def select_backend(name: str | None, device: torch.device) -> dict[str, str]:
    """Apply a requested backend (``None`` keeps the current choice) for a run on ``device``.

    Returns what each op will use there, e.g. ``{"requested": "auto", "pgd_step": "ext", ...}``,
    and fails now, not mid-run, when ``ext`` is requested and the kernels cannot run on ``device``.
    """
    if name is not None:
        set_backend(name)
    requested, _ = _requested()
    if requested == "ref":
        return {"requested": requested, **{op: "ref" for op in OPS}}
    from . import _ext

    ok, reason = _ext.available(device.type)
    if not ok and requested == "ext":
        raise ExtensionUnavailableError(f"--ops-backend ext: {reason}. Build the kernels with `pip install "
                                        "--no-build-isolation -e .` (see `robustdistill doctor`) or use auto")
    return {"requested": requested, **{op: "ext" if ok else "ref" for op in OPS}}


def backend_report() -> dict:
    """Which backend each op uses per device type, and why; JSON-serialisable (for run metadata)."""
    backend, source = _requested()
    report: dict = {"requested": backend, "requested_by": source, "extension": None, "ops": {}}
    if backend == "ref":
        choice = {"backend": "ref", "reason": f"'ref' requested ({source})"}
        report["ops"] = {op: {dev: dict(choice) for dev in ("cpu", "cuda")} for op in OPS}
        return report
    from . import _ext

    report["extension"] = _ext.status().as_dict()
    per_device = {}
    for dev in ("cpu", "cuda"):
        ok, reason = _ext.available(dev)
        if ok:
            per_device[dev] = {"backend": "ext", "reason": reason}
        elif backend == "ext":
            per_device[dev] = {"backend": "error", "reason": f"'ext' requested ({source}) but {reason}"}
        else:
            per_device[dev] = {"backend": "ref", "reason": reason}
        if dev == "cuda" and not torch.cuda.is_available():
            per_device[dev]["reason"] += " (no CUDA device visible now)"
    report["ops"] = {op: {dev: dict(v) for dev, v in per_device.items()} for op in OPS}
    return report


def doctor_lines() -> list[str]:
    """Human-readable environment and kernel status (``robustdistill doctor``)."""
    from . import _build

    lines = [f"python {platform.python_version()} ({platform.platform()})",
             f"torch {torch.__version__}, built with CUDA {torch.version.cuda or 'none'}"]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        lines.append(f"CUDA devices: {torch.cuda.device_count()} ({names})")
    else:
        lines.append("CUDA devices: none visible")
    cuda_home = _build.find_cuda_home()
    nvcc = _build.nvcc_path(cuda_home)
    lines.append(f"CUDA_HOME: {cuda_home or 'not found'}; nvcc: "
                 f"{(nvcc + ' — ' + (_build.tool_version([nvcc, '--version']) or '?')) if nvcc else 'not found'}")
    cxx = _build.cxx_compiler()
    lines.append(f"C++ compiler ({cxx}): {_build.tool_version([cxx, '--version']) or 'not found'}")
    ninja = shutil.which("ninja")
    lines.append(f"ninja: {(_build.tool_version([ninja, '--version']) or '?') if ninja else 'not found'}")
    report = backend_report()
    lines.append(f"ops backend requested: {report['requested']} ({report['requested_by']})")
    ext = report["extension"]
    if ext is None:
        lines.append("extension: not loaded ('ref' backend)")
    elif ext["loaded"]:
        lines.append(f"extension: loaded ({ext['origin']}) from {ext['path']}; kernels for "
                     f"{', '.join(ext['devices']) or 'no device'}")
    else:
        lines.append(f"extension: unavailable — {ext['error']}")
    for op, per_device in report["ops"].items():
        for dev, choice in per_device.items():
            lines.append(f"  {op} on {dev}: {choice['backend']} — {choice['reason']}")
    return lines
