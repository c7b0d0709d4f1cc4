"""``robustdistill report`` and ``train --tensorboard``: tables, figures and bad input."""
import importlib.util
import json
import sys

import pytest
import torch
from torch import nn

from robustdistill._checkpoint import FORMAT
from robustdistill._cli import main
from robustdistill._eval import weights_fingerprint
from robustdistill._models import BUILTIN_MODELS, build_model
from robustdistill._registry import DatasetInfo, ModelArch, Registry
from robustdistill._report.command import _add_teacher_column
from robustdistill._report import (
    RunRecord,
    curves_figure,
    figure_captions,
    gradients_figure,
    input_gradients,
    load_run,
    loss_terms_figure,
    loss_terms_table,
    per_class_table,
    sanity_table,
    results_table,
    robust_vs_eps_figure,
)

from support import needs_fashion_mnist

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
                          (["--pgd-steps", "0"], "--pgd-steps: '0' must be at least 1")):
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
@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="pip install tensorboard")
def test_report_on_real_runs(capsys, tmp_path):
    common = ["--subset", "256", "--batch-size", "64", "--val-split", "64", "--attack-steps", "2",
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


# ------------------------------------------------------------------------------------ figures

def epoch_metrics(epoch, loss, terms, weighted=None, **extra):
    line = {"epoch": epoch, "lr": 0.1, "loss": loss, "terms": terms, "val_clean": 0.7, "val_pgd": 0.4, **extra}
    if weighted is not None:
        line["weighted_terms"] = weighted
    return line


def record(tmp_path, name, plugins, history):
    return RunRecord(tmp_path / name, {"plugin": plugins, "val_split": 100, "val_attack_steps": 20, "eps": 0.1},
                     history, None, label=name)


def close(fig):
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_curves_of_a_one_epoch_run_have_whole_epoch_ticks_and_labelled_axes(tmp_path):
    run = record(tmp_path, "a", ["at"], [epoch_metrics(1, 1.5, {"ce_adv": 1.5})])
    fig = curves_figure([run])
    used = [ax for ax in fig.axes if ax.lines]
    assert len(used) == 4  # loss, clean accuracy, PGD accuracy, learning rate
    for ax in used:
        assert list(ax.get_xticks()) == [1] and ax.get_xlabel() == "epoch" and ax.get_ylabel(), ax.get_title()
    assert [ax.get_ylabel() for ax in used] == ["loss (mean over the epoch)", "accuracy (%)", "accuracy (%)",
                                                "learning rate"]
    assert used[2].get_title() == "accuracy under PGD-20, ε = 0.1 (100 validation images held out from training)"
    assert list(used[1].lines[0].get_ydata()) == pytest.approx([70.0])  # in percent
    close(fig)


def test_curves_give_each_objective_its_own_loss_panel(tmp_path):
    runs = [record(tmp_path, "at", ["at"], [epoch_metrics(e, 2.0 / e, {}) for e in (1, 2, 3)]),
            record(tmp_path, "rslad-a", ["rslad"], [epoch_metrics(e, 0.1 / e, {}) for e in (1, 2, 3)]),
            record(tmp_path, "rslad-b", ["rslad"], [epoch_metrics(e, 0.2 / e, {}) for e in (1, 2, 3)])]
    fig = curves_figure(runs)
    loss_axes = [ax for ax in fig.axes if ax.get_title().startswith("training loss")]
    assert [ax.get_title() for ax in loss_axes] == ["training loss: at", "training loss: rslad"]
    assert [len(ax.lines) for ax in loss_axes] == [1, 2]
    assert all(list(ax.get_xticks()) == [1, 2, 3] for ax in fig.axes if ax.lines)
    close(fig)

    many = [record(tmp_path, f"r{i}", [name], [epoch_metrics(e, (i + 1) / e, {}) for e in (1, 2)])
            for i, name in enumerate(["at", "trades", "rslad", "ard"])]
    fig = curves_figure(many)
    loss_axes = [ax for ax in fig.axes if ax.get_title().startswith("training loss")]
    assert len(loss_axes) == 1 and "relative to its first epoch" in loss_axes[0].get_title()
    assert [list(line.get_ydata()) for line in loss_axes[0].lines] == [[1.0, 0.5]] * 4
    close(fig)


def test_loss_terms_figure_plots_weighted_contributions_and_unweighted_terms(tmp_path):
    history = [epoch_metrics(e, 1.06 + 0.0139 * 30 * e, {"ce_adv": 1.06, "igdm": 0.0139},
                             {"ce_adv": 1.06, "igdm": 0.0139 * 30 * e}) for e in (1, 2)]
    old = record(tmp_path, "old", ["at"], [epoch_metrics(1, 1.2, {"ce_adv": 1.2})])
    fig = loss_terms_figure([record(tmp_path, "new", ["igdm"], history), old])
    titles = {ax.get_title(): ax for ax in fig.axes}
    weighted = titles["new (igdm): contribution to the loss"]
    raw = titles["new (igdm): terms before weighting"]
    lines = {line.get_label(): list(line.get_ydata()) for line in weighted.lines}
    assert lines["igdm (× 30 → 60)"] == pytest.approx([0.417, 0.834])
    assert lines["ce_adv (× 1)"] == pytest.approx([1.06, 1.06])
    assert lines["loss (their sum)"] == pytest.approx([1.477, 1.894])
    assert {line.get_label(): list(line.get_ydata()) for line in raw.lines}["igdm"] == pytest.approx([0.0139] * 2)
    assert weighted.get_ylabel() == "weight × term" and raw.get_ylabel() == "term, unweighted"
    assert "not logged" in titles["old (at): contribution to the loss"].texts[0].get_text()
    assert list(titles["old (at): terms before weighting"].get_xticks()) == [1]  # its own epochs
    close(fig)

    fig = loss_terms_figure([old])  # no run logged weights: one row, the unweighted terms
    assert [ax.get_title() for ax in fig.axes] == ["old (at): terms before weighting"]
    close(fig)


def test_loss_terms_table_with_hand_computed_shares(tmp_path):
    runs = [record(tmp_path, "igdm", ["igdm"], [epoch_metrics(1, 1.8934, {"ce_adv": 1.06, "igdm": 0.0139},
                                                              {"ce_adv": 1.06, "igdm": 0.834})]),
            record(tmp_path, "old", ["at"], [epoch_metrics(1, 1.2, {"ce_adv": 1.2})])]
    lines = loss_terms_table(runs).splitlines()
    assert lines[0] == "| run | term | term, unweighted | weight | weight × term | share of the loss |"
    assert lines[2] == "| igdm | ce_adv | 1.06 | 1 | 1.06 | 56.0% |"
    assert lines[3] == "| igdm | igdm | 0.0139 | 60 | 0.834 | 44.0% |"  # 0.834 / 1.8934
    assert lines[4] == "| old | ce_adv | 1.2 | — | — | — |"
    assert "Weights not logged (runs written by an older version): old." in lines[-1]


def test_robust_vs_eps_figure_has_labelled_axes():
    fig = robust_vs_eps_figure({"a": {"eps": [0, 0.1], "accuracy": [0.8, 0.4], "steps": 20, "n": 500}},
                               train_eps=0.1)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "ε, radius of the L∞ ball (pixel values in [0, 1])"
    assert ax.get_ylabel() == "accuracy under PGD-20 (%)" and "first 500 test images" in ax.get_title()
    assert list(ax.lines[0].get_ydata()) == pytest.approx([80, 40])
    assert ax.lines[1].get_label() == "training ε = 0.1"
    close(fig)


def test_gradients_figure_names_classes_and_explains_the_colours():
    images = torch.rand(3, 1, 8, 8)
    grads = torch.zeros(3, 1, 8, 8)
    grads[:, 0, 0, 0], grads[:, 0, 1, 1] = 2.0, -0.5
    fig = gradients_figure(images, torch.tensor([0, 9, 3]), [("teacher", grads), ("student", -grads)],
                           dataset="fashion-mnist")
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert [grid[i * 3].get_ylabel() for i in range(3)] == ["T-shirt/top", "Ankle boot", "Dress"]
    assert [grid[j].get_title() for j in range(3)] == ["image\n(true class)", "teacher", "student"]
    shown = grid[1].images[0].get_array()
    assert (float(shown[0, 0]), float(shown[1, 1])) == (1.0, -0.25)  # scaled by the largest magnitude
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "∂ CE / ∂ pixel" in bars[0].get_ylabel()
    assert "Red: brightening the pixel raises the cross-entropy" in fig._supxlabel.get_text()
    close(fig)
    fig = gradients_figure(images, torch.tensor([0, 1, 12]), [("m", grads)], dataset="imagefolder")
    assert fig.axes[4].get_ylabel() == "class 12"  # rows of (image, map): the third row's image
    close(fig)


def test_teacher_is_shown_once(tmp_path):
    arch = ModelArch(name="cnn", num_classes=10, in_channels=1, image_size=8, mean=(0.5,), std=(0.25,))
    registry = Registry()
    registry.models.extend(BUILTIN_MODELS)
    torch.manual_seed(0)
    teacher, other = build_model(arch), build_model(arch)
    path = tmp_path / "teacher" / "last.pt"
    path.parent.mkdir()
    torch.save({"format": FORMAT, "arch": arch.to_dict(), "model": teacher.state_dict(), "config": {}}, path)
    images, labels = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    grads = torch.zeros(2, 1, 8, 8)
    digests = {"teacher-run\n(at)": weights_fingerprint(teacher), "student\n(rslad)": weights_fingerprint(other)}

    options = {"spec": str(path), "arch": None, "normalize": None, "robustbench_dir": None, "activation": "relu",
               "explicit": True}
    info = DatasetInfo("test", 10, 1, 8, (0.5,), (0.25,), eps=0.1, step_size=0.01, attack_steps=2)
    columns = [("student\n(rslad)", grads), ("teacher-run\n(at)", grads + 1)]
    _add_teacher_column(options, info, registry, torch.device("cpu"), images, labels, columns, digests)
    assert [title for title, _ in columns] == ["teacher\n(teacher-run)", "student\n(rslad)"]
    assert torch.equal(columns[0][1], grads + 1)

    columns = [("student\n(rslad)", grads)]  # the teacher is not a run: its own column, first
    _add_teacher_column(options, info, registry, torch.device("cpu"), images, labels, columns,
                        {"student\n(rslad)": digests["student\n(rslad)"]})
    assert [title for title, _ in columns] == ["teacher\n(teacher)", "student\n(rslad)"]
    assert torch.allclose(columns[0][1], input_gradients(teacher.eval(), images, labels), atol=1e-5)


def test_report_writes_captions_and_defaults_under_runs(capsys, tmp_path, monkeypatch):
    history = [epoch_metrics(1, 1.9, {"ce_adv": 1.06, "igdm": 0.014}, {"ce_adv": 1.06, "igdm": 0.84})]
    a = write_run(tmp_path / "a", history, {"plugin": ["igdm"]}, {"clean": 0.8, "fgsm": 0.5, "n": 10,
                                                                  "pending": ["autoattack"]})
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "report", str(a), "--no-models")
    assert code == 0 and "to runs/report" in out
    text = (tmp_path / "runs" / "report" / "results.md").read_text()
    for name in ("curves.png", "loss_terms.png"):
        assert f"![{name}]({name})" in text and f"**{name}** — " in text
        assert (tmp_path / "runs" / "report" / name).read_bytes()[:8] == PNG_MAGIC
    assert "gradients.png" not in text and "| a | igdm | 0.014 | 60 | 0.84 | 44.2% |" in text
    assert "Evaluation not finished for: a (autoattack)" in text
    assert "weight × term" in text.split("**loss_terms.png**")[1]
    old = [RunRecord(tmp_path, {}, [{"epoch": 1, "loss": 1.0, "terms": {"ce": 1.0}}], None)]
    assert "unweighted (these runs did not log the weights)" in figure_captions(old, ["loss_terms.png"])


def test_worst_class_columns_and_the_per_class_table(capsys, tmp_path, monkeypatch):
    history = [epoch_metrics(1, 1.0, {"kl": 1.0}, {"kl": 1.0})]
    fair = write_run(tmp_path / "fair", history, {"plugin": ["ard", "fairard"]},
                     {"clean": 0.75, "pgd20": 0.5, "n": 8, "per_class": {"clean": [1.0, 0.5, 0.75], "pgd20":
                      [0.75, 0.25, None]}, "worst_class": {"clean": 0.5, "pgd20": 0.25}})
    older = write_run(tmp_path / "older", history, {"plugin": ["ard"]}, {"clean": 0.7, "pgd20": 0.4, "n": 8})
    runs = [load_run(fair), load_run(older)]
    lines = results_table(runs).splitlines()
    assert lines[0].endswith("| clean | PGD-20 | clean worst class | PGD-20 worst class | eval images |")
    assert lines[2].endswith("| 75.00 | 50.00 | 50.00 | 25.00 | 8 |")
    assert lines[3].endswith("| 70.00 | 40.00 | — | — | 8 |"), "an evaluation without per-class accuracy"
    assert per_class_table(runs).splitlines() == [
        "| run | attack | 0 | 1 | 2 |", "|---|---|---|---|---|",
        "| fair | clean | 100.00 | 50.00 | 75.00 |", "| fair | PGD-20 | 75.00 | 25.00 | — |"]
    assert per_class_table([load_run(older)]) == "" and "worst class" not in results_table([load_run(older)])
    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "report", str(fair), str(older), "--no-models")[0] == 0
    text = (tmp_path / "runs" / "report" / "results.md").read_text()
    assert "## Accuracy per class" in text and "| fair | PGD-20 | 75.00 | 25.00 | — |" in text


def test_the_sanity_verdicts_table_with_what_each_failed_check_means(capsys, tmp_path, monkeypatch):
    history = [epoch_metrics(1, 1.0, {"kl": 1.0}, {"kl": 1.0})]

    def check(name, verdict, figure, meaning):
        return {"name": name, "figure": figure, "warning_above": 0.01, "failed_above": 0.02, "verdict": verdict,
                "meaning": meaning, "details": {}}

    masked = write_run(tmp_path / "masked", history, {"plugin": ["rrm"]}, {"clean": 0.9, "n": 8, "sanity": {
        "images": 8, "steps": 10, "seconds": 1.0, "verdict": "failed",
        "checks": [check("deterministic", "ok", 0.0, "agree"), check("square", "failed", 0.25, "Square beats PGD")]}})
    sound = write_run(tmp_path / "sound", history, {"plugin": ["at"]}, {"clean": 0.8, "n": 8, "sanity": {
        "images": 8, "steps": 10, "seconds": 1.0, "verdict": "ok", "checks": [check("deterministic", "ok", 0.0, "x")]}})
    bare = write_run(tmp_path / "bare", history, {"plugin": ["at"]}, {"clean": 0.8, "n": 8})
    runs = [load_run(masked), load_run(sound), load_run(bare)]
    assert sanity_table(runs).splitlines() == [
        "| run | images | verdict | deterministic | square |", "|---|---|---|---|---|",
        "| masked | 8 | failed | ok (0) | failed (0.25) |", "| sound | 8 | ok | ok (0) | — |", "",
        "- masked, square (failed): Square beats PGD"]
    assert sanity_table([load_run(bare)]) == ""
    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "report", str(masked), str(bare), "--no-models")[0] == 0
    text = (tmp_path / "runs" / "report" / "results.md").read_text()
    assert "## Sanity checks of the evaluation" in text and "| masked | 8 | failed |" in text
