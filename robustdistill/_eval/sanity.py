"""``eval --sanity``: cheap checks that an attack failed for a reason other than the model's robustness.

Each check gives a figure where more is worse, the bounds above which it warns and fails, a verdict (``ok``,
``warning``, ``failed``) and one line on what it means and what to run next. Bounds on accuracies come from
binomial confidence intervals at the number of checked images: the normal-approximation half-width at z = 1.96
(95 %) for a warning and z = 3 for a failure, plus one image. The checks (Carlini et al. 2019, AutoAttack's flags,
Pintor et al. 2022's indicators):

* ``deterministic`` — five forwards of one batch agree; ``batch_size`` — one image at a time gives what the batch
  gives;
* ``probabilities`` — the outputs are logits, not rows in [0, 1] summing to 1;
* ``zero_gradients`` — the cross-entropy gradient w.r.t. the input is not zero (or missing) on correctly
  classified images, at the image and at a random start;
* ``eps_monotone`` — no image is fooled in a smaller ball and not in a larger one: PGD at ε/2 fools no image
  PGD-20 at ε left, PGD at 2ε leaves no image PGD-20 at ε fooled (a quarter of the steps each);
* ``large_eps`` — at L∞ ε = 0.5 (L2: half the diagonal), which reaches a uniform grey image, accuracy is at
  chance or below; ``unbounded`` — with no bound, every correctly classified image is fooled;
* ``fgsm_vs_pgd`` — FGSM does not beat PGD-20; ``margin_loss`` — of the points PGD-20 left, PGD on the C&W
  margin (``cw``) breaks no more than PGD on cross-entropy with twice the steps does, beyond noise (a saturated
  cross-entropy hides what a margin loss finds); ``more_steps`` — twice the steps do not lower PGD-20's accuracy
  by more than noise; ``converged`` — on the points that attack leaves, its loss has converged (Pintor et al.'s
  incomplete-optimisation indicator: the running maximum of the loss, rescaled to [0, 1] over the path, rose by
  no more than 0.05 over the last 10 steps);
* ``square`` — the black-box Square attack (``pyautoattack``, a few queries per PGD step) breaks no more of the
  points PGD-20 left than noise allows: gradient-free success where gradients fail means masked gradients;
* ``transfer`` — with a teacher (the run's, or ``--sanity-teacher``), PGD-20 crafted on the teacher and applied
  to the model breaks no more of the points white-box PGD-20 left than noise allows.

Attacks are run only on the images where their outcome can tell something: the ε/2 attack on the images PGD-20
left, the 2ε one on those it fooled, the large and unbounded ones on the images still standing, and the longer,
margin, black-box and transferred attacks on the images PGD-20 left.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _attacks as attacks
from .._registry import EvalAttack
from .._threats import threat_model
from .attacks import BUILTIN_EVAL_ATTACKS
from .autoattack import _autoattack_logging, _import_autoattack, _preserved_global_state
from .harness import _frozen_parameters, run_evaluation, to_unit_float
from .settings import AUTOATTACK_SEED, EvalSettings

Z_WARNING = 1.96
Z_FAILED = 3.0
VERDICTS = ("ok", "warning", "failed")
REPEATS = 5
"""Forwards of the same batch compared by ``deterministic``."""
SINGLES = 16
"""Images forwarded one at a time by ``batch_size``."""
LARGE_LINF = 0.5
"""The large L∞ radius: every image in [0, 1] is within 0.5 of uniform grey."""
CONVERGENCE_WINDOW = 10
CONVERGENCE_MOVE = 0.05
"""Pintor et al.'s indicator: the rescaled running maximum of the loss may rise by 0.05 over the last 10 steps."""
SQUARE_QUERIES_PER_STEP = 5
"""Square's queries (forwards only) per PGD step: 100 queries beside PGD-20."""


def binomial_margin(p: float, m: int, z: float) -> float:
    """Half-width of the normal-approximation binomial confidence interval of an accuracy ``p`` on ``m`` images at
    ``z`` standard deviations, plus one image."""
    return z * math.sqrt(max(p * (1 - p), 0.0) / m) + 1 / m if m else math.inf


@dataclass
class Check:
    """One sanity check: its figure (more is worse), the bounds above which it warns and fails, its verdict and
    what it means."""

    name: str
    figure: float
    warning_above: float
    failed_above: float
    verdict: str
    meaning: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _judge(name: str, figure: float, warning_above: float, failed_above: float, meanings: dict[str, str], *,
           failed: bool = False, **details: Any) -> Check:
    """The verdict of ``figure`` against its bounds (``failed``: whatever the figure)."""
    verdict = "failed" if failed or figure > failed_above else "warning" if figure > warning_above else "ok"
    return Check(name=name, figure=figure, warning_above=warning_above, failed_above=failed_above, verdict=verdict,
                 meaning=meanings[verdict], details=details)


def _beyond_noise(name: str, figure: float, noise_at: float, m: int, meanings: dict[str, str],
                  **details: Any) -> Check:
    """``figure``, a difference of accuracies (or a share of images), judged against the binomial noise of an
    accuracy of ``noise_at`` at ``m`` images."""
    return _judge(name, figure, binomial_margin(noise_at, m, Z_WARNING), binomial_margin(noise_at, m, Z_FAILED),
                  meanings, **details)


@dataclass(frozen=True)
class SanityPlan:
    """What ``--sanity`` runs: on the first ``images`` evaluated images, attacks of ``steps`` steps."""

    images: int
    steps: int
    pgd_steps: int
    reuse: frozenset[str]
    ball_steps: int = 5
    """Steps of the attacks at ε/2 and 2ε."""
    cw_steps: int = 30
    square_queries: int = 0
    """Square's queries (0: no Square check, ``pyautoattack`` missing)."""
    teacher: str | None = None
    """The model spec of the teacher the transfer check attacks (``None``: no transfer check)."""

    @property
    def passes(self) -> float:
        """Forward-and-backward passes per checked image (a forward counting a third), counting the attacks on the
        images still standing as if half of them were left."""
        pgd = 0 if "pgd20" in self.reuse else self.pgd_steps
        fgsm = 0 if "fgsm" in self.reuse else 1
        cw = 0 if "cw" in self.reuse else self.cw_steps
        left = (self.steps + 2 * self.pgd_steps + cw + self.square_queries / 3
                + (self.pgd_steps if self.teacher else 0))
        return 2 + fgsm + pgd + self.ball_steps + 0.5 * left

    def describe(self) -> str:
        reused = f" (reusing {', '.join(sorted(self.reuse))} of this evaluation)" if self.reuse else ""
        square = f", Square ({self.square_queries} queries)" if self.square_queries else ""
        cw = "" if "cw" in self.reuse else f", CW-{self.cw_steps}"
        teacher = f", PGD-{self.pgd_steps} transferred from the teacher {self.teacher}" if self.teacher else ""
        return (f"sanity checks on {self.images} images{reused}: repeated and one-at-a-time forwards, outputs, "
                f"input gradients at the images and at a random start, FGSM, PGD-{self.pgd_steps}, "
                f"PGD-{self.ball_steps} at eps/2 and 2*eps, PGD-{self.steps} from the image at a large eps and "
                f"unbounded, PGD-{2 * self.pgd_steps} (with its loss's convergence){cw}{square}{teacher} "
                "on the points "
                f"PGD-{self.pgd_steps} left; about {self.passes:.0f} passes per image "
                f"({self.passes / self.pgd_steps:.1f}x PGD-{self.pgd_steps})")


def sanity_plan(settings: EvalSettings, images: int, reuse: set[str], *, square: bool = True,
                teacher: str | None = None) -> SanityPlan:
    """The checks' plan on ``images`` images, reusing the per-image outcomes of the attacks named in ``reuse``;
    ``square``: run the Square check, ``teacher``: the transfer check's teacher."""
    return SanityPlan(images=images, steps=max(1, settings.pgd_steps // 2), pgd_steps=settings.pgd_steps,
                      reuse=frozenset(reuse) & {"fgsm", "pgd20", "cw"}, ball_steps=max(2, settings.pgd_steps // 4),
                      cw_steps=settings.cw_steps,
                      square_queries=SQUARE_QUERIES_PER_STEP * settings.pgd_steps if square else 0, teacher=teacher)


def _large_eps(settings: EvalSettings, x: Tensor) -> float:
    """L∞: 0.5; L2: half the diagonal of the image cube (both reach uniform grey from any image)."""
    return LARGE_LINF if settings.norm == "linf" else 0.5 * math.sqrt(x[0].numel())


def _unbounded_eps(settings: EvalSettings, x: Tensor) -> float:
    """A radius that bounds nothing in [0, 1]: 1 in L∞, the cube's diagonal in L2."""
    return 1.0 if settings.norm == "linf" else math.sqrt(x[0].numel())


def _from_image(steps: int) -> EvalAttack:
    """PGD on cross-entropy from the image itself (no random start, so noise cannot do the gradient's work)."""
    def run(model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings) -> Tensor:
        spec = attacks.AttackSpec(eps=settings.eps, step_size=settings.step_size, steps=steps, norm=settings.norm,
                                  init="none")
        return attacks.pgd(model, x, y, spec)
    return EvalAttack(name=f"pgd{steps}-from-image", run=run, summary="PGD from the image")


def _forward_checks(model: nn.Module, x: Tensor) -> list[Check]:
    """``deterministic``, ``batch_size`` and ``probabilities`` on one batch."""
    with torch.no_grad():
        outputs = [model(x).float() for _ in range(REPEATS)]
        singles = torch.cat([model(x[i:i + 1]).float() for i in range(min(SINGLES, x.shape[0]))])
    first = outputs[0]
    scale = float(first.abs().max().clamp_min(1e-12))
    repeat_change = max(float((out - first).abs().max()) for out in outputs[1:]) / scale
    flips = max(int((out.argmax(1) != first.argmax(1)).sum()) for out in outputs[1:])
    deterministic = _judge(
        "deterministic", repeat_change, 1e-4, 1e-2, {
            "ok": "repeated forwards of the same batch agree",
            "warning": "repeated forwards differ slightly: check for randomness or nondeterministic kernels",
            "failed": "the forward is randomised: gradient attacks are unreliable; evaluate with EOT "
                      "(AutoAttack's rand version) or remove the randomness"},
        failed=flips > 0, predictions_changed=flips)
    batch = first[:singles.shape[0]]
    batch_change = float((singles - batch).abs().max()) / scale
    top2 = batch.topk(min(2, batch.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, -1]
    changed = (singles.argmax(1) != batch.argmax(1)) & (margin > 2 * batch_change * scale + 1e-3 * scale)
    batch_flips = int(changed.sum())
    batch_size = _judge(
        "batch_size", batch_change, 1e-3, 1e-1, {
            "ok": "one image at a time gives what the batch gives",
            "warning": "outputs depend slightly on the batch: check for batch statistics or randomness",
            "failed": "outputs depend on the batch (BatchNorm in train mode, or randomness): fix the model's eval "
                      "mode before trusting any accuracy"},
        failed=batch_flips > 0, predictions_changed=batch_flips)
    rows = ((first >= 0) & (first <= 1)).all(dim=1) & ((first.sum(dim=1) - 1).abs() <= 1e-5)
    probabilities = _judge(
        "probabilities", float(rows.float().mean()), 0.0, 0.5, {
            "ok": "the model returns logits",
            "warning": "some outputs look like probabilities (in [0, 1], summing to 1)",
            "failed": "the model returns probabilities, not logits: cross-entropy attacks see a flat loss; return "
                      "the logits (drop the final softmax)"})
    return [deterministic, batch_size, probabilities]


def _gradient_sizes(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Each image's largest absolute cross-entropy gradient w.r.t. the input (zero where none can be taken)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        if not logits.requires_grad:
            return torch.zeros(x.shape[0], device=x.device)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x, allow_unused=True)
    if grad is None:
        return torch.zeros(x.shape[0], device=x.device)
    return grad.detach().flatten(1).abs().amax(dim=1)


def _zero_gradient_check(model: nn.Module, x: Tensor, y: Tensor, clean: Tensor, settings: EvalSettings,
                         batch_size: int, device: torch.device) -> Check:
    zero = at_start = 0
    for start in range(0, x.shape[0], batch_size):
        right = clean[start:start + batch_size].to(device)
        xb = to_unit_float(x[start:start + batch_size].to(device))[right]
        yb = y[start:start + batch_size].to(device)[right]
        if not xb.shape[0]:
            continue
        random_start = threat_model(settings.norm).start(xb, settings.eps, "uniform")
        zero += int((_gradient_sizes(model, xb, yb) == 0).sum())
        at_start += int((_gradient_sizes(model, random_start, yb) == 0).sum())
    right_total = max(int(clean.sum()), 1)
    figure = max(zero, at_start) / right_total
    return _judge("zero_gradients", figure, 0.0, 0.01, {
        "ok": "every correctly classified image has an input gradient",
        "warning": "a few correctly classified images have a zero input gradient: trust the gradient-free and "
                   "margin attacks (cw, autoattack) over pgd20 for them",
        "failed": "input gradients vanish (quantised or saturated inputs, saturated softmax, a broken graph): "
                  "gradient attacks cannot work; run autoattack (Square) or an adaptive attack"},
        zero_at_image=zero / right_total, zero_at_random_start=at_start / right_total)


def not_converged(losses: Tensor, window: int = CONVERGENCE_WINDOW, move: float = CONVERGENCE_MOVE) -> Tensor:
    """Per sample of ``losses`` (iterates × samples, the start first): whether the loss's running maximum, rescaled to
    [0, 1] over the path, rose by more than ``move`` over the last ``window`` steps (Pintor et al.'s
    incomplete-optimisation indicator, for an attack that maximises its loss)."""
    best = losses.float().cummax(dim=0).values
    span = best[-1] - best[0]
    earlier = best[max(0, best.shape[0] - 1 - window)]
    return (span > 0) & (best[-1] - earlier > move * span)


def _batches(where: Tensor, batch_size: int) -> list[Tensor]:
    index = where.nonzero().flatten()
    return [index[start:start + batch_size] for start in range(0, index.numel(), batch_size)]


def _longer_pgd(model: nn.Module, x: Tensor, y: Tensor, where: Tensor, settings: EvalSettings, batch_size: int,
                device: torch.device, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """PGD with twice ``settings``' steps (and its restarts) on the points ``where``: per point whether it stays
    right, and, for the points its first run left, whether that run's loss had not converged (and which were
    left)."""
    m = x.shape[0]
    right, moving, left = (torch.zeros(m, dtype=torch.bool) for _ in range(3))
    spec = attacks.AttackSpec(eps=settings.eps, step_size=settings.step_size, steps=2 * settings.pgd_steps,
                              norm=settings.norm, init="uniform")
    torch.manual_seed(seed)
    for chosen in _batches(where, batch_size):
        xb, yb = to_unit_float(x[chosen].to(device)), y[chosen].to(device)
        trace: list[Tensor] = []
        _, _, fooled = attacks.best_iterate(model, xb, yb, spec, trace)
        first_left = ~fooled
        for _ in range(max(1, settings.restarts) - 1):
            fooled |= attacks.best_iterate(model, xb, yb, spec)[2]
        right[chosen] = ~fooled.cpu()
        left[chosen] = first_left.cpu()
        moving[chosen] = (not_converged(torch.stack(trace)) & first_left).cpu()
    return right, moving, left


def _square(model: nn.Module, x: Tensor, y: Tensor, where: Tensor, settings: EvalSettings, queries: int,
            batch_size: int, device: torch.device) -> Tensor:
    """Square (``pyautoattack``, its standard parameters but ``queries``) on the points ``where``: per point whether
    it stays right."""
    right = torch.zeros(x.shape[0], dtype=torch.bool)
    AutoAttack = _import_autoattack()
    with _preserved_global_state(device), _autoattack_logging(False):
        adversary = AutoAttack(model, norm=threat_model(settings.norm).robustbench, eps=settings.eps,
                               version="custom", attacks=["square"], device=device, seed=AUTOATTACK_SEED)
        adversary.square.n_queries = queries
        adversary.square.verbose = False
        for chosen in _batches(where, batch_size):
            xb, yb = to_unit_float(x[chosen].to(device)), y[chosen].to(device).long()
            x_adv = adversary.square.perturb(xb, yb)
            with torch.no_grad():
                right[chosen] = (model(x_adv).argmax(1) == yb).cpu()
    return right


def _transferred(model: nn.Module, teacher: nn.Module, x: Tensor, y: Tensor, where: Tensor, settings: EvalSettings,
                 batch_size: int, device: torch.device, seed: int) -> Tensor:
    """PGD (``settings``) crafted on ``teacher`` on the points ``where``: per point whether ``model`` stays right."""
    right = torch.zeros(x.shape[0], dtype=torch.bool)
    spec = attacks.AttackSpec(eps=settings.eps, step_size=settings.step_size, steps=settings.pgd_steps,
                              norm=settings.norm, init="uniform", restarts=settings.restarts)
    torch.manual_seed(seed)
    for chosen in _batches(where, batch_size):
        xb, yb = to_unit_float(x[chosen].to(device)), y[chosen].to(device)
        x_adv = attacks.pgd(teacher, xb, yb, spec)
        with torch.no_grad():
            right[chosen] = (model(x_adv).argmax(1) == yb).cpu()
    return right


def run_sanity(model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings, plan: SanityPlan, *,
               batch_size: int, device: torch.device | str, seed: int = 0,
               known: dict[str, Tensor] | None = None, teacher: nn.Module | None = None,
               say: Callable[[str], None] = lambda message: None) -> list[Check]:
    """The checks on the first ``plan.images`` of ``x`` (model, and ``teacher`` for the transfer check, already on
    ``device``); ``known`` the per-image outcomes (:class:`~robustdistill._eval.harness.EvalResult` ``correct``)
    of attacks already run on them."""
    m = plan.images
    x, y = x[:m], y[:m].long()
    device = torch.device(device)
    known = {name: points[:m].bool().cpu() for name, points in (known or {}).items() if points.numel() >= m}
    builtin = {a.name: a for a in BUILTIN_EVAL_ATTACKS}

    def outcomes(attack: EvalAttack, s: EvalSettings, where: Tensor | None = None) -> Tensor:
        """Per-image outcomes of ``attack``; with ``where``, run only there and false elsewhere."""
        chosen = torch.ones(m, dtype=torch.bool) if where is None else where
        right = torch.zeros(m, dtype=torch.bool)
        if bool(chosen.any()):
            result = run_evaluation(model, x[chosen], y[chosen], [attack], s, batch_size=batch_size, device=device,
                                    seed=seed)
            right[chosen] = result.correct[attack.name]
        return right

    with attacks.model_mode(model, train=False), _frozen_parameters(model):
        say("sanity: forwards and gradients")
        checks = _forward_checks(model, to_unit_float(x[:batch_size].to(device)))
        clean = known.get("clean")
        if clean is None:
            clean = outcomes(builtin["clean"], settings)
        checks.append(_zero_gradient_check(model, x, y, clean, settings, batch_size, device))
        say("sanity: FGSM and PGD at eps")
        fgsm = known["fgsm"] if "fgsm" in plan.reuse else outcomes(builtin["fgsm"], settings)
        pgd = known["pgd20"] if "pgd20" in plan.reuse else outcomes(builtin["pgd20"], settings)
        say("sanity: PGD at eps/2 and 2*eps")
        ball = replace(settings, pgd_steps=plan.ball_steps, restarts=1)
        half_eps, double_eps = settings.eps / 2, 2 * settings.eps
        half = outcomes(builtin["pgd20"], replace(ball, eps=half_eps, step_size=2.5 * half_eps / plan.ball_steps),
                        clean & pgd)
        double = outcomes(builtin["pgd20"], replace(ball, eps=double_eps,
                                                    step_size=2.5 * double_eps / plan.ball_steps), clean & ~pgd)
        weaker, wider = clean & pgd & ~half, clean & ~pgd & double
        standing = clean & fgsm & pgd & half
        ratio = settings.step_size / settings.eps if settings.eps > 0 else 0.25
        large_eps = max(_large_eps(settings, x), 2 * settings.eps)
        say(f"sanity: PGD at eps {large_eps:.3g} and unbounded")
        large = outcomes(_from_image(plan.steps), replace(settings, eps=large_eps, step_size=ratio * large_eps),
                         standing)
        unbounded_eps = _unbounded_eps(settings, x)
        unbounded = outcomes(_from_image(2 * plan.steps),
                             replace(settings, eps=unbounded_eps, step_size=unbounded_eps / 10), large)
        say(f"sanity: PGD-{2 * settings.pgd_steps} on the points PGD-{settings.pgd_steps} left")
        stronger, moving, first_left = _longer_pgd(model, x, y, pgd, settings, batch_size, device, seed)
        say(f"sanity: CW on the points PGD-{settings.pgd_steps} left")
        margin = known["cw"] if "cw" in plan.reuse else outcomes(builtin["cw"], settings, pgd)
        square = None
        if plan.square_queries:
            say(f"sanity: Square ({plan.square_queries} queries) on the points PGD-{settings.pgd_steps} left")
            square = _square(model, x, y, pgd, settings, plan.square_queries, batch_size, device)
        transfer = None
        if teacher is not None:
            say(f"sanity: PGD-{settings.pgd_steps} from the teacher on the points PGD-{settings.pgd_steps} left")
            with attacks.model_mode(teacher, train=False), _frozen_parameters(teacher):
                transfer = _transferred(model, teacher, x, y, pgd, settings, batch_size, device, seed)

    def acc(points: Tensor) -> float:
        return float(points.float().mean())

    chance = float(torch.bincount(y.cpu()).max()) / m
    pgd_name = f"PGD-{settings.pgd_steps}"
    checks.append(_beyond_noise("eps_monotone", acc(weaker) + acc(wider), acc(pgd), m, {
        "ok": "no image is fooled in a smaller ball and not in a larger one",
        "warning": "some images are fooled in a smaller ball but not in a larger one: rerun with more --subset "
                   "images; if it stays, suspect masked gradients",
        "failed": "many images are fooled in a smaller ball but not in a larger one: the attack fails for a reason "
                  "other than robustness; trust autoattack, not pgd20"},
        fooled_only_at_half_eps=acc(weaker), right_only_at_double_eps=acc(wider), steps=plan.ball_steps))
    checks.append(_beyond_noise("large_eps", acc(large) - chance, chance, m, {
        "ok": f"at eps {large_eps:.3g} accuracy is at chance or below",
        "warning": f"at eps {large_eps:.3g} accuracy stays somewhat above chance: gradients may be masked",
        "failed": f"at eps {large_eps:.3g}, where any image can become grey, accuracy stays above chance: "
                  "gradients are masked or the attack is broken; run autoattack"},
        eps=large_eps, accuracy=acc(large), chance=chance))
    right = max(int(clean.sum()), 1)
    checks.append(_judge("unbounded", int(unbounded.sum()) / right, 0.0, 0.01, {
        "ok": "an unbounded attack fools every correctly classified image",
        "warning": "an unbounded attack leaves a few images: the attack may not have converged",
        "failed": "an unbounded attack fails on many images: gradients are masked or the attack is broken; "
                  "trust autoattack, not pgd20"}, eps=unbounded_eps))
    checks.append(_beyond_noise("fgsm_vs_pgd", acc(pgd) - acc(fgsm), acc(fgsm), m, {
        "ok": f"{pgd_name} is at least as strong as FGSM",
        "warning": f"FGSM comes close to beating {pgd_name}: check the step size and --pgd-steps",
        "failed": f"FGSM beats {pgd_name}: the iterative attack is misled (masked gradients or a bad step size); "
                  "trust autoattack"}, accuracy_fgsm=acc(fgsm), accuracy_pgd=acc(pgd)))
    longer = f"PGD-{2 * settings.pgd_steps}"
    checks.append(_beyond_noise("margin_loss", acc(pgd & stronger) - acc(pgd & margin), acc(pgd & stronger), m, {
        "ok": f"PGD on the C&W margin is no stronger than {longer} on cross-entropy",
        "warning": f"PGD on the C&W margin breaks more points than {longer} on cross-entropy: it may saturate "
                   "(overconfident logits); report cw and autoattack beside pgd20",
        "failed": f"PGD on the C&W margin beats {longer} on cross-entropy: it saturates or misleads (overconfident "
                  "logits); trust autoattack (its DLR loss does not depend on the logits' scale), not pgd20"},
        accuracy_pgd=acc(pgd), accuracy_more_steps=acc(pgd & stronger), accuracy_with_margin=acc(pgd & margin),
        steps=settings.cw_steps))
    checks.append(_beyond_noise("more_steps", acc(pgd) - acc(pgd & stronger), acc(pgd), m, {
        "ok": f"twice the steps do not lower {pgd_name}'s accuracy beyond noise",
        "warning": f"twice the steps lower the accuracy noticeably: {pgd_name} has not converged; rerun with more "
                   "--pgd-steps or --restarts",
        "failed": f"twice the steps lower the accuracy a lot: {pgd_name} is far from converged; report a longer "
                  "attack or autoattack"},
        accuracy_pgd=acc(pgd), accuracy_more_steps=acc(pgd & stronger), steps=2 * settings.pgd_steps))
    standing = max(int(first_left.sum()), 1)
    checks.append(_judge("converged", int(moving.sum()) / standing, 0.05, 0.2, {
        "ok": f"PGD-{2 * settings.pgd_steps}'s loss has converged on the points it leaves",
        "warning": f"PGD-{2 * settings.pgd_steps}'s loss is still rising on some points it leaves: rerun with more "
                   "--pgd-steps or trust autoattack",
        "failed": f"PGD-{2 * settings.pgd_steps}'s loss is still rising on many points it leaves: the attack has "
                  "not converged (noisy or misleading gradients); report a longer attack or autoattack"},
        window=CONVERGENCE_WINDOW, move=CONVERGENCE_MOVE, points=int(first_left.sum())))
    if square is not None:
        checks.append(_beyond_noise("square", acc(pgd) - acc(pgd & square), acc(pgd), m, {
            "ok": f"the black-box Square attack is no stronger than {pgd_name}",
            "warning": f"the black-box Square attack breaks some points {pgd_name} left: gradients may be masked; "
                       "run autoattack",
            "failed": f"the black-box Square attack beats {pgd_name}: gradients are likely masked; trust "
                      f"autoattack, not {pgd_name}"},
            queries=plan.square_queries, accuracy_pgd=acc(pgd), accuracy_with_square=acc(pgd & square)))
    if transfer is not None:
        checks.append(_beyond_noise("transfer", acc(pgd) - acc(pgd & transfer), acc(pgd), m, {
            "ok": f"{pgd_name} transferred from the teacher is no stronger than {pgd_name} on the model",
            "warning": f"{pgd_name} transferred from the teacher breaks some points the white-box attack left: its "
                       "gradients may be masked; run autoattack",
            "failed": f"{pgd_name} transferred from the teacher beats the white-box attack: the model's gradients "
                      f"are masked or misleading; trust autoattack, not {pgd_name}"},
            teacher=plan.teacher, accuracy_pgd=acc(pgd), accuracy_with_transfer=acc(pgd & transfer)))
    return checks


def sanity_section(plan: SanityPlan, checks: list[Check], seconds: float) -> dict[str, Any]:
    """The ``sanity`` section of the results file."""
    worst = max((VERDICTS.index(c.verdict) for c in checks), default=0)
    return {"images": plan.images, "steps": plan.steps, "seconds": round(seconds, 3), "verdict": VERDICTS[worst],
            "checks": [c.to_dict() for c in checks]}


def format_sanity(section: dict[str, Any]) -> str:
    """The checks as a table: figure, bounds, verdict, meaning."""
    checks = section["checks"]
    width = max(len("check"), *(len(c["name"]) for c in checks))

    def number(value: float) -> str:
        return f"{value:.4g}"

    lines = [f"sanity ({section['images']} images): {section['verdict']}",
             f"{'check':<{width}}  {'figure':>9}  {'warn >':>8}  {'fail >':>8}  verdict  meaning"]
    for c in checks:
        lines.append(f"{c['name']:<{width}}  {number(c['figure']):>9}  {number(c['warning_above']):>8}  "
                     f"{number(c['failed_above']):>8}  {c['verdict']:<7}  {c['meaning']}")
    return "\n".join(lines)
