"""The example plugin's own tests, through robustdistill's pytest fixtures (rd_host, rd_recorder, rd_train)."""
import pytest
import torch

import rd_logit_pairing
from robustdistill import RobustDistillError
from robustdistill.testing import attack, loss_terms, options, run_step, step_context


def test_pairing_by_hand():
    adv, clean = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    assert rd_logit_pairing.pairing(adv, clean).item() == pytest.approx((1 + 4 + 9) / 2)


def test_is_installed_under_its_entry_point_name(rd_host):
    host = rd_host(rd_logit_pairing)
    assert host.registry.method_plugin["logit-pairing"] == "logit-pairing"
    assert host.resolve_methods(["logit-pairing"]) == ["at", "logit-pairing"], "alone, it adds PGD-AT"


def test_adds_its_weighted_term_to_the_base(rd_host):
    host = rd_host(rd_logit_pairing)
    terms = run_step(host, ["rslad", "logit-pairing"], teacher=rd_logit_pairing_teacher(),
                     config=options(host, logit_pairing_weight=2.0))
    weights = {t.name: t.weight for t in terms}
    assert set(weights) == {"kl_adv", "kl_clean", "logit_pairing"} and weights["logit_pairing"] == 2.0


def test_reads_the_base_methods_adversarial_batch(rd_host):
    host = rd_host(rd_logit_pairing)
    ctx = step_context(host, ["logit-pairing"])
    attack(ctx)
    term = next(t for t in loss_terms(ctx) if t.name == "logit_pairing")
    expected = rd_logit_pairing.pairing(ctx.student(ctx.x_adv), ctx.student(ctx.x))
    assert term.value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_adds_no_term_at_weight_zero(rd_host):
    host = rd_host(rd_logit_pairing)
    assert [t.name for t in run_step(host, ["logit-pairing"], config=options(host, logit_pairing_weight=0.0))] == \
        ["ce_adv"]


def test_its_term_can_be_reweighted_per_sample(rd_host):
    host = rd_host(rd_logit_pairing)
    ctx = step_context(host, ["logit-pairing"])
    attack(ctx)
    term = next(t for t in loss_terms(ctx) if t.name == "logit_pairing")
    assert term.samples().shape == (len(ctx.y),) and term.samples().mean().item() == pytest.approx(term.value.item())


def test_refuses_a_negative_weight(rd_host):
    host = rd_host(rd_logit_pairing)
    with pytest.raises(RobustDistillError, match="must be at least 0"):
        step_context(host, ["logit-pairing"], config=options(host, logit_pairing_weight=-1.0))


def test_trains_a_whole_run_with_every_hook(rd_host, rd_recorder, rd_train):
    host = rd_host(rd_logit_pairing, rd_recorder)
    run = rd_train(host, ["logit-pairing"], "--epochs", "2")
    assert [m["epoch"] for m in run.view.history] == [1, 2]
    assert set(run.view.history[-1]["weighted_terms"]) == {"ce_adv", "logit_pairing"}
    names = rd_recorder.names()
    assert names.index("resolve_options") < names.index("train_start") and names[-1] == "train_end"
    assert names.count("epoch_end") == 2


def rd_logit_pairing_teacher():
    from robustdistill.testing import tiny_model
    return tiny_model(seed=1)
