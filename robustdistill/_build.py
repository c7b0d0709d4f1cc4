"""How the fused kernels in ``csrc/`` are compiled: shared by ``setup.py`` (ahead of time) and
:mod:`robustdistill._ext` (just in time). Standard library only at import time, so ``setup.py``
can load this file before the package (and its dependencies) is installed.

Environment variables:

- ``ROBUSTDISTILL_NO_EXT_BUILD=1`` — ``setup.py`` skips the C++/CUDA build (quick pure-Python
  install; the kernels are then built just in time on first use, or the reference is used).
- ``ROBUSTDISTILL_REQUIRE_EXT=1`` — a failed build is an error instead of a warning (in
  ``setup.py``), and the tests of the fused kernels fail instead of skipping. ``.ci/run`` sets it;
  a set ``CI`` counts as this unless ``ROBUSTDISTILL_REQUIRE_EXT`` is ``0``.
- ``ROBUSTDISTILL_NO_CUDA=1`` — build the CPU kernels only even when ``nvcc`` is found.
- ``TORCH_CUDA_ARCH_LIST`` — GPU architectures to compile for (PyTorch's syntax: ``8.0;9.0+PTX``).
  Unset, both builds target the visible GPUs as PyTorch detects them (machine code for each, PTX
  of the newest), and without a visible GPU :data:`DEFAULT_CUDA_ARCHS` (machine code for the GPUs
  of the last generations) plus PTX of the newest architecture ``nvcc`` supports, which the
  driver compiles for GPUs newer than the list. See :func:`cuda_targets`.
- ``CUDA_HOME`` — the CUDA toolkit root; when unset, derived from ``nvcc`` on ``PATH`` with
  symlinks resolved.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CPP_SOURCES = ("ops.cpp", "cpu_kernels.cpp")
CUDA_SOURCES = ("cuda_kernels.cu",)
HEADERS = ("rd_ops.h",)
# Compute capabilities compiled to machine code when no GPU is visible at build time. Machine code
# for X.Y also runs on X.Z with Z > Y, so this covers Turing (T4, RTX 20), Ampere (A100; RTX 30,
# A10, A40 and Jetson Orin), Ada (L4, L40, RTX 40), Hopper (H100, H200), Blackwell (B200, GB200,
# B300; Jetson Thor; RTX 50, RTX PRO, DGX Spark). Entries nvcc does not know are dropped; PTX of
# the newest architecture nvcc supports is added for GPUs newer than all of them.
DEFAULT_CUDA_ARCHS = ("7.5", "8.0", "8.6", "9.0", "10.0", "11.0", "12.0")
ARCH_LIST_ENV = "TORCH_CUDA_ARCH_LIST"

NO_BUILD_ENV = "ROBUSTDISTILL_NO_EXT_BUILD"
REQUIRE_ENV = "ROBUSTDISTILL_REQUIRE_EXT"
NO_CUDA_ENV = "ROBUSTDISTILL_NO_CUDA"


def env_flag(name: str) -> bool:
    """True when the variable is set to something other than '', '0', 'false', 'no', 'off'."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def extension_required() -> bool:
    """Whether a missing or broken extension must be an error: ROBUSTDISTILL_REQUIRE_EXT, else CI."""
    value = os.environ.get(REQUIRE_ENV)
    if value is not None and value.strip() != "":
        return env_flag(REQUIRE_ENV)
    return env_flag("CI")


def _is_toolkit(root: Path) -> bool:
    return (root / "bin" / "nvcc").exists() and (root / "include" / "cuda_runtime.h").exists()


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: $CUDA_HOME / $CUDA_PATH when they hold one, else where ``nvcc`` on PATH
    really lives.

    ``nvcc`` may be a symlink or a wrapper script outside the toolkit (``/usr/local/bin/nvcc``),
    where PyTorch's guess (the directory above ``nvcc``) finds no ``libcudart``: resolve symlinks,
    then ask ``nvcc --dryrun`` for its ``TOP`` directory, then try ``/usr/local/cuda``.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and _is_toolkit(Path(home)):
            return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        resolved = Path(nvcc).resolve().parent.parent
        if _is_toolkit(resolved):
            return str(resolved)
        try:
            out = subprocess.run([nvcc, "--dryrun", "-c", "robustdistill_probe.cu"], capture_output=True, text=True,
                                 timeout=30, check=False)
            for line in (out.stdout + out.stderr).splitlines():
                if line.startswith("#$ TOP="):
                    top = Path(line.split("=", 1)[1].strip().strip('"')).resolve()
                    if _is_toolkit(top):
                        return str(top)
        except (OSError, subprocess.SubprocessError):
            pass
    default = Path("/usr/local/cuda")
    if _is_toolkit(default):
        return str(default.resolve())
    return str(Path(nvcc).resolve().parent.parent) if nvcc else None


def nvcc_path(cuda_home: str | None) -> str | None:
    if cuda_home and Path(cuda_home, "bin", "nvcc").exists():
        return str(Path(cuda_home, "bin", "nvcc"))
    return shutil.which("nvcc")


@dataclass(frozen=True)
class CudaTargets:
    """The GPU code a CUDA build produces: ``codes`` such as ``("sm_80", "sm_90", "compute_90")``
    (``sm_XY``: machine code for compute capability X.Y; ``compute_XY``: PTX), the ``nvcc`` flags
    that produce them, and where the choice came from."""

    codes: tuple[str, ...]
    flags: tuple[str, ...]
    source: str


def _gencode(arch: str, code: str) -> str:
    return f"-gencode=arch={arch},code={code}"


def _codes_of(flags: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    codes = set()
    for flag in flags:
        for value in re.findall(r"code=\[?([\w,]+)", flag):
            codes.update(c for c in value.split(",") if re.fullmatch(r"(sm|compute)_\d+[a-z]?", c))
    return tuple(sorted(codes, key=lambda c: (int(re.sub(r"\D", "", c)), c.startswith("compute"))))


def nvcc_archs(nvcc: str | None) -> list[tuple[int, int]]:
    """The compute capabilities ``nvcc --list-gpu-arch`` reports, ascending ([] when it cannot say)."""
    if not nvcc:
        return []
    try:
        out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    numbers = {int(m) for m in re.findall(r"^compute_(\d+)$", out.stdout, flags=re.M)}
    return sorted((n // 10, n % 10) for n in numbers)


def _torch_arch_flags() -> list[str]:
    """PyTorch's own choice (``$TORCH_CUDA_ARCH_LIST``, else the visible GPUs): its gencode flags."""
    from torch.utils import cpp_extension

    return list(cpp_extension._get_cuda_arch_flags())


def _visible_capabilities() -> list[tuple[int, int]]:
    try:
        import torch

        return sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    except Exception:  # noqa: BLE001 - no usable CUDA runtime: no visible GPU
        return []


def default_targets(nvcc: str | None) -> CudaTargets:
    """:data:`DEFAULT_CUDA_ARCHS` that ``nvcc`` supports, plus PTX of the newest one it supports."""
    known = nvcc_archs(nvcc)
    wanted = [tuple(int(v) for v in arch.split(".")) for arch in DEFAULT_CUDA_ARCHS]
    archs = [a for a in wanted if not known or a in known] or wanted
    newest = known[-1] if known else archs[-1]
    flags = [_gencode(f"compute_{a[0]}{a[1]}", f"sm_{a[0]}{a[1]}") for a in archs]
    flags.append(_gencode(f"compute_{newest[0]}{newest[1]}", f"compute_{newest[0]}{newest[1]}"))
    return CudaTargets(_codes_of(flags), tuple(flags), f"default list {';'.join(DEFAULT_CUDA_ARCHS)} + PTX of "
                                                      f"the newest architecture nvcc supports")


@functools.lru_cache(maxsize=None)
def _cuda_targets(arch_list: str | None, capabilities: tuple[tuple[int, int], ...], nvcc: str | None) -> CudaTargets:
    if arch_list or capabilities:
        flags = _torch_arch_flags()
        source = (f"{ARCH_LIST_ENV}={arch_list}" if arch_list else
                  "the visible GPUs (" + ", ".join(f"sm_{a}{b}" for a, b in capabilities) + ")")
        return CudaTargets(_codes_of(flags), tuple(flags), source)
    return default_targets(nvcc)


def cuda_targets() -> CudaTargets:
    """What a CUDA build compiles for: ``$TORCH_CUDA_ARCH_LIST`` when set; else the visible GPUs, as
    PyTorch detects them; else :func:`default_targets`."""
    arch_list = os.environ.get(ARCH_LIST_ENV, "").strip() or None
    capabilities = () if arch_list else tuple(_visible_capabilities())
    return _cuda_targets(arch_list, capabilities, nvcc_path(find_cuda_home()))


def parse_capability(code: str) -> tuple[int, int]:
    digits = re.sub(r"\D", "", code)
    return int(digits[:-1]), int(digits[-1])


def runs_on(codes: tuple[str, ...] | list[str], capability: tuple[int, int]) -> str | None:
    """The code among ``codes`` that a GPU of ``capability`` runs (machine code for the same major
    version and an equal or lower minor one, else PTX for an equal or lower capability), or None."""
    machine = [c for c in codes if c.startswith("sm_") and parse_capability(c)[0] == capability[0]
               and parse_capability(c) <= capability]
    if machine:
        return max(machine, key=parse_capability)
    ptx = [c for c in codes if c.startswith("compute_") and parse_capability(c) <= capability]
    return max(ptx, key=parse_capability) if ptx else None


def cxx_flags(with_cuda: bool) -> list[str]:
    if os.name == "nt":
        flags = ["/O2", "/std:c++17", "/fp:precise"]
    else:
        # no FMA contraction: kernels round like the eager reference; no FP traps assumed (values
        # are unchanged), which lets the compiler vectorise loops with selects
        flags = ["-O3", "-ffp-contract=off", "-fno-trapping-math"]
    if with_cuda:
        flags += ["-DROBUSTDISTILL_WITH_CUDA", f"-DROBUSTDISTILL_CUDA_ARCHS={','.join(cuda_targets().codes)}"]
    return flags


def nvcc_flags() -> list[str]:
    """nvcc flags, the gencode flags of :func:`cuda_targets` included (so PyTorch adds none)."""
    return ["-O3", "-DROBUSTDISTILL_WITH_CUDA", "--expt-relaxed-constexpr", *cuda_targets().flags]


def sources(with_cuda: bool) -> list[str]:
    names = CPP_SOURCES + (CUDA_SOURCES if with_cuda else ())
    return [str(CSRC / name) for name in names]


def sources_digest() -> int:
    """A 60-bit digest of the kernel sources alone; compiled into the library to detect a stale build."""
    digest = hashlib.sha256()
    for name in CPP_SOURCES + CUDA_SOURCES + HEADERS:
        path = CSRC / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    return int(digest.hexdigest()[:15], 16)


def digest_macro() -> tuple[str, str]:
    return "ROBUSTDISTILL_SOURCE_DIGEST", f"0x{sources_digest():015x}ULL"


def source_hash(with_cuda: bool) -> str:
    """Hash of the sources and headers, the build flags and the toolchain identity."""
    digest = hashlib.sha256()
    for name in CPP_SOURCES + CUDA_SOURCES + HEADERS:
        path = CSRC / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    digest.update(repr((cxx_flags(with_cuda), nvcc_flags() if with_cuda else None, sys.version_info[:2],
                        sys.platform)).encode())
    return digest.hexdigest()


def tool_version(cmd: list[str]) -> str | None:
    """First line of a tool's --version output, or None when it cannot run."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    if out.returncode != 0 or not text:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    if cmd[0].endswith("nvcc"):
        release = [line for line in lines if "release" in line]
        return release[-1].strip() if release else lines[-1].strip()
    return lines[0].strip()


def cxx_compiler() -> str:
    return os.environ.get("CXX", "c++")


if __name__ == "__main__":  # used by scripts/setup.sh: print the CUDA toolkit root, if any
    if sys.argv[1:] == ["cuda-home"]:
        print(find_cuda_home() or "")
