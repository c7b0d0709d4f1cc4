"""ARD, RSLAD, AdaAD and IGDM: every loss against values computed by hand, every attack against PGD written out,
and the composition rules."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from robustdistill import RobustDistillError
from robustdistill._ops import fd_align
from robustdistill.testing import attack as run_attack
from robustdistill.testing import loss_terms, options, plugin_host, step_context, tiny_model

from support import Scaled, reference_pgd

LN3 = math.log(3)


@pytest.fixture(scope="module")
def host():
    return plugin_host()


def context(host, methods, x, x_adv, y=(0,), teacher_scale=2.0, epoch=1, epochs=10, **config):
    ctx = step_context(host, methods, student=Scaled(1.0), teacher=Scaled(teacher_scale), epoch=epoch, epochs=epochs,
                       config=options(host, **config))
    ctx.x, ctx.x_adv, ctx.y = torch.tensor(x), torch.tensor(x_adv), torch.tensor(y)
    return ctx


def terms_of(ctx):
    return {t.name: (t.value.item(), t.weight) for t in loss_terms(ctx)}


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


# -- outer losses ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [1.0, 30.0])
@pytest.mark.parametrize("reduction, divisor", [("batchmean", 1), ("mean", 2)])
def test_ard_kl_with_temperature_and_reduction(host, tau, reduction, divisor):
    # teacher on clean x: T(x) = 2·x = [τ·ln3, 0] → σ(T/τ) = [3/4, 1/4]; student on x_adv = [0, 0] → [1/2, 1/2]
    ctx = context(host, ["ard"], [[tau * LN3 / 2, 0.0]], [[0.0, 0.0]], ard_tau=tau, ard_alpha=1.0,
                  ard_kl_reduction=reduction)
    terms = terms_of(ctx)
    assert set(terms) == {"kl"}
    value, weight = terms["kl"]
    assert value == pytest.approx(kl([0.75, 0.25], [0.5, 0.5]) / divisor, abs=1e-6)
    assert weight == pytest.approx(tau ** 2)


def test_ard_alpha_adds_clean_cross_entropy(host):
    ctx = context(host, ["ard"], [[LN3 / 2, 0.0]], [[0.0, 0.0]], ard_tau=1.0, ard_alpha=0.25,
                  ard_kl_reduction="batchmean")
    terms = terms_of(ctx)
    assert terms["kl"][1] == pytest.approx(0.25)
    assert terms["ce"] == (pytest.approx(math.log(1 + math.exp(-LN3 / 2)), abs=1e-6), pytest.approx(0.75))


@pytest.mark.parametrize("reduction, divisor", [("mean", 2), ("batchmean", 1)])
def test_rslad_outer_loss_by_hand(host, reduction, divisor):
    # T(x) = 2·[ln3/2, 0] → soft labels b = [3/4, 1/4]; S(x_adv) = [0, 0]; S(x) = [ln3/2, 0]
    ctx = context(host, ["rslad"], [[LN3 / 2, 0.0]], [[0.0, 0.0]], rslad_reduction=reduction, rslad_scale=10.0)
    terms = terms_of(ctx)
    b = [0.75, 0.25]

    def official(q):
        return sum(bi * (math.log(bi + 1e-5) - math.log(qi)) for bi, qi in zip(b, q)) / divisor

    q_clean = [math.sqrt(3) / (1 + math.sqrt(3)), 1 / (1 + math.sqrt(3))]
    assert terms["kl_adv"][0] == pytest.approx(official([0.5, 0.5]), abs=1e-6)
    assert terms["kl_clean"][0] == pytest.approx(official(q_clean), abs=1e-6)
    assert terms["kl_adv"][1] == pytest.approx(10 * 5 / 6) and terms["kl_clean"][1] == pytest.approx(10 / 6)


def test_adaad_outer_loss_uses_the_teacher_at_the_adversarial_point(host):
    # S(x_adv) = [ln3, 0] → [3/4, 1/4]; T(x_adv) = [2 ln3, 0] → [9/10, 1/10]
    ctx = context(host, ["adaad"], [[0.0, 0.0]], [[LN3, 0.0]], adaad_lambda=1.0, adaad_reduction="batchmean")
    assert terms_of(ctx) == {"kl_adv": (pytest.approx(kl([0.9, 0.1], [0.75, 0.25]), abs=1e-6), 1.0)}
    ctx = context(host, ["adaad"], [[0.0, 0.0]], [[LN3, 0.0]], adaad_lambda=0.5, adaad_reduction="mean")
    terms = terms_of(ctx)
    assert terms["kl_adv"][0] == pytest.approx(kl([0.9, 0.1], [0.75, 0.25]) / 2, abs=1e-6)
    assert terms["kl_clean"] == (pytest.approx(0.0, abs=1e-7), 0.5)


def test_igdm_term_by_hand_with_ramp(host):
    # x = 0, δ = [ln3/4, 0]: S(x+δ) − S(x−δ) = [ln3/2, 0], T(x+δ) − T(x−δ) = [ln3, 0]
    delta = [[LN3 / 4, 0.0]]
    q = [math.sqrt(3) / (1 + math.sqrt(3)), 1 / (1 + math.sqrt(3))]
    for epoch, weight in ((1, 6.0), (10, 60.0)):
        ctx = context(host, ["at", "igdm"], [[0.0, 0.0]], delta, epoch=epoch, epochs=10, igdm_alpha=60.0,
                      igdm_ramp_epochs=10)
        terms = terms_of(ctx)
        assert terms["igdm"] == (pytest.approx(kl([0.75, 0.25], q), abs=1e-6), pytest.approx(weight))


@pytest.mark.parametrize("distance, expected", [("l1", LN3 / 4), ("l2", LN3 ** 2 / 8)])
def test_igdm_l1_and_l2(host, distance, expected):
    ctx = context(host, ["at", "igdm"], [[0.0, 0.0]], [[LN3 / 4, 0.0]], igdm_alpha=1.0, igdm_ramp_epochs=1,
                  igdm_distance=distance)
    assert terms_of(ctx)["igdm"][0] == pytest.approx(expected, abs=1e-6)


def test_igdm_minus_side_is_unclipped_by_default(host):
    ctx = context(host, ["at", "igdm"], [[0.1, 0.5]], [[0.3, 0.5]], igdm_alpha=1.0, igdm_ramp_epochs=1)
    loss_terms(ctx)
    assert torch.allclose(ctx._student_cache["x-δ"], torch.tensor([[-0.1, 0.5]])), "identity student: logits = input"
    ctx = context(host, ["at", "igdm"], [[0.1, 0.5]], [[0.3, 0.5]], igdm_alpha=1.0, igdm_ramp_epochs=1,
                  igdm_clip_minus=True)
    loss_terms(ctx)
    assert torch.allclose(ctx._student_cache["x-δ"], torch.tensor([[0.0, 0.5]]))


def test_fd_align_gradient_reaches_only_the_student():
    s_plus, s_minus, t_plus, t_minus = (torch.randn(3, 4, requires_grad=True) for _ in range(4))
    fd_align(s_plus, s_minus, t_plus, t_minus).backward()
    assert s_plus.grad.abs().sum() > 0 and torch.allclose(s_plus.grad, -s_minus.grad)
    assert t_plus.grad is None and t_minus.grad is None


def test_igdm_default_alpha_per_base_and_dataset():
    """App. B.2's rows, by base; a dataset without a row borrows the row with as many classes and says so; none
    is borrowed where no setting has as many classes, nor for a base the paper did not compose."""
    from dataclasses import replace

    from robustdistill._data import DATASET_INFOS
    from robustdistill._data.descriptions import _imagefolder_info
    from robustdistill.plugins.igdm import default_alpha
    bases = ("at", "trades", "ard", "iad", "akd", "rslad", "adaad", "adaiad")
    rows = {"cifar10": [60, 20, 5, 50, 7, 0.9, 5, 5], "cifar100": [100, 5, 50, 20, 50, 3, 15, 15],
            "svhn": [60, 30, 50, 40, 10, 3, 9, 9]}
    for dataset, expected in rows.items():
        chosen = [default_alpha(b, DATASET_INFOS[dataset]) for b in bases]
        assert [d.value for d in chosen] == expected and not any(d.borrowed for d in chosen)
    tiny = default_alpha("rslad", _imagefolder_info(200, 64))
    assert tiny.value == 1 and tiny.borrowed and "Tiny-ImageNet" in tiny.source
    fashion = default_alpha("ard", DATASET_INFOS["fashion-mnist"])
    assert fashion.value == 5 and fashion.borrowed and "CIFAR-10 row" in fashion.source
    assert "fashion-mnist" in fashion.source
    assert default_alpha("ard", replace(DATASET_INFOS["cifar100"], name="other")).value == 50
    with pytest.raises(RobustDistillError, match="pass --igdm-alpha"):
        default_alpha("natural", DATASET_INFOS["cifar10"])
    with pytest.raises(RobustDistillError, match="43 classes.*pass --igdm-alpha"):
        default_alpha("at", replace(DATASET_INFOS["cifar10"], name="gtsrb", num_classes=43))
    with pytest.raises(RobustDistillError, match="pass --igdm-alpha"):
        default_alpha("at", replace(DATASET_INFOS["cifar10"], name="other", num_classes=200))


# -- inner losses -----------------------------------------------------------------------------------------

def kl_rows(student_logits, teacher_logits):
    """Σ_c KL(σ(T) ‖ σ(S)) per sample."""
    p = F.softmax(teacher_logits, 1)
    return (p * (F.log_softmax(teacher_logits, 1) - F.log_softmax(student_logits, 1))).sum(1)


def attack_with_seed(ctx, seed=5):
    torch.manual_seed(seed)
    return run_attack(ctx)


def reference_with_seed(ctx, objective, init, seed=5, clip_start=False):
    """PGD written out as the ARD, RSLAD and AdaAD codes run it: the first gradient at the unclipped start."""
    torch.manual_seed(seed)
    cfg = ctx.config
    return reference_pgd(objective, ctx.x, cfg.eps, cfg.step_size, cfg.attack_steps, init, clip_start)


def test_adaad_attack_objective_goes_through_both_networks(host):
    # The attack must be PGD from x + 0.001·N on Σ KL(σ(T(x′)) ‖ σ(S(x′))), both nets in eval mode, with the
    # gradient through the teacher at the perturbed point. Two wrong variants of the objective are checked to
    # give other examples, so the comparison can tell them apart.
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    ctx = step_context(host, ["adaad"], student=student, teacher=teacher, batch=16)
    student.eval(), teacher.eval()
    right = reference_with_seed(ctx, lambda xa: kl_rows(student(xa), teacher(xa)), "normal")
    detached = reference_with_seed(ctx, lambda xa: kl_rows(student(xa), teacher(xa).detach()), "normal")
    at_clean = reference_with_seed(ctx, lambda xa: kl_rows(student(xa), teacher(ctx.x)), "normal")
    clipped = reference_with_seed(ctx, lambda xa: kl_rows(student(xa), teacher(xa)), "normal", clip_start=True)
    assert not torch.equal(right, detached) and not torch.equal(right, at_clean) and not torch.equal(right, clipped)
    student.train()
    adv = attack_with_seed(ctx)
    assert torch.equal(adv, right)
    assert student.training, "the student's mode is restored"
    assert all(p.grad is None for p in teacher.parameters())


def test_rslad_attack_is_pgd_on_kl_to_the_clean_teacher_from_a_tiny_normal_start(host):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    ctx = step_context(host, ["rslad"], student=student, teacher=teacher, batch=16)
    student.eval()
    t_clean = teacher(ctx.x).detach()
    right = reference_with_seed(ctx, lambda xa: kl_rows(student(xa), t_clean), "normal")
    at_adv = reference_with_seed(ctx, lambda xa: kl_rows(student(xa), teacher(xa).detach()), "normal")
    clipped = reference_with_seed(ctx, lambda xa: kl_rows(student(xa), t_clean), "normal", clip_start=True)
    assert not torch.equal(right, at_adv) and not torch.equal(right, clipped)
    assert torch.equal(attack_with_seed(ctx), right)


def bn_buffers(model):
    return [b.clone() for name, b in model.named_buffers() if "running" in name]


@pytest.mark.parametrize("methods, bn, init", [(["ard"], "train", "uniform"), (["ard", "igdm"], "eval", "uniform")])
def test_ard_attack_batchnorm_mode_and_start(host, methods, bn, init):
    # ARD's code attacks with the student in train mode (batch statistics, running statistics updated by every
    # iterate) from a uniform start; the IGDM code's ARD base attacks in eval mode. Both: PGD on the CE.
    student = tiny_model(seed=0)
    ctx = step_context(host, methods, student=student, teacher=tiny_model(seed=1), batch=16,
                       config=options(host, igdm_alpha=1.0))
    assert ctx.config.ard.attack_bn == bn and ctx.config.ard.init == init
    reference_student = copy.deepcopy(student).train(bn == "train")
    right = reference_with_seed(ctx, lambda xa: F.cross_entropy(reference_student(xa), ctx.y, reduction="none"), init)
    other = copy.deepcopy(student).train(bn != "train")
    wrong_mode = reference_with_seed(ctx, lambda xa: F.cross_entropy(other(xa), ctx.y, reduction="none"), init)
    same_mode = copy.deepcopy(student).train(bn == "train")
    wrong_start = reference_with_seed(ctx, lambda xa: F.cross_entropy(same_mode(xa), ctx.y, reduction="none"),
                                      "normal")
    clipping = copy.deepcopy(student).train(bn == "train")
    wrong_clip = reference_with_seed(ctx, lambda xa: F.cross_entropy(clipping(xa), ctx.y, reduction="none"), init,
                                     clip_start=True)
    assert not torch.equal(right, wrong_mode) and not torch.equal(right, wrong_start)
    assert not torch.equal(right, wrong_clip)
    before = bn_buffers(student)
    student.train()
    adv = attack_with_seed(ctx)
    assert torch.equal(adv, right)
    after = bn_buffers(student)
    if bn == "train":
        assert all(torch.equal(a, r) for a, r in zip(after, bn_buffers(reference_student))), \
            "train-mode attack: running statistics updated by each PGD iterate"
        assert not all(torch.equal(a, b) for a, b in zip(after, before))
    else:
        assert all(torch.equal(a, b) for a, b in zip(after, before)), "eval-mode attack leaves them alone"


@pytest.mark.parametrize("methods, code_clips", [(["at"], True), (["trades"], False), (["ard"], False),
                                                (["rslad"], False), (["adaad"], False)])
@pytest.mark.parametrize("clip_start", ["code", "on", "off"])
def test_attack_start_is_clipped_as_the_code_unless_the_user_says(host, methods, code_clips, clip_start):
    # TRADES, ARD, RSLAD and AdaAD take the first gradient at the unclipped start, PGD-AT at the clipped one;
    # --clip-start on|off decides for every method. The first iterate an observer sees is the start.
    ctx = step_context(host, methods, student=tiny_model(seed=0), teacher=tiny_model(seed=1), batch=16,
                       config=options(host, clip_start=clip_start))
    ctx.x[:8] = 0.0  # black images: a start below 0 is visible
    starts = []
    ctx.run.observe_attack(lambda _ctx, iterate: starts.append(iterate.x_adv) if iterate.index == 0 else None)
    run_attack(ctx)
    clipped = bool(starts[0].min() >= 0)
    assert clipped == {"code": code_clips, "on": True, "off": False}[clip_start]


# -- composition --------------------------------------------------------------------------------------------

@pytest.fixture(params=["ref", "auto"])
def ops_backend(request):
    """Run with the pure-PyTorch reference ops, then with the fused kernels where built."""
    from robustdistill import _ops as ops
    previous = ops._backend_override
    ops.set_backend(request.param)
    yield request.param
    ops.set_backend(previous)


@pytest.mark.parametrize("methods", [["ard"], ["ard", "igdm"], ["rslad"], ["adaad"], ["rslad", "igdm"],
                                     ["adaad", "igdm"], ["trades", "igdm"], ["igdm"]])
def test_each_method_trains_a_step_and_the_teacher_gets_no_gradient(host, methods, ops_backend):
    # The teacher is left trainable here (requires_grad=True): only the engine's no_grad teacher forward and the
    # losses' detached teacher sides keep gradient away from it.
    teacher = tiny_model(seed=3)
    assert all(p.requires_grad for p in teacher.parameters())
    ctx = step_context(host, methods, teacher=teacher, config=options(host, igdm_alpha=1.0, igdm_ramp_epochs=1))
    ctx.student.train()
    ctx.x_adv = run_attack(ctx)
    terms = loss_terms(ctx)
    assert terms
    assert ctx._teacher_cache and all(not out.logits.requires_grad for out in ctx._teacher_cache.values()), \
        "teacher outputs are computed without a graph"
    sum(t.weight * t.value for t in terms).backward()
    assert any(p.grad is not None for p in ctx.student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_fd_align_reference_sends_no_gradient_to_the_teacher():
    from robustdistill._ops import fd_align_ref
    for distance in ("kl", "l1", "l2"):
        s_plus, s_minus, t_plus, t_minus = (torch.randn(3, 4, requires_grad=True) for _ in range(4))
        fd_align_ref(s_plus, s_minus, t_plus, t_minus, distance).backward()
        assert s_plus.grad.abs().sum() > 0
        assert t_plus.grad is None and t_minus.grad is None, distance


def test_igdm_alone_is_igdm_on_pgd_at(host):
    assert host.resolve_methods(["igdm"]) == ["at", "igdm"]
    assert host.resolve_methods(["rslad", "igdm"]) == ["rslad", "igdm"]
    with pytest.raises(RobustDistillError, match="both run an attack"):
        host.resolve_methods(["rslad", "adaad", "igdm"])


def test_igdm_uses_the_base_delta_detached_and_teacher_forwards_run_once(host):
    teacher = tiny_model(seed=3)
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    ctx = step_context(host, ["rslad", "igdm"], teacher=teacher, batch=4,
                       config=options(host, igdm_alpha=1.0, igdm_ramp_epochs=1))
    ctx.x_adv = run_attack(ctx)
    assert not ctx.x_adv.requires_grad
    student_inputs = []
    ctx.student.register_forward_pre_hook(lambda m, i: student_inputs.append(i[0]))
    calls.clear()
    loss_terms(ctx)
    assert calls == [8], "T(x) cached from the attack; T(x+δ), T(x−δ) in one batched forward"
    assert len(student_inputs) == 3, "S(x_adv) shared by RSLAD and IGDM; S(x) and S(x−δ)"
    assert any(torch.equal(x, ctx.x_adv) for x in student_inputs)
    assert any(torch.equal(x, ctx.x - (ctx.x_adv - ctx.x)) for x in student_inputs)
    assert all(not x.requires_grad for x in student_inputs)


def test_composition_order_does_not_change_the_loss(host):
    totals = []
    for methods in (["rslad", "igdm"], ["igdm", "rslad"]):
        ctx = step_context(host, methods, student=tiny_model(seed=0), teacher=tiny_model(seed=3), seed=4,
                           config=options(host, igdm_alpha=2.0, igdm_ramp_epochs=1))
        torch.manual_seed(7)
        ctx.x_adv = run_attack(ctx)
        totals.append(sum(t.weight * t.value for t in loss_terms(ctx)).item())
    assert totals[0] == pytest.approx(totals[1], rel=1e-6)
