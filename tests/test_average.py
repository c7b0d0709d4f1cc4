"""Weight averaging (``--average swa|ema``): the average as the papers define it, its BatchNorm statistics, its
checkpoint and exact resume, its validation, and ``eval``/``report`` evaluating it as the run's final model."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from robustdistill import RobustDistillError, hookimpl
from robustdistill._checkpoint import load_checkpoint
from robustdistill._cli import main
from robustdistill.plugins.average import start_epoch
from robustdistill.testing import plugin_host, train_run


class Snapshots:
    """Keeps the student's parameters at every epoch end (before the average's update) and after every step."""

    def __init__(self):
        self.epochs: list[dict[str, torch.Tensor]] = []
        self.steps: list[dict[str, torch.Tensor]] = []

    @hookimpl(tryfirst=True)
    def epoch_end(self, run):
        self.epochs.append({k: v.detach().clone() for k, v in run.student.named_parameters()})

    @hookimpl(tryfirst=True)
    def step_end(self, run):
        self.steps.append({k: v.detach().clone() for k, v in run.student.named_parameters()})


def average_parameters(run):
    return dict(run.view.state["average"]["model"].module.named_parameters())


def test_swa_is_the_equal_weight_mean_of_the_students_from_the_start_epoch(tmp_path):
    snapshots = Snapshots()
    host = plugin_host(snapshots, names=["snapshots"])
    run = train_run(host, ["at"], tmp_path / "run", "--epochs", "4", "--average", "swa", "--average-start", "2")
    averaged = average_parameters(run)
    for name, value in averaged.items():
        expected = torch.stack([s[name] for s in snapshots.epochs[1:]]).mean(0)  # epochs 2, 3, 4
        torch.testing.assert_close(value, expected, msg=name)
    assert [m.get("average_updates") for m in run.view.history] == [None, 1, 2, 3]
    assert "val_average_pgd" not in run.view.history[0] and "val_average_pgd" in run.view.history[1]


def test_swa_recomputes_batchnorm_over_the_training_images(tmp_path):
    run = train_run(plugin_host(), ["natural"], tmp_path / "run", "--epochs", "2", "--average", "swa",
                    "--average-start", "1")
    model = run.view.state["average"]["model"].module
    reference = copy.deepcopy(model)
    torch.optim.swa_utils.update_bn(run.view.train_batches(), reference)
    for (name, buf), ref in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(buf, ref, msg=name)
    assert not torch.equal(dict(model.named_buffers())["features.1.running_mean"],
                           dict(run.student.named_buffers())["features.1.running_mean"])


def test_ema_follows_every_step(tmp_path):
    snapshots = Snapshots()
    host = plugin_host(snapshots, names=["snapshots"])
    run = train_run(host, ["natural"], tmp_path / "run", "--average", "ema", "--average-decay", "0.5")
    averaged = average_parameters(run)
    for name, value in averaged.items():
        expected = snapshots.steps[0][name]  # the first update copies
        for step in snapshots.steps[1:]:
            expected = 0.5 * expected + 0.5 * step[name]
        torch.testing.assert_close(value, expected, msg=name)
    assert run.view.history[0]["average_updates"] == run.view.steps_per_epoch


def test_the_average_resumes_exactly_and_is_the_final_model(tmp_path):
    args = ["--epochs", "3", "--average", "swa", "--average-start", "2", "--checkpoint-every", "2"]
    host = plugin_host()
    unbroken = train_run(host, ["at"], tmp_path / "unbroken", *args)
    train_run(host, ["at"], tmp_path / "resumed", *args[:1], "2", *args[2:])
    resumed = train_run(host, ["at"], tmp_path / "resumed", *args, resume=True)
    for a, b in zip(average_parameters(resumed).values(), average_parameters(unbroken).values()):
        assert torch.equal(a, b)
    ckpt = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert ckpt["final"] == "average" and set(ckpt["models"]) == {"average"}
    saved = ckpt["models"]["average"]
    for name, value in resumed.view.state["average"]["model"].module.state_dict().items():
        assert torch.equal(saved[name], value), name
    assert [m["val_average_pgd"] for m in resumed.view.history[1:]] == \
           [m["val_average_pgd"] for m in unbroken.view.history[1:]]


def test_before_the_first_update_the_student_is_final(tmp_path):
    train_run(plugin_host(), ["natural"], tmp_path / "run", "--average", "swa", "--average-start", "5")
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["final"] == "student" and ckpt["models"] == {}


def test_eval_of_a_run_directory_evaluates_its_final_model(tmp_path, capsys):
    out = tmp_path / "run"
    train_run(plugin_host(), ["natural"], out, "--epochs", "2", "--average", "swa", "--average-start", "1")
    common = ["--attacks", "clean", "--subset", "32", "--device", "cpu"]
    assert main(["eval", str(out), *common, "--json", str(tmp_path / "final.json")]) == 0
    assert main(["eval", f"{out}@student", *common, "--json", str(tmp_path / "student.json")]) == 0
    assert main(["eval", f"{out}@average", *common, "--json", str(tmp_path / "average.json")]) == 0
    final, student, average = (json.loads((tmp_path / f"{n}.json").read_text())
                               for n in ("final", "student", "average"))
    assert final["weights"] == average["weights"] == "average" and student["weights"] == "student"
    assert final["weights_sha256"] == average["weights_sha256"] != student["weights_sha256"]
    assert "(average weights)" in capsys.readouterr().out
    assert main(["eval", f"{out}@ema", *common]) == 2
    assert "holds no weights named 'ema'; it holds: student, average" in capsys.readouterr().err


def test_bad_averaging_options_are_refused(tmp_path):
    assert start_epoch(0.5, 10) == 5 and start_epoch(3.0, 10) == 3 and start_epoch(0.01, 10) == 1
    with pytest.raises(RobustDistillError, match="--average-start 2.5 is neither an epoch"):
        start_epoch(2.5, 10)
    with pytest.raises(RobustDistillError, match="--average-decay 1.5 must be between 0 and 1"):
        train_run(plugin_host(), ["natural"], tmp_path / "run", "--average", "ema", "--average-decay", "1.5")


def test_averaging_is_recorded_with_its_resolved_start(tmp_path):
    train_run(plugin_host(), ["natural"], tmp_path / "run", "--epochs", "4", "--average", "swa")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["plugins"]["average"] == {"mode": "swa", "start": 3.0, "decay": 0.999, "bn": "refresh"}
    assert "first epoch at the decayed learning rate" in config["sources"]["average.start"]["source"]
