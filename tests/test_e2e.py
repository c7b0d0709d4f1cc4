"""End to end on real Fashion-MNIST: train natural and PGD-AT models, evaluate them, resume a run."""
import json

import pytest
import torch

from robustdistill._checkpoint import load_checkpoint
from robustdistill._cli import main

from support import needs_fashion_mnist

pytestmark = [pytest.mark.slow, needs_fashion_mnist]

TRAIN = ["--dataset", "fashion-mnist", "--model", "cnn", "--subset", "4096", "--val-split", "200",
         "--lr", "0.05", "--seed", "0"]
EVAL = ["--attacks", "clean,fgsm,pgd20,cw", "--subset", "500"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fmnist_teacher):
    """A natural and a PGD-AT model (the session's teacher) on the same 4096 images, evaluated on 500 test images."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "--plugin", "natural", "--epochs", "3", *TRAIN, "--out", str(root / "natural")]) == 0
    results = {}
    for method, out in (("natural", root / "natural"), ("at", fmnist_teacher)):
        assert main(["eval", str(out / "last.pt"), *EVAL, "--json", str(out / "eval.json")]) == 0
        results[method] = (out, json.loads((out / "eval.json").read_text()))
    return results


def test_run_directory_holds_checkpoint_metrics_and_config(runs):
    out, _ = runs["at"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    for m in lines:
        assert {"epoch", "lr", "loss", "terms", "weighted_terms", "val_clean", "val_pgd", "seconds"} <= set(m)
        assert set(m["terms"]) == set(m["weighted_terms"]) == {"ce_adv"}
        assert m["weighted_terms"]["ce_adv"] == pytest.approx(m["loss"], rel=1e-6)
    config = json.loads((out / "config.json").read_text())
    assert config["plugin"] == ["at"] and config["eps"] == pytest.approx(0.1) and config["attack_steps"] == 10
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["arch"]["name"] == "cnn" and ckpt["epoch"] == 3
    assert {"model", "optimizer", "rng", "plugins", "config", "requested", "history", "progress"} <= set(ckpt)
    assert ckpt["config"] == config and ckpt["requested"]["eps"] is None, "config.json is the checkpoint's"


def test_eval_json_has_accuracies_and_settings(runs):
    _, result = runs["at"]
    for key in ("clean", "fgsm", "pgd20", "cw"):
        assert 0.0 <= result[key] <= 1.0
    assert result["eps"] == pytest.approx(0.1) and result["n"] == 500
    assert result["clean"] >= result["pgd20"]


def test_adversarial_training_is_robust_where_natural_training_collapses(runs):
    natural, at = runs["natural"][1], runs["at"][1]
    for name, r in (("natural", natural), ("at", at)):
        print(f"\n{name}: " + " ".join(f"{k} {r[k]:.3f}" for k in ("clean", "fgsm", "pgd20", "cw")))
    assert natural["clean"] > 0.7, "the natural model learned"
    assert natural["pgd20"] < 0.25, "PGD-20 at ε=0.1 breaks a naturally trained model"
    assert at["pgd20"] > natural["pgd20"] + 0.25 and at["pgd20"] > 0.4, "PGD-AT is clearly more robust"


def test_resume_continues_exactly_where_it_stopped(tmp_path, monkeypatch):
    # bitwise on a GPU too: cuDNN must not pick its convolution algorithms by timing (--cudnn-benchmark
    # on), and must pick deterministic ones
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    args = ["train", "--plugin", "at", "--dataset", "fashion-mnist", "--subset", "256", "--val-split", "64",
            "--lr-schedule", "constant", "--attack-steps", "3", "--batch-size", "64", "--cudnn-benchmark", "off"]
    assert main([*args, "--epochs", "2", "--out", str(tmp_path / "straight")]) == 0
    assert main([*args, "--epochs", "1", "--out", str(tmp_path / "split")]) == 0
    assert main([*args, "--epochs", "2", "--resume", "--out", str(tmp_path / "split")]) == 0
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    split = load_checkpoint(tmp_path / "split" / "last.pt")
    assert split["epoch"] == 2
    for key, value in straight["model"].items():
        assert torch.equal(value, split["model"][key]), key
    metrics = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
               for d in ("straight", "split")]
    strip = lambda ms: [{k: v for k, v in m.items() if "seconds" not in k and k != "images_per_s"} for m in ms]
    assert strip(metrics[0]) == strip(metrics[1])
