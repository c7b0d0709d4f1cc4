"""EdgeReg — edge-concentration regulariser (Rodríguez-Muñoz, Wang & Torralba, ECCV 2024; methods-grad §3.2).

Robust models' input gradients concentrate on image edges; EdgeReg asks for that directly::

    L = CE(f(x), y) + α · MSE( g / √mean(g²),  E / √mean(E²) ),   g = ∇ₓ f(x)_c,  c ~ Cat(softmax(f(x)/T))

g is the input gradient of the logit of a class c sampled per image at temperature T = 0.5 (no
gradient through the sample), taken by double backprop through the ``input_gradient`` hook. E is the
edge energy of the input (no gradient): a discrete-Gaussian blur (taps e^{-t}·I_n(t), t = 1, n = −3…3,
reflect padding), the 3×3 derivative kernels [[−½, 0, ½], [−1, 0, 1], [−½, 0, ½]] and their transpose
per channel, E = √Σ_c(∂x² + ∂y²), blurred again and repeated over the channels. Both maps are divided
by their RMS over the **whole batch tensor**. α ramps as min(1 + 0.09·epochs, 19) (from 1 to 10 over
100 epochs, per step). ``--edgereg-saliency`` compares max_c |g| instead of g. As in the code, E is
non-negative while g is signed, and the model trains in training mode.

Smooth activations (``--activation gelu|silu``) are needed: with ReLU the second derivative through the
network vanishes and input-gradient regularisers fail (the paper's Table 4, see the ``gradnorm`` plugin).

Where the official code differs: it differentiates with respect to the mean/std-normalised input and
takes E of that input; here both are in pixel space (the same up to a per-channel scale, which the RMS
normalisation removes for one-channel data), and the CE is of hard labels rather than mixup/cutmix.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import (LossTerm, Method, Option, RobustDistillError, RunView, StepContext, student_forward,
                               student_gradient)

from .gradnorm import note_relu

DERIVATIVE = torch.tensor([[-0.5, 0.0, 0.5], [-1.0, 0.0, 1.0], [-0.5, 0.0, 0.5]])


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name="edgereg",
                    summary="EdgeReg: CE + α·MSE(RMS-normalised ∇ₓ sampled logit, RMS-normalised edge energy); no "
                            "teacher (use --activation gelu|silu)"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--edgereg-weight", default=1.0, help="α at the start of training (code: 1)"))
    register(Option(flag="--edgereg-weight-step", default=0.09, help="α grows by this much per epoch (code: 0.09)"))
    register(Option(flag="--edgereg-weight-max", default=19.0, help="upper bound of α (code: 19)"))
    register(Option(flag="--edgereg-temperature", default=0.5,
                    help="temperature T of the class sampled per image (code: 0.5)"))
    register(Option(flag="--edgereg-sigma", default=1.0,
                    help="t of the discrete-Gaussian blur of the edge energy (code: 1)"))
    register(Option(flag="--edgereg-saliency", default=False,
                    help="compare max over channels of |g| instead of g (code: off)"))


# -- edge energy ------------------------------------------------------------------------------------

def bessel_i(n: int, t: float, terms: int = 40) -> float:
    """Modified Bessel function of the first kind, I_n(t) = Σ_m (t/2)^{2m+n} / (m!·(m+n)!)."""
    return sum((t / 2) ** (2 * m + n) / (math.factorial(m) * math.factorial(m + n)) for m in range(terms))


def gaussian_taps(t: float) -> Tensor:
    """The discrete Gaussian e^{-t}·I_|n|(t) for n = −⌈3t⌉ … ⌈3t⌉."""
    order = max(1, math.ceil(3 * t))
    return torch.tensor([math.exp(-t) * bessel_i(abs(n), t) for n in range(-order, order + 1)])


def blur(x: Tensor, taps: Tensor) -> Tensor:
    """Separable per-channel blur of ``[B, C, H, W]`` with reflect padding."""
    c, k = x.shape[1], len(taps)
    pad = k // 2
    taps = taps.to(device=x.device, dtype=x.dtype)
    x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), taps.view(1, 1, k, 1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), taps.view(1, 1, 1, k).repeat(c, 1, 1, 1), groups=c)


def edge_energy(x: Tensor, t: float = 1.0) -> Tensor:
    """``[B, 1, H, W]`` edge energy: blur → per-channel derivatives → √Σ_c(∂x² + ∂y²) → blur."""
    taps = gaussian_taps(t)
    smooth = blur(x.float(), taps)
    c = x.shape[1]
    kx = DERIVATIVE.to(device=x.device, dtype=smooth.dtype)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(c, 1, 1, 1)  # [2C, 1, 3, 3]: ∂x, ∂y per channel
    derivs = F.conv2d(F.pad(smooth, (1, 1, 1, 1), mode="reflect"), kernels, groups=c)
    energy = (derivs ** 2).sum(dim=1, keepdim=True).sqrt()
    return blur(energy, taps)


def rms_normalise(t: Tensor) -> Tensor:
    """``t / √mean(t²)`` over the whole tensor."""
    return t * torch.rsqrt((t.float() ** 2).mean().clamp_min(1e-24))


def edge_loss(grad: Tensor, energy: Tensor, saliency: bool = False) -> Tensor:
    """MSE between the RMS-normalised gradient and the RMS-normalised edge energy (broadcast over channels)."""
    grad = grad.float()
    if saliency:
        grad = grad.abs().amax(dim=1, keepdim=True)
    else:
        energy = energy.expand_as(grad)
    return F.mse_loss(rms_normalise(grad), rms_normalise(energy.float()))


def alpha(progress: float, start: float, step: float, maximum: float) -> float:
    return min(start + progress * step, maximum)


# -- hooks ------------------------------------------------------------------------------------------

@hookimpl
def train_start(run: RunView) -> None:
    opts = run.config.edgereg
    if opts.temperature <= 0:
        raise RobustDistillError(f"--edgereg-temperature {opts.temperature} must be positive")
    if opts.sigma <= 0:
        raise RobustDistillError(f"--edgereg-sigma {opts.sigma} must be positive")
    if run.arch.image_size <= math.ceil(3 * opts.sigma):
        raise RobustDistillError(f"--edgereg-sigma {opts.sigma} is too wide for {run.arch.image_size}-pixel "
                                 "images (the blur uses reflect padding of ⌈3t⌉ pixels)")
    note_relu(run, "EdgeReg")


@hookimpl
def loss(ctx: StepContext) -> list[LossTerm]:
    opts = ctx.config.edgereg
    x_in, logits = student_forward(ctx, "clean|∇x", ctx.x)
    with torch.no_grad():
        sampled = torch.distributions.Categorical(logits=logits.detach().float() / opts.temperature).sample()
        energy = edge_energy(ctx.x, opts.sigma)
    grad = student_gradient(ctx, x_in, logits, lambda out: out.float().gather(1, sampled[:, None]).sum(),
                            create_graph=True)
    weight = alpha(ctx.epoch_progress, opts.weight, opts.weight_step, opts.weight_max)
    return [LossTerm("ce", F.cross_entropy(logits, ctx.y)),
            LossTerm("edgereg", edge_loss(grad, energy, opts.saliency), weight=weight)]
