"""Tests of robustdistill.evaluate: built-in attacks, the evaluation loop and `robustdistill eval`."""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustdistill.checkpoint import FORMAT
from robustdistill.evaluate import (
    AUTOATTACK_MISSING,
    BUILTIN_EVAL_ATTACKS,
    EvalSettings,
    add_eval_arguments,
    eval_command,
    evaluate,
    run_evaluation,
)
from robustdistill.models import BUILTIN_MODELS, Classifier, build_model
from robustdistill.registry import (
    DatasetEntry,
    DatasetInfo,
    EvalAttack,
    ImageData,
    ModelArch,
    ModelEntry,
    Registry,
    RobustDistillError,
)

NUM_CLASSES = 10
SIZE = 8
ATTACKS = {a.name: a for a in BUILTIN_EVAL_ATTACKS}
HAS_AUTOATTACK = importlib.util.find_spec("pyautoattack") is not None


class TinyNet(Classifier):
    """A one-hidden-layer network on flattened images, with BatchNorm to make modes matter."""

    def __init__(self, arch: ModelArch) -> None:
        super().__init__(arch, feature_dim=32)
        self.fc = nn.Linear(arch.in_channels * arch.image_size ** 2, 32)
        self.bn = nn.BatchNorm1d(32)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.fc(x.flatten(1))))


ARCH = ModelArch(name="tiny", num_classes=NUM_CLASSES, in_channels=1, image_size=SIZE, mean=(0.5,), std=(0.25,))
INFO = DatasetInfo(name="tinyset", num_classes=NUM_CLASSES, in_channels=1, image_size=SIZE, mean=(0.5,),
                   std=(0.25,), eps=8 / 255, step_size=2 / 255, attack_steps=10)


def make_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 1x8x8 images: a fixed per-class pattern plus noise, so the classes are separable."""
    prototypes = 0.3 + 0.4 * torch.rand(NUM_CLASSES, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1234))
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % NUM_CLASSES
    x = (prototypes[y] + 0.1 * torch.randn(n, 1, SIZE, SIZE, generator=gen)).clamp(0, 1)
    return (x * 255).round().to(torch.uint8), y.long()


def make_data() -> ImageData:
    train_x, train_y = make_images(400, seed=1)
    test_x, test_y = make_images(60, seed=2)
    return ImageData(info=INFO, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


def train_tiny(steps: int = 100) -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet(ARCH)
    data = make_data()
    x, y = data.train_x.float() / 255, data.train_y
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny tensors gain nothing from intra-op threads, and threads slow down a busy machine a lot."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def trained() -> TinyNet:
    return train_tiny()


def settings(eps: float = 0.1, norm: str = "linf", **kw) -> EvalSettings:
    kw.setdefault("pgd_steps", 10)
    kw.setdefault("cw_steps", 10)
    return EvalSettings(eps=eps, step_size=eps / 4, norm=norm, **kw)


# ------------------------------------------------------------------------------------ attacks

@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
@pytest.mark.parametrize("name", ["clean", "fgsm", "pgd20", "cw"])
def test_attacks_stay_in_eps_ball_and_unit_box(trained, name, norm, eps):
    data = make_data()
    x = data.test_x[:20].float() / 255
    x[:5] = 0.0  # corners of the box: the projection must clamp
    x[5:10] = 1.0
    y = data.test_y[:20]
    s = settings(eps=eps, norm=norm, restarts=2)
    x_adv = ATTACKS[name].run(trained, x, y, s)
    assert x_adv.shape == x.shape
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    if name != "clean":
        assert float(size.max()) > 0  # it did move the inputs


def test_accuracies_in_unit_interval_and_attacks_hurt(trained):
    data = make_data()
    chosen = [ATTACKS[n] for n in ("clean", "fgsm", "pgd20", "cw")]
    acc = evaluate(trained, data.test_x, data.test_y, chosen, settings(eps=0.1), batch_size=16, device="cpu")
    assert list(acc) == ["clean", "fgsm", "pgd20", "cw"]
    assert all(0.0 <= v <= 1.0 for v in acc.values())
    assert acc["clean"] >= 0.9
    assert acc["pgd20"] <= acc["fgsm"] + 1e-9 <= acc["clean"] + 1e-9
    assert acc["cw"] <= acc["clean"]
    assert acc["pgd20"] < acc["clean"]  # eps = 0.1 is large for this model


def test_uint8_and_float_inputs_agree(trained):
    data = make_data()
    clean = [ATTACKS["clean"]]
    s = settings()
    a = evaluate(trained, data.test_x, data.test_y, clean, s, batch_size=7, device="cpu")
    b = evaluate(trained, data.test_x.float() / 255, data.test_y, clean, s, batch_size=64, device="cpu")
    assert a == b


def test_float_inputs_outside_unit_box_are_refused(trained):
    data = make_data()
    with pytest.raises(RobustDistillError, match=r"\[0, 1\]"):
        evaluate(trained, data.test_x.float(), data.test_y, [ATTACKS["clean"]], settings(), device="cpu")


def test_modes_restored_and_no_parameter_gradients():
    model = train_tiny(steps=5)
    model.train()
    model.bn.eval()  # a submodule with its own mode keeps it too
    running = model.bn.running_mean.clone()
    data = make_data()
    chosen = [ATTACKS[n] for n in ("clean", "fgsm", "pgd20", "cw")]
    for p in model.parameters():
        p.grad = None
    evaluate(model, data.test_x[:20], data.test_y[:20], chosen, settings(), batch_size=8, device="cpu")
    assert model.training and not model.bn.training
    assert torch.equal(model.bn.running_mean, running)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())

    model.bn.train()
    seen = []

    def spy(m, x, y, s):
        seen.append([mod.training for mod in m.modules()])
        return x

    evaluate(model, data.test_x[:4], data.test_y[:4], [EvalAttack("spy", spy, "")], settings(), device="cpu")
    assert seen and not any(any(modes) for modes in seen)  # attacks see eval mode everywhere
    assert model.training and model.bn.training
    assert torch.equal(model.bn.running_mean, running)


def test_attack_leaving_the_ball_is_caught(trained):
    data = make_data()
    cheat = EvalAttack("cheat", lambda m, x, y, s: (x + 2 * s.eps).clamp(0, 1), "moves too far")
    with pytest.raises(RobustDistillError, match="cheat"):
        evaluate(trained, data.test_x[:8], data.test_y[:8], [cheat], settings(), device="cpu")


def test_whole_set_attack_gets_everything_at_once(trained):
    data = make_data()
    calls = []

    class WholeSet:
        whole_set = True

        def __call__(self, model, x, y, s, *, batch_size, verbose):
            calls.append((x.shape[0], x.dtype, batch_size, verbose))
            return x

    chosen = [ATTACKS["clean"], EvalAttack("whole", WholeSet(), "")]
    result = run_evaluation(trained, data.test_x, data.test_y, chosen, settings(), batch_size=16, device="cpu")
    assert calls == [(60, torch.float32, 16, False)]
    assert result.accuracy["whole"] == result.accuracy["clean"]
    assert set(result.seconds) == {"clean", "whole"} and result.n == 60


def test_autoattack_without_package(monkeypatch, trained):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # makes `import pyautoattack` fail
    data = make_data()
    with pytest.raises(RobustDistillError) as err:
        evaluate(trained, data.test_x[:8], data.test_y[:8], [ATTACKS["autoattack"]], settings(), device="cpu")
    assert str(err.value) == AUTOATTACK_MISSING
    assert "pip install pyautoattack" in str(err.value)


@pytest.mark.skipif(not HAS_AUTOATTACK, reason="pyautoattack is not installed")
def test_autoattack_on_a_few_images(trained, capsys):
    data = make_data()
    x, y = data.test_x[:8], data.test_y[:8]
    s = settings(eps=0.1)  # large enough that APGD-CE breaks the points and the later attacks are short
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    trace = sys.gettrace()

    acc = evaluate(trained, x, y, [ATTACKS["clean"], ATTACKS["autoattack"]], s, batch_size=4, device="cpu")
    assert 0.0 <= acc["autoattack"] <= acc["clean"] <= 1.0
    # AutoAttack reseeds the global RNGs and installs a trace function: both are restored.
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    assert sys.gettrace() is trace
    assert capsys.readouterr().out == ""  # quiet unless verbose

    xf = x.float() / 255
    x_adv = ATTACKS["autoattack"].run(trained, xf, y, s, batch_size=8)
    assert x_adv.shape == xf.shape
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float((x_adv - xf).abs().max()) <= s.eps + 1e-5
    with torch.no_grad():
        assert float((trained(x_adv).argmax(1) == y).float().mean()) == pytest.approx(acc["autoattack"])


# ------------------------------------------------------------------------------------ eval CLI

class Recorder:
    """An attack that counts the images it sees."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, model, x, y, s):
        self.seen += x.shape[0]
        return x


def make_registry(loads: list | None = None, recorder: Recorder | None = None) -> Registry:
    def load(data_dir, download):
        if loads is not None:
            loads.append((data_dir, download))
        return make_data()

    reg = Registry()
    reg.models.append(ModelEntry("tiny", TinyNet, "test model"))
    reg.datasets["tinyset"] = DatasetEntry("tinyset", load, "test data")
    reg.eval_attacks.update(ATTACKS)
    if recorder is not None:
        reg.eval_attacks["recorder"] = EvalAttack("recorder", recorder, "counts images")
    return reg


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="robustdistill eval")
    add_eval_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def checkpoint(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    torch.save({
        "format": FORMAT,
        "arch": ARCH.to_dict(),
        "model": trained.state_dict(),
        "config": {"dataset": "tinyset", "data_dir": "/data/tiny", "eps": 0.05, "step_size": 0.0125},
    }, path)
    return path


def test_eval_command_end_to_end(checkpoint, tmp_path, capsys):
    loads: list = []
    rec = Recorder()
    out = tmp_path / "res" / "out.json"
    args = parse([str(checkpoint), "--attacks", "clean, fgsm,pgd20,cw,recorder", "--subset", "25",
                  "--json", str(out), "--batch-size", "8", "--pgd-steps", "5", "--cw-steps", "4",
                  "--kappa", "20", "--device", "cpu", "--no-progress"])
    assert eval_command(args, make_registry(loads, rec)) == 0
    assert loads == [("/data/tiny", False)]  # the checkpoint's data_dir, no download
    assert rec.seen == 25  # --subset respected

    report = json.loads(out.read_text())
    assert list(report)[:5] == ["clean", "fgsm", "pgd20", "cw", "recorder"]
    assert "autoattack" not in report
    for name in ("clean", "fgsm", "pgd20", "cw"):
        assert 0.0 <= report[name] <= 1.0
    assert report["pgd20"] <= report["clean"]
    assert report["eps"] == pytest.approx(0.05) and report["n"] == 25
    assert report["dataset"] == "tinyset" and report["checkpoint"] == str(checkpoint)
    st = report["settings"]
    assert st["eps"] == pytest.approx(0.05) and st["step_size"] == pytest.approx(0.0125)
    assert (st["pgd_steps"], st["cw_steps"], st["kappa"], st["restarts"], st["norm"]) == (5, 4, 20.0, 1, "linf")
    assert st["attacks"]["pgd20"]["steps"] == 5 and st["attacks"]["cw"]["steps"] == 4
    assert set(st["ops_backend"]) == {"requested", "pgd_step", "fd_align"}
    assert set(report["seconds"]) == {"clean", "fgsm", "pgd20", "cw", "recorder"}

    text = capsys.readouterr().out
    assert "attack" in text and "accuracy" in text and "seconds" in text
    assert f"{100 * report['clean']:.2f}%" in text


def test_eval_command_fractions_and_dataset_defaults(trained, tmp_path, capsys):
    # A checkpoint whose config lacks eps/step_size falls back to the dataset's; fractions parse.
    path = tmp_path / "ck.pt"
    torch.save({"format": FORMAT, "arch": ARCH.to_dict(), "model": trained.state_dict(),
                "config": {"dataset": "tinyset"}}, path)
    out = tmp_path / "a.json"
    assert eval_command(parse([str(path), "--attacks", "clean", "--json", str(out), "--device", "cpu"]),
                        make_registry()) == 0
    report = json.loads(out.read_text())
    assert report["eps"] == pytest.approx(8 / 255) and report["n"] == 60
    assert report["settings"]["step_size"] == pytest.approx(2 / 255)

    assert eval_command(parse([str(path), "--attacks", "pgd20", "--eps", "4/255", "--step-size", "1/255",
                               "--json", str(out), "--subset", "1000", "--device", "cpu"]), make_registry()) == 0
    report = json.loads(out.read_text())
    assert report["eps"] == pytest.approx(4 / 255) and report["n"] == 60
    assert "4/255" in capsys.readouterr().out


def test_eval_command_unknown_attack(checkpoint):
    with pytest.raises(RobustDistillError, match="unknown attack 'pgd7'.*known attacks: .*autoattack.*pgd20"):
        eval_command(parse([str(checkpoint), "--attacks", "clean,pgd7"]), make_registry())


def test_eval_command_plain_state_dict(trained, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"module." + k: v for k, v in trained.state_dict().items()}, path)
    with pytest.raises(RobustDistillError, match="--arch"):
        eval_command(parse([str(path), "--dataset", "tinyset", "--attacks", "clean"]), make_registry())
    out = tmp_path / "plain.json"
    args = parse([str(path), "--arch", "tiny", "--dataset", "tinyset", "--attacks", "clean", "--json", str(out),
                  "--device", "cpu"])
    assert eval_command(args, make_registry()) == 0
    direct = evaluate(trained, make_data().test_x, make_data().test_y, [ATTACKS["clean"]], settings(), device="cpu")
    assert json.loads(out.read_text())["clean"] == direct["clean"]


def test_eval_command_l2_needs_radius(checkpoint):
    with pytest.raises(RobustDistillError, match="--eps"):
        eval_command(parse([str(checkpoint), "--norm", "l2", "--attacks", "clean"]), make_registry())


def test_eval_command_bad_number():
    with pytest.raises(SystemExit):
        parse(["ck.pt", "--eps", "eight"])


@pytest.mark.skipif(not HAS_AUTOATTACK, reason="pyautoattack is not installed")
def test_eval_command_with_autoattack(checkpoint, tmp_path):
    out = tmp_path / "aa.json"
    args = parse([str(checkpoint), "--attacks", "clean,autoattack", "--subset", "8", "--eps", "0.1",
                  "--json", str(out), "--device", "cpu", "--no-progress"])
    assert eval_command(args, make_registry()) == 0
    report = json.loads(out.read_text())
    assert 0.0 <= report["autoattack"] <= report["clean"] and report["n"] == 8
    assert report["settings"]["attacks"]["autoattack"]["version"] == "standard"


def test_eval_command_autoattack_missing_fails_early(monkeypatch, checkpoint):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    loads: list = []
    with pytest.raises(RobustDistillError, match="pip install pyautoattack"):
        eval_command(parse([str(checkpoint), "--attacks", "clean,autoattack"]), make_registry(loads))
    assert loads == []


def test_eval_command_folds_batchnorm_without_changing_the_result(tmp_path):
    arch = ModelArch(name="cnn", num_classes=NUM_CLASSES, in_channels=1, image_size=SIZE, mean=(0.5,), std=(0.25,))
    torch.manual_seed(0)
    model = build_model(arch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "cnn.pt"
    torch.save({"format": FORMAT, "arch": arch.to_dict(), "model": model.state_dict(),
                "config": {"dataset": "tinyset", "eps": 0.1, "step_size": 0.025}}, path)
    registry = make_registry()
    registry.models.extend(BUILTIN_MODELS)
    reports = {}
    for fold in ("on", "off"):
        out = tmp_path / f"{fold}.json"
        args = parse([str(path), "--attacks", "clean,fgsm,pgd20", "--subset", "40", "--pgd-steps", "5",
                      "--device", "cpu", "--no-progress", "--fold-bn", fold, "--json", str(out)])
        assert eval_command(args, registry) == 0
        reports[fold] = json.loads(out.read_text())
    assert reports["on"]["settings"]["folded_conv_bn"] == 3 and reports["off"]["settings"]["folded_conv_bn"] == 0
    for name in ("clean", "fgsm", "pgd20"):  # the same function: at most a rounding-level sign flip apart
        assert abs(reports["on"][name] - reports["off"][name]) <= 1 / 40, name
