"""scripts/comparison.py: trains, evaluates and tabulates rows over seeds under one folder; a rerun skips finished
runs; the summary's means, standard deviations and IGDM − base differences by hand."""
import json
import math
from pathlib import Path

import pytest

import comparison
from support import needs_fashion_mnist


def write_eval(run_dir: Path, name: str, n: int, pending=(), **accuracy):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"{name}.json").write_text(json.dumps({**accuracy, "eps": 0.1, "n": n, "pending": list(pending),
                                                      "settings": {}, "seconds": {k: 1.0 for k in accuracy}}))


def test_summary_mean_sd_over_seeds_and_igdm_minus_base_by_hand(tmp_path):
    evals = [comparison.EvalSpec("eval", "clean,pgd20"), comparison.EvalSpec("aa", "autoattack", 100)]
    pgd = {("ard", 0): 0.30, ("ard", 1): 0.34, ("ard", 2): 0.35,
           ("ard+igdm", 0): 0.40, ("ard+igdm", 1): 0.41, ("ard+igdm", 2): 0.45}
    for (row, seed), value in pgd.items():
        run_dir = tmp_path / row / f"seed-{seed}"
        write_eval(run_dir, "eval", 1000, clean=0.7, pgd20=value)
        if seed < 2:
            write_eval(run_dir, "aa", 100, autoattack=value - 0.02)
    write_eval(tmp_path / "ard+igdm" / "seed-2", "aa", 100, pending=["autoattack"])  # unfinished: left out
    comparison.write_summary(tmp_path, ["at", "ard", "ard+igdm"], [0, 1, 2], evals)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["columns"] == ["eval/clean", "eval/pgd20", "aa/autoattack"]
    mean, sd = summary["mean_sd"]["ard"]["eval/pgd20"].values()
    assert mean == pytest.approx(0.33) and sd == pytest.approx(math.sqrt((0.03 ** 2 + 0.01 ** 2 + 0.02 ** 2) / 2))
    diff = summary["igdm_minus_base"]["ard"]["eval/pgd20"]
    assert diff["per_seed"] == pytest.approx([0.10, 0.07, 0.10])
    assert diff["mean"] == pytest.approx(0.09)
    assert diff["sd"] == pytest.approx(math.sqrt((0.01 + 0.04 + 0.01) * 1e-2 / 2))
    assert summary["igdm_minus_base"]["ard"]["aa/autoattack"]["per_seed"] == pytest.approx([0.10, 0.07])
    text = (tmp_path / "summary.md").read_text()
    assert "| row | seeds | clean (1000) | PGD-20 (1000) | AutoAttack (100) |" in text
    assert "| at | 0 | — | — | — |" in text
    assert "| ard | 2 | 70.00 ± 0.00 | 33.00 ± 2.65 | 30.00 ± 2.83 |" in text
    assert "| ard+igdm | 2 | 70.00 ± 0.00 | 42.00 ± 2.65 | 38.50 ± 0.71 |" in text
    assert "| ard | 0.00 ± 0.00 | 9.00 ± 1.73 | 8.50 ± 2.12 |" in text.split("IGDM − base")[1]
    assert "ard-igdm-base" not in summary["igdm_minus_base"]

    # the base as ard+igdm trains it, without IGDM's term: ard+igdm − that row beside ard+igdm − ard
    for seed, value in enumerate((0.38, 0.40, 0.40)):
        write_eval(tmp_path / "ard-igdm-base" / f"seed-{seed}", "eval", 1000, clean=0.7, pgd20=value)
    comparison.write_summary(tmp_path, ["ard", "ard+igdm", "ard-igdm-base"], [0, 1, 2], evals)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["igdm_minus_base"]["ard-igdm-base"]["eval/pgd20"]["per_seed"] == pytest.approx([0.02, 0.01, 0.05])
    assert summary["igdm_minus_base"]["ard"]["eval/pgd20"]["per_seed"] == pytest.approx([0.10, 0.07, 0.10])
    assert "| ard-igdm-base | 0.00 ± 0.00 | 2.67 ± 2.08 | — |" in (tmp_path / "summary.md").read_text()

    # a later invocation for one seed with another evaluation: the summary keeps every seed and evaluation
    write_eval(tmp_path / "ard" / "seed-0", "aa1000", 1000, autoattack=0.25)
    comparison.write_summary(tmp_path, ["ard", "ard+igdm"], [0], [comparison.EvalSpec("aa1000", "autoattack", 1000)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["seeds"] == [0, 1, 2]
    assert summary["columns"] == ["aa1000/autoattack", "aa/autoattack", "eval/clean", "eval/pgd20"]
    assert summary["mean_sd"]["ard"]["eval/pgd20"]["mean"] == pytest.approx(0.33)


def test_seeds_and_evaluations_are_parsed_with_clear_errors():
    args = comparison.parse_args(["--seeds", "0, 1,2", "--eval", "eval:clean,pgd20", "--eval", "aa:autoattack:1000"])
    assert args.seeds == [0, 1, 2]
    assert args.evals == [comparison.EvalSpec("eval", "clean,pgd20"), comparison.EvalSpec("aa", "autoattack", 1000)]
    default = comparison.parse_args(["--attacks", "clean", "--eval-subset", "50"])
    assert default.seeds == [0] and default.evals == [comparison.EvalSpec("eval", "clean", 50)]
    for bad, message in ((["--seeds", "0,x"], "not a comma-separated list"), (["--seeds", "1,1"], "distinct"),
                         (["--eval", "aa"], "NAME:ATTACKS"), (["--eval", "a:clean", "--eval", "a:pgd20"], "share")):
        with pytest.raises(SystemExit, match=message):
            comparison.parse_args(bad)


def test_a_second_comparison_on_the_same_folder_is_refused(tmp_path):
    with comparison._lock(tmp_path):
        with pytest.raises(SystemExit, match="another comparison is running"):
            with comparison._lock(tmp_path):
                pass
    with comparison._lock(tmp_path):  # released
        pass


@pytest.mark.slow
@needs_fashion_mnist
def test_comparison_rows_over_seeds_train_evaluate_mirror_and_resume(tmp_path, capsys):
    out, results = tmp_path / "cmp", tmp_path / "docs" / "round"
    args = ["--out", str(out), "--results", str(results), "--rows", "natural,rslad+igdm", "--seeds", "0,1",
            "--subset", "256", "--epochs", "1", "--teacher-epochs", "1", "--teacher-model", "cnn",
            "--eval", "eval:clean,pgd20:32", "--eval", "small:clean:16", "--device", "cpu", "--no-report",
            "--train-option=--attack-steps=2", "--train-option=--val-split=32"]
    assert comparison.main(args) == 0
    assert (out / "teacher-at" / "last.pt").exists() and (out / "teacher-at" / "eval.json").exists()
    for row in ("natural", "rslad+igdm"):
        for seed in (0, 1):
            run_dir = out / row / f"seed-{seed}"
            assert (run_dir / "last.pt").exists() and (run_dir / "eval.json").exists(), run_dir
            assert json.loads((run_dir / "small.json").read_text())["n"] == 16
            assert json.loads((run_dir / "config.json").read_text())["seed"] == seed
            mirrored = results / row / f"seed-{seed}"
            assert {p.name for p in mirrored.iterdir()} == {"config.json", "metrics.jsonl", "environment.json",
                                                            "eval.json", "small.json"}
    assert not (out / "teacher-trades").exists()
    assert not list(results.rglob("*.pt")), "no checkpoints in the mirror"
    summary = (results / "summary.md").read_text()
    assert "| natural | 2 |" in summary and "| rslad+igdm | 2 |" in summary
    commands = (out / "commands.sh").read_text()
    assert "--plugin=rslad --plugin=igdm" in commands and f"--teacher {out / 'teacher-at' / 'last.pt'}" in commands
    assert "--seed 1" in commands and (results / "commands.sh").read_text() == commands

    # a longer run of one seed resumes; finished runs and the teacher are not trained or evaluated again
    (out / "natural" / "seed-1" / "eval.json").unlink()
    assert comparison.main([*args, "--rows", "natural", "--seeds", "1", "--epochs", "2"]) == 0
    new_commands = (out / "commands.sh").read_text()[len(commands):]
    assert "train --plugin=natural" in new_commands and "--resume" in new_commands and "--seed 1" in new_commands
    assert "--seed 0" not in new_commands.replace("--teacher-seed", "")
    assert "train --plugin=at" not in new_commands and "--plugin=rslad" not in new_commands
    assert f"eval {out / 'teacher-at'}" not in new_commands


def test_unknown_row_is_named(tmp_path):
    with pytest.raises(SystemExit, match="unknown rows nope"):
        comparison.main(["--out", str(tmp_path), "--rows", "natural,nope"])


@pytest.mark.parametrize("base", sorted(comparison.IGDM_BASE_OPTIONS))
@pytest.mark.parametrize("classes", [10, 100])
def test_igdm_base_rows_train_the_base_that_the_igdm_composition_resolves(base, classes):
    """The control rows' options are written out in the script: they must equal what ``BASE+igdm`` resolves."""
    from dataclasses import replace as replace_info

    from robustdistill._data import DATASET_INFOS
    from robustdistill.testing import plugin_host, resolved_config, train_config

    host = plugin_host()
    info = replace_info(DATASET_INFOS["cifar10"], num_classes=classes)
    control = resolved_config(host, [base], info, train_config(host, *comparison.IGDM_BASE_OPTIONS[base]))
    composed = resolved_config(host, [base, "igdm"], info)
    assert dict(getattr(control, base)) == dict(getattr(composed, base))
    if (base, classes) != ("adaad", 100):  # AdaAD's own CIFAR-100 code already uses batchmean
        assert dict(getattr(resolved_config(host, [base], info), base)) != dict(getattr(composed, base))
