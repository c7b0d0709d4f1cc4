"""scripts/comparison.py: trains, evaluates and tabulates rows under one folder; a rerun skips finished rows."""
import sys
from pathlib import Path

import pytest

from conftest import needs_fashion_mnist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import comparison  # noqa: E402

pytestmark = [pytest.mark.slow, needs_fashion_mnist]


def test_comparison_rows_train_evaluate_and_resume(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["--out", str(out), "--rows", "natural,rslad+igdm", "--subset", "256", "--epochs", "1",
            "--teacher-epochs", "1", "--teacher-model", "cnn", "--eval-subset", "32", "--attacks", "clean,pgd20",
            "--device", "cpu", "--no-report", "--train-option=--attack-steps=2", "--train-option=--val-size=32"]
    assert comparison.main(args) == 0
    for row in ("teacher-at", "natural", "rslad+igdm"):
        assert (out / row / "last.pt").exists() and (out / row / "eval.json").exists(), row
    assert not (out / "teacher-trades").exists()
    table = (out / "report" / "results.md").read_text()
    for row in ("| teacher-at | at |", "| natural | natural |", "| rslad+igdm | rslad+igdm |"):
        assert row in table
    commands = (out / "commands.sh").read_text()
    assert "--plugin=rslad --plugin=igdm" in commands and f"--teacher {out / 'teacher-at' / 'last.pt'}" in commands

    # a longer student run resumes; finished rows and teachers are not trained or evaluated again
    (out / "natural" / "eval.json").unlink()
    assert comparison.main([*args, "--rows", "natural", "--epochs", "2"]) == 0
    new_commands = (out / "commands.sh").read_text()[len(commands):]
    assert "train --plugin=natural" in new_commands and "--resume" in new_commands
    assert "train --plugin=at" not in new_commands and "--plugin=rslad" not in new_commands
    assert f"eval {out / 'teacher-at'}" not in new_commands
    table = (out / "report" / "results.md").read_text()  # the table keeps the rows of earlier rounds
    assert "| teacher-at | at |" in table and "| rslad+igdm |" in table and "| natural | natural | cnn | 0 | 2 |" in table


def test_unknown_row_is_named(tmp_path):
    with pytest.raises(SystemExit, match="unknown rows nope"):
        comparison.main(["--out", str(tmp_path), "--rows", "natural,nope"])
