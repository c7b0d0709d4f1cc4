"""AdaIAD: one engine step against a step written from the formulas (methods-ad2 §3: AdaAD's attack, IAD-I's outer
loss with the teacher at x′ and τ on the teacher term alone), the loss by hand, the guards, IGDM_AdaIAD's α."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from robustdistill import RobustDistillError
from robustdistill._data import DATASET_INFOS
from robustdistill._presets import preset
from robustdistill.plugins.igdm import ALPHA
from robustdistill.testing import attack as run_attack
from robustdistill.testing import loss_terms, options, plugin_host, resolved_config, step_context, tiny_model

from support import reference_pgd
from test_iad import (LN3, SEED, assert_same_step, bn_state, context, differs, engine_step, frozen, kl, kl_rows,
                      softmax)


@pytest.fixture(scope="module")
def host():
    return plugin_host()


def reference_adaiad(ctx, student, teacher, *, tau, alpha, beta, introspect, clip_start=False,
                     teacher_in_attack=True, detach_target=False, teacher_at_clean=False, tau_on_self=False,
                     clean_forwards=None):
    """AdaIAD's step written out (main.py, AdaAD_with_IAD1): AdaAD's attack (both nets in eval, KL through both,
    from the unclipped x + 0.001·N); S(x), S(x′), S(x) for the target (from epoch b+1), S(x) for the CE."""
    x, y, cfg = ctx.x, ctx.y, ctx.config
    torch.manual_seed(SEED)
    student.eval()

    def objective(xa):
        t = teacher(xa) if teacher_in_attack else teacher(xa).detach()
        return kl_rows(t, student(xa))

    x_adv = reference_pgd(objective, x, cfg.eps, cfg.step_size, cfg.attack_steps, "normal", clip_start=clip_start)
    student.train()
    clean = [student(x)]
    s_adv = student(x_adv)
    clean += [student(x) for _ in range(clean_forwards or (2 if introspect else 1))]
    t_adv = teacher(x_adv)
    loss = alpha * tau ** 2 * kl_rows(teacher(x) if teacher_at_clean else t_adv, s_adv, tau).mean()
    if introspect:
        a = F.softmax(t_adv, dim=1)[torch.arange(len(y)), y] ** beta
        target = clean[1].detach() if detach_target else clean[1]
        loss = loss + alpha * ((1 - a) * kl_rows(target, s_adv, tau if tau_on_self else 1.0)).mean()
    loss = loss + (1 - alpha) * F.cross_entropy(clean[-1], y)
    loss.backward()
    return loss


@pytest.mark.parametrize("epoch, config", [(61, {}), (60, {}),
                                           (3, {"adaiad_begin": 2, "adaiad_tau": 2.0, "adaiad_alpha": 0.7,
                                                "adaiad_beta": 0.5})])
def test_adaiad_step_equals_the_formulas(host, epoch, config):
    ctx, before, loss, names = engine_step(host, ["adaiad"], epoch=epoch, **config)
    opts = ctx.config.adaiad
    introspect = epoch > opts.begin
    assert names == {"kl"} | ({"introspection"} if introspect else set()) | ({"ce"} if opts.alpha != 1 else set())
    reference_loss = reference_adaiad(ctx, before, frozen(ctx.teacher), tau=opts.tau, alpha=opts.alpha,
                                      beta=opts.beta, introspect=introspect)
    assert_same_step(ctx, loss, reference_loss, before)


def test_adaiad_step_tells_each_wrong_variant_apart(host):
    variants = {"gate one epoch early": dict(introspect=False), "β ignored": dict(beta=1.0),
                "detached self target": dict(detach_target=True), "teacher at clean x (IAD-I's)":
                dict(teacher_at_clean=True), "τ on the self term": dict(tau_on_self=True),
                "one S(x) fewer": dict(clean_forwards=1), "clipped start": dict(clip_start=True),
                "attack without the teacher's gradient": dict(teacher_in_attack=False)}
    ctx, before, loss, _ = engine_step(host, ["adaiad"], epoch=61, adaiad_tau=3.0)
    teacher = frozen(ctx.teacher)
    for name, change in variants.items():
        student = copy.deepcopy(before)
        reference_loss = reference_adaiad(ctx, student, teacher, **{**dict(tau=3.0, alpha=1.0, beta=0.1,
                                                                          introspect=True), **change})
        assert differs(ctx, loss, reference_loss, student), name


def test_adaiad_attack_leaves_the_batchnorm_statistics_and_the_teacher_alone(host):
    teacher = tiny_model(seed=3)
    ctx = step_context(host, ["adaiad"], student=tiny_model(seed=0), teacher=teacher, batch=8)
    before = bn_state(ctx.student)
    ctx.student.train()
    run_attack(ctx)
    assert all(torch.equal(a, b) for a, b in zip(bn_state(ctx.student).values(), before.values()))
    assert ctx.student.training and all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("tau", [30.0, 2.0])
def test_adaiad_terms_by_hand(host, tau):
    # x = 0, x′ = [ln3/2, 0], y = 0: S(x′) = [ln3/2, 0]; T = 2·input: T(x′) = [ln3, 0] → [3/4, 1/4], A = (3/4)^0.1
    ctx = context(host, ["adaiad"], [[0.0, 0.0]], [[LN3 / 2, 0.0]], adaiad_tau=tau)
    terms = {t.name: t for t in loss_terms(ctx)}
    assert set(terms) == {"kl", "introspection"}
    expected_kl = kl(softmax([LN3 / tau, 0]), softmax([LN3 / (2 * tau), 0]))
    assert terms["kl"].value.item() == pytest.approx(expected_kl, rel=2e-3), "float32 at τ = 30, as the code"
    assert terms["kl"].weight == pytest.approx(tau ** 2)
    expected_self = (1 - 0.75 ** 0.1) * kl([0.5, 0.5], softmax([LN3 / 2, 0]))
    assert terms["introspection"].value.item() == pytest.approx(expected_self, abs=1e-6)
    assert terms["introspection"].weight == 1.0
    grad_clean, grad_adv = torch.autograd.grad(terms["introspection"].value, [ctx.x, ctx.x_adv])
    assert grad_clean.abs().sum() > 0 and grad_adv.abs().sum() > 0, "the self target is not detached"


def test_adaiad_declares_the_codes_forwards_in_order(host):
    ctx = context(host, ["adaiad"], [[0.0, 0.0]], [[LN3 / 2, 0.0]])
    loss_terms(ctx)
    assert list(ctx._declared) == ["clean", "adv", "clean#2", "clean#3"]
    ctx = context(host, ["adaiad"], [[0.0, 0.0]], [[LN3 / 2, 0.0]], epoch=60)
    assert {t.name for t in loss_terms(ctx)} == {"kl"} and list(ctx._declared) == ["clean", "adv", "clean#2"]


def test_adaiad_code_defaults(host):
    opts = resolved_config(host, ["adaiad"], DATASET_INFOS["cifar10"]).adaiad
    assert (opts.tau, opts.alpha, opts.beta, opts.begin, opts.init) == (30.0, 1.0, 0.1, 60, "normal")
    for name in ("adaiad-cifar10", "adaiad-cifar100"):
        train = preset(name).train
        assert (train["adaiad-tau"], train["adaiad-begin"], train["weight-decay"]) == (30, 60, 5e-4)


@pytest.mark.parametrize("config, message", [({"adaiad_tau": -1.0}, "--adaiad-tau must be positive"),
                                             ({"adaiad_beta": -0.1}, "--adaiad-beta must be ≥ 0"),
                                             ({"adaiad_begin": -2}, "--adaiad-begin must be ≥ 0")])
def test_bad_options_are_refused(host, config, message):
    with pytest.raises(RobustDistillError, match=message):
        step_context(host, ["adaiad"], config=options(host, **config))


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "svhn"])
def test_igdm_adaiad_takes_the_alpha_of_igdm_adaad(host, dataset):
    config = resolved_config(host, ["adaiad", "igdm"], DATASET_INFOS[dataset])
    assert config.igdm.alpha == ALPHA[dataset]["adaad"] == {"cifar10": 5, "cifar100": 15, "svhn": 9}[dataset]
    if dataset != "svhn":
        assert preset(f"igdm-adaiad-{dataset}").train["igdm-alpha"] == config.igdm.alpha
    assert math.isclose(config.adaiad.tau, 30.0)
