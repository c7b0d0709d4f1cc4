"""PeerAiD — a specialised peer tutor (Jung, Jang, Song & Lee, CVPR 2024, arXiv 2403.06668; methods-ad2 §5).

No pretrained teacher: a peer network P is trained from scratch jointly with the student S, on adversarial
examples crafted against the **student only**, so that it specialises in defending against the student's
attacks (poster). In every step, in this order:

1. p⁰ = P(x), the peer in eval mode, no gradient.
2. x′ from x + 0.001·N (not clipped), the student in eval mode, K steps (ε 8/255, 2/255, K = 10 on CIFAR)
   maximising Σ_{i,c} KL_i(σ(p⁰) ‖ σ(S(x′))) — RSLAD's objective with the peer's clean prediction as the
   target (poster: L_max = KL(P_t(x) ‖ S_t(x̃))); x′ detached.
3. P(x′) and a first S(x′), both networks in train mode, with gradient::

       L_peer = γ₁·CE(P(x′), y) + γ₂·τ_p²·KL̄(σ(S(x′)/τ_p) ‖ σ(P(x′)/τ_p))

   The target σ(S(x′)/τ_p) is **not detached**: this term also pulls the student towards the peer
   (a reverse KL).
4. A second S(x′) and S(x) (train mode, not detached) and p′ = sg(P(x′))::

       L_stu = λ₁·CE(S(x′), y) + λ₂·τ²·KL̄(σ(p′/τ) ‖ σ(S(x′)/τ)) + λ₃·τ²·KL̄(σ(S(x)/τ) ‖ σ(S(x′)/τ))

5. One backward of L_peer + L_stu; both SGD optimisers step. The peer's gradient comes from L_peer only.

KL̄ is the element mean over B×C (``nn.KLDivLoss()``'s default). The loss terms are ``peer_ce`` (γ₁),
``peer_kl`` (γ₂τ_p²), ``ce_adv`` (λ₁), ``kl_adv`` (λ₂τ²) and ``kl_self`` (λ₃τ²). The student runs three
training-mode forwards, S(x′) twice and then S(x), so its BatchNorm statistics see x′ twice, as in the code.

Defaults: the shipped commands' values per dataset (the official code's argparse defaults in parentheses, used
for class counts no command has; a 10-, 100- or 200-class dataset without a command takes the row with as many
classes, and the run says so)::

    dataset          τ (6)  τ_p (1)  γ₁ (1)  γ₂ (1)  λ₁, λ₂, λ₃ (1, 1, 1)  epochs  lr ÷10 after epochs
    CIFAR-10           5      1        1      0.1     0, 1, 1               300     214, 259, 284
    CIFAR-100          5      1        1      1       0, 1, 1               300     214, 259, 284
    Tiny-ImageNet      1      1        1      100     0.035, 35, 20         200     99, 149

The peer is a network of the student's architecture (every shipped command; ``--peeraid-peer-model`` another)
with its own SGD optimiser — lr 0.1, momentum 0.9, weight decay 2e-4 like the student's in the code: here the
run's ``--lr``, ``--momentum`` and ``--weight-decay`` unless ``--peeraid-peer-lr`` and
``--peeraid-peer-weight-decay`` are given — which the engine steps on the joint backward and schedules like the
student's (``add_module(..., stepped=True)``). The peer, its optimiser and its BatchNorm statistics are saved in
every checkpoint and restored on ``--resume``; each epoch it is validated beside the student
(``val_peer_clean``, ``val_peer_pgd``).

SWA: every shipped command averages the **student** (not the peer) with equal weights at the end of every epoch
from the first learning-rate decay on, its BatchNorm statistics recomputed by a training pass after every
update. That is the built-in ``--average swa``, whose default start is that epoch: ``--plugin peeraid`` turns
it on (``--average off`` turns it off), and ``robustdistill eval RUN_DIR`` then evaluates the SWA student
(``RUN_DIR@student`` the student).

Where this differs from the official code: the code reports its best-test-PGD-10 checkpoints of the student and
the SWA student, while here the test set selects nothing — the final model is the last SWA student (or the last
student), and the per-epoch checks run on the held-out validation split.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustdistill import hookimpl
from robustdistill.api import (Attack, Composition, DatasetInfo, Default, LossTerm, Method, Objective, Option, RobustDistillError,
                               RunConfig, RunView, StepContext, kl_elements, kl_objective, kl_per_sample, model_mode,
                               reduce_kl)

NAME = "peeraid"
WEIGHTS = ("tau", "tau_peer", "gamma1", "gamma2", "lambda1", "lambda2", "lambda3")
ROWS: dict[str, dict[str, float]] = {
    "cifar10": {"tau": 5.0, "tau_peer": 1.0, "gamma1": 1.0, "gamma2": 0.1, "lambda1": 0.0, "lambda2": 1.0,
                "lambda3": 1.0},
    "cifar100": {"tau": 5.0, "tau_peer": 1.0, "gamma1": 1.0, "gamma2": 1.0, "lambda1": 0.0, "lambda2": 1.0,
                 "lambda3": 1.0},
    "tiny-imagenet": {"tau": 1.0, "tau_peer": 1.0, "gamma1": 1.0, "gamma2": 100.0, "lambda1": 0.035,
                      "lambda2": 35.0, "lambda3": 20.0},
}
"""The shipped commands' loss weights and temperatures per dataset (README of the official code)."""
ARGPARSE = {"tau": 6.0, "tau_peer": 1.0, "gamma1": 1.0, "gamma2": 1.0, "lambda1": 1.0, "lambda2": 1.0, "lambda3": 1.0}
"""The official code's argparse defaults (no shipped command uses them all)."""
BY_CLASSES = {10: "cifar10", 100: "cifar100", 200: "tiny-imagenet"}
SOURCES = {"cifar10": "the PeerAiD CIFAR-10 commands (ResNet-18, WRN-34-10)",
           "cifar100": "the PeerAiD CIFAR-100 commands (ResNet-18, WRN-34-10)",
           "tiny-imagenet": "the PeerAiD Tiny-ImageNet commands (ResNet-18, WRN-34-10)"}


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name=NAME, attack="peer-kl",
                    summary="PeerAiD: no pretrained teacher; a peer trained jointly on the student's adversarial "
                            "examples distils into it"))


@hookimpl
def register_attacks(register: Callable) -> None:
    register(Attack(name="peer-kl", objective=peer_kl_objective,
                    summary="KL(P(x) ‖ S(x′)) to PeerAiD's peer's clean soft labels (peer in eval mode)"))


@hookimpl
def register_compositions(register: Callable) -> None:
    register(Composition(addon=NAME, base="average", options={"mode": "swa"},
                         source="the PeerAiD code (every shipped command averages the student, from the first "
                                "learning-rate decay)"))


@hookimpl
def register_options(register: Callable) -> None:
    row = "default per dataset: the official commands' (see the plugin docs)"
    register(Option(flag="--peeraid-tau", default=None, type=float,
                    help=f"τ of the student's KL terms ({row}: CIFAR 5, Tiny-ImageNet 1; code argparse 6)"))
    register(Option(flag="--peeraid-tau-peer", default=None, type=float,
                    help=f"τ_p of the peer's KL term ({row}: 1)"))
    register(Option(flag="--peeraid-gamma1", default=None, type=float,
                    help=f"γ₁, weight of the peer's CE(P(x′), y) ({row}: 1)"))
    register(Option(flag="--peeraid-gamma2", default=None, type=float,
                    help=f"γ₂, weight of the peer's τ_p²·KL(S(x′) ‖ P(x′)) ({row}: CIFAR-10 0.1, CIFAR-100 1, "
                         "Tiny-ImageNet 100)"))
    register(Option(flag="--peeraid-lambda1", default=None, type=float,
                    help=f"λ₁, weight of the student's CE(S(x′), y) ({row}: CIFAR 0, Tiny-ImageNet 0.035)"))
    register(Option(flag="--peeraid-lambda2", default=None, type=float,
                    help=f"λ₂, weight of τ²·KL(P(x′) ‖ S(x′)) ({row}: CIFAR 1, Tiny-ImageNet 35)"))
    register(Option(flag="--peeraid-lambda3", default=None, type=float,
                    help=f"λ₃, weight of τ²·KL(S(x) ‖ S(x′)) ({row}: CIFAR 1, Tiny-ImageNet 20)"))
    register(Option(flag="--peeraid-peer-model", default=None, type=str, metavar="MODEL",
                    help="the peer's architecture (default: the student's, as every official command)"))
    register(Option(flag="--peeraid-peer-lr", default=None, type=float,
                    help="the peer's initial learning rate (default: --lr; the code: 0.1 for both networks)"))
    register(Option(flag="--peeraid-peer-weight-decay", default=None, type=float,
                    help="the peer's weight decay (default: --weight-decay; the code: 2e-4 for both networks)"))
    register(Option(flag="--peeraid-validate-peer", default=True, fixed_on_resume=False,
                    help="also validate the peer every epoch (val_peer_clean, val_peer_pgd), as the code monitors it"))


def default_row(dataset: DatasetInfo) -> tuple[dict[str, float], str, bool]:
    """The loss weights for ``dataset``: its command's, else the command's with as many classes (borrowed), else
    the code's argparse defaults (borrowed); with where they come from."""
    if dataset.name in ROWS:
        return ROWS[dataset.name], SOURCES[dataset.name], False
    row = BY_CLASSES.get(dataset.num_classes)
    if row is not None:
        return ROWS[row], (f"{SOURCES[row]}; PeerAiD has no {dataset.name} command, this is the one with "
                           f"{dataset.num_classes} classes"), True
    return ARGPARSE, f"the PeerAiD code's argparse defaults (no command for {dataset.num_classes} classes)", True


@hookimpl
def resolve_options(config: RunConfig, dataset: DatasetInfo) -> dict[str, Any]:
    row, source, borrowed = default_row(dataset)
    values: dict[str, Any] = {key: Default(value=row[key], source=source, borrowed=borrowed) for key in WEIGHTS}
    values["peer_model"] = Default(value=config.model, source="the student's architecture, as every official command")
    values["peer_lr"] = Default(value=config.lr, source="--lr: the official code trains both networks at one rate")
    values["peer_weight_decay"] = Default(value=config.weight_decay,
                                          source="--weight-decay: the official code uses one for both networks")
    return values


def check_options(config: RunConfig) -> None:
    opts = config.peeraid
    for key in ("tau", "tau_peer", "peer_lr"):
        if not opts[key] > 0:
            raise RobustDistillError(f"--peeraid-{key.replace('_', '-')} {opts[key]} must be positive")
    for key in ("gamma1", "gamma2", "lambda1", "lambda2", "lambda3", "peer_weight_decay"):
        if opts[key] < 0:
            raise RobustDistillError(f"--peeraid-{key.replace('_', '-')} {opts[key]} must be 0 (off) or positive")


@hookimpl
def train_start(run: RunView) -> None:
    """The peer — a fresh network — and its own SGD optimiser, stepped and scheduled by the engine."""
    check_options(run.config)
    opts = run.config.peeraid
    peer = run.build_model(opts.peer_model)
    optimizer = torch.optim.SGD(peer.parameters(), lr=opts.peer_lr, momentum=run.config.momentum,
                                weight_decay=opts.peer_weight_decay)
    run.state[NAME] = {"peer": run.add_module("peeraid_peer", peer, optimizer=optimizer, stepped=True)}


def peer_of(run: RunView) -> nn.Module:
    if NAME not in run.state:
        raise RobustDistillError("the peer-kl attack attacks with PeerAiD's peer: select --plugin peeraid")
    return run.state[NAME]["peer"]


def peer_kl_objective(ctx: StepContext) -> Objective:
    """Σ_c KL(σ(P(x)) ‖ σ(S(x′))) per sample, with the peer's clean soft labels (peer in eval mode, no grad)."""
    peer = peer_of(ctx.run)
    with torch.no_grad(), model_mode(peer, train=False):
        target = F.softmax(peer(ctx.x).float(), dim=1)
    return kl_objective(ctx.attack_student, target)


@hookimpl
def attack(ctx: StepContext) -> Tensor:
    return ctx.perturb(ctx.attack_objective(), init="normal", bn="eval", clip_start=False)


@hookimpl
def student_inputs(ctx: StepContext) -> dict[str, Tensor]:
    """S(x′) twice (the peer's target, then the student's own adversarial forward) and S(x), in that order."""
    return {"peer-target": ctx.x_adv, "adv": ctx.x_adv, "clean": ctx.x}


def kl_through_target(target_logits: Tensor, logits: Tensor, tau: float) -> Tensor:
    """Element-wise ``KL(σ(target/τ) ‖ σ(logits/τ))`` ``[B, C]`` with the gradient reaching **both** sides
    (``nn.KLDivLoss`` on a target that is not detached)."""
    return F.kl_div(F.log_softmax(logits.float() / tau, dim=1), F.softmax(target_logits.float() / tau, dim=1),
                    reduction="none")


def em_term(name: str, elements: Tensor, weight: float) -> LossTerm:
    """A term reduced as ``nn.KLDivLoss()``: the mean over the B×C elements."""
    return LossTerm(name, reduce_kl(elements, "mean"), weight=weight,
                    per_sample=lambda: kl_per_sample(elements, "mean"))


def ce_term(name: str, logits: Tensor, y: Tensor, weight: float) -> LossTerm:
    return LossTerm(name, F.cross_entropy(logits, y), weight=weight,
                    per_sample=lambda: F.cross_entropy(logits, y, reduction="none"))


@hookimpl
def loss(ctx: StepContext) -> list[LossTerm]:
    """L_peer + L_stu (steps 3–4 of the module docstring); terms of weight 0 are left out."""
    o = ctx.config.peeraid
    peer = peer_of(ctx.run)
    peer.train()
    p_adv = peer(ctx.x_adv)
    s_target, s_adv, s_clean = (ctx.student_out(key) for key in ("peer-target", "adv", "clean"))
    terms = [
        (o.gamma1, lambda w: ce_term("peer_ce", p_adv, ctx.y, w)),
        (o.gamma2 * o.tau_peer ** 2, lambda w: em_term("peer_kl", kl_through_target(s_target, p_adv, o.tau_peer), w)),
        (o.lambda1, lambda w: ce_term("ce_adv", s_adv, ctx.y, w)),
        (o.lambda2 * o.tau ** 2, lambda w: em_term("kl_adv", kl_elements(s_adv, p_adv, o.tau), w)),
        (o.lambda3 * o.tau ** 2, lambda w: em_term("kl_self", kl_through_target(s_clean, s_adv, o.tau), w)),
    ]
    return [make(weight) for weight, make in terms if weight != 0]


@hookimpl
def epoch_end(run: RunView, metrics: dict[str, Any]) -> None:
    if run.config.peeraid.validate_peer and run.is_main:
        metrics.update({f"val_peer_{name}": value for name, value in run.validate(peer_of(run)).items()})
