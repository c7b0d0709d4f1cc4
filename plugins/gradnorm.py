"""GradNorm — input-gradient norm regularisation (Rodríguez-Muñoz, Wang & Torralba, ECCV 2024, Eq. 2;
methods-grad §3.1).

    L = λ_CE · CE(f(x), y) + λ_GN · (ε/σ) · ‖∇_z CE(f(x), y)‖₁,     z = (x − μ)/σ the normalised input

ε‖∇‖₁ is the first-order worst-case increase of the loss in the L∞ ball of radius ε (the L1 norm is the
dual of L∞). Our models take pixels in [0, 1] and normalise inside, so the gradient is taken with
respect to the pixels, where (ε/σ)·‖∇_z CE‖₁ = ε·‖∇ₓ CE‖₁ with ε in pixel units (``--gradnorm-eps``).
The gradient is exact, by double backprop through the ``input_gradient`` hook (``create_graph=True``); the
per-sample norms are averaged over the batch (the code's B·∇ of the mean loss). λ_CE = 0.8, λ_GN = 1.2, and λ_GN is
ramped linearly from 0 over the first 5 epochs, per step (the code's [0, 0.2, 1] schedule).

**Use a smooth activation**: ``--activation gelu`` or ``silu``. The paper finds that GradNorm fails with
ReLU (ResNet-50, AutoAttack ε = 4/255: ReLU 16.94% clean / 6.82% robust, GELU 60.34 / 30.00, SiLU
61.84 / 30.58; Table 4), while adversarial training hardly depends on it. The second derivative of
ReLU is zero almost everywhere, so the regulariser cannot shape the curvature it needs.

ε is the official configuration's, **4/255**, on every dataset. It is the paper's ImageNet threat model
(with σ = 0.225), and the official CIFAR configuration keeps the same constant (and σ) although its attacks
use 8/255: the regulariser's ε is a constant of the method, not the dataset's ε. Fashion-MNIST has no
official configuration, so it gets the same constant, 4/255 ≈ 0.016 in pixel units against a threat
model of 0.1 (the CIFAR ratio, half the attack radius, would give 0.05). ``--gradnorm-eps 0.1`` (the
run's ``--eps``, the default of earlier versions) regularises at the threat model's radius instead.

Where the official code differs: it runs the whole training with the model in **eval mode** (BatchNorm
running statistics, so each sample's gradient is its own; ``--gradnorm-bn eval``), from pretrained
checkpoints. Training from scratch here keeps BatchNorm in training mode by default, where the batch
statistics couple the samples' gradients. The code's CE is the soft-target CE of mixup/cutmix batches;
here it is the CE of the hard labels.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import (BN_MODES, LossTerm, Method, Option, RobustDistillError, RunView, StepContext,
                               student_forward, student_gradient)

RELU_NOTE = ("the paper finds that {method} fails with ReLU networks (Table 4: 16.94% clean / 6.82% AutoAttack "
             "against 60.34% / 30.00% with GELU); train with --activation gelu or silu")


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name="gradnorm", summary="GradNorm: λ_CE·CE + λ_GN·ε·‖∇ₓCE‖₁ by double backprop; no teacher "
                    "(use --activation gelu|silu)"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--gradnorm-ce-weight", default=0.8, help="λ_CE (paper: 0.8)"))
    register(Option(flag="--gradnorm-weight", default=1.2,
                    help="λ_GN, weight of ε·‖∇ₓCE‖₁ after the warm-up (paper: 1.2)"))
    register(Option(flag="--gradnorm-eps", default=4 / 255,
                    help="ε of the regulariser in pixel units (official configuration: 4/255 on every dataset, CIFAR "
                         "included; the run's --eps is another choice)"))
    register(Option(flag="--gradnorm-warmup-epochs", default=5.0,
                    help="λ_GN ramps linearly from 0 over this many epochs (code: 5)"))
    register(Option(flag="--gradnorm-bn", default="train", choices=BN_MODES,
                    help="BatchNorm mode of the regularised forward: train, or eval (official code: the model is in "
                         "eval mode throughout)"))


def gradient_l1(grad: Tensor) -> Tensor:
    """Mean over the batch of each sample's ‖∇ₓ‖₁."""
    return grad.float().flatten(1).abs().sum(dim=1).mean()


def ramp(progress: float, warmup: float) -> float:
    """min(progress / warmup, 1): 0 at the first step, 1 after ``warmup`` epochs."""
    return 1.0 if warmup <= 0 else min(max(progress / warmup, 0.0), 1.0)


def note_relu(run: RunView, method: str) -> None:
    if run.arch.activation == "relu" and run.is_main:
        print(f"robustdistill: note: {RELU_NOTE.format(method=method)}", file=sys.stderr, flush=True)


@hookimpl
def train_start(run: RunView) -> None:
    eps = run.config.gradnorm.eps
    if not 0 < eps <= 1:
        raise RobustDistillError(f"--gradnorm-eps {eps} is outside (0, 1]; e.g. 4/255")
    note_relu(run, "GradNorm")


@hookimpl
def loss(ctx: StepContext) -> list[LossTerm]:
    opts = ctx.config.gradnorm
    train = None if opts.bn == "train" else False
    key = "clean|∇x" if train is None else "clean|∇x|bn-eval"
    x_in, logits = student_forward(ctx, key, ctx.x, train=train)
    y = ctx.y
    grad = student_gradient(ctx, x_in, logits, lambda out: F.cross_entropy(out.float(), y, reduction="sum"),
                            create_graph=True, train=train)
    weight = opts.weight * ramp(ctx.epoch_progress, opts.warmup_epochs)
    return [LossTerm("ce", F.cross_entropy(logits, y), weight=opts.ce_weight),
            LossTerm("gradnorm", opts.eps * gradient_l1(grad), weight=weight)]
