"""IGAM — Input Gradient Adversarial Matching (Chan, Tay & Ong, CVPR 2020; methods-grad §1).

Algorithm 1 of the paper, with J the input gradients of the student (J_s) and of the robust teacher (J_t)::

    min_θ  CE(f_s(x), y) + λ_adv · L_adv + λ_diff · ‖J_s − J_t‖²₂
    max_φ  L_adv,     L_adv = log D_φ(J_t) + log(1 − D_φ(J_s))

The student's gradient J_s is taken with ``create_graph=True``, so the loss reaches the student's
weights through J_s (double backprop); J_t is one ordinary backward through the frozen teacher, which
never receives a gradient. D is a discriminator on gradient maps: ``--igam-disc-layers`` 4×4 stride-2
convolutions (``'SAME'`` padding, widths ``w·2^i``) each followed by BatchNorm and LeakyReLU(0.1), then a
linear layer to 2 logits (class 1 = "teacher"). It is a plugin-owned module with its own SGD-momentum
optimiser, saved in every checkpoint and restored on ``--resume``, and stepped every
``--igam-disc-every`` student steps on that step's gradient maps.

As in the official code (where it differs from Algorithm 1):

* J is the gradient of the **true-class probability** p_y(x) = softmax(f(x))_y, not of the CE
  (``--igam-grad-target ce`` is the paper's). ∇ₓp_y = −p_y·∇ₓCE: the sign is the same for both nets,
  and the factor p_y weights L_diff by how sure each net is.
* D sees each map **mean-centred and L2-normalised** per sample (``--igam-disc-input raw``: Algorithm 1).
* L_adv is the saturating minimax form averaged over the 2B maps: the student's term is
  ``−CE_D`` = (1/2B)·Σ[log D(J_t) + log(1 − D(J_s))] (λ_adv is the code's ``beta``, λ_diff its ``gamma``).
* L_diff = Σ over the batch **and** the pixels of (J_s − J_t)², at the code's batch of 32. Summed over a
  batch of B, its weight per sample would grow with B (4× at the engine's default 128 for the same λ_diff),
  so the default ``--igam-diff-reduction sum32`` is (32/B)·Σ: exactly the code's value at B = 32 and the
  code's weight per sample at any batch size, so λ_diff = 10 keeps its meaning. ``sum`` is the code's
  formula at the run's batch size, ``mean`` divides by B (λ_diff × 32 matches the code). With
  gradients per unit of the raw 0–255 pixel value the code feeds its networks (``--igam-pixel-scale``;
  our models take [0, 1] inputs, so J here is ∇_{x∈[0,1]}/255).
* The published scripts train with plain CE for 280k of 320k steps before IGAM starts:
  ``--igam-plain-ce-steps``. D's weight decay 2e-4 acts on its conv and linear weights; its learning
  rate follows the student's schedule (``same_optimizer``) unless ``--igam-disc-lr`` is given.
* Defaults are the CIFAR-10 → CIFAR-100 run: λ_adv = 2, λ_diff = 10, D of 5 layers from width 16
  (Tiny-ImageNet → CIFAR-10: ``--igam-lambda-adv 5 --igam-disc-layers 4 --igam-disc-width 8``).

Differences that remain: D is stepped on the maps of the student *before* its update of the same step
(the code recomputes them after); the C10→C100 script's uniform input noise is not reproduced.

Cross-task transfer: a teacher trained on another label set gets a new linear head finetuned on its
frozen features with ``robustdistill finetune-head TEACHER --dataset D --out T.pt`` (Adam 1e-3, as the
code); a teacher trained at another resolution is bridged by ``--teacher-resize``, which resizes inside
the teacher, so J_t is the gradient with respect to the student-resolution input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustdistill import hookimpl
from robustdistill.api import (LossTerm, Method, Option, PluginOptions, RobustDistillError, RunView, StepContext,
                               student_forward, student_gradient, teacher_gradient)

GRAD_TARGETS = ("true-prob", "ce")
DISC_INPUTS = ("zero-mean-l2", "raw")
REDUCTIONS = ("sum32", "sum", "mean")
CODE_BATCH = 32  # the batch size of the official scripts
STUDENT, TEACHER = 0, 1  # the discriminator's classes


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name="igam", needs_teacher=True,
                    summary="IGAM: CE + λ_adv·GAN loss of a discriminator on input gradients + λ_diff·‖J_s − J_t‖²"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--igam-lambda-adv", default=2.0,
                    help="λ_adv, weight of the adversarial gradient-matching term (code `beta`: 2 for C10→C100, 5 "
                         "for TinyImageNet→C10)"))
    register(Option(flag="--igam-lambda-diff", default=10.0, help="λ_diff, weight of ‖J_s − J_t‖² (code `gamma`)"))
    register(Option(flag="--igam-grad-target", default="true-prob", choices=GRAD_TARGETS,
                    help="J = ∇ₓ of the true-class probability (official code) or of the CE (paper)"))
    register(Option(flag="--igam-diff-reduction", default="sum32", choices=REDUCTIONS,
                    help="L_diff over the batch: sum32 = Σ × 32/B, the code's sum at its batch of 32 whatever "
                         "--batch-size is; sum = Σ (the code's formula, grows with the batch); mean = Σ/B"))
    register(Option(flag="--igam-pixel-scale", default=255.0,
                    help="L_diff compares gradients per unit of a pixel value in [0, N]: 255 as the code's raw-pixel "
                         "inputs, 1 for [0, 1] intensities"))
    register(Option(flag="--igam-disc-input", default="zero-mean-l2", choices=DISC_INPUTS,
                    help="what D sees: per-sample mean-centred, L2-normalised maps (code) or raw gradients "
                         "(Algorithm 1)"))
    register(Option(flag="--igam-disc-layers", default=5, help="conv layers of D (C10→C100: 5, TinyImageNet→C10: 4)"))
    register(Option(flag="--igam-disc-width", default=16,
                    help="channels of D's first layer, doubled per layer (code: 16 or 8)"))
    register(Option(flag="--igam-disc-every", default=5, help="one discriminator step every N student steps (code: 5)"))
    register(Option(flag="--igam-disc-lr", default=None, type=float,
                    help="D's SGD-momentum learning rate (default: the student's current lr, as the code)"))
    register(Option(flag="--igam-disc-weight-decay", default=2e-4,
                    help="weight decay of D's conv and linear weights (code: 2e-4)"))
    register(Option(flag="--igam-plain-ce-steps", default=0,
                    help="train with plain CE for this many steps before IGAM starts (published scripts: 280000 of "
                         "320000)"))


# -- the discriminator ------------------------------------------------------------------------------

class SamePadConv(nn.Conv2d):
    """A 4×4 stride-2 convolution with TensorFlow's ``'SAME'`` padding: output size ⌈n/2⌉."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, kernel_size=4, stride=2)

    @staticmethod
    def padding_for(n: int) -> tuple[int, int]:
        total = max((math.ceil(n / 2) - 1) * 2 + 4 - n, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = self.padding_for(x.shape[-2])
        left, right = self.padding_for(x.shape[-1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


class Discriminator(nn.Module):
    """Two-class classifier of gradient maps: [4×4/2 conv → BN → LeakyReLU(0.1)] × layers → linear."""

    def __init__(self, in_channels: int, image_size: int, layers: int = 5, width: int = 16) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        cin, size = in_channels, image_size
        for i in range(layers):
            cout = width * 2 ** i
            # BatchNorm decay 0.9 in the code = momentum 0.1 here
            blocks += [SamePadConv(cin, cout), nn.BatchNorm2d(cout, momentum=0.1), nn.LeakyReLU(0.1)]
            cin, size = cout, math.ceil(size / 2)
        self.body = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin * size * size, 2)

    def forward(self, maps: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.body(maps), 1))


def normalise_maps(maps: Tensor, mode: str = "zero-mean-l2") -> Tensor:
    """D's input: each map minus its own mean, divided by its L2 norm (``tf.math.l2_normalize``, ε = 1e-12)."""
    if mode == "raw":
        return maps
    flat = maps.flatten(1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    flat = flat * torch.rsqrt((flat ** 2).sum(dim=1, keepdim=True).clamp_min(1e-12))
    return flat.view_as(maps)


def discriminator_batch(j_s: Tensor, j_t: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """The 2B maps ``[J_s; J_t]`` normalised for D, and their labels (0 = student, 1 = teacher)."""
    maps = torch.cat([normalise_maps(j_s.float(), mode), normalise_maps(j_t.float(), mode)])
    labels = torch.cat([torch.full((len(j_s),), STUDENT), torch.full((len(j_t),), TEACHER)]).to(maps.device)
    return maps, labels


def adversarial_term(disc: nn.Module, j_s: Tensor, j_t: Tensor, mode: str) -> Tensor:
    """L_adv = (1/2B)·Σ[log D(J_t) + log(1 − D(J_s))] = −CE_D: D maximises it, the student minimises it."""
    maps, labels = discriminator_batch(j_s, j_t, mode)
    return -F.cross_entropy(disc(maps), labels)


def diff_term(j_s: Tensor, j_t: Tensor, reduction: str = "sum32", pixel_scale: float = 1.0) -> Tensor:
    """‖J_s − J_t‖² over batch and pixels: Σ × 32/B (``sum32``, the code's value at its batch of 32), Σ (``sum``)
    or Σ/B (``mean``); gradients per 1/``pixel_scale``."""
    total = (((j_s.float() - j_t.float()) / pixel_scale) ** 2).sum()
    divisor = {"sum32": len(j_s) / CODE_BATCH, "sum": 1, "mean": len(j_s)}[reduction]
    return total / divisor


def gradient_objective(target: str, y: Tensor) -> Callable[[Tensor], Tensor]:
    """Σᵢ p_{yᵢ}(xᵢ) (code) or Σᵢ CE(f(xᵢ), yᵢ) (paper): its input gradient is each sample's J."""
    if target == "ce":
        return lambda logits: F.cross_entropy(logits.float(), y, reduction="sum")
    return lambda logits: torch.softmax(logits.float(), dim=1).gather(1, y[:, None]).sum()


@dataclass
class IgamState:
    """The run's discriminator and its optimiser, with running discriminator metrics of the epoch."""

    disc: Discriminator
    optimizer: torch.optim.Optimizer
    d_loss_sum: float = 0.0
    d_correct: int = 0
    d_seen: int = 0
    d_steps: int = 0


def make_state(opts: PluginOptions, lr: float, in_channels: int, image_size: int,
               device: torch.device | str = "cpu") -> IgamState:
    """Build the discriminator and its SGD-momentum optimiser from igam's options (``lr``: the student's)."""
    disc = Discriminator(in_channels, image_size, opts.disc_layers, opts.disc_width).to(device)
    decayed = [p for p in disc.parameters() if p.dim() > 1]
    plain = [p for p in disc.parameters() if p.dim() <= 1]
    lr = opts.disc_lr if opts.disc_lr is not None else lr
    optimizer = torch.optim.SGD([{"params": decayed, "weight_decay": opts.disc_weight_decay},
                                 {"params": plain, "weight_decay": 0.0}], lr=lr, momentum=0.9)
    return IgamState(disc, optimizer)


def update_discriminator(state: IgamState, j_s: Tensor, j_t: Tensor, mode: str, lr: float | None = None) -> Tensor:
    """One ascent step of D on L_adv (a descent step on its 2-class CE); returns the CE before the step."""
    if lr is not None:
        for group in state.optimizer.param_groups:
            group["lr"] = lr
    maps, labels = discriminator_batch(j_s.detach(), j_t.detach(), mode)
    state.disc.train()
    with torch.enable_grad():
        logits = state.disc(maps)
        d_loss = F.cross_entropy(logits, labels)
        state.optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.d_loss_sum += float(d_loss.detach())
    state.d_correct += int((logits.argmax(1) == labels).sum())
    state.d_seen += len(labels)
    state.d_steps += 1
    return d_loss.detach()


# -- hooks ------------------------------------------------------------------------------------------

@hookimpl
def train_start(run: RunView) -> None:
    opts = run.config.igam
    for flag, value, low in (("--igam-disc-layers", opts.disc_layers, 1), ("--igam-disc-width", opts.disc_width, 1),
                             ("--igam-disc-every", opts.disc_every, 1), ("--igam-plain-ce-steps", opts.plain_ce_steps, 0)):
        if value < low:
            raise RobustDistillError(f"{flag} {value} must be at least {low}")
    if opts.pixel_scale <= 0:
        raise RobustDistillError(f"--igam-pixel-scale {opts.pixel_scale} must be positive (255 or 1)")
    state = run.state["igam"] = make_state(opts, run.config.lr, run.arch.in_channels, run.arch.image_size, run.device)
    run.add_module("igam_discriminator", state.disc, optimizer=state.optimizer)


@hookimpl
def epoch_start(run: RunView, epoch: int) -> None:
    state: IgamState = run.state["igam"]
    state.d_loss_sum, state.d_correct, state.d_seen, state.d_steps = 0.0, 0, 0, 0


@hookimpl
def loss(ctx: StepContext) -> list[LossTerm]:
    opts = ctx.config.igam
    if ctx.step < opts.plain_ce_steps:
        return [LossTerm("ce", F.cross_entropy(ctx.student_out("clean", ctx.x), ctx.y))]
    objective = gradient_objective(opts.grad_target, ctx.y)
    x_in, logits = student_forward(ctx, "clean|∇x", ctx.x)
    j_s = student_gradient(ctx, x_in, logits, objective, create_graph=True)
    j_t = teacher_gradient(ctx, ctx.x, objective)
    terms = [LossTerm("ce", F.cross_entropy(logits, ctx.y)),
             LossTerm("igam_diff", diff_term(j_s, j_t, opts.diff_reduction, opts.pixel_scale),
                      weight=opts.lambda_diff)]
    if opts.lambda_adv:
        state: IgamState = ctx.run.state["igam"]
        state.disc.train()
        terms.append(LossTerm("igam_adv", adversarial_term(state.disc, j_s, j_t, opts.disc_input),
                              weight=opts.lambda_adv))
        ctx.state["igam_maps"] = (j_s.detach(), j_t)
    return terms


@hookimpl
def step_end(run: RunView, ctx: StepContext) -> None:
    opts = run.config.igam
    maps = ctx.state.get("igam_maps")
    if maps is None or ctx.step % opts.disc_every:
        return
    lr = opts.disc_lr if opts.disc_lr is not None else run.lr
    update_discriminator(run.state["igam"], *maps, mode=opts.disc_input, lr=lr)


@hookimpl
def epoch_end(run: RunView, metrics: dict) -> None:
    state: IgamState = run.state["igam"]
    if state.d_steps:
        metrics["igam_disc_loss"] = state.d_loss_sum / state.d_steps
        metrics["igam_disc_acc"] = state.d_correct / state.d_seen
