"""Each built-in loss and attack primitive against values computed by hand on tiny tensors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustdistill._attacks import AttackSpec, cw_margin, kl_objective, model_mode, perturb, pgd, fgsm
from robustdistill._config import NORMS
from robustdistill._threats import THREAT_MODELS, threat_model
from robustdistill._ops import pgd_step
from robustdistill.testing import attack as run_attack
from robustdistill.testing import loss_terms, options, plugin_host, step_context, run_step, tiny_model

from support import reference_pgd, seeded

E = math.e


@pytest.fixture(scope="module")
def host():
    return plugin_host()


def identity_context(host, methods, logits, y, x_adv=None, **config):
    """A step context whose 'student' returns its input: x is the logits."""
    ctx = step_context(host, methods, student=IdentityStudent(), config=options(host, **config))
    ctx.x, ctx.y, ctx.x_adv = logits, torch.tensor(y), x_adv
    return ctx


class IdentityStudent(nn.Module):
    arch = tiny_model().arch

    def forward(self, x, return_features=False):
        return (x, x) if return_features else x


def total(terms):
    return sum(t.weight * t.value for t in terms)


def test_natural_is_clean_cross_entropy(host):
    ctx = identity_context(host, ["natural"], torch.tensor([[2.0, 0.0, 0.0]]), [0])
    (term,) = loss_terms(ctx)
    assert term.name == "ce"
    assert term.value.item() == pytest.approx(math.log(1 + 2 * E ** -2), abs=1e-6)


def test_at_is_cross_entropy_on_adversarial_logits(host):
    ctx = identity_context(host, ["at"], torch.tensor([[1.0, 0.0]]), [0], x_adv=torch.tensor([[0.0, 1.0]]))
    (term,) = loss_terms(ctx)
    assert (term.name, term.weight) == ("ce_adv", 1.0)
    assert term.value.item() == pytest.approx(math.log(1 + E), abs=1e-6)


def test_trades_loss_by_hand_and_clean_target_not_detached(host):
    clean = torch.tensor([[1.0, 0.0]], requires_grad=True)
    ctx = identity_context(host, ["trades"], clean, [0], x_adv=torch.tensor([[0.0, 1.0]]), trades_beta=6.0)
    terms = {t.name: t for t in loss_terms(ctx)}
    p = 1 / (1 + E ** -1)  # σ([1, 0])_0
    kl = p * math.log(p / (1 - p)) + (1 - p) * math.log((1 - p) / p)
    assert kl == pytest.approx(2 * p - 1)
    assert terms["ce"].value.item() == pytest.approx(math.log(1 + E ** -1), abs=1e-6)
    assert terms["kl"].value.item() == pytest.approx(kl, abs=1e-6)
    assert terms["kl"].weight == 6.0
    (grad,) = torch.autograd.grad(terms["kl"].value, clean)
    assert grad.abs().sum() > 0, "TRADES' clean target must not be detached"


def test_trades_kl_is_batch_mean_of_sums(host):
    from robustdistill.plugins.trades import trades_kl
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    per_sample = (F.softmax(a, 1) * (F.log_softmax(a, 1) - F.log_softmax(b, 1))).sum(1)
    assert trades_kl(a, b).item() == pytest.approx(per_sample.mean().item(), rel=1e-5)


def test_pgd_step_linf_by_hand():
    x = torch.full((1, 3), 0.5)
    x_adv = torch.tensor([[0.55, 0.45, 0.98]])
    g = torch.tensor([[1.0, -1.0, 1.0]])
    out = pgd_step(x_adv, g, x, eps=0.1, step_size=0.07)
    assert torch.allclose(out, torch.tensor([[0.6, 0.4, 0.6]]))
    out = pgd_step(torch.tensor([[0.95]]), torch.tensor([[1.0]]), torch.tensor([[0.95]]), eps=0.1, step_size=0.07)
    assert out.item() == pytest.approx(1.0), "clamped to [0, 1]"
    assert torch.equal(pgd_step(x, torch.zeros_like(x), x, 0.1, 0.07), x), "zero gradient: no step"


def test_pgd_step_l2_by_hand_and_per_sample_eps():
    x = torch.full((1, 2), 0.5)
    out = pgd_step(x.clone(), torch.tensor([[3.0, 4.0]]), x, eps=0.05, step_size=0.1, norm="l2")
    assert torch.allclose(out, torch.tensor([[0.53, 0.54]]), atol=1e-6), "step 0.1 along (0.6, 0.8), projected to 0.05"
    x = torch.full((2, 1), 0.5)
    out = pgd_step(x, torch.ones(2, 1), x, eps=torch.tensor([0.0, 0.2]), step_size=0.1)
    assert torch.allclose(out, torch.tensor([[0.5], [0.6]]))


def test_cw_margin_and_kl_objective_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    assert cw_margin(logits, torch.tensor([0]), kappa=50).item() == pytest.approx(2.0)
    assert cw_margin(logits, torch.tensor([0]), kappa=1).item() == pytest.approx(1.0)
    assert cw_margin(logits, torch.tensor([1]), kappa=50).item() == pytest.approx(-1.0)
    target = torch.tensor([[0.5, 0.5]])
    value = kl_objective(nn.Identity(), target)(torch.tensor([[0.0, 0.0]]))
    assert value.item() == pytest.approx(0.0, abs=1e-7)
    value = kl_objective(nn.Identity(), torch.tensor([[1.0, 0.0]]))(torch.tensor([[0.0, 0.0]]))
    assert value.item() == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("init", ["uniform", "normal", "none"])
def test_pgd_never_leaves_the_ball_or_unit_box(norm, init):
    torch.manual_seed(0)
    model = tiny_model()
    x = torch.rand(16, 1, 8, 8)
    x[:4] = 0.0
    x[4:8] = 1.0
    y = torch.randint(0, 3, (16,))
    eps = 0.1 if norm == "linf" else 0.5
    x_adv = pgd(model, x, y, AttackSpec(eps=eps, step_size=eps / 2, steps=5, norm=norm, init=init, restarts=2))
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    dist = (x_adv - x).abs().flatten(1).amax(1) if norm == "linf" else (x_adv - x).flatten(1).norm(dim=1)
    assert (dist <= eps + 1e-6).all()
    assert (x_adv != x).any()


def test_pgd_raises_the_loss_and_fgsm_steps_eps():
    torch.manual_seed(0)
    model = tiny_model().eval()
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 3, (32,))
    clean = F.cross_entropy(model(x), y)
    adv = F.cross_entropy(model(pgd(model, x, y, AttackSpec(eps=0.1, step_size=0.02, steps=10))), y)
    assert adv > clean
    x_fgsm = fgsm(model, x, y, eps=0.1)
    moved = (x_fgsm - x).abs()
    assert torch.all((moved < 1e-6) | ((moved - 0.1).abs() < 1e-6) | (x_fgsm == 0) | (x_fgsm == 1))


@pytest.mark.parametrize("start_training", [True, False])
def test_attacks_restore_modes(start_training):
    model = tiny_model()
    model.train(start_training)
    model.head.train(not start_training)  # a submodule in the other mode must keep it
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 3, (4,))
    pgd(model, x, y, AttackSpec(eps=0.1, step_size=0.05, steps=2), bn_mode="train")
    pgd(model, x, y, AttackSpec(eps=0.1, step_size=0.05, steps=2, loss="cw"), bn_mode="eval")
    fgsm(model, x, y, eps=0.1)
    assert model.training == start_training and model.head.training == (not start_training)


def test_model_mode_restores_after_an_exception():
    model = tiny_model().train()
    with pytest.raises(ValueError):
        with model_mode(model, train=False):
            assert not model.training
            raise ValueError
    assert model.training


def test_perturb_gives_no_parameter_gradients():
    model = tiny_model()
    x = torch.rand(4, 1, 8, 8)
    perturb(lambda z: model(z).sum(1), x, eps=0.1, step_size=0.05, steps=2)
    assert all(p.grad is None for p in model.parameters())


def test_random_start_normal_is_tiny_and_uniform_fills_the_ball():
    torch.manual_seed(0)
    x = torch.full((1000, 1), 0.5)
    linf = threat_model("linf")
    assert (linf.start(x, 0.1, "normal") - x).abs().max() < 0.01
    u = linf.start(x, 0.1, "uniform") - x
    assert u.abs().max() <= 0.1 and u.abs().max() > 0.09
    radii = threat_model("l2").start(torch.full((1000, 4), 0.5), 0.1, "uniform").sub(0.5).norm(dim=1)
    assert radii.max() <= 0.1 + 1e-6 and radii.max() > 0.09


def test_start_is_clipped_to_the_image_range_unless_asked_not_to():
    torch.manual_seed(0)
    x = torch.zeros(1000, 1)  # like Fashion-MNIST's background: exactly 0
    linf = threat_model("linf")
    assert linf.start(x, 0.1, "uniform").min() == 0
    torch.manual_seed(0)
    unclipped = linf.start(x, 0.1, "uniform", clip=False)
    assert unclipped.min() < -0.09
    torch.manual_seed(0)
    assert torch.equal(unclipped.clamp(0, 1), linf.start(x, 0.1, "uniform"))
    assert threat_model("linf").start(x, 0.1, "normal", clip=False).min() < 0


def test_threat_models_cover_the_norms_and_project_onto_their_balls():
    assert tuple(THREAT_MODELS) == NORMS
    delta = torch.tensor([[3.0, 4.0], [0.3, -0.4]])
    linf, l2 = threat_model("linf"), threat_model("l2")
    assert torch.allclose(l2.project(delta, 1.0), torch.tensor([[0.6, 0.8], [0.3, -0.4]]))
    assert torch.allclose(l2.size(delta), torch.tensor([5.0, 0.5]))
    assert torch.equal(linf.project(delta, 0.5), torch.tensor([[0.5, 0.5], [0.3, -0.4]]))
    assert torch.allclose(linf.size(delta), torch.tensor([4.0, 0.4]))
    assert torch.equal(l2.direction(torch.zeros(1, 2)), torch.zeros(1, 2)), "no step for a zero gradient"
    assert (linf.robustbench, l2.robustbench) == ("Linf", "L2")


def test_unknown_norm_and_init_are_named():
    with pytest.raises(ValueError, match="unknown norm 'l1'; use one of: linf, l2"):
        threat_model("l1")
    with pytest.raises(ValueError, match="unknown init 'zero'"):
        threat_model("linf").start(torch.zeros(2, 1), 0.1, "zero")


@pytest.mark.parametrize("method", ["natural", "at", "trades"])
def test_builtin_methods_train_a_step(host, method):
    terms = run_step(host, [method])
    assert all(torch.isfinite(t.value) for t in terms)


def test_at_attack_uses_the_configured_steps_and_stays_in_ball(host):
    # PGD-AT's attack: CE of the true labels, the student in eval mode, uniform start, --attack-steps steps of
    # --step-size. Fewer steps or another step size give other examples (checked), so the comparison sees them.
    student = tiny_model(seed=0)
    ctx = step_context(host, ["at"], student=student, batch=16, config=options(host, eps=0.05, step_size=0.01,
                                                                                 attack_steps=4))
    student.eval()
    ce = lambda xa: F.cross_entropy(student(xa), ctx.y, reduction="none")  # noqa: E731
    right = seeded(reference_pgd, ce, ctx.x, 0.05, 0.01, 4, "uniform")
    for wrong in (seeded(reference_pgd, ce, ctx.x, 0.05, 0.01, 1, "uniform"),
                  seeded(reference_pgd, ce, ctx.x, 0.05, 0.05 / 4, 4, "uniform")):
        assert not torch.equal(right, wrong)
    student.train()
    x_adv = seeded(run_attack, ctx)
    assert torch.equal(x_adv, right)
    assert (x_adv - ctx.x).abs().max() <= 0.05 + 1e-6
    assert not x_adv.requires_grad and student.training


def test_trades_attack_maximises_kl_from_the_clean_prediction(host):
    # TRADES' inner maximisation: Σ KL(σ(f(x)) ‖ σ(f(x′))) with f in eval mode, the clean prediction a constant
    # target, from x + 0.001·N unclipped as the code (not the CE of the labels, not a uniform or clipped start).
    student = tiny_model(seed=0)
    ctx = step_context(host, ["trades"], student=student, batch=16)
    cfg = ctx.config
    student.eval()
    with torch.no_grad():
        target = F.softmax(student(ctx.x), 1)
    kl = lambda xa: F.kl_div(F.log_softmax(student(xa), 1), target, reduction="none").sum(1)  # noqa: E731
    ce = lambda xa: F.cross_entropy(student(xa), ctx.y, reduction="none")  # noqa: E731
    right = seeded(reference_pgd, kl, ctx.x, cfg.eps, cfg.step_size, cfg.attack_steps, "normal", False)
    for wrong in (seeded(reference_pgd, ce, ctx.x, cfg.eps, cfg.step_size, cfg.attack_steps, "normal", False),
                  seeded(reference_pgd, kl, ctx.x, cfg.eps, cfg.step_size, cfg.attack_steps, "uniform", False),
                  seeded(reference_pgd, kl, ctx.x, cfg.eps, cfg.step_size, cfg.attack_steps, "normal", True)):
        assert not torch.equal(right, wrong)
    student.train()
    assert torch.equal(seeded(run_attack, ctx), right)


# -- training attacks: registered objectives, selectable with --attack ------------------------------------

def test_each_base_method_runs_its_own_training_attack_unless_told_otherwise(host):
    expected = {"at": "ce", "ard": "ce", "trades": "trades-kl", "rslad": "teacher-kl", "adaad": "adaad-kl"}
    assert {m: host.registry.methods[m].attack for m in expected} == expected
    teacher = tiny_model(seed=5)
    for method, attack in expected.items():
        assert step_context(host, [method], teacher=teacher).config.attack == attack
        assert step_context(host, [method, "igdm"], teacher=teacher,
                            config=options(host, attack="cw", igdm_alpha=1.0)).config.attack == "cw"


def test_a_base_method_with_another_attack_maximises_that_objective(host):
    """RSLAD's loss on CW∞ examples: the attack is PGD on the C&W margin with RSLAD's start and BatchNorm mode."""
    from robustdistill._attacks import cw_objective

    teacher = tiny_model(seed=5)
    ctx = step_context(host, ["rslad"], teacher=teacher, config=options(host, attack="cw", eps=0.1, step_size=0.02,
                                                                         attack_steps=3))
    torch.manual_seed(3)
    x_adv = run_attack(ctx)
    torch.manual_seed(3)
    with model_mode(ctx.student, train=False):
        expected = perturb(cw_objective(ctx.student, ctx.y), ctx.x, eps=0.1, step_size=0.02, steps=3, init="normal")
    assert torch.equal(x_adv, expected)
    torch.manual_seed(3)
    own = step_context(host, ["rslad"], teacher=teacher, config=options(host, eps=0.1, step_size=0.02,
                                                                         attack_steps=3))
    assert not torch.equal(run_attack(own), expected), "RSLAD's own attack maximises KL to the teacher"


def test_training_attack_errors_name_the_fix(host):
    from robustdistill import RobustDistillError

    with pytest.raises(RobustDistillError, match="unknown attack 'pgd'; known attacks: adaad-kl, ce, cw, peer-kl, "
                                                 "saad-kl, teacher-kl, trades-kl"):
        step_context(host, ["at"], config=options(host, attack="pgd"))
    with pytest.raises(RobustDistillError, match="the attack 'teacher-kl' uses a teacher: pass --teacher"):
        step_context(host, ["at"], config=options(host, attack="teacher-kl"))
    with pytest.raises(RobustDistillError, match="no base method that takes a training attack"):
        step_context(host, ["natural"], config=options(host, attack="cw"))


def test_evaluation_attacks_are_attack_specs():
    from robustdistill._eval import EvalSettings

    settings = EvalSettings(eps=0.1, step_size=0.01, pgd_steps=20, cw_steps=30, kappa=5.0, restarts=2, norm="l2")
    assert settings.spec("pgd20") == AttackSpec(0.1, 0.01, 20, "l2", "uniform", 2, "ce", 5.0)
    assert settings.spec("cw") == AttackSpec(0.1, 0.01, 30, "l2", "uniform", 2, "cw", 5.0)
    assert settings.spec("fgsm") == AttackSpec(0.1, 0.1, 1, "l2", "none")
