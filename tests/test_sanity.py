"""Tests of ``eval --sanity`` (robustdistill._eval.sanity) and of the attacks' best-iterate return: masked and
broken models built in several ways must trip the checks that apply to them, a PGD-AT model none."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustdistill import _attacks as attacks
from robustdistill._eval import BUILTIN_EVAL_ATTACKS, EvalSettings
from robustdistill._eval.sanity import (
    binomial_margin,
    format_sanity,
    not_converged,
    run_sanity,
    sanity_plan,
    sanity_section,
)

K, SIZE, EPS, IMAGES = 10, 8, 0.08, 400
ATTACKS = {a.name: a for a in BUILTIN_EVAL_ATTACKS}
SETTINGS = EvalSettings(eps=EPS, step_size=EPS / 4, pgd_steps=20)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny tensors gain nothing from intra-op threads."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float 1x8x8 images in [0, 1]: a fixed pattern per class plus noise."""
    prototypes = 0.3 + 0.4 * torch.rand(K, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1234))
    y = torch.arange(n) % K
    noise = 0.1 * torch.randn(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    return (prototypes[y] + noise).clamp(0, 1), y


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 64), nn.ReLU(), nn.Linear(64, K))


class Composed(nn.Module):
    """``post(net(pre(x)))``: a trained network behind an input layer and/or in front of an output map."""

    def __init__(self, net: nn.Module, pre=lambda x: x, post=lambda z: z) -> None:
        super().__init__()
        self.net, self.pre, self.post = net, pre, post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.net(self.pre(x)))


def train(model: nn.Module, eps: float = 0.0, epochs: int = 20, pre=lambda x: x, seed: int = 0) -> nn.Module:
    """Adam on the training images, PGD-AT (5 steps of eps/3) when ``eps`` > 0, on ``pre`` of the inputs."""
    torch.manual_seed(seed)
    x, y = images(1000, seed=1)
    optimiser = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):
        for start in range(0, len(x), 100):
            xb, yb = x[start:start + 100], y[start:start + 100]
            if eps:
                model.eval()
                xb = attacks.pgd(model, xb, yb, attacks.AttackSpec(eps=eps, step_size=eps / 3, steps=5))
            model.train()
            optimiser.zero_grad()
            F.cross_entropy(model(pre(xb)), yb).backward()
            optimiser.step()
    return model.eval()


def quantise(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x * 4) / 4


def binarise(x: torch.Tensor) -> torch.Tensor:
    """A steep sigmoid: saturated (zero gradient in float32) except very near 0.5."""
    return torch.sigmoid(1e4 * (x - 0.5))


class BatchStatistics(nn.Module):
    """A network that normalises its hidden layer with the batch's statistics even in eval mode."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.net[2](self.net[1](self.net[0](x)))
        mean, std = hidden.mean(0, keepdim=True), hidden.std(0, keepdim=True) if x.shape[0] > 1 else 1.0
        return self.net[3]((hidden - mean) / (std + 1e-5) + mean)


class NoisyGradient(torch.autograd.Function):
    """The identity whose backward adds Gaussian noise ``k`` times the gradient's mean magnitude: gradients that
    point the right way only on average, as a stochastic defence's do."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: float) -> torch.Tensor:
        ctx.k = k
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scale = grad.flatten(1).abs().mean(1).view(-1, *[1] * (grad.dim() - 1))
        return grad + ctx.k * scale * torch.randn_like(grad), None


@pytest.fixture(scope="module")
def robust() -> nn.Module:
    """A PGD-AT network at ε = 0.08 (about 55 % PGD-20 accuracy, 100 % clean)."""
    return train(mlp(), eps=EPS)


@pytest.fixture(scope="module")
def robust_teacher() -> nn.Module:
    """Another PGD-AT network (its own initialisation), the teacher of the transfer check on ``robust``."""
    return train(mlp(), eps=EPS, seed=1)


@pytest.fixture(scope="module")
def natural() -> nn.Module:
    return train(mlp())


def checks_of(model: nn.Module, seed: int = 0, teacher: nn.Module | None = None) -> dict[str, object]:
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = images(IMAGES, seed=2)
    plan = sanity_plan(SETTINGS, IMAGES, set(), teacher="teacher" if teacher is not None else None)
    checks = run_sanity(model, x, y, SETTINGS, plan, batch_size=200, device="cpu", seed=seed, teacher=teacher)
    return {check.name: check for check in checks}


@pytest.mark.parametrize("seed", [0, 1])
def test_a_pgd_at_model_passes_every_check(robust, robust_teacher, seed):
    checks = checks_of(robust, seed, teacher=robust_teacher)
    assert list(checks) == ["deterministic", "batch_size", "probabilities", "zero_gradients", "eps_monotone",
                            "large_eps", "unbounded", "fgsm_vs_pgd", "margin_loss", "more_steps", "converged",
                            "square", "transfer"]
    assert {name: c.verdict for name, c in checks.items()} == dict.fromkeys(checks, "ok"), \
        {name: (c.figure, c.warning_above) for name, c in checks.items()}
    assert 0.3 < checks["more_steps"].details["accuracy_pgd"] < 0.8  # robust, but not everywhere


MASKED = {"zero_gradients", "large_eps", "unbounded", "square", "transfer"}
BROKEN = {
    # accurate models whose input gradients vanish (the natural network is the teacher of the transfer check)
    "quantised input": (lambda natural: Composed(train(mlp(), pre=quantise), pre=quantise), MASKED),
    "steep saturating input": (lambda natural: Composed(train(mlp(), pre=binarise), pre=binarise), MASKED),
    # (Square's 100 queries break one image of 400 here: at the noise bound, so that check stays silent; the
    # margin loss does not saturate with the logits' scale)
    "saturated softmax": (lambda natural: Composed(natural, post=lambda z: 1e4 * z),
                          MASKED - {"square"} | {"margin_loss"}),
    # gradients right only on average: the attack does not converge
    "noisy gradients": (lambda natural: Composed(natural, pre=lambda x: NoisyGradient.apply(x, 2.0)),
                        {"more_steps", "converged", "transfer"}),
    # a randomised forward, a batch-dependent one, probabilities instead of logits
    "noisy forward": (lambda natural: Composed(natural, pre=lambda x: (x + 0.05 * torch.randn_like(x)).clamp(0, 1)),
                      {"deterministic", "batch_size"}),
    "batch statistics in eval mode": (lambda natural: BatchStatistics(natural), {"batch_size"}),
    "probabilities": (lambda natural: Composed(natural, post=lambda z: z.softmax(dim=1)), {"probabilities"}),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_model_fails_the_checks_that_apply(natural, name):
    build, expected = BROKEN[name]
    checks = checks_of(build(natural), teacher=natural)
    failed = {check for check, c in checks.items() if c.verdict == "failed"}
    assert expected <= failed, {check: (c.verdict, c.figure) for check, c in checks.items()}


def test_the_masked_models_stay_accurate(natural):
    """The masking constructions above hide robustness that is not there: clean accuracy stays high."""
    x, y = images(IMAGES, seed=2)
    for name in ("quantised input", "steep saturating input", "saturated softmax"):
        model = BROKEN[name][0](natural)
        with torch.no_grad():
            assert float((model(x).argmax(1) == y).float().mean()) > 0.9, name


def test_convergence_is_the_rescaled_running_maximum_over_the_last_ten_steps():
    steps = torch.arange(21, dtype=torch.float32)
    flat = torch.where(steps < 10, steps / 10, 1.0)
    losses = torch.stack([
        steps / 20,                                   # still rising: the last 10 steps hold half the rise
        flat,                                         # flat from step 10
        flat + torch.where(steps == 20, 0.04, 0.0),   # +0.04 of 1.04 at the last step
        flat + torch.where(steps == 20, 0.06, 0.0),   # +0.06 of 1.06
        torch.where(steps == 5, 1.0, 0.0),            # the running maximum is kept: a later drop is no rise
        torch.zeros(21),                              # no rise at all
        10 * flat + torch.where(steps == 20, 0.45, 0.0),  # +0.45 of 10.45: rescaled, 0.043
    ], dim=1)
    # rises of the rescaled running maximum over the last 10 steps: 0.5, 0, 0.038, 0.057, 0, none, 0.043
    assert not_converged(losses).tolist() == [True, False, False, True, False, False, False]
    # a window longer than the path counts from the start
    assert not_converged(losses, window=25).tolist() == [True, True, True, True, True, False, True]


def test_tolerances_are_binomial_at_the_number_of_images():
    assert binomial_margin(0.5, 400, 1.96) == pytest.approx(1.96 * 0.025 + 1 / 400)
    assert binomial_margin(0.0, 100, 3.0) == pytest.approx(0.01)
    assert binomial_margin(0.5, 100, 1.96) > binomial_margin(0.5, 10_000, 1.96)


def test_the_section_and_the_table(robust):
    checks = list(checks_of(robust).values())
    plan = sanity_plan(SETTINGS, IMAGES, {"pgd20", "clean", "cw", "autoattack"})
    assert plan.reuse == {"pgd20", "cw"} and plan.passes < sanity_plan(SETTINGS, IMAGES, set()).passes
    assert "400 images (reusing cw, pgd20" in plan.describe() and "CW-30" not in plan.describe()
    section = sanity_section(plan, checks, 1.5)
    assert section["verdict"] == "ok" and len(section["checks"]) == len(checks)
    assert set(section["checks"][0]) == {"name", "figure", "warning_above", "failed_above", "verdict", "meaning",
                                         "details"}
    text = format_sanity(section)
    assert text.splitlines()[0] == "sanity (400 images): ok"
    assert all(c.name in text and c.meaning in text for c in checks)


# ------------------------------------------------------------------------------------ best iterate (no silent success)

class Detour(nn.Module):
    """Logits ``[0, peak − 20·|x − 0.2|, 5x − 3]`` of a one-pixel image, label 0, every logit's gradient in x
    positive: ascent on the loss from x = 0 in steps of 0.1 passes x = 0.2 (with ``peak`` > 0 class 1 wins there:
    fooled; its loss is the highest of the path) and ends at x = 0.5, classified right, at a lower loss."""

    def __init__(self, peak: float = 2.0) -> None:
        super().__init__()
        self.peak = peak

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(1)[:, :1]
        detour = (self.peak - 20 * (v - 0.2).abs()).detach() + 5 * (v - v.detach())
        return torch.cat([torch.zeros_like(v), detour, 5 * v - 3], dim=1)


def detour_spec(loss: str = "ce") -> attacks.AttackSpec:
    return attacks.AttackSpec(eps=0.5, step_size=0.1, steps=5, init="none", loss=loss)


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_pgd_returns_the_iterate_that_fooled_the_model(loss):
    model, x, y = Detour(), torch.zeros(1, 1, 1, 1), torch.zeros(1, dtype=torch.long)
    spec = detour_spec(loss)
    last = spec.perturb(attacks.label_objective(model, y, spec), x)  # the training attack: the last iterate
    assert float(last) == pytest.approx(0.5) and int(model(last).argmax()) == 0
    best = attacks.pgd(model, x, y, spec)
    assert float(best) == pytest.approx(0.2) and int(model(best).argmax()) == 1


def test_eval_attacks_return_the_fooling_iterate():
    model, y = Detour(), torch.zeros(1, dtype=torch.long)
    x_adv = ATTACKS["fgsm"].run(model, torch.full((1, 1, 1, 1), 0.2), y, EvalSettings(eps=0.1, step_size=0.1))
    assert float(x_adv) == pytest.approx(0.2) and int(model(x_adv).argmax()) == 1  # the clean input fooled it
    s = EvalSettings(eps=0.5, step_size=0.1, pgd_steps=5, cw_steps=5)
    for name in ("pgd20", "cw"):  # from a random start in [0, 0.5]: the path crosses 0.2 unless it starts past it
        x = torch.zeros(64, 1, 1, 1)
        torch.manual_seed(0)
        x_adv = ATTACKS[name].run(model, x, y.repeat(64), s)
        with torch.no_grad():
            fooled = model(x_adv).argmax(1) == 1
        assert int(fooled.sum()) >= 32, name


def test_without_a_fooling_iterate_the_highest_loss_one_is_returned():
    model, x, y = Detour(peak=-0.5), torch.zeros(1, 1, 1, 1), torch.zeros(1, dtype=torch.long)
    spec = detour_spec()
    x_adv, loss, fooled = attacks.best_iterate(model, x, y, spec)
    assert not bool(fooled) and float(x_adv) == pytest.approx(0.2)
    last = spec.perturb(attacks.ce_objective(model, y), x)
    assert float(loss) == pytest.approx(float(F.cross_entropy(model(x_adv), y)))
    assert float(loss) > float(F.cross_entropy(model(last), y))
