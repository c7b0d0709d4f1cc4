"""Fair-ARD: the class weights by hand, engine steps against a reference written from the formulas (weights applied
before the reduction, κ counted at the attack's own iterates, the state after several steps and an epoch), the
epoch timing, exact resume, bad input, and one run on real Fashion-MNIST with per-class evaluation."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F

from robustdistill import RobustDistillError, hookimpl
from robustdistill._checkpoint import load_checkpoint
from robustdistill._cli import main
from robustdistill._loop import new_step, train_step
from robustdistill.api import LossTerm, Method
from robustdistill.plugins import fairard
from robustdistill.plugins.fairard import class_difficulty, class_weights
from robustdistill.testing import (attack, loss_terms, options, plugin_host, resolution, step_context, tiny_model,
                                   train_config, train_run)
from robustdistill._data import DATASET_INFOS

from support import needs_fashion_mnist

NAME = "fairard"


@pytest.fixture(scope="module")
def host():
    return plugin_host()


# -- the weights by hand ------------------------------------------------------------------------------------------

def test_difficulty_is_the_surviving_iterates_per_class_over_n_over_c():
    # 12 training images of 3 classes: N/C = 4
    assert torch.equal(class_difficulty(torch.tensor([8, 20, 0]), 12), torch.tensor([2.0, 5.0, 0.0],
                                                                                     dtype=torch.float64))


def test_weights_by_hand_clipped_below_and_not_renormalised():
    # κ̄ = (1, 2, 4), β = 2, no offset: w̃ = (1, 1/4, 1/16), Σ = 21/16, C·w̃/Σ = (48/21, 12/21, 3/21)
    w = class_weights(torch.tensor([1.0, 2.0, 4.0]), beta=2.0, offset=0.0, low=5 / 6, high=5 / 2)
    torch.testing.assert_close(w, torch.tensor([48 / 21, 5 / 6, 5 / 6], dtype=torch.float64))
    assert abs(float(w.sum()) - 3) > 0.9, "the clipped weights are not renormalised to sum to C"


def test_weights_by_hand_clipped_above_and_the_offset():
    # κ̄ = (1/2, 4, 4): w̃ = (4, 1/16, 1/16), Σ = 33/8, C·w̃/Σ = (32/11, 1/22, 1/22) → (5/2, 5/6, 5/6)
    w = class_weights(torch.tensor([0.5, 4.0, 4.0]), beta=2.0, offset=0.0, low=5 / 6, high=5 / 2)
    torch.testing.assert_close(w, torch.tensor([5 / 2, 5 / 6, 5 / 6], dtype=torch.float64))
    # other bounds give other weights: the bounds are the options'
    w = class_weights(torch.tensor([0.5, 4.0, 4.0]), beta=2.0, offset=0.0, low=0.0, high=10.0)
    torch.testing.assert_close(w, torch.tensor([32 / 11, 1 / 22, 1 / 22], dtype=torch.float64))
    # a class that never survived: (0 + 1e-5)^−2 = 1e10 dominates; β = 1 and the offset 1 by hand
    w = class_weights(torch.tensor([0.0, 1.0, 1.0]), beta=2.0, offset=1e-5, low=5 / 6, high=5 / 2)
    torch.testing.assert_close(w, torch.tensor([5 / 2, 5 / 6, 5 / 6], dtype=torch.float64))
    # (κ̄ + 1)^−1 = (1/2, 1/3, 1/5), Σ = 31/30: C·w̃/Σ = (45/31, 30/31, 18/31)
    w = class_weights(torch.tensor([1.0, 2.0, 4.0]), beta=1.0, offset=1.0, low=0.0, high=10.0)
    torch.testing.assert_close(w, torch.tensor([45 / 31, 30 / 31, 18 / 31], dtype=torch.float64))
    # β = 0: every class weighs 1
    assert torch.equal(class_weights(torch.tensor([0.5, 3.0, 9.0]), 0.0, 1e-5, 5 / 6, 5 / 2),
                       torch.ones(3, dtype=torch.float64))


# -- a reference written from the formulas --------------------------------------------------------------------

def reference_attack(student, objective, x, y, eps, step, steps, init, train):
    """PGD from an unclipped start, counting κ_i = Σ_{k<K} 1[argmax S(x′_k) = y_i] in the objective's own forward
    (the start counts, the final iterate does not)."""
    noise = torch.empty_like(x).uniform_(-eps, eps) if init == "uniform" else 0.001 * torch.randn_like(x)
    x_adv = x + noise
    kappa = torch.zeros_like(y)
    student.train(train)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        logits = student(x_adv)
        kappa += logits.argmax(1) == y
        (grad,) = torch.autograd.grad(objective(logits).sum(), x_adv)
        x_adv = (x + (x_adv.detach() + step * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    student.train()
    return x_adv.detach(), kappa


def reference_ard_step(student, teacher, x, y, weights, config):
    """Fair-ARD's loss: α·τ²·mean_i(w_{y_i}·(1/C)·Σ_c KL_c(σ(T(x)/τ) ‖ σ(S(x′)/τ))), CE-PGD in train mode."""
    tau = config.ard.tau
    x_adv, kappa = reference_attack(student, lambda s: F.cross_entropy(s, y, reduction="none"), x, y, config.eps,
                                    config.step_size, config.attack_steps, "uniform", train=True)
    adv = student(x_adv)
    student(x)  # the clean forward ARD runs for BatchNorm's statistics
    with torch.no_grad():
        target = F.softmax(teacher(x) / tau, dim=1)
    kl = F.kl_div(F.log_softmax(adv / tau, dim=1), target, reduction="none")
    per_sample = kl.sum(1) / kl.shape[1]
    return config.ard.alpha * tau ** 2 * (weights[y] * per_sample).mean(), kappa, x_adv


def reference_rslad_step(student, teacher, x, y, weights, config):
    """Fair-RSLAD's loss: 5/6·em[w·kl(S(x′), T(x))] + 1/6·em[w·kl(S(x), T(x))], KL-PGD in eval mode from
    x + 0.001·N."""
    with torch.no_grad():
        soft = F.softmax(teacher(x), dim=1)

    def objective(logits):
        return F.kl_div(F.log_softmax(logits, dim=1), soft, reduction="none").sum(1)

    x_adv, kappa = reference_attack(student, objective, x, y, config.eps, config.step_size, config.attack_steps,
                                    "normal", train=False)

    def kl(logits):
        return (soft * (torch.log(soft + 1e-5) - F.log_softmax(logits, dim=1))).sum(1) / soft.shape[1]

    w = weights[y]
    loss = 5 / 6 * (w * kl(student(x_adv))).mean() + 1 / 6 * (w * kl(student(x))).mean()
    return loss, kappa, x_adv


def gradients(model):
    return [p.grad.clone() for p in model.parameters()]


WEIGHTS = torch.tensor([2.5, 0.9, 1.3])
CASES = {"ard": reference_ard_step, "rslad": reference_rslad_step}


@pytest.mark.parametrize("base", list(CASES))
def test_one_step_is_the_reference_with_weights_before_the_reduction(host, base):
    config = options(host, clip_start="off", attack_steps=4)
    ctx = step_context(host, [base, NAME], batch=8, config=config, seed=3)
    ctx.run.checkpointed[NAME]["weights"] = WEIGHTS.clone()
    student, teacher = copy.deepcopy(ctx.student), copy.deepcopy(ctx.teacher)
    torch.manual_seed(11)
    attack(ctx)
    terms = loss_terms(ctx)
    loss = sum(t.weight * t.value for t in terms)
    ctx.student.zero_grad()
    loss.backward()

    torch.manual_seed(11)
    expected, kappa, x_adv = CASES[base](student, teacher, ctx.x, ctx.y, WEIGHTS, ctx.config)
    expected.backward()
    torch.testing.assert_close(ctx.x_adv, x_adv)
    assert torch.equal(ctx.state[NAME], kappa), "κ counted at the attack's own iterates"
    assert kappa.max() <= 4 and len(set(kappa.tolist())) > 1
    torch.testing.assert_close(loss, expected)
    for got, want in zip(gradients(ctx.student), gradients(student)):
        torch.testing.assert_close(got, want)


def test_several_steps_an_epoch_end_and_the_next_epochs_weights_are_the_reference(host):
    """Three engine steps (optimiser included) of epoch 1 count κ per class; epoch_end turns the counts into the
    weights of epoch 2 (epoch 1 trained with w ≡ 1); the first step of epoch 2 uses them."""
    steps = 3
    config = options(host, clip_start="off", attack_steps=3, lr=0.05)
    ctx = step_context(host, ["ard", NAME], batch=8, config=config, seed=5, steps_per_epoch=steps, epochs=2)
    run = ctx._engine
    student, teacher = copy.deepcopy(ctx.student), copy.deepcopy(ctx.teacher)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=ctx.config.momentum,
                                weight_decay=ctx.config.weight_decay)
    batches = [(torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(b)),
                torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(100 + b))) for b in range(steps + 1)]
    survived = torch.zeros(3, dtype=torch.long)

    def reference_step(x, y, weights):
        expected, kappa, _ = reference_ard_step(student, teacher, x, y, weights, ctx.config)
        optimizer.zero_grad()
        expected.backward()
        optimizer.step()
        return expected, kappa

    for b, (x, y) in enumerate(batches[:steps]):
        torch.manual_seed(b)
        loss, _ = train_step(run, new_step(run, x, y, 1, b))
        torch.manual_seed(b)
        expected, kappa = reference_step(x, y, torch.ones(3))
        survived += torch.zeros(3, dtype=torch.long).index_add_(0, y, kappa)
        torch.testing.assert_close(loss, expected.detach())
        assert torch.equal(run.view.checkpointed[NAME]["survived"], survived)
        assert torch.equal(run.view.checkpointed[NAME]["weights"], torch.ones(3)), "weights change at epoch ends only"
    for got, want in zip(ctx.student.parameters(), student.parameters()):
        torch.testing.assert_close(got, want)

    metrics = {}
    fairard.epoch_end(run=run.view, metrics=metrics)
    n = len(run.view.data.train_y)
    assert n == 8 * steps
    weights = class_weights(survived.double() / (n / 3), 2.0, 1e-5, 5 / 6, 5 / 2).float()
    state = run.view.checkpointed[NAME]
    torch.testing.assert_close(state["weights"], weights)
    assert not torch.equal(weights, torch.ones(3))
    assert torch.equal(state["survived"], torch.zeros(3, dtype=torch.long)), "the counts start over each epoch"
    assert metrics["fairard_weights"] == pytest.approx(weights.tolist())
    assert metrics["fairard_kappa"] == pytest.approx((survived / (n / 3)).tolist())

    x, y = batches[steps]
    torch.manual_seed(9)
    loss, _ = train_step(run, new_step(run, x, y, 2, steps))
    torch.manual_seed(9)
    expected, _ = reference_step(x, y, weights)
    torch.testing.assert_close(loss, expected.detach())
    for got, want in zip(ctx.student.parameters(), student.parameters()):
        torch.testing.assert_close(got, want)


def test_the_first_epoch_weighs_every_sample_one(host):
    ctx = step_context(host, ["ard", NAME], batch=6)
    attack(ctx)
    (term,) = loss_terms(ctx)
    kl = F.kl_div(F.log_softmax(ctx.student_out("adv") / 30, 1),
                  F.softmax(ctx.teacher_out("clean", ctx.x).logits / 30, 1), reduction="none")
    torch.testing.assert_close(term.samples(), kl.sum(1) / kl.shape[1])


def test_every_iterate_from_the_start_counts_and_the_final_point_does_not(host):
    seen = []

    class Watch:
        @hookimpl
        def train_start(self, run):
            run.observe_attack(lambda ctx, it: seen.append(it))

    for steps in (1, 3):
        seen.clear()
        host = plugin_host(Watch(), names=["watch"])
        ctx = step_context(host, ["ard", NAME], batch=8, config=options(host, attack_steps=steps), seed=2)
        attack(ctx)
        assert [it.index for it in seen] == list(range(steps))
        expected = sum((it.logits.argmax(1) == ctx.y).long() for it in seen)
        assert torch.equal(ctx.state[NAME], expected)


# -- registration, defaults, composition --------------------------------------------------------------------------

def test_alone_it_is_fair_ard_and_the_offset_follows_the_base(host):
    info = DATASET_INFOS["synthetic"]
    alone = resolution(host, [NAME], info)
    assert alone.config.plugin == ("ard", NAME) and alone.base_method == "ard"
    assert (alone.config.ard.tau, alone.config.ard.kl_reduction, alone.config.ard.attack_bn) == (30.0, "mean", "train")
    assert alone.config.fairard.offset == 1e-5 and alone.config.fairard.beta == 2.0
    assert (alone.config.fairard.min_weight, alone.config.fairard.max_weight) == (5 / 6, 5 / 2)
    rslad = resolution(host, ["rslad", NAME], info)
    assert rslad.config.fairard.offset == 0.0
    assert "Fair-RSLAD" in rslad.sources["fairard.offset"]["source"]
    given = resolution(host, ["rslad", NAME], info, options(host, fairard_offset=1e-5))
    assert given.config.fairard.offset == 1e-5
    with_igdm = resolution(host, ["ard", "igdm", NAME], info)
    assert with_igdm.config.ard.tau == 1.0, "fairard leaves IGDM's ARD base as IGDM declares it"


def test_the_terms_of_every_plugin_of_the_step_are_reweighted(host):
    config = options(host, igdm_alpha=1.0)
    samples = {}
    for methods in (["at", "igdm"], ["at", "igdm", NAME]):
        ctx = step_context(host, methods, batch=4, config=config)
        if NAME in methods:
            ctx.run.checkpointed[NAME]["weights"] = WEIGHTS.clone()
        torch.manual_seed(4)
        attack(ctx)
        samples[len(methods)] = {t.name: (t.value, t.samples()) for t in loss_terms(ctx)}
    plain, weighted = samples[2], samples[3]
    assert set(weighted) == {"ce_adv", "igdm"}
    for name, (value, per_sample) in weighted.items():
        torch.testing.assert_close(per_sample, WEIGHTS[ctx.y] * plain[name][1])
        torch.testing.assert_close(value, (WEIGHTS[ctx.y] * plain[name][1]).mean())


@pytest.mark.parametrize("base", ["at", "trades", "ard", "rslad", "adaad", "iad", "iad2", "mtard"])
def test_it_composes_with_every_base_whose_terms_give_per_sample_values(host, base):
    if base not in host.registry.methods:
        pytest.skip(f"no {base} plugin")
    config = options(host, attack_steps=2, **({"iad_begin": 0} if base.startswith("iad") else {}))  # + introspection
    samples = {}
    for methods in ([base], [base, NAME]):
        teacher = tiny_model(seed=7) if base == "iad2" else None  # IAD-II's AT teacher besides its natural one
        ctx = step_context(host, methods, batch=6, config=config, epoch=2, epochs=2, teacher=teacher)
        if NAME in methods:
            ctx.run.checkpointed[NAME]["weights"] = WEIGHTS.clone()
        torch.manual_seed(4)
        attack(ctx)
        samples[len(methods)] = {t.name: t.samples() for t in loss_terms(ctx)}
    assert ctx.state[NAME].shape == (6,) and int(ctx.state[NAME].max()) <= 2, "κ from the base's attack"
    assert samples[1].keys() == samples[2].keys()
    for name, plain in samples[1].items():
        torch.testing.assert_close(samples[2][name], WEIGHTS[ctx.y] * plain, msg=name)


def test_nesterov_is_an_optimiser_option(host):
    ctx = step_context(host, ["ard", NAME], config=options(host, nesterov=True))
    assert ctx._engine.optimizer.param_groups[0]["nesterov"] is True
    assert step_context(host, ["ard", NAME])._engine.optimizer.param_groups[0]["nesterov"] is False
    with pytest.raises(RobustDistillError, match="--nesterov needs a positive --momentum"):
        step_context(host, ["ard", NAME], config=options(host, nesterov=True, momentum=0.0))


def test_a_checkpoint_written_before_nesterov_existed_resumes_as_plain_momentum(tmp_path):
    out = tmp_path / "run"
    train_run(plugin_host(), ["natural"], out)
    saved = load_checkpoint(out / "last.pt")
    for key in ("config", "requested"):
        saved[key].pop("nesterov", None)
    torch.save(saved, out / "last.pt")
    resumed = train_run(plugin_host(), ["natural"], out, "--epochs", "2", resume=True)
    assert resumed.view.epoch == 2 and resumed.optimizer.param_groups[0]["nesterov"] is False


# -- resume --------------------------------------------------------------------------------------------------

class Killer:
    """Stops the run after the optimiser step ``at`` (the checkpoint of the step before survives)."""

    def __init__(self, at):
        self.at = at

    @hookimpl
    def step_end(self, ctx):
        if ctx.step == self.at:
            raise KeyboardInterrupt


def state_of(run):
    return run.view.checkpointed[NAME], [p.detach().clone() for p in run.view.student.parameters()]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("fairard-teacher") / "natural"
    train_run(plugin_host(), ["natural"], out, "--seed", "1")
    return f"--teacher={out}"


@pytest.mark.parametrize("kill_at", [None, 5], ids=["at-an-epoch-end", "mid-epoch"])
def test_a_resumed_run_goes_on_with_the_same_counts_and_weights(tmp_path, teacher, kill_at):
    args = ["--epochs", "2", "--checkpoint-every", "1", teacher, "--fairard-offset", "1e-5"]
    unbroken = train_run(plugin_host(), ["rslad", NAME], tmp_path / "unbroken", *args)
    out = tmp_path / "resumed"
    if kill_at is None:
        train_run(plugin_host(), ["rslad", NAME], out, *args[2:], "--epochs", "1")
    else:  # 4 steps per epoch: killed in epoch 2, after its first step was checkpointed
        with pytest.raises(KeyboardInterrupt):
            train_run(plugin_host(Killer(kill_at), names=["killer"]), ["rslad", NAME], out, *args)
        saved = load_checkpoint(out / "last.pt")
        assert saved["epoch"] == 1 and saved["checkpointed"][NAME]["survived"].sum() > 0, "a mid-epoch checkpoint"
    resumed = train_run(plugin_host(), ["rslad", NAME], out, *args, resume=True)
    (a, a_params), (b, b_params) = state_of(unbroken), state_of(resumed)
    assert torch.equal(a["weights"], b["weights"]) and torch.equal(a["survived"], b["survived"])
    assert not torch.equal(a["weights"], torch.ones_like(a["weights"]))
    for p, q in zip(a_params, b_params):
        assert torch.equal(p, q)
    assert [m["fairard_weights"] for m in unbroken.view.history] == [m["fairard_weights"] for m in resumed.view.history]


# -- bad input --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--fairard-beta=-1"], "--fairard-beta -1 must be 0 or more"),
    (["--fairard-min-weight", "3"], "--fairard-min-weight 3 is above --fairard-max-weight 2.5"),
    (["--fairard-max-weight=-1"], "--fairard-max-weight -1 must be 0 or more"),
    (["--fairard-offset=-1e-5"], "--fairard-offset -1e-05 must be 0 or more"),
    (["--fairard-beta", "nan"], "'nan' is not a finite number"),
])
def test_bad_option_values_are_one_clear_error(host, flags, message):
    with pytest.raises(RobustDistillError, match=message):
        step_context(host, ["ard", NAME], config=train_config(host, *flags))


def test_beside_a_method_without_an_attack_it_gets_its_default_base(host):
    assert resolution(host, ["natural", NAME], DATASET_INFOS["synthetic"]).base_method == "ard"


def test_without_the_base_teacher_the_run_is_refused(tmp_path, capsys):
    assert main(["train", "--plugin", NAME, "--dataset", "synthetic", "--device", "cpu",
                 "--out", str(tmp_path / "r")]) == 2
    assert "--teacher" in capsys.readouterr().err
    assert not (tmp_path / "r" / "last.pt").exists()


def test_a_class_that_never_survives_without_an_offset_stops_the_epoch(host):
    ctx = step_context(host, ["rslad", NAME], config=options(host, fairard_offset=0.0))
    ctx.run.checkpointed[NAME]["survived"] = torch.tensor([5, 0, 3])
    with pytest.raises(RobustDistillError, match=r"class\(es\) \[1\] survived no attack iterate.*--fairard-offset 1e-5"):
        fairard.epoch_end(run=ctx.run, metrics={})


class NoSamples:
    """A base whose term has no per-sample values."""

    @hookimpl
    def register_methods(self, register):
        register(Method(name="plain", summary="no per-sample values", attack="ce"))

    @hookimpl
    def attack(self, ctx):
        return ctx.perturb(ctx.attack_objective(), init="uniform", bn="eval")

    @hookimpl
    def loss(self, ctx):
        return LossTerm("plain", F.cross_entropy(ctx.student(ctx.x_adv), ctx.y))


class Unobserved:
    """A base that attacks outside ``ctx.perturb``."""

    @hookimpl
    def register_methods(self, register):
        register(Method(name="hidden", summary="attacks by itself", attack="ce"))

    @hookimpl
    def attack(self, ctx):
        return (ctx.x + 0.01).clamp(0, 1)

    @hookimpl
    def loss(self, ctx):
        out = ctx.student(ctx.x_adv)
        return LossTerm("hidden", F.cross_entropy(out, ctx.y),
                        per_sample=lambda: F.cross_entropy(out, ctx.y, reduction="none"))


def test_a_term_without_per_sample_values_is_named():
    host = plugin_host(NoSamples(), names=["plain"])
    ctx = step_context(host, ["plain", NAME])
    attack(ctx)
    with pytest.raises(RobustDistillError, match="'plain' carries no per-sample values"):
        loss_terms(ctx)


def test_an_attack_fairard_cannot_observe_is_refused_at_its_first_step(tmp_path):
    host = plugin_host(Unobserved(), names=["hidden"])
    with pytest.raises(RobustDistillError, match="attack of 'hidden' was not observed"):
        train_run(host, ["hidden", NAME], tmp_path / "run")


# -- end to end on real Fashion-MNIST -----------------------------------------------------------------------------

@pytest.mark.slow
@needs_fashion_mnist
def test_fair_ard_on_fashion_mnist_is_robust_and_reports_per_class_accuracy(tmp_path, fmnist_teacher,
                                                                          fmnist_natural_student):
    out = tmp_path / "fairard"
    # two epochs are short: ARD's batchmean variant (the IGDM code's base), as the other end-to-end runs use
    assert main(["train", "--plugin", "ard", "--plugin", NAME, "--ard-tau", "1", "--ard-kl-reduction", "batchmean",
                 "--ard-attack-bn", "eval", "--teacher", str(fmnist_teacher / "last.pt"), "--dataset", "fashion-mnist",
                 "--model", "cnn", "--val-split", "100", "--lr", "0.05", "--seed", "0", "--subset", "2048",
                 "--epochs", "2", "--out", str(out)]) == 0
    assert main(["eval", str(out / "last.pt"), "--attacks", "clean,pgd20", "--subset", "500", "--json",
                 str(out / "eval.json")]) == 0
    result = json.loads((out / "eval.json").read_text())
    natural = fmnist_natural_student
    print(f"\nard+fairard: clean {result['clean']:.3f} pgd20 {result['pgd20']:.3f} worst-class pgd20 "
          f"{result['worst_class']['pgd20']:.3f} (natural: {natural['clean']:.3f} / {natural['pgd20']:.3f})")
    assert result["pgd20"] > natural["pgd20"] + 0.15
    for attack_name in ("clean", "pgd20"):
        per_class = result["per_class"][attack_name]
        assert len(per_class) == 10 and all(0 <= a <= 1 for a in per_class)
        assert result["worst_class"][attack_name] == min(per_class) <= result[attack_name]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history[0]["fairard_weights"]) == 10 and history[0]["fairard_weights"] != [1.0] * 10
    config = json.loads((out / "config.json").read_text())
    assert config["plugin"] == ["ard", NAME] and config["plugins"][NAME]["offset"] == 1e-5
