"""What `train` prints and records: progress in a log file, the epoch line's weighted terms, and config.json
holding what the run actually used."""
import json

import pytest

from robustdistill.api import format_duration
from robustdistill.plugins.progress import weighted_loss_line
from robustdistill.testing import plugin_host, train_run


def test_progress_lines_reach_a_log_file(tmp_path, capsys):
    run = train_run(plugin_host(), ["at"], tmp_path / "run", "--batch-size", "64", "--epochs", "2",
                    "--progress-interval", "0")
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    steps = run.view.steps_per_epoch
    assert len(lines) == 2 * steps, "stderr is not a terminal: one line per step at interval 0"
    assert lines[0].startswith(f"epoch 1/2  step 1/{steps}  loss ")
    assert lines[-1].startswith(f"epoch 2/2  step {steps}/{steps}  loss ")
    assert all(" img/s  epoch left ~" in line and "run left ~" in line for line in lines)
    assert lines[-1].split("run left ~")[1].startswith("0.0s")
    assert out.splitlines()[0].startswith(f"training at · cnn on synthetic (224 images, {steps} steps per epoch)")
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and " = ce_adv " in epoch_lines[0] and "val pgd" in epoch_lines[0]


def test_the_epoch_line_shows_the_loss_as_its_weighted_terms():
    metrics = {"loss": 1.8931, "weighted_terms": {"igdm": 0.8331, "ce_adv": 1.06}, "terms": {"igdm": 0.0139}}
    assert weighted_loss_line(metrics) == "loss 1.8931 = igdm 0.8331 + ce_adv 1.0600"
    assert format_duration(4.24) == "4.2s" and format_duration(42.4) == "42s" and format_duration(425) == "7m05s"
    assert format_duration(11520) == "3h12m"


def test_records_say_what_the_run_used(tmp_path):
    train_run(plugin_host(), ["at", "igdm"], tmp_path / "run", "--teacher", str(teacher(tmp_path)))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["amp"], config["cudnn_benchmark"], config["channels_last"]) == ("off", "off", "off"), "on a CPU"
    assert config["eps"] == 0.1 and config["attack_steps"] == 3 and config["model"] == "cnn", "the dataset's"
    assert config["attack"] == "ce" and config["ops_backend"] in ("auto", "ext", "ref")
    assert config["plugins"]["igdm"]["alpha"] == 60.0 and config["plugins"]["igdm"]["ramp_epochs"] == 1
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    weighted, unweighted = history[0]["weighted_terms"], history[0]["terms"]
    assert sum(weighted.values()) == pytest.approx(history[0]["loss"], rel=1e-6)
    assert weighted["igdm"] == pytest.approx(60.0 * unweighted["igdm"], rel=1e-6)


def teacher(tmp_path):
    out = tmp_path / "teacher"
    train_run(plugin_host(), ["at"], out)
    return out
