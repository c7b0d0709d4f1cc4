"""PeerAiD (methods-ad2 §5): one engine step against the spec's formulas written out in plain torch (both losses,
every gradient of both networks, their states after several steps), the losses by hand, each detach / mode /
order detail, the peer's optimiser stepped and scheduled by the engine, exact resume, the per-dataset defaults
and the presets, bad options; and one end-to-end run on real Fashion-MNIST."""
from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustdistill import RobustDistillError, hookimpl
from robustdistill._checkpoint import load_checkpoint
from robustdistill._cli import main
from robustdistill._data import DATASET_INFOS
from robustdistill._loop import new_step, train_step
from robustdistill._presets import preset
from robustdistill.testing import (attack, loss_terms, options, plugin_host, resolved_config, run_step, step_context,
                                   tiny_model, train_config, train_run)

from support import Scaled, needs_fashion_mnist, reference_pgd

LN3 = math.log(3)
WEIGHTS = {"tau": 2.0, "tau_peer": 1.5, "gamma1": 0.7, "gamma2": 0.3, "lambda1": 0.2, "lambda2": 1.3, "lambda3": 0.9}
PEER_TERMS = ("peer_ce", "peer_kl")
PEER = "peeraid_peer"


@pytest.fixture(scope="module")
def host():
    return plugin_host()


def config_of(host, **extra):
    values = {f"peeraid_{k}": v for k, v in WEIGHTS.items()}
    return options(host, **{**values, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "peeraid_peer_lr": 0.03,
                            **extra})


def peer_of(ctx):
    return ctx.run.state["peeraid"]["peer"]


# -- the reference: methods-ad2 §5 written out ----------------------------------------------------------------

def em_kl(target_logits, logits):
    """KL̄(σ(t) ‖ σ(s)) = (1/BC)·Σ p·(log p − log q), the gradient reaching both sides."""
    p = F.softmax(target_logits, dim=1)
    return (p * (p.log() - F.log_softmax(logits, dim=1))).sum() / p.numel()


def reference_step(student, peer, x, y, eps, step, steps, w=WEIGHTS):
    """Steps 1–4 of §5 in plain torch: the adversarial batch, L_peer and L_stu (not yet backpropagated)."""
    peer.eval()
    with torch.no_grad():
        p0 = F.softmax(peer(x), dim=1)
    student.eval()

    def objective(z):
        return (p0 * (p0.log() - F.log_softmax(student(z), dim=1))).sum(dim=1)

    x_adv = reference_pgd(objective, x, eps, step, steps, "normal", clip_start=False)
    student.train()
    peer.train()
    p_adv = peer(x_adv)
    s_first = student(x_adv)
    tp, t = w["tau_peer"], w["tau"]
    l_peer = w["gamma1"] * F.cross_entropy(p_adv, y) + w["gamma2"] * tp ** 2 * em_kl(s_first / tp, p_adv / tp)
    s_adv = student(x_adv)
    s_clean = student(x)
    p_sg = p_adv.detach()
    l_stu = (w["lambda1"] * F.cross_entropy(s_adv, y) + w["lambda2"] * t ** 2 * em_kl(p_sg / t, s_adv / t)
             + w["lambda3"] * t ** 2 * em_kl(s_clean / t, s_adv / t))
    return x_adv, l_peer, l_stu


def batches(n, batch=8, seed=11):
    g = torch.Generator().manual_seed(seed)
    return [((torch.rand(batch, 1, 8, 8, generator=g) * 255).round() / 255, torch.randint(0, 3, (batch,), generator=g))
            for _ in range(n)]


def built(host, **extra):
    """A run of peeraid (its first step's context) and plain copies of the student and the peer at the start."""
    ctx = step_context(host, ["peeraid"], student=tiny_model(seed=0), batch=8, config=config_of(host, **extra))
    return ctx, copy.deepcopy(ctx.student), copy.deepcopy(peer_of(ctx))


def test_one_step_equals_the_formulas_losses_and_every_gradient(host):
    ctx, student, peer = built(host)
    spec = ctx.config
    (x, y), = batches(1)
    step = new_step(ctx._engine, x, y, 1, 0)
    torch.manual_seed(5)
    _, terms = train_step(ctx._engine, step)
    torch.manual_seed(5)
    x_adv, l_peer, l_stu = reference_step(student, peer, x, y, spec.eps, spec.step_size, spec.attack_steps)
    assert torch.equal(step.x_adv, x_adv)
    by_name = {t.name: t.weight * t.value.item() for t in terms}
    assert set(by_name) == {"peer_ce", "peer_kl", "ce_adv", "kl_adv", "kl_self"}
    assert sum(by_name[n] for n in PEER_TERMS) == pytest.approx(l_peer.item(), rel=1e-5, abs=1e-7)
    assert sum(v for n, v in by_name.items() if n not in PEER_TERMS) == pytest.approx(l_stu.item(), rel=1e-5)
    (l_peer + l_stu).backward()
    for net, ref in ((ctx.student, student), (peer_of(ctx), peer)):
        for (name, p), q in zip(net.named_parameters(), ref.parameters()):
            assert p.grad is not None, name
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_several_steps_equal_the_formulas_both_networks_and_the_peer_optimiser(host):
    ctx, student, peer = built(host)
    spec = ctx.config
    opt_s = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    opt_p = torch.optim.SGD(peer.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-3)
    for i, (x, y) in enumerate(batches(3)):
        torch.manual_seed(20 + i)
        train_step(ctx._engine, new_step(ctx._engine, x, y, 1, i))
        torch.manual_seed(20 + i)
        _, l_peer, l_stu = reference_step(student, peer, x, y, spec.eps, spec.step_size, spec.attack_steps)
        opt_s.zero_grad()
        opt_p.zero_grad()
        (l_peer + l_stu).backward()
        opt_s.step()
        opt_p.step()
    for net, ref in ((ctx.student, student), (peer_of(ctx), peer)):
        state, expected = net.state_dict(), ref.state_dict()
        for name in expected:  # weights and BatchNorm statistics
            torch.testing.assert_close(state[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    engine_opt = ctx._engine.plugin_modules[PEER][1]
    for p, q in zip(peer_of(ctx).parameters(), peer.parameters()):
        torch.testing.assert_close(engine_opt.state[p]["momentum_buffer"], opt_p.state[q]["momentum_buffer"],
                                   rtol=1e-4, atol=1e-6)
    assert engine_opt.param_groups[0]["lr"] == 0.03


# -- the losses by hand -----------------------------------------------------------------------------------------

def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def softmax2(a):
    return [math.exp(a) / (1 + math.exp(a)), 1 / (1 + math.exp(a))]


@pytest.mark.parametrize("tau, tau_peer", [(1.0, 1.0), (2.0, 2.0)])
def test_every_term_by_hand(host, tau, tau_peer):
    # S(z) = z, P(z) = 2z; x = [0, 0], x′ = [ln3/2, 0], y = 0:
    # S(x′) = [ln3/2, 0], P(x′) = [ln3, 0] → σ = [3/4, 1/4], S(x) = [0, 0] → [1/2, 1/2]
    w = {**WEIGHTS, "tau": tau, "tau_peer": tau_peer}
    ctx = step_context(host, ["peeraid"], student=Scaled(1.0),
                       config=options(host, **{f"peeraid_{k}": v for k, v in w.items()}))
    ctx.run.state["peeraid"]["peer"] = Scaled(2.0)
    ctx.x, ctx.x_adv, ctx.y = torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3 / 2, 0.0]]), torch.tensor([0])
    terms = {t.name: (t.value.item(), t.weight) for t in loss_terms(ctx)}
    s_adv, p_adv = softmax2(LN3 / 2 / tau), softmax2(LN3 / tau)  # σ(S(x′)/τ), σ(P(x′)/τ)
    s_target, p_peer = softmax2(LN3 / 2 / tau_peer), softmax2(LN3 / tau_peer)
    expected = {
        "peer_ce": (math.log(4 / 3), w["gamma1"]),
        "peer_kl": (kl(s_target, p_peer) / 2, w["gamma2"] * tau_peer ** 2),  # em: / C
        "ce_adv": (-math.log(softmax2(LN3 / 2)[0]), w["lambda1"]),
        "kl_adv": (kl(p_adv, s_adv) / 2, w["lambda2"] * tau ** 2),
        "kl_self": (kl([0.5, 0.5], s_adv) / 2, w["lambda3"] * tau ** 2),
    }
    assert terms.keys() == expected.keys()
    for name, (value, weight) in expected.items():
        assert terms[name][0] == pytest.approx(value, abs=1e-6), name
        assert terms[name][1] == pytest.approx(weight), name


def test_per_sample_values_average_to_each_term(host):
    ctx, _, _ = built(host)
    attack(ctx)
    for term in loss_terms(ctx):
        samples = term.samples()
        assert samples.shape == (8,)
        torch.testing.assert_close(samples.mean(), term.value, msg=term.name)


def test_terms_of_weight_zero_are_left_out(host):
    terms = run_step(host, ["peeraid"], config=options(host, peeraid_lambda1=0.0, peeraid_gamma2=0.0))
    assert [t.name for t in terms] == ["peer_ce", "kl_adv", "kl_self"]


# -- each detach, mode and order detail ------------------------------------------------------------------------

def grads(module):
    return [p.grad for p in module.parameters()]


def test_the_peer_learns_from_its_own_terms_only(host):
    ctx, _, _ = built(host, peeraid_gamma1=0.0, peeraid_gamma2=0.0)
    train_step(ctx._engine, ctx)
    assert all(g is None for g in grads(peer_of(ctx))), "sg(P(x′)) in the student's KL: no gradient to the peer"


def test_the_peer_kl_reaches_the_student_through_its_target(host):
    # only γ₂'s term: the student's whole gradient comes through the target σ(S(x′)/τ_p), which is not detached
    ctx, student, peer = built(host, peeraid_gamma1=0.0, peeraid_lambda1=0.0, peeraid_lambda2=0.0,
                               peeraid_lambda3=0.0)
    torch.manual_seed(3)
    _, terms = train_step(ctx._engine, ctx)
    assert [t.name for t in terms] == ["peer_kl"]
    assert all(g is not None and g.abs().sum() > 0 for g in grads(ctx.student)[:-1])
    w = {**WEIGHTS, "gamma1": 0.0, "lambda1": 0.0, "lambda2": 0.0, "lambda3": 0.0}
    torch.manual_seed(3)
    _, l_peer, l_stu = reference_step(student, peer, ctx.x, ctx.y, ctx.config.eps, ctx.config.step_size,
                                      ctx.config.attack_steps, w)
    (l_peer + l_stu).backward()
    for p, q in zip(ctx.student.parameters(), student.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7)


def test_the_clean_target_of_kl_self_is_not_detached(host):
    ctx, _, _ = built(host, peeraid_gamma1=0.0, peeraid_gamma2=0.0, peeraid_lambda1=0.0, peeraid_lambda2=0.0)
    attack(ctx)
    (term,) = loss_terms(ctx)
    assert term.name == "kl_self"
    (g_clean,) = torch.autograd.grad(term.value, ctx.student_out("clean"), retain_graph=True)
    assert g_clean.abs().sum() > 0


class Forwards:
    """Records each forward of a module: the input tensor and whether the module was in train mode."""

    def __init__(self, module):
        self.calls = []
        module.register_forward_hook(lambda m, args, out: self.calls.append((args[0], m.training)))


def test_forwards_modes_and_order(host):
    ctx, _, _ = built(host)
    peer = peer_of(ctx)
    peer_buffers = {k: v.clone() for k, v in peer.state_dict().items()}
    student_buffers = {k: v.clone() for k, v in ctx.student.state_dict().items()}
    student_calls, peer_calls = Forwards(ctx.student), Forwards(peer)
    attack(ctx)
    # the attack: P(x) once in eval mode, then only eval-mode student forwards; no BatchNorm statistics move
    assert len(peer_calls.calls) == 1 and peer_calls.calls[0][0] is ctx.x and not peer_calls.calls[0][1]
    assert len(student_calls.calls) == ctx.config.attack_steps and not any(t for _, t in student_calls.calls)
    for state, before in ((peer.state_dict(), peer_buffers), (ctx.student.state_dict(), student_buffers)):
        assert all(torch.equal(state[k], v) for k, v in before.items())
    student_calls.calls.clear()
    loss_terms(ctx)
    # the loss: S(x′) for the peer's target, S(x′) again, then S(x), all in train mode; P(x′) in train mode
    assert [(x is ctx.x_adv, x is ctx.x, t) for x, t in student_calls.calls] == \
           [(True, False, True), (True, False, True), (False, True, True)]
    assert peer_calls.calls[1][0] is ctx.x_adv and peer_calls.calls[1][1]


def test_the_attack_starts_unclipped_unless_clip_start_says_so(host):
    for flag, clipped in ((None, False), ("on", True)):
        extra = {"clip_start": flag} if flag else {}
        ctx = step_context(host, ["peeraid"], batch=8, config=config_of(host, **extra))
        ctx.x = torch.zeros_like(ctx.x)
        starts = []
        ctx.run.observe_attack(lambda c, it, seen=starts: seen.append(it.x_adv) if it.index == 0 else None)
        attack(ctx)
        assert bool((starts[0] < 0).any()) is not clipped


def test_the_attack_maximises_kl_to_the_peer_clean_prediction(host):
    ctx, student, peer = built(host)
    torch.manual_seed(9)
    x_adv = attack(ctx)
    torch.manual_seed(9)
    expected, _, _ = reference_step(student, peer, ctx.x, ctx.y, ctx.config.eps, ctx.config.step_size,
                                    ctx.config.attack_steps)
    assert torch.equal(x_adv, expected)


# -- the peer's optimiser, schedule, checkpoint and resume ------------------------------------------------------

class PeerLr:
    """Records the peer optimiser's learning rate at the start of every epoch."""

    def __init__(self):
        self.lrs = []

    @hookimpl
    def epoch_start(self, run):
        self.lrs.append(run._engine.plugin_modules[PEER][1].param_groups[0]["lr"])


def test_the_engine_schedules_the_peer_like_the_student(tmp_path):
    recorder = PeerLr()
    host = plugin_host(recorder, names=["peer-lr"])
    run = train_run(host, ["peeraid"], tmp_path / "run", "--epochs", "3", "--lr-schedule", "multistep",
                    "--milestones", "1,2", "--peeraid-peer-lr", "0.02")
    assert recorder.lrs == pytest.approx([0.02, 0.002, 0.0002])
    assert [m["lr"] for m in run.view.history] == pytest.approx([0.1, 0.01, 0.001])
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    saved = ckpt["plugin_modules"][PEER]
    assert saved["optimizer"]["state"]
    assert saved["module"].keys() == run.view.state["peeraid"]["peer"].state_dict().keys()
    assert ckpt["final"] == "average", "SWA from the first decay, as the PeerAiD code"


def test_a_stepped_module_needs_its_own_optimiser(host):
    ctx = step_context(host, ["peeraid"])
    with pytest.raises(RobustDistillError, match="stepped=True.*optimizer="):
        ctx.run.add_module("x", nn.Linear(2, 2), stepped=True)


class Killer:
    """Stops a run after the given step, as a kill would (the last checkpoint stays)."""

    def __init__(self, step):
        self.step = step

    @hookimpl
    def step_end(self, ctx):
        if ctx.step == self.step:
            raise KeyboardInterrupt


def test_a_run_killed_mid_epoch_resumes_exactly(tmp_path):
    args = ["--epochs", "3", "--lr-schedule", "multistep", "--milestones", "1,2", "--checkpoint-every", "2",
            "--average", "swa", "--average-start", "2"]
    host = plugin_host()
    unbroken = train_run(host, ["peeraid"], tmp_path / "unbroken", *args)
    with pytest.raises(KeyboardInterrupt):  # 4 steps per epoch: killed in epoch 2 after its checkpoint at batch 2
        train_run(plugin_host(Killer(6), names=["killer"]), ["peeraid"], tmp_path / "resumed", *args)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["progress"]["batch"] == 2
    resumed = train_run(host, ["peeraid"], tmp_path / "resumed", *args, resume=True)
    for a, b in ((resumed.student, unbroken.student),
                 (resumed.view.state["peeraid"]["peer"], unbroken.view.state["peeraid"]["peer"]),
                 (resumed.view.state["average"]["model"], unbroken.view.state["average"]["model"])):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name
    opt_a, opt_b = (r.plugin_modules[PEER][1] for r in (resumed, unbroken))
    assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"] == pytest.approx(0.001)
    for x, y in zip(opt_a.state.values(), opt_b.state.values()):
        assert torch.equal(x["momentum_buffer"], y["momentum_buffer"])
    assert [m["loss"] for m in resumed.view.history] == [m["loss"] for m in unbroken.view.history]
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["final"] == "average"


def test_eval_of_the_run_directory_evaluates_the_swa_student(tmp_path, capsys):
    out = tmp_path / "run"
    train_run(plugin_host(), ["peeraid"], out, "--epochs", "2", "--average", "swa", "--average-start", "2")
    assert main(["eval", str(out), "--attacks", "clean", "--subset", "32", "--device", "cpu",
                 "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["weights"] == "average"


# -- defaults, presets, errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, row", [
    ("cifar10", (5.0, 1.0, 1.0, 0.1, 0.0, 1.0, 1.0)),
    ("cifar100", (5.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0)),
    ("fashion-mnist", (5.0, 1.0, 1.0, 0.1, 0.0, 1.0, 1.0)),  # borrowed: the 10-class commands
    ("tiny", (1.0, 1.0, 1.0, 100.0, 0.035, 35.0, 20.0)),  # an image folder of 200 classes
    ("three", (6.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)),  # no command: the argparse defaults
])
def test_defaults_are_the_official_commands_per_dataset(host, dataset, row):
    if dataset == "tiny":
        info = replace(DATASET_INFOS["cifar10"], name="imagefolder", num_classes=200, image_size=64)
    elif dataset == "three":
        info = replace(DATASET_INFOS["cifar10"], name="three", num_classes=3)
    else:
        info = DATASET_INFOS[dataset]
    config = resolved_config(host, ["peeraid"], info, train_config(host, "--lr", "0.07", "--weight-decay", "3e-4"))
    opts = config.peeraid
    assert tuple(opts[k] for k in WEIGHTS) == row
    assert (opts.peer_model, opts.peer_lr, opts.peer_weight_decay) == (config.model, 0.07, 3e-4)
    assert config.attack == "peer-kl" and config.plugin == ("peeraid",)


def test_the_cifar10_preset_is_the_official_protocol_with_swa_from_the_first_decay(host):
    train = preset("peeraid-cifar10").train
    args = [a for k, v in train.items() for a in (f"--{k}", *(v if isinstance(v, list) else [str(v)]))
            if k != "plugin"] + ["--plugin", "peeraid"]
    config = resolved_config(host, ["peeraid"], DATASET_INFOS["cifar10"], train_config(host, *args))
    assert (config.epochs, config.milestones, config.lr, config.weight_decay, config.batch_size) == \
           (300, (214, 259, 284), 0.1, 2e-4, 128)
    assert config.average.mode == "swa" and config.average.start == 215.0
    assert (config.peeraid.tau, config.peeraid.gamma2, config.peeraid.lambda1) == (5.0, 0.1, 0.0)


def test_swa_of_the_student_is_on_by_default_from_the_first_decay_and_can_be_turned_off(host):
    # every shipped PeerAiD command averages the student; the average plugin's default start is the first epoch
    # after the first milestone (215 of 300 with milestones 214, 259, 284)
    args = ["--plugin", "peeraid", "--epochs", "300", "--milestones", "214,259,284"]
    config = resolved_config(host, ["peeraid"], DATASET_INFOS["cifar10"], train_config(host, *args))
    assert config.average.mode == "swa" and config.average.start == 215.0
    off = resolved_config(host, ["peeraid"], DATASET_INFOS["cifar10"], train_config(host, *args, "--average", "off"))
    assert off.average.mode == "off"


@pytest.mark.parametrize("flag, value, message", [
    ("peeraid_tau", 0.0, "--peeraid-tau 0.0 must be positive"),
    ("peeraid_tau_peer", -1.0, "--peeraid-tau-peer -1.0 must be positive"),
    ("peeraid_gamma2", -0.1, "--peeraid-gamma2 -0.1 must be 0"),
    ("peeraid_lambda3", -1.0, "--peeraid-lambda3 -1.0 must be 0"),
    ("peeraid_peer_lr", 0.0, "--peeraid-peer-lr 0.0 must be positive"),
    ("peeraid_peer_model", "nonet", "unknown model 'nonet'"),
])
def test_bad_options_are_refused_before_training(host, flag, value, message):
    with pytest.raises(RobustDistillError, match=message):
        step_context(host, ["peeraid"], config=options(host, **{flag: value}))


def test_the_peer_attack_needs_the_peeraid_method(host):
    ctx = step_context(host, ["at"], config=options(host, attack="peer-kl"))
    with pytest.raises(RobustDistillError, match="select --plugin peeraid"):
        attack(ctx)


def test_no_teacher_is_needed_and_none_is_loaded(host):
    ctx = step_context(host, ["peeraid"])
    assert ctx.run.default_teacher is None and dict(ctx.teachers) == {}


# -- end to end ----------------------------------------------------------------------------------------------------

# The official code's argparse defaults (τ 6, γ₂ 1, λ₁ 1; the rest are 1 in every row): two epochs are short for
# the CIFAR commands' λ₁ = 0, where the student learns only from a peer that itself starts from scratch (after 2
# epochs on this subset: 27.8% clean, 1.8% PGD-20).
ARGPARSE_ROW = ["--peeraid-tau", "6", "--peeraid-gamma2", "1", "--peeraid-lambda1", "1"]


@pytest.mark.slow
@needs_fashion_mnist
def test_peeraid_student_beats_natural_training_under_pgd20(tmp_path, fmnist_natural_student):
    out = tmp_path / "peeraid"
    assert main(["train", "--plugin", "peeraid", *ARGPARSE_ROW, "--dataset", "fashion-mnist", "--model", "cnn",
                 "--val-split", "100", "--lr", "0.05", "--seed", "0", "--subset", "2048", "--epochs", "2",
                 "--average", "swa", "--out", str(out)]) == 0
    assert main(["eval", str(out), "--attacks", "clean,pgd20", "--subset", "500", "--json", str(out / "e.json")]) == 0
    result, natural = json.loads((out / "e.json").read_text()), fmnist_natural_student
    print(f"\npeeraid (SWA student): clean {result['clean']:.3f} pgd20 {result['pgd20']:.3f} "
          f"(natural: {natural['clean']:.3f} / {natural['pgd20']:.3f})")
    assert result["weights"] == "average"
    assert result["pgd20"] > natural["pgd20"] + 0.15
