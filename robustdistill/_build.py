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
- ``TORCH_CUDA_ARCH_LIST`` — GPU architectures of the ahead-of-time build (default ``8.0;9.0``);
  the just-in-time build targets the visible GPUs.
- ``CUDA_HOME`` — the CUDA toolkit root; when unset, derived from ``nvcc`` on ``PATH`` with
  symlinks resolved.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CPP_SOURCES = ("ops.cpp", "cpu_kernels.cpp")
CUDA_SOURCES = ("cuda_kernels.cu",)
HEADERS = ("rd_ops.h",)
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0"

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


def cxx_flags(with_cuda: bool) -> list[str]:
    if os.name == "nt":
        flags = ["/O2", "/std:c++17", "/fp:precise"]
    else:
        # no FMA contraction: kernels round like the eager reference; no FP traps assumed (values
        # are unchanged), which lets the compiler vectorise loops with selects
        flags = ["-O3", "-ffp-contract=off", "-fno-trapping-math"]
    if with_cuda:
        flags.append("-DROBUSTDISTILL_WITH_CUDA")
    return flags


def nvcc_flags() -> list[str]:
    return ["-O3", "-DROBUSTDISTILL_WITH_CUDA", "--expt-relaxed-constexpr"]


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
