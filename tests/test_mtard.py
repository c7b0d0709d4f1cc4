"""MTARD and B-MTARD: the terms and the balance rules by hand, several engine steps against a reference written from
the formulas (loss, gradients, BatchNorm statistics and the balance state), the rates' decay at the milestones,
exact resume of the state, the errors, and a run on real Fashion-MNIST."""
import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustdistill import RobustDistillError
from robustdistill._checkpoint import load_checkpoint
from robustdistill._cli import main
from robustdistill._loop import new_step, train_step
from robustdistill.plugins.mtard import balanced_temperatures, decayed
from robustdistill.testing import loss_terms, options, plugin_host, step_context, tiny_model, train_config, train_run

from support import Scaled, needs_fashion_mnist, reference_pgd

LN3 = math.log(3)


@pytest.fixture(scope="module")
def host():
    return plugin_host()


def context(host, x, x_adv, state=None, epoch=1, **config):
    ctx = step_context(host, ["mtard"], student=Scaled(1.0), teachers={"robust": Scaled(2.0), "clean": Scaled(3.0)},
                       epoch=epoch, epochs=10, config=options(host, **config))
    ctx.x, ctx.x_adv, ctx.y = torch.tensor(x), torch.tensor(x_adv), torch.tensor([0])
    ctx.run.checkpointed["mtard"].update(state or {})
    return ctx


def terms_of(ctx):
    return {t.name: (t.value.item(), t.weight) for t in loss_terms(ctx)}


def official_kl(b, q):
    """The codes' element mean of b·(log(b + 1e-5) − log q) over the C = 2 classes."""
    return sum(bi * (math.log(bi + 1e-5) - math.log(qi)) for bi, qi in zip(b, q)) / 2


# x_adv = [ln3/2, 0]: robust teacher 2·x_adv = [ln3, 0] → b = [3/4, 1/4], student → [√3, 1]/(1 + √3);
# x = [ln3/3, 0]: clean teacher 3·x = [ln3, 0] → b = [3/4, 1/4], student → [3^(1/3), 1]/(1 + 3^(1/3)).
X, X_ADV = [[LN3 / 3, 0.0]], [[LN3 / 2, 0.0]]
Q_ADV = [math.sqrt(3) / (1 + math.sqrt(3)), 1 / (1 + math.sqrt(3))]
Q_NAT = [3 ** (1 / 3) / (1 + 3 ** (1 / 3)), 1 / (1 + 3 ** (1 / 3))]
L_ADV, L_NAT = official_kl([0.75, 0.25], Q_ADV), official_kl([0.75, 0.25], Q_NAT)


def test_terms_by_hand_with_equal_weights_at_the_first_step(host):
    ctx = context(host, X, X_ADV)
    terms = terms_of(ctx)
    assert terms["kl_adv"] == (pytest.approx(L_ADV, abs=1e-6), pytest.approx(0.5))
    assert terms["kl_clean"] == (pytest.approx(L_NAT, abs=1e-6), pytest.approx(0.5))
    first = ctx.state["mtard"]
    assert first["first_adv"] == pytest.approx(L_ADV, abs=1e-6) and first["first_nat"] == pytest.approx(L_NAT, abs=1e-6)


def test_the_scale_multiplies_both_terms_and_defaults_to_ten_on_100_classes(host):
    terms = terms_of(context(host, X, X_ADV, mtard_scale=10.0))
    assert terms["kl_adv"][1] == pytest.approx(5.0) and terms["kl_clean"][1] == pytest.approx(5.0)
    from robustdistill._data import DATASET_INFOS
    from robustdistill.testing import resolved_config
    assert resolved_config(host, ["mtard"], DATASET_INFOS["cifar100"]).mtard.scale == 10.0
    assert resolved_config(host, ["mtard"], DATASET_INFOS["cifar10"]).mtard.scale == 1.0


@pytest.mark.parametrize("power, target", [(1.0, 2 / 3), (2.0, 4 / 5)])
def test_weight_update_moves_the_slower_term_up_in_the_same_step(host, power, target):
    # L_adv has halved since the first step, L_nat has not: r = (½^b, 1) → target of w_nat = 1/(½^b + 1)
    state = {"first_adv": 2 * L_ADV, "first_nat": L_NAT, "w_adv": 0.6, "w_nat": 0.4}
    terms = terms_of(context(host, X, X_ADV, state, mtard_ratio_power=power, mtard_weight_rate=0.1))
    w_nat = 0.4 - 0.1 * (0.4 - target)
    assert terms["kl_clean"][1] == pytest.approx(w_nat, abs=1e-6)
    assert terms["kl_adv"][1] == pytest.approx(1 - w_nat, abs=1e-6)


def test_b_mtard_weights_renormalise_to_the_same_rule(host):
    state = {"first_adv": 2 * L_ADV, "first_nat": L_NAT, "w_adv": 0.6, "w_nat": 0.4}
    terms = terms_of(context(host, X, X_ADV, state, mtard_variant="b-mtard", mtard_weight_rate=0.1))
    assert terms["kl_clean"][1] == pytest.approx(0.4 - 0.1 * (0.4 - 2 / 3), abs=1e-6)
    assert terms["kl_adv"][1] + terms["kl_clean"][1] == pytest.approx(1.0)


def test_b_mtard_uses_its_temperatures_on_the_teachers_only_and_updates_them_for_the_next_step(host):
    state = {"tau_adv": 2.0, "tau_nat": 4.0}
    ctx = context(host, X, X_ADV, state, mtard_variant="b-mtard")
    terms = terms_of(ctx)
    b_adv = [1 / (1 + 3 ** -0.5), 3 ** -0.5 / (1 + 3 ** -0.5)]  # σ([ln3, 0]/2)
    b_nat = [1 / (1 + 3 ** -0.25), 3 ** -0.25 / (1 + 3 ** -0.25)]  # σ([ln3, 0]/4)
    assert terms["kl_adv"][0] == pytest.approx(official_kl(b_adv, Q_ADV), abs=1e-6)
    assert terms["kl_clean"][0] == pytest.approx(official_kl(b_nat, Q_NAT), abs=1e-6)
    # h̄ = mean of p·log(p + 1e-5); the clean teacher is softer (τ 4): its h̄ is more negative → it is sharpened
    h_adv, h_nat = (sum(p * math.log(p + 1e-5) for p in b) / 2 for b in (b_adv, b_nat))
    assert h_nat / h_adv > 1
    assert ctx.state["mtard"]["tau_adv"] == pytest.approx(2.001) and ctx.state["mtard"]["tau_nat"] == \
        pytest.approx(3.999)
    assert ctx.run.checkpointed["mtard"]["tau_adv"] == 2.0, "the new temperatures are the next step's"
    plain = terms_of(context(host, X, X_ADV, state))
    assert plain["kl_adv"][0] == pytest.approx(L_ADV, abs=1e-6), "mtard has no temperatures"


def test_temperatures_are_clipped_to_their_range():
    assert balanced_temperatures(1.0, 1.0, -0.2, -0.1, 0.001, 1.0, 10.0) == (1.0, pytest.approx(1.001))
    assert balanced_temperatures(10.0, 5.0, -0.1, -0.2, 0.5, 1.0, 10.0) == (10.0, 4.5)
    assert balanced_temperatures(3.0, 3.0, -0.1, -0.1, 0.5, 1.0, 10.0) == (3.0, 3.0), "equal entropies: no move"


def test_the_rates_decay_with_the_learning_rate_at_the_milestones(host):
    config = train_config(host, "--milestones", "2,4", "--plugin", "mtard")
    assert [decayed(0.025, e, config) for e in (1, 2, 3, 4, 5)] == \
        pytest.approx([0.025, 0.025, 0.0025, 0.0025, 0.00025])
    kept = train_config(host, "--milestones", "2,4", "--no-mtard-rate-decay")
    assert decayed(0.025, 5, kept) == 0.025
    cosine = train_config(host, "--lr-schedule", "cosine")
    assert decayed(0.025, 5, cosine) == 0.025
    # in a step of epoch 3 (after the milestone 2) the weights move by 0.1·0.1
    state = {"first_adv": 2 * L_ADV, "first_nat": L_NAT, "w_adv": 0.6, "w_nat": 0.4}
    terms = terms_of(context(host, X, X_ADV, state, epoch=3, milestones="2", mtard_weight_rate=0.1))
    assert terms["kl_clean"][1] == pytest.approx(0.4 - 0.01 * (0.4 - 2 / 3), abs=1e-6)


# -- several engine steps against a reference written from the formulas --------------------------------------------

def reference_loss(student, robust, clean, x, y, state, variant, config, epoch):
    """One MTARD/B-MTARD step from the formulas: PGD-CE from the unclipped x + 0.001·N (eval), S(x′) then S(x) in
    train mode, the balance of the weights before the backward, the temperatures after. Returns the loss and the
    new state."""
    student.eval()
    x_adv = reference_pgd(lambda z: F.cross_entropy(student(z), y, reduction="none"), x, config.eps,
                          config.step_size, config.attack_steps, "normal", clip_start=False)
    student.train()
    s_adv, s_nat = student(x_adv), student(x)
    tau_adv, tau_nat = (state["tau_adv"], state["tau_nat"]) if variant == "b-mtard" else (1.0, 1.0)
    with torch.no_grad():
        b_adv, b_nat = F.softmax(robust(x_adv) / tau_adv, 1), F.softmax(clean(x) / tau_nat, 1)
    l_adv = (b_adv * (torch.log(b_adv + 1e-5) - F.log_softmax(s_adv, 1))).mean()
    l_nat = (b_nat * (torch.log(b_nat + 1e-5) - F.log_softmax(s_nat, 1))).mean()
    new = dict(state)
    if new["first_adv"] is None:
        new["first_adv"], new["first_nat"] = l_adv.item(), l_nat.item()
    rate = 0.025 * (0.1 if epoch > 2 else 1.0)  # --milestones 2
    r_adv, r_nat = l_adv.item() / new["first_adv"], l_nat.item() / new["first_nat"]
    new["w_nat"] = state["w_nat"] - rate * (state["w_nat"] - r_nat / (r_adv + r_nat))
    new["w_adv"] = 1 - new["w_nat"]
    if variant == "b-mtard":
        h_adv = (b_adv * torch.log(b_adv + 1e-5)).mean().item()
        h_nat = (b_nat * torch.log(b_nat + 1e-5)).mean().item()
        t_rate = 0.001 * (0.1 if epoch > 2 else 1.0)
        new["tau_adv"] = min(max(tau_adv - t_rate * math.copysign(1, h_adv / h_nat - 1), 1.0), 10.0)
        new["tau_nat"] = min(max(tau_nat - t_rate * math.copysign(1, h_nat / h_adv - 1), 1.0), 10.0)
    return new["w_adv"] * l_adv + new["w_nat"] * l_nat, new


@pytest.mark.parametrize("variant", ["mtard", "b-mtard"])
def test_engine_steps_equal_the_reference_with_the_state(host, variant):
    robust, clean = tiny_model(seed=1), tiny_model(seed=2)
    ctx = step_context(host, ["mtard"], student=tiny_model(seed=0), teachers={"robust": robust, "clean": clean},
                       batch=8, epochs=4, config=options(host, mtard_variant=variant, milestones="2"))
    run = ctx._engine
    state = {"first_adv": None, "first_nat": None, "w_adv": 0.5, "w_nat": 0.5, "tau_adv": 1.0, "tau_nat": 1.0}
    generator = torch.Generator().manual_seed(3)
    for step, epoch in enumerate([1, 1, 2, 3, 3, 4]):
        x, y = torch.rand(8, 1, 8, 8, generator=generator), torch.randint(0, 3, (8,), generator=generator)
        reference = copy.deepcopy(run.view.student)
        torch.manual_seed(step)
        expected, state = reference_loss(reference, robust, clean, x, y, state, variant, run.view.config, epoch)
        expected.backward()
        torch.manual_seed(step)
        loss, _ = train_step(run, new_step(run, x, y, epoch, step))
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7), f"step {step}"
        for (name, p), q in zip(run.view.student.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=f"step {step}: {name}")
        for (name, b), c in zip(run.view.student.named_buffers(), reference.buffers()):
            torch.testing.assert_close(b, c, msg=f"step {step}: {name}")
        saved = run.view.checkpointed["mtard"]
        assert {k: saved[k] for k in state} == pytest.approx(state, rel=1e-6), f"step {step}"
    if variant == "b-mtard":
        assert state["tau_adv"] != 1.0 or state["tau_nat"] != 1.0, "the temperatures moved"


# -- resume, errors --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtard-teachers")
    for name, seed in (("robust", 1), ("clean", 2)):
        train_run(plugin_host(), ["natural"], root / name, "--seed", str(seed))
    return [f"--teacher=robust={root / 'robust'}", f"--teacher=clean={root / 'clean'}"]


def test_a_resumed_run_continues_the_balance_state_exactly(tmp_path, teachers):
    args = [*teachers, "--mtard-variant", "b-mtard", "--milestones", "1", "--attack-steps", "2",
            "--checkpoint-every", "2"]
    host = plugin_host()
    unbroken = train_run(host, ["mtard"], tmp_path / "unbroken", "--epochs", "3", *args)
    train_run(host, ["mtard"], tmp_path / "resumed", "--epochs", "2", *args)
    resumed = train_run(host, ["mtard"], tmp_path / "resumed", "--epochs", "3", *args, resume=True)
    state = resumed.view.checkpointed["mtard"]
    assert state == unbroken.view.checkpointed["mtard"]
    assert (state["tau_adv"], state["tau_nat"]) != (1.0, 1.0) and state["w_adv"] != 0.5
    for a, b in zip(resumed.view.student.parameters(), unbroken.view.student.parameters()):
        assert torch.equal(a, b)
    saved = load_checkpoint(tmp_path / "resumed" / "last.pt")["checkpointed"]["mtard"]
    assert saved == state
    assert [m["mtard_w_adv"] for m in resumed.view.history] == [m["mtard_w_adv"] for m in unbroken.view.history]


def test_both_teacher_roles_are_required(tmp_path):
    host = plugin_host()
    with pytest.raises(RobustDistillError, match="--teacher clean=SPEC"):
        train_run(host, ["mtard"], tmp_path / "a", "--teacher", "robust=x")
    with pytest.raises(RobustDistillError, match="--teacher robust=SPEC"):
        train_run(host, ["mtard"], tmp_path / "b", "--teacher", "clean=x")


@pytest.mark.parametrize("flags, message", [
    (["--mtard-weight-rate", "0"], "--mtard-weight-rate 0 must be in"),
    (["--mtard-weight-rate", "1.5"], "--mtard-weight-rate 1.5 must be in"),
    (["--mtard-temp-rate", "-1"], "--mtard-temp-rate -1 must not be negative"),
    (["--mtard-temp-min", "5", "--mtard-temp-max", "2"], "must satisfy 0 < min ≤ max"),
])
def test_bad_options_are_refused(host, flags, message):
    with pytest.raises(RobustDistillError, match=message):
        step_context(host, ["mtard"], config=train_config(host, *flags))


# -- end to end on real Fashion-MNIST ---------------------------------------------------------------------------

@pytest.mark.slow
@needs_fashion_mnist
def test_mtard_student_is_robust_on_fashion_mnist(tmp_path, fmnist_teacher, fmnist_natural_student):
    """The robust teacher is the session's PGD-AT network, the clean one the naturally trained student. Two epochs
    are short: the codes' element mean over the classes divides the gradient by C, so the run takes the ×10 of the
    CIFAR-100 script (--mtard-scale 10), as the other end-to-end runs take the batchmean-scaled variants."""
    natural, variant = fmnist_natural_student, "mtard"
    out = tmp_path / variant
    clean_teacher = Path(natural["checkpoint"])
    clean_teacher = clean_teacher if clean_teacher.is_dir() else clean_teacher.parent
    assert main(["train", "--plugin", "mtard", "--mtard-variant", variant, "--mtard-scale", "10",
                 "--teacher", f"robust={fmnist_teacher / 'last.pt'}", "--teacher", f"clean={clean_teacher}",
                 "--dataset", "fashion-mnist", "--model", "cnn", "--val-split", "100", "--lr", "0.05", "--seed", "0",
                 "--subset", "2048", "--epochs", "2", "--out", str(out)]) == 0
    assert main(["eval", str(out / "last.pt"), "--attacks", "clean,pgd20", "--subset", "500",
                 "--json", str(out / "eval.json")]) == 0
    result = json.loads((out / "eval.json").read_text())
    print(f"\n{variant}: clean {result['clean']:.3f} pgd20 {result['pgd20']:.3f} "
          f"(natural: {natural['clean']:.3f} / {natural['pgd20']:.3f})")
    assert result["pgd20"] > natural["pgd20"] + 0.15
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(metrics[-1]["terms"]) == {"kl_adv", "kl_clean"}
    assert metrics[-1]["mtard_w_adv"] != 0.5
