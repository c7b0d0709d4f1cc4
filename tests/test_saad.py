"""SAAD: the entropies, weights and loss by hand, the linearised-teacher attack against PGD written out (with the
gradient through the correction), one engine step against a reference written from the formulas, the SWA it turns
on, the errors, and a run on real Fashion-MNIST."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from robustdistill import RobustDistillError, hookimpl
from robustdistill._checkpoint import load_checkpoint
from robustdistill._cli import main
from robustdistill._data import DATASET_INFOS
from robustdistill._loop import train_step
from robustdistill.plugins.saad import entropy_weights, renyi_entropy
from robustdistill.testing import attack as run_attack
from robustdistill.testing import (loss_terms, options, plugin_host, resolved_config, step_context, tiny_model,
                                   train_config, train_run)

from support import Scaled, needs_fashion_mnist, reference_pgd


@pytest.fixture(scope="module")
def host():
    return plugin_host()


# -- entropies and weights ---------------------------------------------------------------------------------------

def test_renyi_entropy_by_hand():
    p = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    shannon = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    torch.testing.assert_close(renyi_entropy(p, 1.0), torch.tensor([shannon, math.log(2)]))
    torch.testing.assert_close(renyi_entropy(p, 2.0), torch.tensor([-math.log(0.625), math.log(2)]))
    half = 2 * math.log(math.sqrt(0.75) + math.sqrt(0.25))
    torch.testing.assert_close(renyi_entropy(p, 0.5), torch.tensor([half, math.log(2)]))
    assert shannon != pytest.approx(-math.log(0.625)), "the order changes the entropy"


def test_code_weights_are_shifted_by_the_batch_minimum_and_min_max_normalised():
    entropy = torch.tensor([1.0, 2.0, 4.0])
    w, normalised = entropy_weights(entropy, "code", 5.0, 10)
    torch.testing.assert_close(w, torch.tensor([0.0, 5.0, 15.0]))
    torch.testing.assert_close(normalised, torch.tensor([0.0, 5 / (15 + 1e-8), 15 / (15 + 1e-8)]))
    w, normalised = entropy_weights(entropy, "paper", 5.0, 10)
    torch.testing.assert_close(w, entropy)
    torch.testing.assert_close(normalised, entropy / math.log(10))


def test_weights_carry_no_gradient():
    entropy = torch.tensor([1.0, 2.0], requires_grad=True)
    for mode in ("code", "paper"):
        w, normalised = entropy_weights(entropy, mode, 5.0, 3)
        assert not w.requires_grad and not normalised.requires_grad


# -- the loss by hand --------------------------------------------------------------------------------------------

def softmax(v):
    e = [math.exp(a) for a in v]
    return [a / sum(e) for a in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def entropy(p, gamma):
    return -sum(a * math.log(a) for a in p) if gamma == 1 else math.log(sum(a ** gamma for a in p)) / (1 - gamma)


X = [[0.2, 0.0], [0.1, 0.3], [0.0, 0.4]]
X_ADV = [[0.9, 0.0], [0.3, 0.1], [0.2, 0.4]]
TEACHER, EPOCH, EPOCHS = 2.0, 3, 4


def expected_terms(alpha, beta, gamma, weights, form):
    """SAAD's terms written out with math on the Scaled student (×1) and teacher (×2)."""
    minus = [[2 * a - b for a, b in zip(x, xa)] for x, xa in zip(X, X_ADV)]
    other = minus if form == "two-sided" else X
    t_plus = [[TEACHER * v for v in row] for row in X_ADV]
    p = [softmax(row) for row in t_plus]
    h = [entropy(row, gamma) for row in p]
    if weights == "code":
        w = [5 * (v - min(h)) for v in h]
        normalised = [v / (max(w) + 1e-8) for v in w]
    else:
        w, normalised = h, [v / math.log(2) for v in h]
    adv = [wi * kl(pi, softmax(s)) for wi, pi, s in zip(w, p, X_ADV)]
    igdm = [wi * kl(softmax([TEACHER * (a - b) for a, b in zip(xa, o)]), softmax([a - b for a, b in zip(xa, o)]))
            for wi, xa, o in zip(w, X_ADV, other)]
    clean = [(1 - ni) * kl(softmax([TEACHER * v for v in x]), softmax(x)) for ni, x in zip(normalised, X)]
    terms = {"kl_adv": (sum(adv) / 3, 1.0), "igdm": (sum(igdm) / 3, alpha * EPOCH / EPOCHS)}
    if beta:
        terms["kl_clean"] = (sum(clean) / 3, beta)
    return terms


@pytest.mark.parametrize("alpha, beta, gamma, weights, form", [
    (1.0, 0.0, 1.0, "code", "two-sided"),
    (20.0, 0.2, 2.0, "code", "two-sided"),
    (10.0, 0.5, 1.0, "paper", "one-sided"),
    (3.0, 0.2, 0.5, "paper", "two-sided"),
])
def test_terms_by_hand(host, alpha, beta, gamma, weights, form):
    ctx = step_context(host, ["saad"], student=Scaled(1.0), teacher=Scaled(TEACHER), epoch=EPOCH, epochs=EPOCHS,
                       config=options(host, saad_alpha=alpha, saad_beta=beta, saad_gamma=gamma, saad_weights=weights,
                                      saad_igdm_form=form))
    ctx.x, ctx.x_adv, ctx.y = torch.tensor(X), torch.tensor(X_ADV), torch.tensor([0, 1, 1])
    terms = {t.name: (t.value.item(), t.weight) for t in loss_terms(ctx)}
    expected = expected_terms(alpha, beta, gamma, weights, form)
    assert set(terms) == set(expected)
    for name, (value, weight) in expected.items():
        assert terms[name][0] == pytest.approx(value, abs=1e-6), name
        assert terms[name][1] == pytest.approx(weight), name
    for term in loss_terms(ctx):
        assert term.value.item() == pytest.approx(term.samples().mean().item(), abs=1e-7), term.name
    minus = ctx._student_cache.get("x-δ")
    if form == "two-sided":
        torch.testing.assert_close(minus, 2 * torch.tensor(X) - torch.tensor(X_ADV)), "x − δ is not clipped"
        assert (minus < 0).any()


def test_the_clean_forward_runs_unless_switched_off(host):
    ctx = step_context(host, ["saad"], config=options(host, saad_alpha=1.0))
    run_attack(ctx)
    loss_terms(ctx)
    assert list(ctx._declared) == ["adv", "x-δ", "clean"], "the code's order: S(x′), S(x − δ), S(x)"
    ctx = step_context(host, ["saad"], config=options(host, saad_alpha=1.0, saad_clean_forward=False))
    run_attack(ctx)
    assert {t.name for t in loss_terms(ctx)} == {"kl_adv", "igdm"}
    assert list(ctx._declared) == ["adv", "x-δ"]


# -- the attack ----------------------------------------------------------------------------------------------------

def corrected_objective(student, teacher, x, y, scale=1.0, detach_correction=False):
    """KL(σ(sg(T(x)) + λ⟨g, x′ − x⟩e_y) ‖ σ(S(x′))), g the input gradient of the true-class teacher logit at x."""
    x_in = x.clone().requires_grad_(True)
    logits = teacher(x_in)
    (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), x_in)
    logits = logits.detach()
    onehot = F.one_hot(y, logits.shape[1]).float()

    def objective(z):
        shift = (grad * (z - x)).flatten(1).sum(1)
        shift = shift.detach() if detach_correction else shift
        target = logits + scale * shift[:, None] * onehot
        p = F.softmax(target, 1)
        return (p * (F.log_softmax(target, 1) - F.log_softmax(student(z), 1))).sum(1)
    return objective


def seeded_reference(ctx, objective, seed=5):
    torch.manual_seed(seed)
    cfg = ctx.config
    return reference_pgd(objective, ctx.x, cfg.eps, cfg.step_size, cfg.attack_steps, "normal", clip_start=False)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_attack_is_pgd_on_the_linearised_teacher_through_the_correction(host, scale):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    ctx = step_context(host, ["saad"], student=student, teacher=teacher, batch=16,
                       config=options(host, saad_lambda_inner=scale))
    student.eval()
    right = seeded_reference(ctx, corrected_objective(student, teacher, ctx.x, ctx.y, scale))
    detached = seeded_reference(ctx, corrected_objective(student, teacher, ctx.x, ctx.y, scale, True))
    uncorrected = seeded_reference(ctx, corrected_objective(student, teacher, ctx.x, ctx.y, 0.0))
    clipped_start = reference_pgd(corrected_objective(student, teacher, ctx.x, ctx.y, scale), ctx.x,
                                  ctx.config.eps, ctx.config.step_size, ctx.config.attack_steps, "normal")
    assert not torch.equal(right, detached) and not torch.equal(right, uncorrected)
    student.train()
    torch.manual_seed(5)
    adv = run_attack(ctx)
    assert torch.equal(adv, right)
    assert not torch.equal(adv, clipped_start)
    assert student.training and all(p.grad is None for p in teacher.parameters())


# -- one engine step against a reference from the formulas --------------------------------------------------------

def reference_step(student, teacher, x, y, cfg, alpha, beta, gamma, weights, form, epoch, epochs):
    """SAAD's step from the formulas alone: the attack, S(x′), S(x − δ), S(x) in train mode, the loss."""
    student.eval()
    x_adv = reference_pgd(corrected_objective(student, teacher, x, y), x, cfg.eps, cfg.step_size, cfg.attack_steps,
                          "normal", clip_start=False)
    student.train()
    delta = x_adv - x
    with torch.no_grad():
        t_plus, t_minus, t_clean = teacher(x_adv), teacher(x - delta), teacher(x)
    s_plus = student(x_adv)
    s_minus = student(x - delta) if form == "two-sided" else None  # the paper's form has no x − δ
    s_clean = student(x)
    p = F.softmax(t_plus, 1)
    if gamma == 1:
        h = -(p * torch.log(p + 1e-12)).sum(1)
    else:
        h = torch.log((p ** gamma).sum(1) + 1e-12) / (1 - gamma)
    if weights == "code":
        w = 5 * (h - h.min())
        w_hat = w / (w.max() + 1e-8)
    else:
        w, w_hat = h, h / math.log(p.shape[1])

    def kl_rows(s, t):
        return (F.softmax(t, 1) * (F.log_softmax(t, 1) - F.log_softmax(s, 1))).sum(1)

    a = kl_rows(s_plus, t_plus)
    g = kl_rows(s_plus - s_minus, t_plus - t_minus) if form == "two-sided" else kl_rows(s_plus - s_clean,
                                                                                       t_plus - t_clean)
    c = kl_rows(s_clean, t_clean)
    return (w * (a + alpha * epoch / epochs * g) + beta * (1 - w_hat) * c).mean()


@pytest.mark.parametrize("alpha, beta, gamma, weights, form", [
    (1.0, 0.0, 1.0, "code", "two-sided"),
    (3.0, 0.2, 2.0, "paper", "one-sided"),
    (5.0, 0.5, 1.0, "code", "one-sided"),
])
def test_engine_step_equals_the_reference(host, alpha, beta, gamma, weights, form):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    config = options(host, saad_alpha=alpha, saad_beta=beta, saad_gamma=gamma, saad_weights=weights,
                     saad_igdm_form=form)
    ctx = step_context(host, ["saad"], student=student, teacher=teacher, batch=16, epoch=2, epochs=4, config=config)
    reference = copy.deepcopy(student)
    torch.manual_seed(7)
    expected = reference_step(reference, teacher, ctx.x, ctx.y, ctx.config, alpha, beta, gamma, weights, form, 2, 4)
    expected.backward()
    torch.manual_seed(7)
    loss, _ = train_step(ctx._engine, ctx)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    for (name, p), q in zip(student.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)
    for (name, b), c in zip(student.named_buffers(), reference.buffers()):
        torch.testing.assert_close(b, c, msg=name)


# -- SWA -----------------------------------------------------------------------------------------------------------

class Snapshots:
    """Keeps the student's parameters at every epoch end, before the average's update."""

    def __init__(self):
        self.epochs = []

    @hookimpl(tryfirst=True)
    def epoch_end(self, run):
        self.epochs.append({k: v.detach().clone() for k, v in run.student.named_parameters()})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("saad-teacher") / "natural"
    train_run(plugin_host(), ["natural"], out, "--seed", "1")
    return str(out)


def test_saad_turns_on_swa_from_epoch_95_and_it_can_be_switched_off(host):
    info = DATASET_INFOS["cifar10"]
    config = resolved_config(host, ["saad"], info)
    assert (config.average.mode, config.average.start, config.average.bn) == ("swa", 95.0, "refresh")
    assert config.saad.alpha == 1.0 and resolved_config(host, ["saad"], DATASET_INFOS["cifar100"]).saad.alpha == 20.0
    assert resolved_config(host, ["saad"], info, train_config(host, "--average", "off")).average.mode == "off"
    assert resolved_config(host, ["saad"], info, train_config(host, "--average-start", "3")).average.start == 3.0
    assert resolved_config(host, ["saad"], info, train_config(host, "--average", "ema")).average.mode == "ema"
    assert resolved_config(host, ["at"], info).average.mode == "off", "other methods do not average"


def test_the_swa_model_is_the_mean_of_the_students_and_the_final_model(tmp_path, teacher):
    snapshots = Snapshots()
    host = plugin_host(snapshots, names=["snapshots"])
    out = tmp_path / "run"
    run = train_run(host, ["saad"], out, "--teacher", teacher, "--epochs", "3", "--average-start", "2",
                    "--attack-steps", "2")
    average = run.view.state["average"]["model"].module
    for name, value in average.named_parameters():
        expected = torch.stack([s[name] for s in snapshots.epochs[1:]]).mean(0)  # epochs 2 and 3
        torch.testing.assert_close(value, expected, msg=name)
    refreshed = copy.deepcopy(average)
    torch.optim.swa_utils.update_bn(run.view.train_batches(), refreshed)
    for (name, buf), ref in zip(average.named_buffers(), refreshed.buffers()):
        torch.testing.assert_close(buf, ref, msg=name)
    assert load_checkpoint(out / "last.pt")["final"] == "average"
    config = json.loads((out / "config.json").read_text())
    assert config["plugins"]["average"]["mode"] == "swa"
    assert config["sources"]["average.mode"]["source"].startswith("saad: the SAAD code")
    off = train_run(plugin_host(), ["saad"], tmp_path / "off", "--teacher", teacher, "--average", "off",
                    "--attack-steps", "2")
    assert "average" not in off.view.state
    assert load_checkpoint(tmp_path / "off" / "last.pt")["final"] == "student"


# -- errors --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--saad-gamma", "-1"], "--saad-gamma -1 must be a Rényi order"),
    (["--saad-entropy-scale", "0"], "--saad-entropy-scale 0 must be positive"),
])
def test_bad_options_are_refused(host, flags, message):
    with pytest.raises(RobustDistillError, match=message):
        step_context(host, ["saad"], config=train_config(host, *flags))


def test_igdm_on_top_is_refused_and_a_teacher_is_required(host, tmp_path):
    with pytest.raises(RobustDistillError, match="saad already contains IGDM's term"):
        step_context(host, ["saad", "igdm"], config=train_config(host, "--igdm-alpha", "1"))
    with pytest.raises(RobustDistillError, match="pass --teacher"):
        train_run(plugin_host(), ["saad"], tmp_path / "run")


# -- end to end on real Fashion-MNIST ---------------------------------------------------------------------------

@pytest.mark.slow
@needs_fashion_mnist
def test_saad_student_is_robust_on_fashion_mnist(tmp_path, fmnist_teacher, fmnist_natural_student):
    natural = fmnist_natural_student
    out = tmp_path / "saad"
    assert main(["train", "--plugin", "saad", "--teacher", str(fmnist_teacher / "last.pt"), "--dataset",
                 "fashion-mnist", "--model", "cnn", "--val-split", "100", "--lr", "0.05", "--seed", "0", "--subset",
                 "2048", "--epochs", "2", "--average-start", "2", "--out", str(out)]) == 0
    assert main(["eval", str(out), "--attacks", "clean,pgd20", "--subset", "500", "--json",
                 str(out / "eval.json")]) == 0
    result = json.loads((out / "eval.json").read_text())
    print(f"\nsaad (SWA model): clean {result['clean']:.3f} pgd20 {result['pgd20']:.3f} "
          f"(natural: {natural['clean']:.3f} / {natural['pgd20']:.3f})")
    assert result["weights"] == "average"
    assert result["pgd20"] > natural["pgd20"] + 0.15
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(metrics[-1]["terms"]) == {"kl_adv", "igdm"} and metrics[-1]["average_updates"] == 1
