"""``robustdistill report`` and ``train --tensorboard``: tables, figures and bad input."""
import json
import sys

import pytest
import torch
from torch import nn

from robustdistill.cli import main
from robustdistill.report import RunRecord, input_gradients, load_run, results_table

from conftest import needs_fashion_mnist

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write_run(path, history, config, evaluation=None):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
    (path / "config.json").write_text(json.dumps(config))
    if evaluation is not None:
        (path / "eval.json").write_text(json.dumps(evaluation))
    return path


def test_results_table_rows_and_missing_evaluation(tmp_path):
    history = [{"epoch": 1, "loss": 1.0, "terms": {}, "train_seconds": 50.0, "seconds": 60.0},
               {"epoch": 2, "loss": 0.5, "terms": {}, "train_seconds": 70.0, "seconds": 75.0}]
    a = write_run(tmp_path / "a", history, {"plugin": ["rslad", "igdm"], "model": "cnn", "seed": 3},
                  {"clean": 0.8123, "pgd20": 0.4, "autoattack": 0.35, "eps": 0.1, "n": 1000, "seconds": {}})
    b = write_run(tmp_path / "b", history[:1], {"plugin": ["at"], "model": "resnet18", "seed": 0})
    table = results_table([load_run(a), load_run(b)])
    lines = table.splitlines()
    assert lines[0] == ("| run | method | model | seed | epochs | s/epoch | wall time | clean | PGD-20 | AutoAttack "
                        "| eval images |")
    assert lines[2] == "| a | rslad+igdm | cnn | 3 | 2 | 60.0 | 2m15s | 81.23 | 40.00 | 35.00 | 1000 |"
    assert lines[3] == "| b | at | resnet18 | 0 | 1 | 50.0 | 1m00s | — | — | — | — |"
    assert "No evaluation file for: b" in table and "robustdistill eval" in table


def test_input_gradients_of_a_linear_model_match_the_hand_computed_value():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    x = torch.tensor([[1.0, 1.0]])
    # logits (1, 2); softmax p = (1/(1+e), e/(1+e)); dCE/dlogits = p − onehot(0); dCE/dx = Wᵀ(p − onehot(0))
    e = torch.e
    p0, p1 = 1 / (1 + e), e / (1 + e)
    expected = torch.tensor([[p0 - 1, 2 * p1]])
    assert torch.allclose(input_gradients(model, x, torch.tensor([0])), expected, atol=1e-6)
    assert model.weight.grad is None


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "is not a directory"),
    (lambda p: p.mkdir(), "has no metrics.jsonl"),
    (lambda p: (p.mkdir(), (p / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n')), "metrics.jsonl:2"),
])
def test_bad_run_directories(capsys, tmp_path, setup, message):
    run_dir = tmp_path / "run"
    setup(run_dir)
    code, _, err = run_cli(capsys, "report", str(run_dir), "--out", str(tmp_path / "r"))
    assert code == 2 and message in err and "Traceback" not in err


def test_bad_report_options(capsys, tmp_path):
    run_dir = write_run(tmp_path / "a", [{"epoch": 1, "loss": 1.0, "terms": {}}], {})
    for args, message in ((["--eps", "0,2"], "give radii in [0, 1]"), (["--eps", "x"], "not a number"),
                          (["--pgd-steps", "0"], "--pgd-steps 0 must be at least 1")):
        code, _, err = run_cli(capsys, "report", str(run_dir), "--out", str(tmp_path / "r"), *args)
        assert code == 2 and message in err


def test_tensorboard_without_the_package_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code, _, err = run_cli(capsys, "train", "--tensorboard", "--subset", "64", "--out", str(tmp_path / "r"))
    assert code == 2 and "pip install tensorboard" in err
    assert not (tmp_path / "r").exists()


def tensorboard_scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.mark.slow
@needs_fashion_mnist
def test_report_on_real_runs(capsys, tmp_path):
    common = ["--subset", "256", "--batch-size", "64", "--val-size", "64", "--attack-steps", "2",
              "--val-attack-steps", "2"]
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    assert run_cli(capsys, "train", "--plugin", "at", "--epochs", "2", "--tensorboard", *common,
                   "--out", str(teacher))[0] == 0
    assert run_cli(capsys, "train", "--plugin", "rslad", "--teacher", str(teacher / "last.pt"), "--epochs", "1",
                   "--tensorboard", *common, "--out", str(student))[0] == 0
    assert run_cli(capsys, "train", "--plugin", "rslad", "--teacher", str(teacher / "last.pt"), "--epochs", "2",
                   "--tensorboard", "--resume", *common, "--out", str(student))[0] == 0
    for run_dir in (teacher, student):
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        logged = tensorboard_scalars(run_dir, "loss")
        assert [step for step, _ in logged] == [1, 2]  # the resumed run logs each epoch once
        assert [v for _, v in logged] == pytest.approx([m["loss"] for m in history], rel=1e-6)
    assert len(tensorboard_scalars(student, "terms/kl_adv")) == 2
    assert run_cli(capsys, "eval", str(teacher / "last.pt"), "--subset", "64", "--attacks", "clean,pgd20",
                   "--json", str(teacher / "eval.json"))[0] == 0

    out = tmp_path / "report"
    code, stdout, _ = run_cli(capsys, "report", str(teacher), str(student), "--out", str(out), "--subset", "64",
                              "--pgd-steps", "3", "--grad-images", "3")
    assert code == 0 and "wrote" in stdout
    for name in ("curves.png", "loss_terms.png", "robust_vs_eps.png", "gradients.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    curves = json.loads((out / "robust_vs_eps.json").read_text())
    assert set(curves) == {"teacher", "student"}
    for curve in curves.values():
        assert curve["eps"] == pytest.approx([0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2])
        assert curve["accuracy"][0] >= curve["accuracy"][-1]
    table = (out / "results.md").read_text()
    evaluation = json.loads((teacher / "eval.json").read_text())
    assert "| teacher | at | cnn | 0 | 2 |" in table and f"{100 * evaluation['pgd20']:.2f}" in table
    assert "| student | rslad | cnn | 0 | 2 |" in table and "No evaluation file for: student" in table


def test_results_table_accepts_plugin_attack_columns(tmp_path):
    run = RunRecord(tmp_path, {"plugin": ["at"]}, [], {"clean": 0.5, "my-attack": 0.25, "n": 10})
    table = results_table([run])
    assert "| clean | my-attack |" in table and "| 50.00 | 25.00 | 10 |" in table
