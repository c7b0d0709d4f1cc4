"""Loading the fused kernels and registering their Python-side pieces.

The C++ library (``csrc/``) defines the ``robustdistill::`` operators and their CPU / CUDA kernels.
It is found, in order, as

1. ``robustdistill._C``: built ahead of time by ``setup.py`` (in place for editable installs);
2. a just-in-time build with :func:`torch.utils.cpp_extension.load` and ninja, cached in
   ``$ROBUSTDISTILL_EXT_CACHE`` (default ``~/.cache/robustdistill/ext``) under a name keyed by the
   hash of the sources, flags and toolchain; concurrent processes serialise on an OS file lock
   (released by the kernel if a builder dies) and build in a temporary directory that is renamed
   into place, so nobody loads a half-written library. Needs a source checkout (``csrc/``).
   ``ROBUSTDISTILL_NO_JIT=1`` turns it off; a failed build is remembered (``*.failed`` log in the
   cache) and not retried until that file is deleted;
3. nothing: :mod:`robustdistill._ops` then runs the pure-PyTorch reference.

Once the library is loaded, this module registers fake (meta) kernels for ``torch.compile`` and
the autograd formula of ``fd_align`` (its backward is the ``fd_align_backward`` kernel).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import _build

NAMESPACE = "robustdistill"
OPS = ("pgd_step", "pgd_step_", "fd_align", "fd_align_backward")
NO_JIT_ENV = "ROBUSTDISTILL_NO_JIT"
CACHE_ENV = "ROBUSTDISTILL_EXT_CACHE"
AOT_MODULE = "robustdistill._C"


@dataclass
class ExtStatus:
    """Where the compiled kernels come from and what they cover."""

    loaded: bool = False
    origin: str | None = None  # "aot" (robustdistill._C), "jit" or "external" (loaded by someone else)
    path: str | None = None
    devices: tuple[str, ...] = ()  # dispatch keys with kernels, lower case: ("cpu",) or ("cpu", "cuda")
    cuda_archs: tuple[str, ...] = ()  # GPU code of the CUDA kernels: sm_XY machine code, compute_XY PTX
    error: str | None = None  # why nothing was loaded, or why the just-in-time build failed
    notes: list[str] = field(default_factory=list)  # what was tried, in order

    def as_dict(self) -> dict:
        out = asdict(self)
        out["devices"] = list(self.devices)
        out["cuda_archs"] = list(self.cuda_archs)
        return out


_status: ExtStatus | None = None
_lock = threading.RLock()
_python_side_registered = False


def _op_defined(name: str = "pgd_step") -> bool:
    try:
        torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{name}", "CPU")
    except RuntimeError:
        return False
    return True


def _kernel_devices() -> tuple[str, ...]:
    devices = []
    for key in ("CPU", "CUDA"):
        try:
            if all(torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", key) for op in OPS):
                devices.append(key.lower())
        except RuntimeError:
            pass
    return tuple(devices)


def status() -> ExtStatus:
    """The extension's status, loading (or building) it on first call."""
    global _status
    if _status is not None:
        return _status
    with _lock:
        if _status is None:
            _status = _load()
    return _status


def available(device_type: str) -> tuple[bool, str]:
    """Whether fused kernels run on ``device_type`` ('cpu', 'cuda'), with the reason."""
    st = status()
    if not st.loaded:
        return False, f"the compiled extension is unavailable: {st.error}"
    if device_type in st.devices:
        return True, f"compiled extension ({st.origin}: {st.path})"
    if device_type == "cuda":
        return False, ("the compiled extension has no CUDA kernels (built without nvcc; rebuild with CUDA_HOME "
                       "set, e.g. pip install --no-build-isolation -e .)")
    return False, f"the compiled extension has no kernels for device type {device_type!r}"


def _load() -> ExtStatus:
    st = ExtStatus()
    if _op_defined():
        st.loaded, st.origin, st.notes = True, "external", ["robustdistill:: ops were already registered"]
    else:
        _try_aot(st)
        if not st.loaded:
            _try_jit(st)
    if st.loaded:
        st.devices = _kernel_devices()
        if "cuda" in st.devices:
            st.cuda_archs = _library_cuda_archs(st.path)
        register_python_side()
    return st


def _library_cuda_archs(path: str | None) -> tuple[str, ...]:
    """The GPU code the library's CUDA kernels were compiled to, as it records it (() if unknown)."""
    if not path:
        return ()
    try:
        import ctypes

        fn = ctypes.CDLL(path).robustdistill_cuda_archs
        fn.restype = ctypes.c_char_p
        text = (fn() or b"").decode()
    except (OSError, AttributeError):
        return ()
    return tuple(code for code in text.split(",") if code)


def _try_aot(st: ExtStatus) -> None:
    try:
        module = importlib.import_module(AOT_MODULE)
    except ImportError as exc:  # not built, or built against another torch
        st.notes.append(f"{AOT_MODULE}: {exc}")
        return
    if not _op_defined():
        st.notes.append(f"{AOT_MODULE} imported but registered no ops")
        return
    st.loaded, st.origin, st.path = True, "aot", getattr(module, "__file__", None)
    st.notes.append(f"{AOT_MODULE}: loaded")
    stale = _stale_build(st.path)
    if stale:
        st.notes.append(stale)
        import warnings

        warnings.warn(f"robustdistill: {stale}", RuntimeWarning, stacklevel=2)


def _stale_build(path: str | None) -> str | None:
    """A message when the library was built from other sources than the checkout's csrc/."""
    if not path or not all((_build.CSRC / name).exists() for name in _build.CPP_SOURCES):
        return None  # an installed package without sources: nothing to compare with
    try:
        import ctypes

        fn = ctypes.CDLL(path).robustdistill_source_digest
        fn.restype = ctypes.c_ulonglong
        built = int(fn())
    except (OSError, AttributeError):
        return None
    if built in (0, _build.sources_digest()):
        return None
    return (f"{AOT_MODULE} was built from other sources than {_build.CSRC} (stale build); rebuild with "
            "pip install --no-build-isolation -e .")


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "robustdistill" / "ext"


def _jit_wants_cuda() -> bool:
    if _build.env_flag(_build.NO_CUDA_ENV) or torch.version.cuda is None or not torch.cuda.is_available():
        return False
    return _build.nvcc_path(_build.find_cuda_home()) is not None


def jit_name(with_cuda: bool) -> str:
    """The cache name of a just-in-time build: a hash of the sources, flags, toolchain, torch and,
    with CUDA, the GPU code it compiles to (:func:`robustdistill._build.cuda_targets`)."""
    key = "|".join([_build.source_hash(with_cuda), torch.__version__, str(torch.version.cuda), str(with_cuda),
                    ",".join(_build.cuda_targets().codes) if with_cuda else ""])
    return f"robustdistill_ops_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@contextlib.contextmanager
def _file_lock(path: Path, timeout_s: float = 3600.0):
    """An advisory OS lock (released by the kernel when the holder dies), or nothing where unsupported."""
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on the temp-dir-and-rename protocol alone
        yield
        return
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"waited {timeout_s:.0f} s for the build lock {path}") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_jit(st: ExtStatus) -> None:
    aot = st.notes[0] if st.notes else f"{AOT_MODULE} is not built"  # why the ahead-of-time build is unusable
    if _build.env_flag(NO_JIT_ENV):
        st.error = f"{aot}; {NO_JIT_ENV} disables the just-in-time build"
        st.notes.append(f"jit: disabled by {NO_JIT_ENV}")
        return
    missing = [name for name in _build.CPP_SOURCES if not (_build.CSRC / name).exists()]
    if missing:
        st.error = f"{aot}; the sources for a just-in-time build are missing ({_build.CSRC})"
        st.notes.append("jit: no sources")
        return
    with_cuda = _jit_wants_cuda()
    name = jit_name(with_cuda)
    root = cache_dir()
    library = root / f"{name}.so"
    failed = root / f"{name}.failed"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _file_lock(root / f"{name}.lock"):
            if failed.exists():
                st.error = f"{aot}; an earlier just-in-time build failed (log: {failed}; delete it to retry)"
                st.notes.append("jit: earlier failure")
                return
            if not library.exists():
                _jit_build(name, with_cuda, root, library, failed)  # builds and loads
        if not _op_defined():
            torch.ops.load_library(str(library))
    except Exception as exc:  # noqa: BLE001 - any failure means "no extension", reported
        st.error = f"{aot}; the just-in-time build failed: {_short(exc)}"
        st.notes.append(f"jit: {_short(exc)}")
        return
    if not _op_defined():
        st.error = f"the just-in-time library {library} registered no ops"
        return
    st.loaded, st.origin, st.path = True, "jit", str(library)
    st.notes.append(f"jit: loaded {library}")


def _jit_build(name: str, with_cuda: bool, root: Path, library: Path, failed: Path) -> None:
    import warnings

    warnings.warn(f"robustdistill: building the fused kernels just in time ({'CPU+CUDA' if with_cuda else 'CPU'}) "
                  f"into {root}; this takes a minute or two, once", RuntimeWarning, stacklevel=2)
    cuda_home = _build.find_cuda_home() if with_cuda else None
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension

    if cuda_home:
        cpp_extension.CUDA_HOME = cuda_home  # read when the module was imported; may predate the line above
    build_dir = Path(tempfile.mkdtemp(prefix=f"{name}-build-", dir=root))
    digest_flag = "-D{}={}".format(*_build.digest_macro())
    try:
        # is_python_module=False: a plain shared library, loaded with torch.ops.load_library (which
        # runs the registrations); the loaded file is then renamed into the cache, keeping its inode.
        cpp_extension.load(
            name=name,
            sources=_build.sources(with_cuda),
            extra_cflags=_build.cxx_flags(with_cuda) + [digest_flag],
            extra_cuda_cflags=(_build.nvcc_flags() + [digest_flag]) if with_cuda else None,
            extra_include_paths=[str(_build.CSRC)],
            build_directory=str(build_dir),
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=False,
        )
        built = next(build_dir.glob(f"{name}*.so"), None) or next(build_dir.glob(f"{name}*"), None)
        if built is None:
            raise RuntimeError(f"the build produced no library in {build_dir}")
        os.replace(built, library)
    except Exception as exc:
        failed.write_text(f"{type(exc).__name__}: {exc}\n")
        raise
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)


def _short(exc: BaseException, limit: int = 600) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2:]


# ---------------------------------------------------------------------------------------------
# Python-side registrations: fake kernels and autograd


def _check_pgd_args(op: str, x_adv, grad, x) -> None:
    torch._check(x_adv.shape == x.shape and grad.shape == x.shape,
                 lambda: f"robustdistill::{op}: x_adv, grad and x must have the same shape")
    torch._check(x_adv.dtype == x.dtype and grad.dtype == x.dtype,
                 lambda: f"robustdistill::{op}: x_adv, grad and x must share one dtype")


def _check_per_sample_device(op: str, name: str, value, x) -> None:
    if value is not None:
        torch._check(value.device == x.device or (value.device.type == "cpu" and value.dim() == 0),
                     lambda: f"robustdistill::{op}: {name} is on {value.device} but x_adv, grad and x are on "
                             f"{x.device}; create it on {x.device}")


def _fake_pgd_step(x_adv, grad, x, eps, step_size, eps_per_sample=None, step_per_sample=None, norm="linf",
                   lo=0.0, hi=1.0):
    _check_pgd_args("pgd_step", x_adv, grad, x)
    _check_per_sample_device("pgd_step", "eps_per_sample", eps_per_sample, x)
    _check_per_sample_device("pgd_step", "step_per_sample", step_per_sample, x)
    return torch.empty_like(x_adv)


def _fake_pgd_step_(x_adv, grad, x, eps, step_size, eps_per_sample=None, step_per_sample=None, norm="linf",
                    lo=0.0, hi=1.0):
    _check_pgd_args("pgd_step_", x_adv, grad, x)
    _check_per_sample_device("pgd_step_", "eps_per_sample", eps_per_sample, x)
    _check_per_sample_device("pgd_step_", "step_per_sample", step_per_sample, x)


def _fd_result_dtype(*logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if all(t.dtype == torch.float64 for t in logits) else torch.float32


def _fake_fd_align(s_plus, s_minus, t_plus, t_minus, distance="kl"):
    torch._check(s_plus.dim() == 2, lambda: "robustdistill::fd_align expects logits of shape [B, C]")
    torch._check(s_minus.shape == s_plus.shape and t_plus.shape == s_plus.shape and t_minus.shape == s_plus.shape,
                 lambda: "robustdistill::fd_align: the four logit tensors must have one shape")
    return s_plus.new_empty((), dtype=_fd_result_dtype(s_plus, s_minus, t_plus, t_minus))


def _fake_fd_align_backward(grad, s_plus, s_minus, t_plus, t_minus, distance="kl"):
    return (torch.empty(s_plus.shape, dtype=s_plus.dtype, device=s_plus.device),
            torch.empty(s_minus.shape, dtype=s_minus.dtype, device=s_minus.device))


def _fd_setup_context(ctx, inputs, output):
    s_plus, s_minus, t_plus, t_minus, distance = inputs
    ctx.save_for_backward(s_plus, s_minus, t_plus, t_minus)
    ctx.distance = distance


def _fd_backward(ctx, grad):
    s_plus, s_minus, t_plus, t_minus = ctx.saved_tensors
    grad_plus, grad_minus = torch.ops.robustdistill.fd_align_backward(grad, s_plus, s_minus, t_plus, t_minus,
                                                                      ctx.distance)
    # the teacher side is constant (the reference detaches it)
    return grad_plus, grad_minus, None, None, None


def register_python_side() -> None:
    """Register fake kernels and autograd for the loaded ops (once per process)."""
    global _python_side_registered
    with _lock:
        if _python_side_registered or not _op_defined():
            return
        torch.library.register_fake(f"{NAMESPACE}::pgd_step")(_fake_pgd_step)
        torch.library.register_fake(f"{NAMESPACE}::pgd_step_")(_fake_pgd_step_)
        torch.library.register_fake(f"{NAMESPACE}::fd_align")(_fake_fd_align)
        torch.library.register_fake(f"{NAMESPACE}::fd_align_backward")(_fake_fd_align_backward)
        torch.library.register_autograd(f"{NAMESPACE}::fd_align", _fd_backward, setup_context=_fd_setup_context)
        _python_side_registered = True


# The C++ library names this module as the home of its fake kernels; when the library was loaded
# by someone else (torch.ops.load_library), importing this module completes the registration.
if _op_defined():
    register_python_side()
