"""What the fused kernels do on this machine, and why: per-device status, the backend report recorded with
every run, and ``robustdistill doctor``'s lines (the toolchain included)."""
from __future__ import annotations

import platform
import shutil

import torch

from . import _ops as ops


def kernel_status(device: torch.device | str) -> dict:
    """The fused kernels on one device, JSON-serialisable (``robustdistill doctor``, run metadata).

    ``{"device": "cuda:0", "name": ..., "backend": "ext" | "ref" | "error", "reason": ...,
    "self_check": "passed" | "failed: ..." | "not run: ...", "cuda_archs": [...], "runs": ...}``:
    the backend the ops use there and why, the device's self-check (run now if it has not run yet),
    for a CUDA device its compute capability, the GPU code the kernels were compiled to
    (``sm_XY`` machine code, ``compute_XY`` PTX) and the one this GPU runs.
    """
    device = torch.device(device)
    key = ops._device_key(device)
    status: dict = {"device": key}
    if device.type == "cuda":
        try:
            major, minor = torch.cuda.get_device_capability(key)
            status.update(name=torch.cuda.get_device_name(key), capability=f"sm_{major}{minor}")
        except Exception as exc:  # noqa: BLE001 - no such device: say so, do not fail a report
            status.update(backend="ref", reason=f"no usable CUDA device {key}: {exc}",
                          self_check=f"not run: no usable CUDA device {key}")
            return status
    backend, source = ops._requested()
    if backend == "ref":
        status.update(backend="ref", reason=f"'ref' requested ({source})", self_check="not run: 'ref' requested")
        return status
    from . import _build, _ext

    ok, reason = _ext.available(device.type)
    if ok:
        ok, reason = ops._self_check(device)
        failure = ops._self_checks.get(key)
        status["self_check"] = "passed" if ok else (f"failed: {failure}" if failure else f"not run: {reason}")
    else:
        status["self_check"] = f"not run: {reason}"
    status["backend"] = "ext" if ok else ("error" if backend == "ext" else "ref")
    status["reason"] = reason if ok or backend != "ext" else f"'ext' requested ({source}) but {reason}"
    if device.type == "cuda":
        codes = list(_ext.status().cuda_archs)
        status["cuda_archs"] = codes
        if codes:
            status["runs"] = _build.runs_on(codes, _build.parse_capability(status["capability"]))
    return status


def backend_report() -> dict:
    """Which backend each op uses per device type, and why; JSON-serialisable (for run metadata).

    ``devices`` holds :func:`kernel_status` of the CPU and of each visible GPU (running their
    self-checks if they have not run yet).
    """
    backend, source = ops._requested()
    report: dict = {"requested": backend, "requested_by": source, "extension": None, "ops": {}, "devices": {}}
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    if backend == "ref":
        choice = {"backend": "ref", "reason": f"'ref' requested ({source})"}
        report["ops"] = {op: {dev: dict(choice) for dev in ("cpu", "cuda")} for op in ops.OPS}
        report["devices"] = {dev: kernel_status(dev) for dev in devices}
        return report
    from . import _ext

    report["extension"] = _ext.status().as_dict()
    report["devices"] = {dev: kernel_status(dev) for dev in devices}
    per_device = {}
    for dev in ("cpu", "cuda"):
        if dev == "cuda" and torch.cuda.is_available():
            status = report["devices"][ops._device_key("cuda")]
            per_device[dev] = {"backend": status["backend"], "reason": status["reason"]}
            continue
        ok, reason = _ext.available(dev)
        if ok and dev == "cpu":
            ok, reason = ops._kernels_usable(torch.device("cpu"))
        if ok:
            per_device[dev] = {"backend": "ext", "reason": reason}
        elif backend == "ext":
            per_device[dev] = {"backend": "error", "reason": f"'ext' requested ({source}) but {reason}"}
        else:
            per_device[dev] = {"backend": "ref", "reason": reason}
        if dev == "cuda":
            per_device[dev]["reason"] += " (no CUDA device visible now)"
    report["ops"] = {op: {dev: dict(v) for dev, v in per_device.items()} for op in ops.OPS}
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
        if "cuda" in ext["devices"]:
            lines.append("CUDA kernels compiled for: " + (ops._build_codes_words(ext["cuda_archs"]) if ext["cuda_archs"]
                                                           else "unknown (the library does not say)"))
    else:
        lines.append(f"extension: unavailable — {ext['error']}")
    for key, status in report["devices"].items():
        where = key
        if "name" in status:
            runs = "" if "runs" not in status else f", runs {status['runs']}" if status["runs"] else ", no code for it"
            where += f" ({status['name']}, {status['capability']}{runs})"
        lines.append(f"self-check on {where}: {status['self_check']}")
    for op, per_device in report["ops"].items():
        for dev, choice in per_device.items():
            lines.append(f"  {op} on {dev}: {choice['backend']} — {choice['reason']}")
    return lines
