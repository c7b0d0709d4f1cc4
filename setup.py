"""Build script: package metadata lives in pyproject.toml; this file adds the fused kernels.

``robustdistill._C`` is compiled from ``csrc/`` when PyTorch and a C++ compiler are available at
build time (install with ``pip install --no-build-isolation -e .`` so the build sees the installed
torch): with CUDA kernels when ``nvcc`` is found (``$CUDA_HOME``, else ``nvcc`` on ``PATH``), else CPU
kernels only. The CUDA kernels are compiled for ``TORCH_CUDA_ARCH_LIST`` when set, else for the
visible GPUs, else for a default list of architectures plus PTX for newer GPUs
(``robustdistill/_build.py``, :func:`cuda_targets`). When the build is impossible
the package still installs as pure Python and the kernels are built just in time on first use,
else the pure-PyTorch reference runs.

- ``ROBUSTDISTILL_NO_EXT_BUILD=1``: skip the build (quick install).
- ``ROBUSTDISTILL_REQUIRE_EXT=1`` (or ``CI`` set): a failed build fails the install.
- ``ROBUSTDISTILL_NO_CUDA=1``: CPU kernels only.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def _load_build_config():
    spec = importlib.util.spec_from_file_location("_robustdistill_build", HERE / "robustdistill" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


build = _load_build_config()


def _say(message: str) -> None:
    print(f"robustdistill setup.py: {message}", file=sys.stderr, flush=True)


def _lenient(base):
    """``build_ext`` that turns a failed kernel build into a warning unless the extension is required."""

    class BuildExt(base):
        _failed = False

        def run(self):
            try:
                super().run()
            except Exception as exc:  # any build failure leaves a usable pure-Python package
                if build.extension_required():
                    _say(f"building the fused kernels failed and {build.REQUIRE_ENV}/CI requires them")
                    raise
                self._failed = True
                _say(f"building the fused kernels failed ({type(exc).__name__}: {str(exc)[-2000:]}); "
                     "installing without them (they are built just in time on first use, else the "
                     "pure-PyTorch reference runs)")

        def get_outputs(self):
            return [] if self._failed else super().get_outputs()

        def get_output_mapping(self):
            return {} if self._failed else super().get_output_mapping()

    return BuildExt


def extension_options() -> dict:
    if build.env_flag(build.NO_BUILD_ENV):
        _say(f"{build.NO_BUILD_ENV} set: not building the fused kernels")
        return {}
    cuda_home = build.find_cuda_home()
    if cuda_home and os.environ.get("CUDA_HOME") != cuda_home:
        if os.environ.get("CUDA_HOME"):
            _say(f"CUDA_HOME={os.environ['CUDA_HOME']} is not a CUDA toolkit (it needs bin/nvcc and "
                 f"include/cuda_runtime.h); using {cuda_home}")
        os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        if build.extension_required():
            raise
        _say(f"PyTorch is not importable at build time ({exc}); installing without the fused kernels "
             "(use pip install --no-build-isolation to build them)")
        return {}
    with_cuda = (not build.env_flag(build.NO_CUDA_ENV) and torch.version.cuda is not None
                 and build.nvcc_path(cuda_home) is not None)
    if with_cuda:
        targets = build.cuda_targets()
        _say(f"building CPU and CUDA kernels (CUDA_HOME={cuda_home}) for {', '.join(targets.codes)} "
             f"(from {targets.source})")
        extension_cls = cpp_extension.CUDAExtension
    else:
        why = (f"{build.NO_CUDA_ENV} set" if build.env_flag(build.NO_CUDA_ENV)
               else "PyTorch built without CUDA" if torch.version.cuda is None else "no nvcc found")
        _say(f"building CPU kernels only ({why})")
        extension_cls = cpp_extension.CppExtension
    names = build.CPP_SOURCES + (build.CUDA_SOURCES if with_cuda else ())
    extension = extension_cls(
        name="robustdistill._C",
        sources=[f"csrc/{name}" for name in names],
        include_dirs=[str(build.CSRC)],
        depends=[f"csrc/{name}" for name in build.HEADERS],
        define_macros=[("ROBUSTDISTILL_PY_MODULE", None), build.digest_macro()],
        extra_compile_args={"cxx": build.cxx_flags(with_cuda), "nvcc": build.nvcc_flags()},
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": _lenient(cpp_extension.BuildExtension)}}


setup(**extension_options())
