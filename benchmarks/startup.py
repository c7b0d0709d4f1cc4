"""How fast commands start, against ``python -c "import torch"``, measured side by side in one run.

    python benchmarks/startup.py [--repeats 5] [--json out.json]

Each command runs ``--repeats`` times, interleaved with the others so that load on the machine falls on all of
them alike; the table shows each one's median wall time and its ratio to the torch import. Targets:
``--help`` of every command ≤ 0.5× (help imports no torch), ``robustdistill plugins`` ≤ 1.3× (it loads every
plugin). The first ``plugins`` call, untimed, writes the catalog that ``train --help`` reads.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HELP_TARGET = 0.5
PLUGINS_TARGET = 1.3
COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "robustdistill --help": [sys.executable, "-m", "robustdistill", "--help"],
    "train --help": [sys.executable, "-m", "robustdistill", "train", "--help"],
    "eval --help": [sys.executable, "-m", "robustdistill", "eval", "--help"],
    "report --help": [sys.executable, "-m", "robustdistill", "report", "--help"],
    "finetune-head --help": [sys.executable, "-m", "robustdistill", "finetune-head", "--help"],
    "doctor --help": [sys.executable, "-m", "robustdistill", "doctor", "--help"],
    "plugins --help": [sys.executable, "-m", "robustdistill", "plugins", "--help"],
    "plugins": [sys.executable, "-m", "robustdistill", "plugins"],
}


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(repeats: int) -> dict[str, float]:
    wall(COMMANDS["plugins"])  # warm the file cache and write the catalog
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        for name, command in COMMANDS.items():
            times[name].append(wall(command))
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, metavar="FILE")
    args = parser.parse_args(argv)
    medians = measure(args.repeats)
    base = medians["import torch"]
    rows = []
    print(f"{'command':24s} {'median s':>9s} {'× torch':>8s}  target")
    for name, seconds in medians.items():
        ratio = seconds / base
        target = None if name == "import torch" else PLUGINS_TARGET if name == "plugins" else HELP_TARGET
        met = "" if target is None else f"≤ {target}× {'met' if ratio <= target else 'MISSED'}"
        print(f"{name:24s} {seconds:9.3f} {ratio:8.2f}  {met}")
        rows.append({"command": name, "median_s": seconds, "ratio": ratio, "target": target,
                     "met": None if target is None else ratio <= target})
    report = {"repeats": args.repeats, "python": sys.version.split()[0], "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
