"""The GPU check's own parts that run anywhere: reading pytest's junit files and writing the summary."""
from gpu_check import Runner, StageResult, _junit_cases, write_summary

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="3">
<testcase classname="tests.test_ops" name="test_a[cpu]" time="0.1"/>
<testcase classname="tests.test_ops_device" name="test_b[cuda]" time="0.0"><skipped message="no CUDA device"/></testcase>
<testcase classname="tests.test_ops_device" name="test_c[cpu]" time="0.2"><failure message="boom"/></testcase>
</testsuite></testsuites>"""


def test_junit_cases_are_read_per_file_with_their_outcome(tmp_path):
    path = tmp_path / "tests.xml"
    path.write_text(JUNIT)
    assert _junit_cases(path) == [
        {"file": "tests/test_ops.py", "name": "tests/test_ops.py::test_a[cpu]", "outcome": "passed"},
        {"file": "tests/test_ops_device.py", "name": "tests/test_ops_device.py::test_b[cuda]", "outcome": "skipped"},
        {"file": "tests/test_ops_device.py", "name": "tests/test_ops_device.py::test_c[cpu]", "outcome": "failed"}]
    assert _junit_cases(tmp_path / "missing.xml") == []


def test_summary_lists_each_step_and_the_tests_per_file(tmp_path):
    runner = Runner(tmp_path, 60.0, "python", has_cuda=False)
    runner.results = [StageResult("tests", "failed", 1.5, "1 passed, 1 failed",
                                  {"files": {"tests/test_ops.py": {"passed": 1, "failed": 1}},
                                   "failed": ["tests/test_ops.py::test_c[cpu]"]}),
                      StageResult("train-step", "skipped", 0.0, "skipped: needs a CUDA GPU")]
    assert write_summary(runner, ["gpu_check.py", str(tmp_path)]) is False
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# gpu_check: FAILED")
    assert "| tests/test_ops.py | 1 | 1 | 0 |" in md
    assert "Failed: `tests/test_ops.py::test_c[cpu]`" in md
    assert "Skipped: train-step (needs a CUDA GPU)" in md
