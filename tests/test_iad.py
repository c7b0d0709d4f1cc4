"""IAD-I and IAD-II: one engine step against a step written from the formulas (methods-ad2 §2), the losses by hand,
and guards for the epoch gate, the trust weight, the non-detached self target, the forward order and the attack's
start; IGDM_IAD's α; an end-to-end run on Fashion-MNIST (IAD, AdaIAD, AKD)."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from robustdistill import RobustDistillError
from robustdistill._data import DATASET_INFOS
from robustdistill._loop import train_step
from robustdistill._presets import preset
from robustdistill.plugins.igdm import ALPHA
from robustdistill.testing import attack as run_attack
from robustdistill.testing import (loss_terms, options, plugin_host, resolved_config, step_context, tiny_model,
                                   train_config)

from support import Scaled, needs_fashion_mnist, reference_pgd

LN3 = math.log(3)
SEED = 11


@pytest.fixture(scope="module")
def host():
    return plugin_host()


# -- helpers shared with test_adaiad and test_akd ----------------------------------------------------------------

def kl_rows(p_logits, q_logits, tau=1.0):
    """Σ_c KL_i(σ(p/τ) ‖ σ(q/τ)) per sample (``kl_div(log σ(q/τ), σ(p/τ))`` as the codes write it), gradient through
    both sides."""
    return F.kl_div(F.log_softmax(q_logits / tau, dim=1), F.softmax(p_logits / tau, dim=1), reduction="none").sum(1)


def bn_state(model):
    return {name: b.clone() for name, b in model.named_buffers()}


def engine_step(host, methods, *, epoch, epochs=200, teacher=None, teachers=None, batch=8, **config):
    """One engine step (attack, forwards, loss, backward, optimiser step) and a copy of the student before it."""
    teacher = teacher if teacher is not None or teachers else tiny_model(seed=1)
    ctx = step_context(host, methods, student=tiny_model(seed=0), teacher=teacher,
                       teachers=teachers, batch=batch, epoch=epoch, epochs=epochs, config=options(host, **config))
    before = copy.deepcopy(ctx.student)
    torch.manual_seed(SEED)
    loss, terms = train_step(ctx._engine, ctx)
    return ctx, before, loss, {t.name for t in terms}


def assert_same_step(ctx, loss, reference_loss, reference):
    """Loss, every parameter gradient and the BatchNorm running statistics equal the reference's."""
    assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-5, abs=1e-7)
    for (name, p), q in zip(ctx.student.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), name
    engine_bn, reference_bn = bn_state(ctx.student), bn_state(reference)
    for name in engine_bn:
        assert torch.allclose(engine_bn[name], reference_bn[name], rtol=1e-5, atol=1e-7), name


def differs(ctx, loss, reference_loss, reference):
    try:
        assert_same_step(ctx, loss, reference_loss, reference)
    except AssertionError:
        return True
    return False


def frozen(model):
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# -- IAD-I: the step from the formulas ---------------------------------------------------------------------------

def reference_iad1(ctx, student, teacher, *, tau, alpha, beta, introspect, clip_start=False, attack_train=True,
                   detach_target=False, extra_adv_forward=True, clean_forwards=None):
    """IAD-I's step written out (IAD-I.py): PGD-CE with the student in train mode from the unclipped uniform start;
    S(x′), a discarded S(x′), S(x) for the target (from epoch b+1), S(x) for the CE; the loss; its backward."""
    x, y, cfg = ctx.x, ctx.y, ctx.config
    torch.manual_seed(SEED)
    student.train(attack_train)
    x_adv = reference_pgd(lambda xa: F.cross_entropy(student(xa), y, reduction="none"), x, cfg.eps, cfg.step_size,
                          cfg.attack_steps, "uniform", clip_start=clip_start)
    student.train()
    t_clean, t_adv = teacher(x), teacher(x_adv)
    s_adv = student(x_adv)
    if extra_adv_forward:
        student(x_adv)
    loss = alpha * tau ** 2 * kl_rows(t_clean, s_adv, tau).mean()
    clean = [student(x) for _ in range(clean_forwards or (2 if introspect else 1))]
    if introspect:
        a = F.softmax(t_adv, dim=1)[torch.arange(len(y)), y] ** beta
        target = clean[0].detach() if detach_target else clean[0]
        loss = loss + alpha * ((1 - a) * kl_rows(target, s_adv)).mean()
    loss = loss + (1 - alpha) * F.cross_entropy(clean[-1], y)
    loss.backward()
    return loss, x_adv


IAD1_CASES = [  # (epoch, options): the code's defaults on both sides of the gate, and other τ, α, β
    (61, {}), (60, {}), (3, {"iad_begin": 2, "iad_tau": 2.0, "iad_alpha": 0.7, "iad_beta": 0.5})]


@pytest.mark.parametrize("epoch, config", IAD1_CASES)
def test_iad1_step_equals_the_formulas(host, epoch, config):
    ctx, before, loss, names = engine_step(host, ["iad"], epoch=epoch, **config)
    opts = ctx.config.iad
    introspect = epoch > opts.begin
    assert names == {"kl"} | ({"introspection"} if introspect else set()) | ({"ce"} if opts.alpha != 1 else set())
    reference_loss, _ = reference_iad1(ctx, before, frozen(ctx.teacher), tau=opts.tau, alpha=opts.alpha,
                                       beta=opts.beta, introspect=introspect)
    assert_same_step(ctx, loss, reference_loss, before)


def test_iad1_step_tells_each_wrong_variant_apart(host):
    """The equivalence above fails for each detail written otherwise: the 61st-epoch gate (0-based ≥ 60, not
    1-based), β, the non-detached self target, the code's forwards (the discarded S(x′), two S(x)), the unclipped
    start and the train-mode attack."""
    variants = {"gate one epoch early": dict(introspect=False), "β ignored": dict(beta=1.0),
                "detached self target": dict(detach_target=True), "no discarded S(x′)": dict(extra_adv_forward=False),
                "one S(x)": dict(clean_forwards=1), "clipped start": dict(clip_start=True),
                "eval-mode attack": dict(attack_train=False)}
    ctx, before, loss, _ = engine_step(host, ["iad"], epoch=61)
    teacher = frozen(ctx.teacher)
    for name, change in variants.items():
        student = copy.deepcopy(before)
        right = dict(tau=1.0, alpha=1.0, beta=0.1, introspect=True)
        reference_loss, _ = reference_iad1(ctx, student, teacher, **{**right, **change})
        assert differs(ctx, loss, reference_loss, student), name
    ctx, before, loss, _ = engine_step(host, ["iad"], epoch=60)
    reference_loss, _ = reference_iad1(ctx, before, teacher, tau=1.0, alpha=1.0, beta=0.1, introspect=True)
    assert differs(ctx, loss, reference_loss, before), "the 60th epoch (0-based 59) has no introspection"


def test_iad_attack_is_train_mode_pgd_ce_from_the_unclipped_uniform_start(host):
    ctx = step_context(host, ["iad"], student=tiny_model(seed=0), teacher=tiny_model(seed=1), batch=16,
                       config=options(host, eps=0.3))
    reference = copy.deepcopy(ctx.student).train()
    cfg = ctx.config

    def seeded_pgd(model, clip_start):
        torch.manual_seed(5)
        return reference_pgd(lambda xa: F.cross_entropy(model(xa), ctx.y, reduction="none"), ctx.x, cfg.eps,
                             cfg.step_size, cfg.attack_steps, "uniform", clip_start=clip_start)

    right = seeded_pgd(reference, False)
    assert not torch.equal(right, seeded_pgd(copy.deepcopy(ctx.student).train(), True))
    assert not torch.equal(right, seeded_pgd(copy.deepcopy(ctx.student).eval(), False))
    torch.manual_seed(5)
    ctx.student.train()
    adv = run_attack(ctx)
    assert torch.equal(adv, right)
    assert all(torch.equal(a, b) for a, b in zip(bn_state(ctx.student).values(), bn_state(reference).values())), \
        "each PGD iterate moved the running statistics, as in the code's train-mode attack"


# -- IAD-II ------------------------------------------------------------------------------------------------------

def reference_iad2(ctx, student, teacher, natural, *, tau, alpha1, alpha2, beta, introspect):
    """IAD-II's step written out (IAD-II.py): the attack of IAD-I, S(x′), S(x) (from epoch b+1), the loss."""
    x, y, cfg = ctx.x, ctx.y, ctx.config
    torch.manual_seed(SEED)
    student.train()
    x_adv = reference_pgd(lambda xa: F.cross_entropy(student(xa), y, reduction="none"), x, cfg.eps, cfg.step_size,
                          cfg.attack_steps, "uniform", clip_start=False)
    s_adv = student(x_adv)
    t_adv, st_adv = teacher(x_adv), natural(x_adv)
    a = F.softmax(t_adv, dim=1)[torch.arange(len(y)), y] ** beta if introspect else torch.ones(len(y))
    inner = (a * kl_rows(t_adv, s_adv, tau)).mean()
    if introspect:
        inner = inner + ((1 - a) * kl_rows(student(x), s_adv)).mean()
    loss = ((1 - alpha1 - alpha2) * F.cross_entropy(s_adv, y) + alpha1 * tau ** 2 * inner
            + alpha2 * tau ** 2 * kl_rows(st_adv, s_adv, tau).mean())
    loss.backward()
    return loss


@pytest.mark.parametrize("epoch, config", [(41, {}), (40, {}), (2, {"iad_begin": 1, "iad_tau": 2.0, "iad_alpha": 0.4,
                                                                     "iad_alpha2": 0.35, "iad_beta": 0.5})])
def test_iad2_step_equals_the_formulas(host, epoch, config):
    robust, natural = tiny_model(seed=1), tiny_model(seed=2)
    ctx, before, loss, names = engine_step(host, ["iad2"], epoch=epoch, teachers={"robust": robust, "clean": natural},
                                           **config)
    opts = ctx.config.iad
    introspect = epoch > opts.begin
    assert names == {"ce", "kl", "kl_natural"} | ({"introspection"} if introspect else set())
    assert ctx.teacher is ctx.teachers["robust"], "the default teacher (IGDM's) is the robust one"
    reference_loss = reference_iad2(ctx, before, frozen(robust), frozen(natural), tau=opts.tau,
                                    alpha1=opts.alpha, alpha2=opts.alpha2, beta=opts.beta, introspect=introspect)
    assert_same_step(ctx, loss, reference_loss, before)
    if introspect:  # the teacher term is weighted by A in IAD-II: without it the step is another
        student = copy.deepcopy(before)
        wrong = reference_iad2(ctx, student, frozen(robust), frozen(natural), tau=opts.tau, alpha1=opts.alpha,
                               alpha2=opts.alpha2, beta=0.0, introspect=False)
        assert differs(ctx, loss, wrong, student)


def test_iad_code_defaults_per_variant(host):
    info = DATASET_INFOS["cifar10"]
    one, two = resolved_config(host, ["iad"], info).iad, resolved_config(host, ["iad2"], info).iad
    assert (one.tau, one.alpha, one.alpha2, one.beta, one.begin, one.attack_bn, one.init) == \
        (1.0, 1.0, None, 0.1, 60, "train", "uniform")
    assert (two.tau, two.alpha, two.alpha2, two.beta, two.begin) == (1.0, 0.5, 0.25, 0.1, 40)


# -- hand-computed values ----------------------------------------------------------------------------------------

def context(host, methods, x, x_adv, y=(0,), epoch=61, teachers=None, **config):
    ctx = step_context(host, methods, student=Scaled(1.0), teacher=None if teachers else Scaled(2.0), teachers=teachers,
                       epoch=epoch,
                       epochs=200, config=options(host, **config))
    ctx.x, ctx.x_adv, ctx.y = (torch.tensor(x, requires_grad=True), torch.tensor(x_adv, requires_grad=True),
                               torch.tensor(y))
    return ctx


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("beta", [0.1, 1.0])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_iad1_terms_by_hand(host, beta, tau):
    # x = [ln3/2, 0], x′ = [0, 0], y = 0; T = 2·input: T(x) = [ln3, 0], T(x′) = [0, 0] → A = (1/2)^β
    ctx = context(host, ["iad"], [[LN3 / 2, 0.0]], [[0.0, 0.0]], iad_beta=beta, iad_tau=tau)
    terms = {t.name: t for t in loss_terms(ctx)}
    assert set(terms) == {"kl", "introspection"}
    assert terms["kl"].value.item() == pytest.approx(kl(softmax([LN3 / tau, 0]), [0.5, 0.5]), abs=1e-6)
    assert terms["kl"].weight == pytest.approx(tau ** 2), "α·τ² on the teacher term, the teacher at clean x"
    expected = (1 - 0.5 ** beta) * kl(softmax([LN3 / 2, 0]), [0.5, 0.5])
    assert terms["introspection"].value.item() == pytest.approx(expected, abs=1e-6), "no τ in the self term"
    assert terms["introspection"].weight == 1.0
    assert torch.allclose(terms["introspection"].samples(), torch.tensor([expected]), atol=1e-6)


def test_iad1_self_target_is_not_detached(host):
    ctx = context(host, ["iad"], [[LN3 / 2, 0.0]], [[0.0, 0.0]])
    term = next(t for t in loss_terms(ctx) if t.name == "introspection")
    grad_clean, grad_adv = torch.autograd.grad(term.value, [ctx.x, ctx.x_adv])
    assert grad_clean.abs().sum() > 0 and grad_adv.abs().sum() > 0


@pytest.mark.parametrize("epoch, begin, on", [(60, 60, False), (61, 60, True), (1, 0, True), (1, 1, False),
                                              (2, 1, True)])
def test_iad_gate_is_the_codes_zero_based_epoch(host, epoch, begin, on):
    ctx = context(host, ["iad"], [[LN3 / 2, 0.0]], [[0.0, 0.0]], epoch=epoch, iad_begin=begin)
    assert ("introspection" in {t.name for t in loss_terms(ctx)}) == on
    assert ("clean#2" in ctx._declared) == on, "the introspection target's own forward of S(x)"


def test_iad1_declares_the_codes_forwards_in_order(host):
    ctx = context(host, ["iad"], [[LN3 / 2, 0.0]], [[0.0, 0.0]])
    loss_terms(ctx)
    assert list(ctx._declared) == ["adv", "adv#2", "clean", "clean#2"]


def test_iad2_terms_by_hand(host):
    # x′ = [ln3/2, 0]: S(x′) = [ln3/2, 0], T(x′) = [ln3, 0] → [3/4, 1/4], A = (3/4)^β; natural = 4·input → [9/10, 1/10]
    ctx = context(host, ["iad2"], [[0.0, 0.0]], [[LN3 / 2, 0.0]], teachers={"robust": Scaled(2.0), "clean": Scaled(4.0)},
                  epoch=41)
    terms = {t.name: t for t in loss_terms(ctx)}
    a = 0.75 ** 0.1
    q_adv = softmax([LN3 / 2, 0])
    assert terms["ce"].value.item() == pytest.approx(-math.log(q_adv[0]), abs=1e-6)
    assert terms["ce"].weight == pytest.approx(0.25)
    assert terms["kl"].value.item() == pytest.approx(a * kl([0.75, 0.25], q_adv), abs=1e-6)
    assert terms["introspection"].value.item() == pytest.approx((1 - a) * kl([0.5, 0.5], q_adv), abs=1e-6)
    assert terms["kl"].weight == terms["introspection"].weight == pytest.approx(0.5)
    assert terms["kl_natural"].value.item() == pytest.approx(kl([0.9, 0.1], q_adv), abs=1e-6)
    assert terms["kl_natural"].weight == pytest.approx(0.25)


def test_zero_weight_ce_is_no_term(host):
    ctx = context(host, ["iad2"], [[0.0, 0.0]], [[LN3 / 2, 0.0]], teachers={"robust": Scaled(2.0), "clean": Scaled(4.0)},
                  iad_alpha=0.6, iad_alpha2=0.4)
    assert "ce" not in {t.name for t in loss_terms(ctx)}


# -- per-sample values --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("methods", [["iad"], ["iad2"], ["adaiad"], ["akd"], ["iad", "igdm"], ["iad", "fairard"]])
def test_every_term_gives_per_sample_values_whose_mean_is_the_term(host, methods):
    config = options(host, iad_alpha=0.5, adaiad_alpha=0.5, adaiad_tau=2.0, akd_alpha=0.5, igdm_alpha=1.0)
    ctx = step_context(host, methods, config=config, batch=6, epoch=61, epochs=200)
    run_attack(ctx)
    terms = loss_terms(ctx)
    assert len(terms) >= 2 or methods == ["akd"]
    for term in terms:
        samples = term.samples()
        assert samples.shape == (6,), term.name
        torch.testing.assert_close(samples.mean(), term.value.float(), msg=term.name)


# -- errors ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, message", [({"iad_tau": 0.0}, "--iad-tau must be positive"),
                                             ({"iad_beta": -1.0}, "--iad-beta must be ≥ 0"),
                                             ({"iad_begin": -1}, "--iad-begin must be ≥ 0"),
                                             ({"iad_alpha2": 0.25}, "--iad-alpha2 is the natural teacher's weight")])
def test_bad_options_are_refused(host, config, message):
    with pytest.raises(RobustDistillError, match=message):
        step_context(host, ["iad"], config=options(host, **config))


def test_iad2_needs_both_teachers(host):
    from robustdistill._ops import get_backend
    from robustdistill._resolve import resolve_config

    for given, missing in ((["--teacher", "at.pt"], "robust"), (["--teacher", "robust=at.pt"], "clean"),
                           (["--teacher", "clean=st.pt"], "robust")):
        config = train_config(host, "--plugin", "iad2", *given)
        with pytest.raises(RobustDistillError, match=f"distils from the teachers robust and clean: pass --teacher "
                                                     f"{missing}=SPEC"):
            resolve_config(config, host, DATASET_INFOS["cifar10"], train_images=50_000, device_type="cpu",
                           ops_backend=get_backend())


# -- IGDM_IAD ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "svhn"])
def test_igdm_iad_takes_app_b2_alpha_and_iad_keeps_its_code_defaults(host, dataset):
    config = resolved_config(host, ["iad", "igdm"], DATASET_INFOS[dataset])
    assert config.igdm.alpha == {"cifar10": 50, "cifar100": 20, "svhn": 40}[dataset] == ALPHA[dataset]["iad"]
    assert config.iad == resolved_config(host, ["iad"], DATASET_INFOS[dataset]).iad, "no IGDM code for IAD"
    with pytest.raises(RobustDistillError, match="pass --igdm-alpha"):
        resolved_config(host, ["iad2", "igdm"], DATASET_INFOS[dataset])


def test_igdm_iad_step_adds_the_ramped_term_on_iads_delta(host):
    ctx, _, _, names = engine_step(host, ["iad", "igdm"], epoch=61, igdm_alpha=50.0)
    assert names == {"kl", "introspection", "igdm"}
    assert torch.equal(ctx.student_input("x-δ"), ctx.x - (ctx.x_adv - ctx.x))


@pytest.mark.parametrize("name", ["igdm-iad-cifar10", "igdm-iad-cifar100"])
def test_igdm_iad_presets_agree_with_the_alpha_table(host, name):
    chosen = preset(name)
    dataset = chosen.train["dataset"]
    assert chosen.train["plugin"] == ["iad", "igdm"] and chosen.train["igdm-alpha"] == ALPHA[dataset]["iad"]


def test_iad_presets_train_the_code_defaults(host):
    for name, method in (("iad-cifar10", "iad"), ("iad2-cifar10", "iad2")):
        chosen = preset(name)
        defaults = resolved_config(host, [method], DATASET_INFOS["cifar10"]).iad
        assert chosen.train["iad-begin"] == defaults.begin and chosen.train["iad-alpha"] == defaults.alpha
        assert chosen.train["weight-decay"] == 2e-4 and chosen.train["attack-steps"] == 10


# -- end to end --------------------------------------------------------------------------------------------------

E2E = ["--dataset", "fashion-mnist", "--model", "cnn", "--val-split", "100", "--lr", "0.05", "--seed", "0",
       "--subset", "2048", "--epochs", "2"]
# two epochs: introspection from the second epoch (--*-begin 1), and AdaIAD's teacher term at τ = 1 (at the code's
# τ = 30 its KL of near-uniform softmaxes is too small a signal for two epochs)
E2E_OPTIONS = {"iad": ["--iad-begin", "1"], "adaiad": ["--adaiad-begin", "1", "--adaiad-tau", "1"],
               "akd": ["--akd-alpha", "0.9"]}


@pytest.mark.slow
@needs_fashion_mnist
@pytest.mark.parametrize("method", ["iad", "adaiad", "akd"])
def test_distilled_student_is_robust(tmp_path, fmnist_teacher, fmnist_natural_student, method):
    from robustdistill._cli import main

    out = tmp_path / method
    assert main(["train", "--plugin", method, *E2E_OPTIONS[method], "--teacher", str(fmnist_teacher / "last.pt"),
                 *E2E, "--out", str(out)]) == 0
    assert main(["eval", str(out / "last.pt"), "--attacks", "clean,pgd20", "--subset", "500", "--json",
                 str(out / "eval.json")]) == 0
    result, natural = json.loads((out / "eval.json").read_text()), fmnist_natural_student
    print(f"\n{method}: clean {result['clean']:.3f} pgd20 {result['pgd20']:.3f} "
          f"(natural: {natural['clean']:.3f} / {natural['pgd20']:.3f})")
    assert result["pgd20"] > natural["pgd20"] + 0.15
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if method != "akd":
        assert "introspection" not in lines[0]["terms"] and "introspection" in lines[1]["terms"]
