"""Tests of robustdistill._eval: built-in attacks, the evaluation loop and `robustdistill eval`."""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustdistill._command_config import EvalConfig
from robustdistill._config import add_config_arguments, config_from_namespace
from robustdistill._checkpoint import FORMAT
from robustdistill._config import format_duration
from robustdistill._eval import (
    AUTOATTACK_MISSING,
    BUILTIN_EVAL_ATTACKS,
    EvalProgress,
    EvalSettings,
    attack_cost,
    attack_details,
    evaluate,
    run_evaluation,
    weights_fingerprint,
)
from robustdistill._eval.autoattack import _AutoAttackLog
from robustdistill._eval.command import eval_command
from robustdistill._models import BUILTIN_MODELS, Classifier, build_model
from support import needs_fashion_mnist
from robustdistill._registry import (
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

    evaluate(model, data.test_x[:4], data.test_y[:4], [EvalAttack(name="spy", run=spy, summary="")], settings(), device="cpu")
    assert seen and not any(any(modes) for modes in seen)  # attacks see eval mode everywhere
    assert model.training and model.bn.training
    assert torch.equal(model.bn.running_mean, running)


def test_attack_leaving_the_ball_is_caught(trained):
    data = make_data()
    cheat = EvalAttack(name="cheat", run=lambda m, x, y, s: (x + 2 * s.eps).clamp(0, 1), summary="moves too far")
    with pytest.raises(RobustDistillError, match="cheat"):
        evaluate(trained, data.test_x[:8], data.test_y[:8], [cheat], settings(), device="cpu")


def test_whole_set_attack_gets_everything_at_once(trained):
    data = make_data()
    calls = []

    def whole(model, x, y, s, *, batch_size, verbose):
        calls.append((x.shape[0], x.dtype, batch_size, verbose))
        return x

    chosen = [ATTACKS["clean"], EvalAttack(name="whole", run=whole, summary="", whole_set=True)]
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


def test_cw_restarts_apart_from_the_pgd_restarts(trained, monkeypatch):
    from robustdistill import _attacks as attacks
    calls = []
    real = attacks.pgd
    monkeypatch.setattr(attacks, "pgd", lambda model, x, y, spec: calls.append((spec.loss, spec.restarts))
                        or real(model, x, y, spec))
    data = make_data()
    x, y = data.test_x[:8], data.test_y[:8]
    for s, expected in ((settings(restarts=2), [("ce", 2), ("cw", 2)]),
                        (settings(restarts=1, cw_restarts=3), [("ce", 1), ("cw", 3)])):
        calls.clear()
        evaluate(trained, x, y, [ATTACKS["pgd20"], ATTACKS["cw"]], s, device="cpu")
        assert calls == expected
        assert (attack_details("pgd20", s)["restarts"], attack_details("cw", s)["restarts"]) == \
            (expected[0][1], expected[1][1])
    with pytest.raises(RobustDistillError, match="restarts must be >= 1"):
        settings(cw_restarts=0)
    with pytest.raises(RobustDistillError, match="unknown AutoAttack version"):
        settings(autoattack_version="rand")


@pytest.mark.skipif(not HAS_AUTOATTACK, reason="pyautoattack is not installed")
def test_apgd_ce_and_apgd_t_are_the_first_stages_of_standard_autoattack(trained, capsys):
    data = make_data()
    x, y = data.test_x[:16].float() / 255, data.test_y[:16]
    s = settings(eps=0.05)
    first_two = ATTACKS["apgd-ce+apgd-t"].run(trained, x, y, s, batch_size=16, verbose=True)
    log = capsys.readouterr().err
    assert "running apgd-ce" in log and "running apgd-t" in log
    assert "fab" not in log and "square" not in log
    assert float((first_two - x).abs().max()) <= s.eps + 1e-5
    full = ATTACKS["autoattack"].run(trained, x, y, s, batch_size=16, verbose=True)
    log = capsys.readouterr().err
    assert "running apgd-ce" in log and ("running fab-t" in log or "robust accuracy" in log)
    with torch.no_grad():
        robust_first_two = trained(first_two).argmax(1) == y
        robust_full = trained(full).argmax(1) == y
    assert bool((robust_full <= robust_first_two).all()), "standard AutoAttack continues where they stop"
    assert attack_details("apgd-ce+apgd-t", s)["attacks"] == ["apgd-ce", "apgd-t"]


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
    reg.models.append(ModelEntry(name="tiny", factory=TinyNet, summary="test model"))
    reg.datasets["tinyset"] = DatasetEntry(name="tinyset", load=load, summary="test data")
    reg.eval_attacks.update(ATTACKS)
    if recorder is not None:
        reg.eval_attacks["recorder"] = EvalAttack(name="recorder", run=recorder, summary="counts images")
    return reg


def parse(argv: list[str]) -> EvalConfig:
    parser = argparse.ArgumentParser(prog="robustdistill eval")
    add_config_arguments(parser, EvalConfig)
    return config_from_namespace(EvalConfig, parser.parse_args(argv))


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
                               "--json", str(out), "--subset", "1000", "--device", "cpu", "--redo"]),
                        make_registry()) == 0
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


# ------------------------------------------------------------------------------------ progress

class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_format_seconds():
    assert [format_duration(s) for s in (4.24, 42.4, 59.9, 185, 3720)] == ["4.2s", "42s", "1m00s", "3m05s", "1h02m"]


def test_progress_lines_with_hand_computed_time_left():
    clock, out = FakeClock(), io.StringIO()
    s = settings(pgd_steps=20)  # pgd20 costs 20 + 2/3 passes per image, clean 1/3
    progress = EvalProgress(out, every=30, bar=False, clock=clock)
    progress.plan([("clean", attack_cost("clean", s)), ("pgd20", attack_cost("pgd20", s)),
                   ("autoattack", attack_cost("autoattack", s))], n=300)
    progress.attack_started("clean")  # nothing timed yet: no estimate
    clock.now = 1.0
    progress.attack_finished("clean", 0.9, 1.0)  # 1 s for 100 passes·images: 0.01 s each
    progress.attack_started("pgd20")  # 0.01 · 62/3 · 300 = 62 s, plus autoattack of unknown length
    clock.now = 11.0
    progress.batch_finished(1, 3, 80, 100)  # 10 s < every: no line
    clock.now = 31.0
    progress.batch_finished(2, 3, 150, 200)  # 30 s for 2 of 3 batches: 15 s left of pgd20
    clock.now = 46.5
    progress.batch_finished(3, 3, 220, 300)  # the last batch: the end line says it
    progress.attack_finished("pgd20", 220 / 300, 45.5)
    lines = out.getvalue().splitlines()
    assert lines == [
        "eval [1/3]: clean on 300 images started",
        "eval: clean done: 90.00% in 1.0s; 2 attacks left, time left: about 1m02s + autoattack",
        "eval [2/3]: pgd20 on 300 images started; time left: about 1m02s + autoattack",
        "eval: pgd20 batch 2/3, accuracy so far 75.00% (200 images), 30s; pgd20 about 15s left, "
        "in all about 15s + autoattack",
        "eval: pgd20 done: 73.33% in 46s; 1 attack left, time left: unknown (autoattack)",
    ]


def test_autoattack_log_adds_the_time_left_in_the_stage(capsys):
    clock = FakeClock()
    handler = _AutoAttackLog(clock)
    logger = logging.getLogger("test-autoattack-log")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.DEBUG)
    clock.now = 5.0
    logger.debug("running apgd-t")
    clock.now = 25.0
    logger.debug("apgd-t - 1/4 - 3 out of 8 successfully perturbed")
    logger.debug("robust accuracy after APGD-T: 40.00% (total time 25.0 s)")
    assert capsys.readouterr().err.splitlines() == [
        "AutoAttack: running apgd-t",
        "AutoAttack: apgd-t - 1/4 - 3 out of 8 successfully perturbed (20s in this stage, about 1m00s left of it)",
        "AutoAttack: robust accuracy after APGD-T: 40.00% (total time 25.0 s)",
    ]


def test_progress_reports_each_attack_of_an_evaluation(trained):
    data = make_data()
    out = io.StringIO()
    chosen = [ATTACKS["clean"], ATTACKS["pgd20"]]
    result = run_evaluation(trained, data.test_x, data.test_y, chosen, settings(), batch_size=16, device="cpu",
                            progress=EvalProgress(out, every=0, bar=False))
    lines = out.getvalue().splitlines()
    # every = 0: a line after each batch but the last (4 batches of 16), then the end line says it
    assert [line.split(",")[0].split(";")[0] for line in lines] == [
        "eval [1/2]: clean on 60 images started",
        *(f"eval: clean batch {i}/4" for i in (1, 2, 3)),
        f"eval: clean done: {100 * result.accuracy['clean']:.2f}% in {result.seconds['clean']:.1f}s",
        "eval [2/2]: pgd20 on 60 images started",
        *(f"eval: pgd20 batch {i}/4" for i in (1, 2, 3)),
        f"eval: pgd20 done: {100 * result.accuracy['pgd20']:.2f}% in {result.seconds['pgd20']:.1f}s",
    ]
    assert "time left: about " in lines[4] and "in all about " in lines[6]


def test_each_attack_starts_from_the_seed(trained):
    data = make_data()
    draws: list[float] = []

    def draw(model, x, y, s):
        draws.append(float(torch.rand(())))
        return x

    def consume(model, x, y, s):
        torch.rand(1000)
        return x

    drawing, consuming = EvalAttack(name="draw", run=draw, summary=""), EvalAttack(name="consume", run=consume,
                                                                                   summary="")
    run_evaluation(trained, data.test_x, data.test_y, [drawing], settings(), batch_size=64, device="cpu", seed=3)
    run_evaluation(trained, data.test_x, data.test_y, [consuming, drawing], settings(), batch_size=64,
                   device="cpu", seed=3)
    assert len(draws) == 2 and draws[0] == draws[1]


# ------------------------------------------------------------------------------------ eval --json: resume

class Interrupting:
    """A long attack that is interrupted (Ctrl-C) on its second batch."""

    def __init__(self) -> None:
        self.batches = 0

    def __call__(self, model, x, y, s):
        self.batches += 1
        if self.batches == 2:
            raise KeyboardInterrupt
        return x


def eval_args(checkpoint, out, attacks="recorder,fgsm,slow", *extra):
    return parse([str(checkpoint), "--attacks", attacks, "--json", str(out), "--batch-size", "8",
                  "--device", "cpu", "--no-progress", *extra])


def test_json_is_written_after_each_attack_and_a_rerun_continues(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rec, slow = Recorder(), Interrupting()
    registry = make_registry(recorder=rec)
    registry.eval_attacks["slow"] = EvalAttack(name="slow", run=slow, summary="interrupted")
    assert eval_command(eval_args(checkpoint, out), registry) == 130
    assert "2 finished attack(s) are in" in capsys.readouterr().err
    kept = json.loads(out.read_text())
    assert kept["recorder"] == pytest.approx(json.loads(out.read_text())["recorder"]) and 0 <= kept["fgsm"] <= 1
    assert "slow" not in kept and kept["pending"] == ["slow"] and set(kept["seconds"]) == {"recorder", "fgsm"}
    assert rec.seen == 60

    # The rerun skips what is in the file and evaluates the rest.
    registry.eval_attacks["slow"] = EvalAttack(name="slow", run=Recorder(), summary="now quick")
    assert eval_command(eval_args(checkpoint, out), registry) == 0
    assert rec.seen == 60  # not evaluated again
    stdout = capsys.readouterr().out
    assert "recorder, fgsm already in" in stdout and "(from the --json file)" in stdout
    final = json.loads(out.read_text())
    assert list(final)[:3] == ["recorder", "fgsm", "slow"] and final["pending"] == []
    assert final["fgsm"] == kept["fgsm"] and final["seconds"]["fgsm"] == kept["seconds"]["fgsm"]
    assert set(final["settings"]["attacks"]) == {"recorder", "fgsm", "slow"}

    # Another attack later adds to the file; --redo starts it over.
    assert eval_command(eval_args(checkpoint, out, "clean"), registry) == 0
    assert list(json.loads(out.read_text()))[:4] == ["recorder", "fgsm", "slow", "clean"]
    assert eval_command(eval_args(checkpoint, out, "recorder", "--redo"), registry) == 0
    assert rec.seen == 120
    redone = json.loads(out.read_text())
    assert "fgsm" not in redone and "clean" not in redone and redone["pending"] == []


@pytest.mark.parametrize("extra, message", [
    (["--eps", "0.07"], "--eps 0.05 in the file, 0.07 now"),
    (["--subset", "30"], "test images (--subset) 60 in the file, 30 now"),
    (["--pgd-steps", "7"], "--pgd-steps 20 in the file, 7 now"),
    (["--seed", "1"], "--seed 0 in the file, 1 now"),
])
def test_a_rerun_with_other_settings_is_refused(checkpoint, tmp_path, extra, message):
    out = tmp_path / "eval.json"
    assert eval_command(eval_args(checkpoint, out, "clean"), make_registry()) == 0
    before = out.read_text()
    with pytest.raises(RobustDistillError) as err:
        eval_command(eval_args(checkpoint, out, "clean,fgsm", *extra), make_registry())
    assert message in str(err.value) and "--redo" in str(err.value)
    assert out.read_text() == before  # untouched
    assert eval_command(eval_args(checkpoint, out, "fgsm", *extra, "--redo"), make_registry()) == 0
    assert "clean" not in json.loads(out.read_text())


def test_a_rerun_on_other_weights_is_refused(trained, checkpoint, tmp_path):
    out = tmp_path / "eval.json"
    assert eval_command(eval_args(checkpoint, out, "clean"), make_registry()) == 0
    other = tmp_path / "other.pt"
    state = {k: v + 1e-3 if v.is_floating_point() else v for k, v in trained.state_dict().items()}
    torch.save({**torch.load(checkpoint), "model": state}, other)
    with pytest.raises(RobustDistillError, match="the weights differ"):
        eval_command(eval_args(other, out, "clean"), make_registry())
    copy = tmp_path / "copy.pt"  # the same weights under another path continue the file
    copy.write_bytes(checkpoint.read_bytes())
    assert eval_command(eval_args(copy, out, "clean,fgsm"), make_registry()) == 0


def test_a_json_file_that_is_not_a_result_is_refused(checkpoint, tmp_path):
    out = tmp_path / "eval.json"
    for text in ("not json", "[1, 2]", '{"clean": 0.5}'):
        out.write_text(text)
        with pytest.raises(RobustDistillError, match="--redo"):
            eval_command(eval_args(checkpoint, out, "clean"), make_registry())
    assert eval_command(eval_args(checkpoint, out, "clean", "--redo"), make_registry()) == 0
    with pytest.raises(RobustDistillError, match="--redo starts a --json file over"):
        eval_command(parse([str(checkpoint), "--redo"]), make_registry())


def test_weights_fingerprint_follows_the_weights(trained):
    first = weights_fingerprint(trained)
    assert first == weights_fingerprint(train_tiny()) and len(first) == 64
    changed = train_tiny()
    with torch.no_grad():
        changed.fc.weight[0, 0] += 1e-6
    assert weights_fingerprint(changed) != first


@pytest.mark.slow
@needs_fashion_mnist
def test_eval_killed_keeps_the_finished_attacks(tmp_path):
    """A real interruption: SIGKILL during a long PGD attack; the finished attacks survive in the file."""
    arch = ModelArch(name="cnn", num_classes=10, in_channels=1, image_size=28, mean=(0.286,), std=(0.353,))
    torch.manual_seed(0)
    checkpoint = tmp_path / "last.pt"
    torch.save({"format": FORMAT, "arch": arch.to_dict(), "model": build_model(arch).state_dict(),
                "config": {"dataset": "fashion-mnist", "eps": 0.1, "step_size": 0.01}}, checkpoint)
    out = tmp_path / "eval.json"
    command = [sys.executable, "-m", "robustdistill", "eval", str(checkpoint), "--subset", "256", "--device", "cpu",
               "--pgd-steps", "5000", "--json", str(out)]
    log = tmp_path / "log"
    with open(log, "w") as stream:
        process = subprocess.Popen([*command, "--attacks", "clean,fgsm,pgd20"], stdout=stream,
                                   stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if "pgd20 on 256 images started" in log.read_text():
                break
            time.sleep(0.1)
        assert process.poll() is None, log.read_text()
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    kept = json.loads(out.read_text())
    assert set(kept) >= {"clean", "fgsm"} and kept["pending"] == ["pgd20"], kept
    assert "eval [1/3]: clean on 256 images started" in log.read_text()  # progress reaches a log file
    # The same options continue the file: the finished attacks are not run again.
    rerun = subprocess.run([*command, "--attacks", "clean,fgsm"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "clean, fgsm already in" in rerun.stdout and "started" not in rerun.stderr
    assert json.loads(out.read_text()) == kept


# ------------------------------------------------------------------------------------ per-class accuracy

def test_per_class_and_worst_class_accuracy_by_hand():
    # logits = the image's three pixels: the prediction is the brightest; labels 0,0,0,1,1,1 and no image of class 2
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(3))
    predicted = torch.tensor([0, 0, 1, 1, 2, 2])
    x = F.one_hot(predicted, 3).float().reshape(6, 1, 1, 3)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    result = run_evaluation(model, x, y, [ATTACKS["clean"]], settings(), batch_size=4, device="cpu")
    assert result.per_class["clean"] == [2 / 3, 1 / 3, None]
    assert result.accuracy["clean"] == pytest.approx(3 / 6)
    from robustdistill._eval import worst_class
    assert worst_class(result.per_class["clean"]) == 1 / 3 and worst_class([None, None]) is None


def clean_per_class(model, data, n):
    with torch.no_grad():
        right = model.eval()(data.test_x[:n].float() / 255).argmax(1) == data.test_y[:n]
    return [float(right[data.test_y[:n] == c].float().mean()) for c in range(NUM_CLASSES)]


def test_the_results_file_and_the_table_give_per_class_and_worst_class_accuracy(trained, checkpoint, tmp_path,
                                                                                capsys):
    out = tmp_path / "eval.json"
    assert eval_command(eval_args(checkpoint, out, "clean,fgsm"), make_registry()) == 0
    report = json.loads(out.read_text())
    assert list(report)[:2] == ["clean", "fgsm"], "attack names come first, as before"
    assert report["per_class"]["clean"] == pytest.approx(clean_per_class(trained, make_data(), 60))
    for name in ("clean", "fgsm"):
        per_class = report["per_class"][name]
        assert len(per_class) == NUM_CLASSES
        assert sum(per_class) / NUM_CLASSES == pytest.approx(report[name])  # 6 test images per class
        assert report["worst_class"][name] == min(per_class)
    text = capsys.readouterr().out
    worst = report["worst_class"]["fgsm"]
    assert "worst class" in text and f"{100 * worst:.2f}% ({report['per_class']['fgsm'].index(worst)})" in text
    rows = [line.split() for line in text.splitlines()[text.splitlines().index(next(
        line for line in text.splitlines() if line.startswith("class"))) + 1:]][:NUM_CLASSES]
    assert [row[0] for row in rows] == [str(c) for c in range(NUM_CLASSES)]
    assert [row[1] for row in rows] == [f"{100 * a:.2f}%" for a in report["per_class"]["clean"]]

    # a rerun keeps the finished attacks' per-class accuracy and adds the new attack's
    assert eval_command(eval_args(checkpoint, out, "clean,fgsm,pgd20"), make_registry()) == 0
    resumed = json.loads(out.read_text())
    assert resumed["per_class"]["clean"] == report["per_class"]["clean"]
    assert resumed["per_class"]["fgsm"] == report["per_class"]["fgsm"]
    assert set(resumed["worst_class"]) == {"clean", "fgsm", "pgd20"}
    assert resumed["worst_class"]["pgd20"] == min(resumed["per_class"]["pgd20"])
    assert "(from the --json file)" in capsys.readouterr().out


def test_a_results_file_without_per_class_accuracy_still_continues(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert eval_command(eval_args(checkpoint, out, "clean"), make_registry()) == 0
    older = json.loads(out.read_text())
    del older["per_class"], older["worst_class"]  # as written before per-class accuracy was counted
    out.write_text(json.dumps(older))
    capsys.readouterr()
    assert eval_command(eval_args(checkpoint, out, "clean,fgsm"), make_registry()) == 0
    report = json.loads(out.read_text())
    assert report["clean"] == older["clean"] and set(report["per_class"]) == {"fgsm"}
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("clean ") and "%" in line)
    assert "—" in line and "(from the --json file)" in line


# ------------------------------------------------------------------------------------ per-example worst case

def test_the_worst_case_over_all_attacks_in_the_table_the_json_and_after_a_resume(checkpoint, tmp_path, capsys):
    fresh, resumed = tmp_path / "fresh.json", tmp_path / "resumed.json"
    assert eval_command(eval_args(checkpoint, fresh, "clean,fgsm,pgd20"), make_registry()) == 0
    report = json.loads(fresh.read_text())
    points = {name: torch.tensor([c == "1" for c in text]) for name, text in report["correct"].items()}
    assert set(points) == {"clean", "fgsm", "pgd20"} and all(len(p) == 60 for p in points.values())
    for name, p in points.items():
        assert float(p.float().mean()) == pytest.approx(report[name])
    together = float(torch.stack(list(points.values())).all(0).float().mean())
    assert report["worst_case"] == pytest.approx(together) and report["worst_case_attacks"] == ["clean", "fgsm", "pgd20"]
    assert together <= min(report[n] for n in points)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("all together"))
    assert f"{100 * together:.2f}%" in row and "clean, fgsm, pgd20" in row

    # in two runs: the second reads the first's per-image outcomes back
    assert eval_command(eval_args(checkpoint, resumed, "clean,fgsm"), make_registry()) == 0
    assert eval_command(eval_args(checkpoint, resumed, "clean,fgsm,pgd20"), make_registry()) == 0
    second = json.loads(resumed.read_text())
    assert second["correct"] == report["correct"] and second["worst_case"] == report["worst_case"]
    assert "all together" in capsys.readouterr().out

    # a file written before the outcomes were stored: the worst case covers the attacks that have them, and says so
    older = {k: v for k, v in second.items() if k != "correct"}
    resumed.write_text(json.dumps(older))
    assert eval_command(eval_args(checkpoint, resumed, "clean,fgsm,pgd20,cw"), make_registry()) == 0
    third = json.loads(resumed.read_text())
    assert third["worst_case_attacks"] == ["cw"] and third["worst_case"] == pytest.approx(third["cw"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("all together"))
    assert "not clean, fgsm, pgd20" in row


def test_eval_sanity_prints_its_plan_first_and_writes_its_section(checkpoint, tmp_path, capsys):
    from robustdistill._eval.sanity import VERDICTS

    pytest.importorskip("pyautoattack")

    out = tmp_path / "eval.json"
    assert eval_command(eval_args(checkpoint, out, "clean,pgd20", "--sanity", "--sanity-images", "30"),
                        make_registry()) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    plan = next(i for i, line in enumerate(lines) if line.startswith("then sanity checks on 30 images"))
    assert "reusing pgd20" in lines[plan] and "passes per image" in lines[plan]
    assert plan < next(i for i, line in enumerate(lines) if line.startswith("attack "))
    section = json.loads(out.read_text())["sanity"]
    assert section["images"] == 30 and section["verdict"] in VERDICTS
    names = [c["name"] for c in section["checks"]]
    assert names == ["deterministic", "batch_size", "probabilities", "zero_gradients", "eps_monotone", "large_eps",
                     "unbounded", "fgsm_vs_pgd", "margin_loss", "more_steps", "converged", "square"], "no teacher: no transfer"
    assert all(c["verdict"] in VERDICTS and c["meaning"] for c in section["checks"])
    assert f"sanity (30 images): {section['verdict']}" in text and "more_steps" in text

    # a rerun keeps them; adding an attack keeps them too
    assert eval_command(eval_args(checkpoint, out, "clean,pgd20,fgsm", "--sanity", "--sanity-images", "30"),
                        make_registry()) == 0
    assert "sanity checks already in" in capsys.readouterr().out
    assert json.loads(out.read_text())["sanity"] == section


def test_the_transfer_check_attacks_the_runs_teacher_or_the_one_named(trained, checkpoint, tmp_path, capsys):
    pytest.importorskip("pyautoattack")
    student = tmp_path / "student.pt"
    state = torch.load(checkpoint, weights_only=False)
    torch.save({**state, "config": {**state["config"], "teacher": [str(checkpoint)]}}, student)
    out = tmp_path / "eval.json"
    assert eval_command(eval_args(student, out, "clean,pgd20", "--sanity", "--sanity-images", "24"),
                        make_registry()) == 0
    assert f"PGD-20 transferred from the teacher {checkpoint}" in capsys.readouterr().out
    (transfer,) = [c for c in json.loads(out.read_text())["sanity"]["checks"] if c["name"] == "transfer"]
    assert transfer["details"]["teacher"] == str(checkpoint)
    # the student is its own teacher here: the transferred attack is the white-box one
    assert transfer["verdict"] == "ok" and transfer["figure"] <= transfer["warning_above"]

    def checks(*extra):
        assert eval_command(eval_args(lost, tmp_path / f"e{len(extra)}.json", "clean", "--sanity", "--sanity-images",
                                      "24", *extra), make_registry()) == 0
        return [c["name"] for c in json.loads((tmp_path / f"e{len(extra)}.json").read_text())["sanity"]["checks"]]

    lost = tmp_path / "lost.pt"
    torch.save({**state, "config": {**state["config"], "teacher": [str(tmp_path / "gone.pt")]}}, lost)
    assert "transfer" not in checks()
    assert f"the run's teacher {tmp_path / 'gone.pt'} is not found" in capsys.readouterr().out
    assert "transfer" in checks("--sanity-teacher", str(checkpoint))
    assert "transfer" not in checks("--sanity-teacher", "none", "--redo")


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class FlippedGradient(torch.autograd.Function):
    """The identity whose backward negates the gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


def linear_scorer(w: list[float]) -> nn.Module:
    """Logits ``[w·x, 0]`` of a 1×2×2 image: CE on label 0 has input gradient (σ(w·x) − 1)·w, along −w."""
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([w, [0.0] * 4]))
    return nn.Sequential(nn.Flatten(), layer)


def test_the_input_gradient_cosine_with_a_teacher(trained, checkpoint, tmp_path, capsys):
    from robustdistill._eval.alignment import gradient_cosine

    x, y = torch.rand(3, 1, 2, 2), torch.zeros(3, dtype=torch.long)
    a, b = linear_scorer([1.0, 0.0, 0.0, 0.0]), linear_scorer([1.0, 1.0, 0.0, 0.0])
    assert gradient_cosine(a, b, x, y, batch_size=2, device="cpu") == pytest.approx(torch.full((3,), 2 ** -0.5))
    flipped = nn.Sequential(Lambda(FlippedGradient.apply), b)
    assert gradient_cosine(a, flipped, x, y, batch_size=2, device="cpu") == pytest.approx(torch.full((3,), -2 ** -0.5))
    assert gradient_cosine(a, a, x, y, batch_size=2, device="cpu") == pytest.approx(torch.ones(3))

    out = tmp_path / "eval.json"
    assert eval_command(eval_args(checkpoint, out, "clean", "--gradient-cosine", str(checkpoint)),
                        make_registry()) == 0
    alignment = json.loads(out.read_text())["gradient_cosine"]
    assert alignment["teacher"] == str(checkpoint) and alignment["mean"] == pytest.approx(1.0)
    assert alignment["images"] == json.loads(out.read_text())["n"]
    assert "input-gradient cosine with" in capsys.readouterr().out
    with pytest.raises(RobustDistillError, match="--gradient-cosine teacher: the checkpoint records no teacher"):
        eval_command(eval_args(checkpoint, tmp_path / "e2.json", "clean", "--gradient-cosine", "teacher"),
                     make_registry())
