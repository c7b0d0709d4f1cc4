"""Defaults that train what each paper's code trains: per composition, per number of classes, the zero-weight
clean forwards of ARD and AdaAD, fp32 by default, and config.json recording every resolved value."""
import copy
import json
from dataclasses import replace

import pytest
import torch

from robustdistill._data import DATASET_INFOS
from robustdistill.testing import attack as run_attack
from robustdistill.testing import loss_terms, options, plugin_host, resolved_config, step_context, tiny_model, \
    train_config, train_run


@pytest.fixture(scope="module")
def host():
    return plugin_host()


def resolved(host, methods, classes=10, **values):
    info = replace(DATASET_INFOS["synthetic"], num_classes=classes)
    return resolved_config(host, methods, info, options(host, **values))


# -- defaults per composition and dataset -------------------------------------------------------------------

@pytest.mark.parametrize("classes", [10, 100])
def test_ard_alone_is_the_ard_code_and_with_igdm_the_igdm_codes_base(host, classes):
    ard = resolved(host, ["ard"], classes).ard
    assert (ard.tau, ard.kl_reduction, ard.attack_bn, ard.alpha, ard.init) == (30.0, "mean", "train", 1.0, "uniform")
    config = resolved(host, ["ard", "igdm"], classes)
    assert (config.ard.tau, config.ard.kl_reduction, config.ard.attack_bn) == (1.0, "batchmean", "eval")
    assert config.igdm.alpha == {10: 5.0, 100: 50.0}[classes]
    assert resolved(host, ["igdm", "ard"], classes).ard.tau == 1.0, "the order of --plugin does not matter"


def test_options_given_on_the_command_line_win_over_composition_defaults(host):
    config = resolved(host, ["ard", "igdm"], ard_tau=30.0, ard_kl_reduction="mean")
    assert (config.ard.tau, config.ard.kl_reduction, config.ard.attack_bn) == (30.0, "mean", "eval")
    assert resolved(host, ["ard"], ard_attack_bn="eval").ard.attack_bn == "eval"
    assert resolved(host, ["rslad"], 100, rslad_scale=1.0).rslad.scale == 1.0
    assert resolved(host, ["adaad"], 10, adaad_reduction="batchmean").adaad.reduction == "batchmean"


@pytest.mark.parametrize("methods, classes, scale", [(["rslad"], 10, 1.0), (["rslad"], 100, 10.0),
                                                     (["rslad", "igdm"], 10, 1.0), (["rslad", "igdm"], 100, 10.0)])
def test_rslad_scale_is_ten_on_100_classes(host, methods, classes, scale):
    config = resolved(host, methods, classes)
    assert (config.rslad.scale, config.rslad.reduction) == (scale, "mean")


@pytest.mark.parametrize("methods, classes, reduction", [(["adaad"], 10, "mean"), (["adaad"], 100, "batchmean"),
                                                         (["adaad", "igdm"], 10, "batchmean"),
                                                         (["adaad", "igdm"], 100, "batchmean")])
def test_adaad_reduction_follows_the_official_code_of_the_composition(host, methods, classes, reduction):
    assert resolved(host, methods, classes).adaad.reduction == reduction


def test_ard_loss_alone_and_with_igdm_by_hand(host):
    from test_ad import LN3, context, kl, terms_of
    # T(x) = 2x; x = [15·ln3, 0]: alone (τ = 30) σ(T/30) = [3/4, 1/4], S(x′) = [0, 0] → [1/2, 1/2]; 2 classes
    alone = terms_of(context(host, ["ard"], [[15 * LN3, 0.0]], [[0.0, 0.0]]))
    assert alone["kl"] == (pytest.approx(kl([0.75, 0.25], [0.5, 0.5]) / 2, abs=1e-6), pytest.approx(900.0))
    # with igdm (τ = 1, batchmean): x = [ln3/2, 0] → σ(T) = [3/4, 1/4]
    composed = terms_of(context(host, ["ard", "igdm"], [[LN3 / 2, 0.0]], [[0.0, 0.0]], igdm_alpha=1.0))
    assert composed["kl"] == (pytest.approx(kl([0.75, 0.25], [0.5, 0.5]), abs=1e-6), pytest.approx(1.0))


def test_gradnorm_and_igam_defaults_are_the_official_configurations(host):
    config = resolved(host, ["gradnorm"], eps=0.1)
    assert config.gradnorm.eps == pytest.approx(4 / 255)
    assert resolved(host, ["igam"]).igam.diff_reduction == "sum32"


# -- the clean forward at weight 0 ------------------------------------------------------------------------

def running_stats(model):
    return [b.clone() for name, b in model.named_buffers() if "running" in name]


@pytest.mark.parametrize("method, order, terms", [("ard", ("adv", "clean"), {"kl"}),
                                                  ("adaad", ("clean", "adv"), {"kl_adv"})])
def test_the_zero_weight_clean_forward_runs_in_train_mode_and_leaves_the_loss_alone(host, method, order, terms):
    # ARD at α = 1 and AdaAD at λ = 1: the official codes still run S(x) in train mode (ARD after S(x′), AdaAD
    # before), so BatchNorm's running statistics see the clean batch; its term has weight 0 and is left out.
    student = tiny_model(seed=0)
    ctx = step_context(host, [method], student=student, teacher=tiny_model(seed=1), batch=16)
    student.train()
    ctx.x_adv = run_attack(ctx)
    reference, swapped = copy.deepcopy(student), copy.deepcopy(student)
    got = {t.name: t for t in loss_terms(ctx)}
    assert set(got) == terms, "a zero-weight term is not a term"
    inputs = {"adv": ctx.x_adv, "clean": ctx.x}
    with torch.no_grad():
        for key in order:
            reference(inputs[key])
        for key in reversed(order):
            swapped(inputs[key])
    assert all(torch.equal(a, b) for a, b in zip(running_stats(student), running_stats(reference)))
    assert not all(torch.equal(a, b) for a, b in zip(running_stats(student), running_stats(swapped))), \
        "the order of the forwards shows in the running statistics"


@pytest.mark.parametrize("method, term", [("ard", "ce"), ("adaad", "kl_clean")])
def test_the_clean_term_appears_once_its_weight_is_not_zero(host, method, term):
    ctx = step_context(host, [method], teacher=tiny_model(seed=1),
                       config=options(host, **{f"{method}_{'alpha' if method == 'ard' else 'lambda'}": 0.75}))
    ctx.x_adv = run_attack(ctx)
    weights = {t.name: t.weight for t in loss_terms(ctx)}
    assert weights[term] == pytest.approx(0.25)


# -- fp32 by default, and config.json -------------------------------------------------------------------------

def test_training_is_fp32_by_default(host):
    assert train_config(host).amp == "off"
    from robustdistill._arguments import build_parser
    from robustdistill._catalog import Catalog
    help_text = build_parser(Catalog.of(host)).commands["train"].format_help()
    assert "fp32, as the official codes of the distillation methods train" in " ".join(help_text.split())


def test_config_json_records_every_resolved_value(host, tmp_path):
    train_run(host, ["natural"], tmp_path / "teacher", "--subset", "64")
    for methods in (["ard", "igdm"], ["adaad"], ["rslad"]):
        out = tmp_path / "-".join(methods)
        train_run(host, methods, out, "--teacher", str(tmp_path / "teacher"), "--epochs", "2", "--subset", "64")
        config = json.loads((out / "config.json").read_text())
        assert config["amp"] == "off" and config["milestones"] == [1] and config["eps"] is not None
        for method in methods:
            assert all(value is not None for value in config["plugins"][method].values()), config["plugins"][method]
        plugins = config["plugins"]
        if "ard" in methods:
            assert (plugins["ard"]["tau"], plugins["ard"]["kl_reduction"], plugins["ard"]["attack_bn"]) == \
                (1.0, "batchmean", "eval")
            assert (plugins["igdm"]["alpha"], plugins["igdm"]["ramp_epochs"]) == (5.0, 2)
        if "adaad" in methods:
            assert plugins["adaad"]["reduction"] == "mean"
        if "rslad" in methods:
            assert plugins["rslad"]["scale"] == 1.0
