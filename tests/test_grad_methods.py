"""IGAM, RRM, GradNorm, EdgeReg and PAG: every loss against values computed by hand, the discriminator
game, double backprop through the ``input_gradient`` hook, and the composition rules."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustdistill import RobustDistillError, hookimpl
from robustdistill.plugins import edgereg, gradnorm, igam, pag, rrm
from robustdistill.testing import loss_terms, options, plugin_host, run_step, step_context, tiny_model

LN2 = math.log(2)
METHODS = ("igam", "rrm", "gradnorm", "edgereg", "pag")


@pytest.fixture(scope="module")
def host():
    return plugin_host()


class Linear(nn.Module):
    """A 'network' with logits ``x @ Aᵀ`` (features = logits): input gradients known in closed form."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float32))
        self.arch = tiny_model(num_classes=len(a)).arch
        self.feature_dim = len(a)

    def forward(self, x, return_features=False):
        out = x @ self.a.t()
        return (out, out) if return_features else out


def scaled(s):
    return Linear([[s, 0.0], [0.0, s]])


def context(host, methods, x, y, student=None, teacher=None, epoch=1, epochs=10, steps_per_epoch=1, **config):
    ctx = step_context(host, methods, student=student or scaled(1.0), teacher=teacher or scaled(2.0),
                       epoch=epoch, epochs=epochs, steps_per_epoch=steps_per_epoch, config=options(host, **config))
    ctx.x, ctx.y = torch.tensor(x), torch.tensor(y)
    return ctx


def terms_of(ctx):
    return {t.name: (t.value.item(), t.weight) for t in loss_terms(ctx)}


class Spy:
    """Records every call of the ``input_gradient`` hook and lets the core default compute it."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def input_gradient(self, model, x, create_graph):
        self.calls.append((model, tuple(x.shape), create_graph))
        return None


# -- composition --------------------------------------------------------------------------------------

def test_each_method_is_base_less_and_needs_only_what_it_uses(host):
    for name in METHODS:
        assert host.resolve_methods([name]) == [name], "CE is part of the method's own loss: no default base"
        assert host.registry.methods[name].default_base is None
    needs = {name: host.registry.methods[name].needs_teacher for name in METHODS}
    assert needs == {"igam": True, "rrm": True, "gradnorm": False, "edgereg": False, "pag": False}
    implementing = {impl.plugin_name for impl in host.pm.hook.attack.get_hookimpls()}
    assert not implementing & set(METHODS), "no adversarial examples: none of them runs an attack"
    assert host.resolve_methods(["at", "gradnorm"]) == ["at", "gradnorm"]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_a_step_through_the_input_gradient_hook(method):
    spy = Spy()
    host = plugin_host(spy)
    teacher = tiny_model(seed=3)
    terms = run_step(host, [method], teacher=teacher, config=options(host, pag_classes=2))
    assert all(math.isfinite(t.value.item()) for t in terms)
    assert all(p.grad is None for p in teacher.parameters()), "the teacher never receives a gradient"
    if method == "rrm":
        assert spy.calls == [], "RRM matches features: no input gradients"
        return
    student_calls = [c for c in spy.calls if c[0] is not teacher]
    teacher_calls = [c for c in spy.calls if c[0] is teacher]
    assert student_calls and all(create_graph for _, _, create_graph in student_calls), "double backprop"
    assert all(not create_graph for _, _, create_graph in teacher_calls)
    assert bool(teacher_calls) == (method in ("igam", "pag"))


class Attention(nn.Module):
    """Rows of an 8×8 image as tokens through scaled-dot-product attention: fused kernels have no double backward."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)
        self.arch = tiny_model().arch

    def forward(self, x, return_features=False):
        tokens = self.proj(x.view(len(x), 8, 8)).unsqueeze(1)
        features = F.scaled_dot_product_attention(tokens, tokens, tokens).squeeze(1).mean(dim=1)
        out = self.head(features)
        return (out, features) if return_features else out


@pytest.mark.parametrize("method", ["gradnorm", "edgereg", "pag", "igam"])
def test_double_backprop_through_attention_uses_the_math_backend(host, method):
    run_step(host, [method], student=Attention(), teacher=Attention())


# -- IGAM -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target, expected", [("true-prob", 0.125), ("ce", 0.5)])
def test_igam_gradient_difference_by_hand(host, target, expected):
    # x = 0, two classes: p = [½, ½]. Student logits x, teacher 2x.
    # true-prob: J = ∇p_y = s·p_y(e_y − p): J_s = [¼, −¼], J_t = [½, −½] → ‖J_s − J_t‖² = 1/8
    # ce:        J = ∇CE = s·(p − e_y):      J_s = [−½, ½], J_t = [−1, 1] → ‖J_s − J_t‖² = 1/2
    x, y = [[0.0, 0.0], [0.0, 0.0]], [0, 1]
    for reduction, batch_factor in (("sum32", 32), ("sum", 2), ("mean", 1)):
        for scale in (1.0, 255.0):
            ctx = context(host, ["igam"], x, y, igam_grad_target=target, igam_lambda_adv=0.0, igam_lambda_diff=10.0,
                          igam_diff_reduction=reduction, igam_pixel_scale=scale)
            terms = terms_of(ctx)
            assert set(terms) == {"ce", "igam_diff"}
            assert terms["ce"] == (pytest.approx(LN2, abs=1e-6), 1.0)
            assert terms["igam_diff"][0] == pytest.approx(batch_factor * expected / scale ** 2, rel=1e-5)
            assert terms["igam_diff"][1] == 10.0


def test_igam_diff_at_the_code_batch_whatever_the_batch_size():
    # sum32 is the code's Σ over its batch of 32 at any batch size: the same value for 32 and 128 copies of a
    # sample, where the plain sum grows 4×.
    j_s, j_t = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    per_sample = ((j_s - j_t) ** 2).sum()
    for batch in (32, 128):
        many_s, many_t = j_s.expand(batch, -1, -1, -1), j_t.expand(batch, -1, -1, -1)
        assert igam.diff_term(many_s, many_t, "sum32") == pytest.approx(32 * per_sample.item(), rel=1e-5)
        assert igam.diff_term(many_s, many_t, "sum") == pytest.approx(batch * per_sample.item(), rel=1e-5)
        assert igam.diff_term(many_s, many_t, "mean") == pytest.approx(per_sample.item(), rel=1e-5)


def test_igam_adversarial_term_by_hand():
    # D(J) = P(teacher): logits [0, ln3] → 3/4 for both maps. L_adv = ½·[log D(J_t) + log(1 − D(J_s))]
    class Fixed(nn.Module):
        def forward(self, maps):
            return torch.tensor([[0.0, math.log(3)]]).expand(len(maps), 2)

    value = igam.adversarial_term(Fixed(), torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4), "zero-mean-l2")
    assert value.item() == pytest.approx((math.log(3 / 4) + math.log(1 / 4)) / 2, abs=1e-6)


def test_igam_discriminator_input_is_mean_centred_and_l2_normalised():
    maps = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]).view(2, 1, 1, 3)
    out = igam.normalise_maps(maps).view(2, 3)
    assert torch.allclose(out[0], torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2))
    assert torch.equal(out[1], torch.zeros(3)), "a constant map has no direction: ε keeps it finite"
    assert torch.equal(igam.normalise_maps(maps, "raw"), maps)


def test_igam_discriminator_layout():
    disc = igam.Discriminator(1, 28, layers=5, width=16)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128, 256]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in disc.modules()) == 5
    assert all(m.negative_slope == 0.1 for m in disc.modules() if isinstance(m, nn.LeakyReLU))
    assert disc.fc.in_features == 256, "'SAME' padding: 28 → 14 → 7 → 4 → 2 → 1"
    assert disc(torch.randn(3, 1, 28, 28)).shape == (3, 2)
    assert igam.Discriminator(3, 32, layers=4, width=8).fc.in_features == 64 * 2 * 2


def igam_options(host, **extra):
    return options(host, igam_lambda_adv=1.0, igam_lambda_diff=1.0, igam_grad_target="ce", **extra)


def igam_context(host, seed=0, **extra):
    return step_context(host, ["igam"], student=tiny_model(seed=0), teacher=tiny_model(seed=1), batch=8, seed=seed,
                        config=igam_options(host, **extra))


def adv_value(host, student, teacher, state, seed=0):
    """L_adv of a new step with the discriminator ``state``."""
    ctx = step_context(host, ["igam"], student=student, teacher=teacher, batch=8, config=igam_options(host), seed=seed)
    ctx.run.state["igam"] = state
    return {t.name: t for t in loss_terms(ctx)}["igam_adv"].value


def test_discriminator_and_student_move_in_opposite_directions_on_l_adv(host):
    torch.manual_seed(0)
    ctx = igam_context(host)
    state = ctx.run.state["igam"]
    terms = {t.name: t for t in loss_terms(ctx)}
    j_s, j_t = ctx.state["igam_maps"]
    params = list(state.disc.parameters())
    # the student's term is exactly minus D's objective: their gradients in D's weights are opposite
    grads_student = torch.autograd.grad(terms["igam_adv"].value, params, retain_graph=True)
    maps, labels = igam.discriminator_batch(j_s, j_t, "zero-mean-l2")
    grads_disc = torch.autograd.grad(F.cross_entropy(state.disc(maps), labels), params)
    for gs, gd in zip(grads_student, grads_disc):
        assert torch.allclose(gs, -gd, atol=1e-6)
    # and the student's gradient reaches its weights through J_s (double backprop)
    student_grads = torch.autograd.grad(terms["igam_adv"].value, list(ctx.student.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in student_grads)

    before = igam.adversarial_term(state.disc, j_s, j_t, "zero-mean-l2").item()
    for group in state.optimizer.param_groups:
        group["weight_decay"] = 0.0
    igam.update_discriminator(state, j_s, j_t, "zero-mean-l2", lr=0.05)
    after_disc = igam.adversarial_term(state.disc, j_s, j_t, "zero-mean-l2").item()
    assert after_disc > before, "D ascends L_adv"

    student, teacher = ctx.student, ctx.teacher
    value = adv_value(host, student, teacher, state)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    optimizer.zero_grad()
    value.backward()
    optimizer.step()
    assert adv_value(host, student, teacher, state).item() < value.item(), "the student descends L_adv"
    assert all(p.grad is None for p in teacher.parameters())


def test_igam_student_gradient_flows_through_js_and_never_into_the_teacher(host):
    ctx = step_context(host, ["igam"], student=tiny_model(seed=0), teacher=tiny_model(seed=1), batch=8,
                       config=options(host, igam_lambda_adv=0.0, igam_lambda_diff=1.0, igam_grad_target="ce"))
    for p in ctx.teacher.parameters():
        p.requires_grad_(True)  # even a teacher whose weights require grad gets none
    diff = {t.name: t for t in loss_terms(ctx)}["igam_diff"].value
    diff.backward()
    head = ctx.student.head.weight.grad
    conv = next(m for m in ctx.student.modules() if isinstance(m, nn.Conv2d)).weight.grad
    assert conv is not None and conv.abs().sum() > 0, "‖J_s − J_t‖² reaches the student's weights through J_s"
    assert head is not None and head.abs().sum() > 0
    assert all(p.grad is None for p in ctx.teacher.parameters())


def test_igam_plain_ce_first_and_discriminator_every_k_steps(host):
    ctx = igam_context(host, igam_plain_ce_steps=3)
    ctx.step = 2
    assert set(terms_of(ctx)) == {"ce"}
    ctx = igam_context(host, igam_plain_ce_steps=3, igam_disc_every=5)
    state = ctx.run.state["igam"]
    ctx._engine.optimizer.param_groups[0]["lr"] = 0.01  # the student's learning rate now
    ctx.step = 3
    assert set(terms_of(ctx)) == {"ce", "igam_diff", "igam_adv"}
    igam.step_end(ctx.run, ctx)
    assert state.d_steps == 0, "step 3 is not a multiple of 5"
    ctx.step = 5
    igam.step_end(ctx.run, ctx)
    assert state.d_steps == 1
    assert state.optimizer.param_groups[0]["lr"] == 0.01, "D follows the student's learning rate"
    assert state.optimizer.param_groups[0]["weight_decay"] == 2e-4 and state.optimizer.param_groups[1]["weight_decay"] == 0


# -- RRM ----------------------------------------------------------------------------------------------------

def test_rrm_feature_losses_by_hand():
    s, t = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, 4.0]])
    assert rrm.feature_loss(s, t, "cosine").item() == pytest.approx(1 - (1 / math.sqrt(2) + 1) / 2, abs=1e-6)
    assert rrm.feature_loss(s, t, "relative-l2").item() == pytest.approx((1 / math.sqrt(2) + 2 / 4) / 2, abs=1e-6)


def test_rrm_terms_with_a_projection_by_hand(host):
    # student features [1, 0] (2 wide) → P = [[1, 0], [0, 1], [0, 0]] → [1, 0, 0]; teacher features [1, 1, 0]
    ctx = context(host, ["rrm"], [[1.0, 0.0]], [0], teacher=Linear([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]),
                  rrm_xent_weight=0.005)
    projection = ctx.run.state["rrm"]
    assert ctx._engine.plugin_modules["rrm_projection"] == (projection, None), "trained jointly with the student"
    with torch.no_grad():
        projection.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        projection.bias.zero_()
    terms = terms_of(ctx)
    # teacher features: [1·1 + 0, 0, 1] = [1, 0, 1] → cos([1, 0, 0], [1, 0, 1]) = 1/√2
    assert terms["rrm_feat"] == (pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6), 1.0)
    ce = math.log(1 + math.exp(-1))  # student logits [1, 0], y = 0
    assert terms["ce"] == (pytest.approx(ce, abs=1e-6), 0.005)
    loss = sum(t.weight * t.value for t in loss_terms(ctx))
    loss.backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0


def test_rrm_without_projection_when_widths_agree(host):
    ctx = context(host, ["rrm"], [[1.0, 0.0]], [0], teacher=scaled(3.0))
    assert rrm.make_projection(2, 2) is None and ctx.run.state["rrm"] is None
    assert terms_of(ctx)["rrm_feat"][0] == pytest.approx(0.0, abs=1e-6), "parallel features"


# -- GradNorm and EdgeReg ---------------------------------------------------------------------------------

def test_gradnorm_by_hand(host):
    # x = 0: ∇ₓCE = p − e_y = ±[½, −½] → ‖∇‖₁ = 1 per sample; ε = 4/255, the official constant, whatever --eps is
    ctx = context(host, ["gradnorm"], [[0.0, 0.0], [0.0, 0.0]], [0, 1], gradnorm_warmup_epochs=0.0, eps=0.1)
    terms = terms_of(ctx)
    assert ctx.config.gradnorm.eps == pytest.approx(4 / 255)
    assert terms["ce"] == (pytest.approx(LN2, abs=1e-6), 0.8)
    assert terms["gradnorm"] == (pytest.approx(4 / 255, abs=1e-6), pytest.approx(1.2))
    ctx = context(host, ["gradnorm"], [[0.0, 0.0], [0.0, 0.0]], [0, 1], gradnorm_warmup_epochs=0.0, eps=0.1,
                  gradnorm_eps=0.1)
    assert terms_of(ctx)["gradnorm"][0] == pytest.approx(0.1, abs=1e-6)
    ctx = context(host, ["gradnorm"], [[0.0, 0.0]], [0], student=scaled(3.0), gradnorm_warmup_epochs=0.0,
                  gradnorm_eps=4 / 255)
    assert terms_of(ctx)["gradnorm"][0] == pytest.approx(3 * 4 / 255, abs=1e-6), "ε·‖∇ₓCE‖₁ with ∇ = 3(p − e_y)"


def test_gradnorm_linear_warmup_per_step(host):
    ctx = context(host, ["gradnorm"], [[0.0, 0.0]], [0], epoch=2, steps_per_epoch=20)
    ctx.step = 30  # 1.5 epochs done
    assert terms_of(ctx)["gradnorm"][1] == pytest.approx(1.2 * 1.5 / 5)
    ctx.step = 200
    assert terms_of(ctx)["gradnorm"][1] == pytest.approx(1.2)
    assert gradnorm.ramp(0.0, 5) == 0.0 and gradnorm.ramp(2.5, 5) == 0.5 and gradnorm.ramp(9, 5) == 1.0


def test_gradnorm_bn_eval_keeps_running_statistics(host):
    student = tiny_model(seed=0)
    bn = next(m for m in student.modules() if isinstance(m, nn.BatchNorm2d))
    for mode, changes in (("eval", False), ("train", True)):
        before = bn.running_mean.clone()
        ctx = step_context(host, ["gradnorm"], student=student, config=options(host, gradnorm_bn=mode))
        loss_terms(ctx)
        assert (not torch.equal(bn.running_mean, before)) == changes
        assert student.training


def test_gaussian_taps_are_the_discrete_gaussian():
    i = [1.2660658777520082, 0.5651591039924851, 0.1357476697670383, 0.0221684249243319]  # I_n(1)
    expected = [math.exp(-1) * i[abs(n)] for n in range(-3, 4)]
    assert edgereg.gaussian_taps(1.0).tolist() == pytest.approx(expected, rel=1e-6)


def test_edge_energy_by_hand():
    assert torch.equal(edgereg.edge_energy(torch.full((1, 1, 16, 16), 0.3)), torch.zeros(1, 1, 16, 16))
    # a horizontal ramp of slope a: each Gaussian pass multiplies by S = Σ taps; ∂x = (½ + 1 + ½)·2a = 4a
    a = 0.01
    ramp = (a * torch.arange(32.0)).expand(1, 2, 24, 32)
    s = edgereg.gaussian_taps(1.0).sum().item()
    energy = edgereg.edge_energy(ramp)
    assert energy.shape == (1, 1, 24, 32)
    interior = energy[0, 0, 8:16, 8:24]
    assert torch.allclose(interior, torch.full_like(interior, math.sqrt(2) * 4 * a * s ** 4), rtol=1e-4), \
        "two channels: √(2·(4aS²)²), blurred again: ×S²"


def test_edge_loss_normalises_both_maps_over_the_batch():
    energy = torch.rand(2, 1, 8, 8) + 0.1
    assert edgereg.edge_loss(7 * energy, energy).item() == pytest.approx(0.0, abs=1e-6)
    assert edgereg.edge_loss(-energy, energy).item() == pytest.approx(4.0, abs=1e-5), "mean((−e − e)²), mean(e²) = 1"
    grad = torch.cat([energy, -3 * energy], dim=1)
    assert edgereg.edge_loss(grad, energy, saliency=True).item() == pytest.approx(0.0, abs=1e-6)


class MapModel(nn.Module):
    """Every class logit is ⟨M, x⟩: the sampled-logit gradient is M whatever class is drawn."""

    def __init__(self, m, classes=3):
        super().__init__()
        self.register_buffer("m", m)
        self.scale = nn.Parameter(torch.ones(()))
        self.arch = tiny_model(num_classes=classes, image_size=m.shape[-1]).arch
        self.classes = classes

    def forward(self, x, return_features=False):
        out = (self.scale * (x * self.m).flatten(1).sum(1, keepdim=True)).expand(len(x), self.classes)
        return (out, out) if return_features else out


@pytest.mark.parametrize("sign, expected", [(1.0, 0.0), (-1.0, 4.0)])
def test_edgereg_term_by_hand(host, sign, expected):
    x = torch.rand(1, 1, 12, 12)
    m = sign * edgereg.edge_energy(x)[0]
    ctx = step_context(host, ["edgereg"], student=MapModel(m), batch=1)
    ctx.x = x
    terms = terms_of(ctx)
    assert terms["edgereg"] == (pytest.approx(expected, abs=1e-5), pytest.approx(1.0))
    assert terms["ce"] == (pytest.approx(math.log(3), abs=1e-6), 1.0)
    assert edgereg.alpha(100.0, 1.0, 0.09, 19.0) == pytest.approx(10.0)
    assert edgereg.alpha(1000.0, 1.0, 0.09, 19.0) == 19.0


# -- PAG ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("classes", [0, 1])
def test_pag_alignment_by_hand(host, classes):
    # student logits x at x = 0: ∇ log p(c) = e_c − p → [½, −½], [−½, ½]
    # teacher logits A·x, A = [[2, 0], [0, 0]]: ∇ log p_T(c) = A_c − Σ p_k A_k → [1, 0], [−1, 0]
    # cos = ½ / (√½ · 1) = 1/√2 for both classes (so for a sampled one too)
    ctx = context(host, ["pag"], [[0.0, 0.0]], [0], teacher=Linear([[2.0, 0.0], [0.0, 0.0]]), pag_classes=classes)
    terms = terms_of(ctx)
    assert terms["pag"] == (pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6), pytest.approx(15.0))
    assert terms["ce"] == (pytest.approx(LN2, abs=1e-6), 1.0)
    ctx = context(host, ["pag"], [[0.0, 0.0]], [0], teacher=Linear([[2.0, 0.0], [0.0, 0.0]]), pag_early_epochs=5)
    assert terms_of(ctx)["pag"][1] == pytest.approx(10.0), "×2/3 in the first epochs (code's ViT schedule)"


def own_gradients(model, x, num_classes):
    """[B, K, C, H, W]: ∇ₓ log p(c|x) of every class, computed independently of the plugin."""
    x = x.clone().requires_grad_(True)
    log_p = torch.log_softmax(model(x), dim=1)
    return torch.stack([torch.autograd.grad(log_p[:, c].sum(), x, retain_graph=True)[0]
                        for c in range(num_classes)], dim=1)


@pytest.mark.parametrize("classes", [0, 2])
def test_pag_with_the_students_own_gradients_as_targets_is_zero(host, classes, tmp_path):
    student = tiny_model(seed=0).eval()  # eval mode: the replicated batch is not coupled by BatchNorm
    ctx = step_context(host, ["pag"], student=student, teacher=copy.deepcopy(student), batch=4,
                       config=options(host, pag_classes=classes))
    assert terms_of(ctx)["pag"][0] == pytest.approx(0.0, abs=1e-5)

    # the same from a precomputed tensor file
    path = tmp_path / "targets.pt"
    torch.save({"images": (ctx.x * 255).round().to(torch.uint8),
                "targets": own_gradients(student, (ctx.x * 255).round() / 255, 3)}, path)
    ctx = step_context(host, ["pag"], student=student, batch=4,
                       config=options(host, pag_classes=classes, pag_targets=str(path)))
    ctx.x = (ctx.x * 255).round() / 255
    assert terms_of(ctx)["pag"][0] == pytest.approx(0.0, abs=1e-5)
    ctx = step_context(host, ["pag"], student=student, batch=4, seed=9, config=options(host, pag_targets=str(path)))
    with pytest.raises(RobustDistillError, match="no targets for 4 image"):
        loss_terms(ctx)


def test_pag_target_file_is_checked_and_loaded_safely(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"images": torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "targets": torch.zeros(2, 5, 1, 8, 8)}, path)
    with pytest.raises(RobustDistillError, match="do not fit 3 classes"):
        pag.TargetFile.load(str(path), 3, (1, 8, 8))

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled",))

    torch.save({"images": Evil()}, path)
    with pytest.raises(RobustDistillError, match="not a readable tensor file"):
        pag.TargetFile.load(str(path), 3, (1, 8, 8))


def test_pag_classes_per_image():
    assert torch.equal(pag.choose_classes(2, 4, 0, torch.device("cpu")), torch.arange(4).expand(2, 4))
    chosen = pag.choose_classes(50, 10, 3, torch.device("cpu"))
    assert chosen.shape == (50, 3)
    assert all(len(set(row.tolist())) == 3 for row in chosen)
    assert len(set(map(tuple, chosen.tolist()))) > 1, "sampled per image"
