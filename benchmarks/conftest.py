"""Prints each benchmark module's summary table (times, GB/s, ratios) after pytest-benchmark's own."""
import sys

import pytest


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    for name, module in list(sys.modules.items()):
        if name.split(".")[-1].endswith("_bench") and hasattr(module, "summary_lines"):
            for line in module.summary_lines():
                terminalreporter.write_line(line)
