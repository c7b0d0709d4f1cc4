"""AKD in its author's later code form (methods-ad2 §7): one engine step against the formulas, the soft labels by
hand, the required mixing weight, IGDM_AKD's α."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from robustdistill import RobustDistillError
from robustdistill._data import DATASET_INFOS
from robustdistill._presets import preset
from robustdistill.plugins.igdm import ALPHA
from robustdistill.testing import loss_terms, options, plugin_host, resolved_config

from support import reference_pgd
from test_iad import LN3, SEED, assert_same_step, context, differs, engine_step, frozen


@pytest.fixture(scope="module")
def host():
    return plugin_host()


def reference_akd(ctx, student, teacher, *, alpha, teacher_at_clean=False, clip_start=False, attack_train=False):
    """AKD's step written out: PGD on the student's CE (eval mode, unclipped uniform start), S(x′) in train mode,
    q = α·σ(T(x′)) + (1 − α)·onehot(y), the soft cross-entropy."""
    x, y, cfg = ctx.x, ctx.y, ctx.config
    torch.manual_seed(SEED)
    student.train(attack_train)
    x_adv = reference_pgd(lambda xa: F.cross_entropy(student(xa), y, reduction="none"), x, cfg.eps, cfg.step_size,
                          cfg.attack_steps, "uniform", clip_start=clip_start)
    student.train()
    s_adv = student(x_adv)
    t = teacher(x if teacher_at_clean else x_adv)
    q = alpha * F.softmax(t, dim=1) + (1 - alpha) * F.one_hot(y, t.shape[1])
    loss = -(q * F.log_softmax(s_adv, dim=1)).sum(dim=1).mean()
    loss.backward()
    return loss


@pytest.mark.parametrize("config", [{"akd_alpha": 0.6}, {"akd_alpha": 1.0}, {"akd_alpha": 0.3,
                                                                            "akd_teacher_input": "clean"}])
def test_akd_step_equals_the_formulas(host, config):
    ctx, before, loss, names = engine_step(host, ["akd"], epoch=1, epochs=1, **config)
    assert names == {"soft_ce"}
    opts = ctx.config.akd
    reference_loss = reference_akd(ctx, before, frozen(ctx.teacher), alpha=opts.alpha,
                                   teacher_at_clean=opts.teacher_input == "clean")
    assert_same_step(ctx, loss, reference_loss, before)


def test_akd_step_tells_each_wrong_variant_apart(host):
    variants = {"teacher at clean x": dict(teacher_at_clean=True), "clipped start": dict(clip_start=True),
                "train-mode attack": dict(attack_train=True), "weights swapped": dict(alpha=0.4)}
    ctx, before, loss, _ = engine_step(host, ["akd"], epoch=1, epochs=1, akd_alpha=0.6)
    teacher = frozen(ctx.teacher)
    for name, change in variants.items():
        student = copy.deepcopy(before)
        reference_loss = reference_akd(ctx, student, teacher, **{"alpha": 0.6, **change})
        assert differs(ctx, loss, reference_loss, student), name


@pytest.mark.parametrize("teacher_input, teacher_probs", [("adv", [0.9, 0.1]), ("clean", [0.5, 0.5])])
def test_akd_soft_labels_by_hand(host, teacher_input, teacher_probs):
    # x = 0, x′ = [ln3, 0], y = 0: S(x′) → [3/4, 1/4]; T = 2·input: T(x′) → [9/10, 1/10], T(x) → [1/2, 1/2]
    ctx = context(host, ["akd"], [[0.0, 0.0]], [[LN3, 0.0]], akd_alpha=0.6, akd_teacher_input=teacher_input)
    (term,) = loss_terms(ctx)
    q = [0.6 * teacher_probs[0] + 0.4, 0.6 * teacher_probs[1]]
    expected = -(q[0] * math.log(0.75) + q[1] * math.log(0.25))
    assert term.name == "soft_ce" and term.weight == 1.0
    assert term.value.item() == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(term.samples(), torch.tensor([expected]), atol=1e-6)


def test_akd_refuses_to_run_without_the_mixing_weight(host):
    with pytest.raises(RobustDistillError, match="gives for no image dataset: pass --akd-alpha"):
        resolved_config(host, ["akd"], DATASET_INFOS["cifar10"])
    with pytest.raises(RobustDistillError, match=r"--akd-alpha must be in \[0, 1\]"):
        resolved_config(host, ["akd"], DATASET_INFOS["cifar10"], options(host, akd_alpha=1.5))


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "svhn"])
def test_igdm_akd_takes_app_b2_alpha(host, dataset):
    config = resolved_config(host, ["akd", "igdm"], DATASET_INFOS[dataset], options(host, akd_alpha=0.5))
    assert config.igdm.alpha == ALPHA[dataset]["akd"] == {"cifar10": 7, "cifar100": 50, "svhn": 10}[dataset]
    if dataset != "svhn":
        train = preset(f"igdm-akd-{dataset}").train
        assert train["igdm-alpha"] == config.igdm.alpha and "akd-alpha" not in train, "AKD's α is not published"
