"""The steps of ``benchmarks/gpu_check.sh``: build, the device tests, the benchmarks and a summary.

``python benchmarks/gpu_check.py OUT_DIR`` runs the steps below in order, each with a time limit, and writes
``OUT_DIR/summary.md`` and ``OUT_DIR/summary.json`` (plus one log per step in ``OUT_DIR/logs``). It exits
non-zero when a step fails. Without a CUDA device the steps that need one are skipped (and listed), and the
others run on the CPU.

- ``build``: the extension is built from this checkout's sources (not stale), has kernels for the
  devices present and passes their self-checks; otherwise it is rebuilt (``pip install
  --no-build-isolation --no-deps -e .``; without a GPU, CPU kernels only) and checked again.
- ``tests``: the kernel tests (``tests/test_ops.py``, ``tests/test_ops_device.py``: odd and large shapes,
  a tensor of more than 2³¹ elements, fp64 gradcheck, PGD loops in CUDA graphs and under ``torch.compile``);
  with a GPU also every test marked ``cuda`` (bf16 against fp32 training included), the CLI test of the
  run's environment and the resume test. ``ROBUSTDISTILL_REQUIRE_EXT=1``: a kernel test cannot skip.
- ``train-step`` (GPU): ``benchmarks/train_step.py``, the RSLAD+IGDM engine step against the
  reference step at batch 128 and 512 (images/s, ratio, MFU).
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
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
GPU_BUDGET_S = 470.0  # 8 minutes with the shell script's start
CPU_BUDGET_S = 180.0


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
            "import json\nfrom robustdistill import _doctor\n"
            "report = _doctor.backend_report()\n"
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
        lines = self.python_json(result, "import json\nfrom robustdistill import _doctor\n"
                                         "print(json.dumps(_doctor.doctor_lines()))")
        (self.logs / "doctor.txt").write_text("\n".join(lines) + "\n")
        result.details = {"rebuilt": rebuilt, "extension": report["extension"], "devices": report["devices"]}
        archs = report["extension"].get("cuda_archs") or []
        result.summary = (("rebuilt; " if rebuilt else "up to date; ") + "self-check passed on "
                          + ", ".join(report["devices"]) + (f"; CUDA code {','.join(archs)}" if archs else ""))

    def tests(self, result: StageResult) -> None:
        kernel_tests = ["tests/test_ops.py", "tests/test_ops_device.py"]
        runs = [("tests", kernel_tests)]
        if self.full_suite:
            runs = [("tests", ["tests"])]
        elif self.has_cuda:  # every CUDA test, the CPU kernel tests, and the tests only a GPU machine failed
            runs = [("tests-cuda", ["tests", "-m", "cuda"]),
                    ("tests", [*kernel_tests, "tests/test_cli.py::test_run_records_its_environment_and_ops_backend",
                               "tests/test_e2e.py::test_resume_continues_exactly_where_it_stopped", "-m", "not cuda"])]
        totals: dict[str, int] = {}
        files: dict[str, dict[str, int]] = {}
        failed: list[str] = []
        for name, selection in runs:
            junit = self.logs / f"{name}.xml"
            proc = self.command(result, [self.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                         f"--junitxml={junit}", *selection], 3600 if self.full_suite else 300)
            for case in _junit_cases(junit):
                totals[case["outcome"]] = totals.get(case["outcome"], 0) + 1
                counts = files.setdefault(case["file"], {})
                counts[case["outcome"]] = counts.get(case["outcome"], 0) + 1
                if case["outcome"] == "failed":
                    failed.append(case["name"])
            result.details = {"totals": totals, "files": files, "failed": failed}
            result.summary = ", ".join(f"{v} {k}" for k, v in totals.items())
            if proc is None:
                raise Failure(f"tests ran out of time ({result.summary})")
            if proc.returncode != 0:
                raise Failure(f"tests failed: {result.summary} (see {result.log})")

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


def _junit_cases(path: Path) -> list[dict[str, str]]:
    """Each test case of a junit file: its file, name and outcome (passed, failed or skipped)."""
    if not path.exists():
        return []
    import xml.etree.ElementTree as ET

    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = ("failed" if case.find("failure") is not None or case.find("error") is not None
                   else "skipped" if case.find("skipped") is not None else "passed")
        module = case.get("classname", "").split(".")
        file = "/".join(module[:2]) + ".py" if len(module) >= 2 else case.get("classname", "?")
        cases.append({"file": file, "name": f"{file}::{case.get('name')}", "outcome": outcome})
    return cases


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
        if r.name == "tests" and r.details.get("files"):
            md += ["", "Tests per file:", "", "| file | passed | failed | skipped |", "|---|---|---|---|"]
            md += [f"| {file} | {c.get('passed', 0)} | {c.get('failed', 0)} | {c.get('skipped', 0)} |"
                   for file, c in sorted(r.details["files"].items())]
            if r.details.get("failed"):
                md += ["", "Failed: " + ", ".join(f"`{name}`" for name in r.details["failed"])]
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
    args = parser.parse_args(argv)
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
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
    runner.stage("train-step", runner.train_step, needs_cuda=True, skip_reason=blocked)
    runner.stage("kernel-bench", runner.kernel_bench, skip_reason=blocked)
    ok = write_summary(runner, [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    skipped = [r.name for r in runner.results if r.status == "skipped"]
    print(f"gpu_check: {'passed' if ok else 'FAILED'} in {sum(r.seconds for r in runner.results):.0f} s"
          + (f"; skipped: {', '.join(skipped)}" if skipped else "") + f"; summary in {out / 'summary.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
