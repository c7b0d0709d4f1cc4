"""End to end on real Fashion-MNIST: a PGD-AT teacher, then IGAM, RRM, GradNorm, EdgeReg and PAG students
that train, checkpoint, resume with more epochs and evaluate; cross-task transfer through finetune-head."""
import copy
import dataclasses
import json
from unittest import mock

import pytest
import torch

from robustdistill import DatasetEntry, hookimpl
from robustdistill._checkpoint import load_checkpoint
from robustdistill._cli import main
from robustdistill._data import load_fashion_mnist
from robustdistill._run import Run
from robustdistill._loop import train
from robustdistill._registry import ImageData
from robustdistill.testing import plugin_host, train_config

from support import needs_fashion_mnist

pytestmark = [pytest.mark.slow, needs_fashion_mnist]

COMMON = ["--dataset", "fashion-mnist", "--val-split", "100", "--lr", "0.05", "--seed", "0"]
STUDENT = [*COMMON, "--subset", "2048"]
EVAL = ["--attacks", "clean,pgd20", "--subset", "500"]

# Two short epochs: RRM's CE weight of 0.005 (CIFAR-10, 48 epochs) hardly trains the head in that time.
# GradNorm and EdgeReg need smooth activations (the paper's Table 4); GradNorm regularises at the threat
# model's radius (its official 4/255 is for CIFAR's 8/255 attacks); PAG aligns 2 classes per image.
OPTIONS = {
    "igam": ["--model", "cnn"],
    "rrm": ["--model", "smallcnn", "--rrm-xent-weight", "0.1", "--val-split", "50"],  # 256 features vs 128
    "gradnorm": ["--model", "cnn", "--activation", "gelu", "--gradnorm-eps", "0.1"],
    "edgereg": ["--model", "cnn", "--activation", "gelu"],
    "pag": ["--model", "cnn", "--pag-classes", "2"],
}
EVAL_OPTIONS = {"rrm": ["--subset", "200"]}  # smallcnn is the slowest to attack
TEACHERLESS = ("gradnorm", "edgereg")


@pytest.fixture(scope="module")
def root(tmp_path_factory, fmnist_teacher):
    root = tmp_path_factory.mktemp("grad")
    (root / "teacher").symlink_to(fmnist_teacher)
    return root


@pytest.fixture(scope="module")
def natural(fmnist_natural_student):
    return fmnist_natural_student


class Capture:
    """Records the plugin-owned modules and optimisers right after a resume restored them."""

    def __init__(self):
        self.modules = {}
        self.optimizer = None
        self.restore = Run.restore_optimisation_state

    def __call__(self, run):
        self.restore(run)
        self.modules = {name: copy.deepcopy((m.state_dict(), o.state_dict() if o is not None else None))
                        for name, (m, o) in run.plugin_modules.items()}
        self.optimizer = copy.deepcopy(run.optimizer.state_dict())


def same_state(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b


def train_resume_eval(root, method):
    """One epoch, then ``--resume --epochs 2`` (through the engine, watching what the resume restores), eval."""
    out = root / method
    teacher = [] if method in TEACHERLESS else ["--teacher", str(root / "teacher" / "last.pt")]
    args = ["--plugin", method, *teacher, *STUDENT, *OPTIONS[method], "--out", str(out)]
    assert main(["train", *args, "--epochs", "1"]) == 0
    saved = load_checkpoint(out / "last.pt")
    assert saved["epoch"] == 1
    capture = Capture()
    host = plugin_host()
    with mock.patch.object(Run, "restore_optimisation_state", lambda run: capture(run)):
        run = train(train_config(host, *args, "--epochs", "2"), host, resume=True)
    assert run.view.epoch == 2
    for name, (module, optimizer) in capture.modules.items():
        assert same_state(module, saved["plugin_modules"][name]["module"]), f"{name} restored on --resume"
        assert same_state(optimizer, saved["plugin_modules"][name]["optimizer"])
    # the optimiser is restored; its learning rate follows the 2-epoch schedule (milestone after epoch 1)
    groups = [group.pop("lr") for group in capture.optimizer["param_groups"]]
    saved_groups = [group.pop("lr") for group in saved["optimizer"]["param_groups"]]
    assert saved_groups == [0.05] * len(groups) and groups == pytest.approx([0.005] * len(groups))
    assert same_state(capture.optimizer, saved["optimizer"])
    assert main(["eval", str(out / "last.pt"), *EVAL, *EVAL_OPTIONS.get(method, []),
                 "--json", str(out / "eval.json")]) == 0
    result = json.loads((out / "eval.json").read_text())
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    return saved, load_checkpoint(out / "last.pt"), history, result


def report(method, result, natural):
    print(f"\n{method}: clean {result['clean']:.3f} pgd20 {result['pgd20']:.3f} "
          f"(natural: {natural['clean']:.3f} / {natural['pgd20']:.3f})")


def test_igam_trains_resumes_with_its_discriminator_and_evaluates(root, natural):
    saved, final, history, result = train_resume_eval(root, "igam")
    report("igam", result, natural)
    disc = saved["plugin_modules"]["igam_discriminator"]
    assert disc["optimizer"]["state"], "D was stepped and its momentum is checkpointed"
    assert not same_state(disc["module"], final["plugin_modules"]["igam_discriminator"]["module"]), \
        "D kept training after the resume"
    assert {"ce", "igam_diff", "igam_adv"} <= set(history[-1]["terms"])
    assert 0 <= history[-1]["igam_disc_acc"] <= 1
    assert result["clean"] > 0.4


def test_rrm_trains_with_a_projection_saved_and_restored_with_the_student(root, natural):
    saved, final, history, result = train_resume_eval(root, "rrm")
    report("rrm", result, natural)
    projection = saved["plugin_modules"]["rrm_projection"]
    assert projection["module"]["weight"].shape == (128, 256), "smallcnn (256) → the cnn teacher's 128 features"
    assert projection["optimizer"] is None, "trained jointly by the student's optimiser"
    assert len(saved["optimizer"]["param_groups"]) == 2
    assert not same_state(projection["module"], final["plugin_modules"]["rrm_projection"]["module"])
    assert set(history[-1]["terms"]) == {"ce", "rrm_feat"}
    assert history[-1]["terms"]["rrm_feat"] < history[0]["terms"]["rrm_feat"]
    assert result["clean"] > 0.3


@pytest.mark.parametrize("method", ["gradnorm", "edgereg", "pag"])
def test_input_gradient_methods_train_resume_and_evaluate(root, natural, method):
    saved, final, history, result = train_resume_eval(root, method)
    report(method, result, natural)
    assert saved["plugin_modules"] == {}
    assert method in history[-1]["terms"] and "ce" in history[-1]["terms"]
    assert result["clean"] > 0.5
    if method in ("gradnorm", "pag"):
        assert result["pgd20"] > natural["pgd20"] + 0.08


# -- cross-task transfer ------------------------------------------------------------------------------------

def load_first_five(data_dir, download):
    """Fashion-MNIST restricted to classes 0–4: a source task with another label set."""
    data = load_fashion_mnist(data_dir, download)
    train, test = data.train_y < 5, data.test_y < 5
    info = dataclasses.replace(data.info, name="fashion-mnist-5", num_classes=5)
    return ImageData(info, data.train_x[train], data.train_y[train], data.test_x[test], data.test_y[test])


class FirstFive:
    @hookimpl
    def register_datasets(self, register):
        register(DatasetEntry(name="fashion-mnist-5", load=load_first_five, summary="Fashion-MNIST classes 0-4"))


def test_finetune_head_turns_a_teacher_of_another_label_set_into_a_teacher(root, capsys):
    host = plugin_host(FirstFive())
    source = root / "source5"
    train(train_config(host, "--plugin", "at", "--dataset", "fashion-mnist-5", "--model", "cnn", "--subset", "2048",
                       "--epochs", "1", "--val-split", "100", "--lr", "0.05", "--out", str(source)), host)
    assert load_checkpoint(source / "last.pt")["arch"]["num_classes"] == 5

    new = root / "teacher10.pt"
    assert main(["finetune-head", str(source / "last.pt"), "--dataset", "fashion-mnist", "--subset", "4096",
                 "--epochs", "2", "--out", str(new)]) == 0
    ckpt = load_checkpoint(new)
    assert ckpt["arch"]["num_classes"] == 10 and ckpt["config"]["dataset"] == "fashion-mnist"
    assert ckpt["config"]["source_dataset"] == "fashion-mnist-5"
    body = {k: v for k, v in load_checkpoint(source / "last.pt")["model"].items() if not k.startswith("head.")}
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in body.items()), "the robust body is frozen"
    assert ckpt["model"]["head.weight"].shape == (10, 128)

    assert main(["eval", str(new), "--attacks", "clean", "--subset", "500", "--json", str(root / "t10.json")]) == 0
    accuracy = json.loads((root / "t10.json").read_text())["clean"]
    print(f"\nfinetuned 10-class teacher from a 5-class one: clean {accuracy:.3f}")
    assert accuracy > 0.5, "classes 5–9 were never seen by the source teacher, yet its features separate them"

    assert main(["train", "--plugin", "igam", "--teacher", str(new), *COMMON, "--model", "cnn", "--subset", "256",
                 "--epochs", "1", "--out", str(root / "igam-cross")]) == 0

    assert main(["train", "--plugin", "igam", "--teacher", str(source / "last.pt"), *COMMON, "--subset", "64",
                 "--out", str(root / "refused")]) == 2
    assert "5 classes" in capsys.readouterr().err
