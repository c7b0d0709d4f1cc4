"""PAG — Perceptually Aligned Gradients (Ganz, Kawar & Elad, ICML 2023; methods-grad §4).

    L = CE(f(x), y) + λ · s · (1 − (1/BK) Σᵢ Σ_{c∈Sᵢ} cos(∇ₓ log p_θ(c | xᵢ), g*(xᵢ, c)))

For each image, the input gradient of the log-probability of every class c in Sᵢ (the classifier's
class-conditional score) is aligned in cosine with a target gradient g*(x, c). The student's gradients
are taken by double backprop (``create_graph=True``) through the ``input_gradient`` hook, on a batch in
which each image is repeated once per chosen class, in training mode (as the code, so BatchNorm sees
the B·K replicated batch). The cosine is taken over the whole flattened image.

Target providers (``--pag-targets``):

* ``teacher`` (default): g*(x, c) = ∇ₓ log p_T(c | x) of the frozen robust teacher — one ordinary
  backward through it, no gradient into it. This is how PAG becomes a robustness-transfer method here:
  robust models' gradients are perceptually aligned.
* ``PATH``: a precomputed tensor file, loaded with ``weights_only=True``, holding a dict with
  ``images`` (``[N, C, H, W]``, uint8 or floats in [0, 1]) and ``targets`` (``[N, K, C, H, W]``, one
  target per class: the layout of the official data file without its image slot). Batch images are
  matched to it by content, so it needs un-augmented training batches (e.g. Fashion-MNIST, SVHN).
  The paper's score-based (SBG) and heuristic (OI/CM/NN) targets are made outside this package.

``--pag-classes K``: all classes per image (the paper and code, default) or K sampled per image without
replacement (cost grows linearly with K: the K = 10 step is ≈ 42× a plain CE step).

Defaults as the official code: λ = 1.5 (ResNet-18; ViT: 3.0 with ×2/3 for the first 50 epochs,
``--pag-coeff 3 --pag-early-epochs 50``), s = 10 (the code's constant in its PAG loss).

Where the official code differs: its input gradient is taken with respect to the un-augmented image
while the forward sees a crop/flip of it; here the batch is the engine's (already augmented where the
dataset augments) batch. Its gradient is of −CE averaged over the replicated batch, which is the score
up to a positive scale the cosine ignores.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import (LossTerm, Method, Option, RobustDistillError, RunView, StepContext, log_prob_objective,
                               student_forward, student_gradient, teacher_gradient)


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name="pag",
                    summary="PAG: CE + λ·(1 − mean cos(∇ₓ log p(c|x), g*(x, c))); targets from a robust teacher or a "
                            "tensor file"))


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--pag-coeff", default=1.5, help="λ (code: 1.5 for ResNet-18, 3.0 for the ViT)"))
    register(Option(flag="--pag-scale", default=10.0,
                    help="s, the constant multiplying (1 − mean cos) in the code's PAG loss"))
    register(Option(flag="--pag-classes", default=0,
                    help="classes per image whose gradients are aligned: 0 = all (paper), K = a random K per image"))
    register(Option(flag="--pag-targets", default="teacher",
                    help="target gradients: 'teacher' (its ∇ₓ log p_T(c|x)) or a tensor file {images, targets[N, K, "
                         "C, H, W]}"))
    register(Option(flag="--pag-early-epochs", default=0, help="multiply λ by --pag-early-factor in the first N epochs "
                    "(code's ViT: 50)"))
    register(Option(flag="--pag-early-factor", default=2 / 3,
                    help="λ factor of the first --pag-early-epochs epochs (code: 2/3)"))


def alignment_loss(grads: Tensor, targets: Tensor) -> Tensor:
    """1 − mean over rows of the cosine similarity of the flattened gradients and targets."""
    return 1 - F.cosine_similarity(grads.float().flatten(1), targets.float().flatten(1), dim=1).mean()


def choose_classes(batch: int, num_classes: int, k: int, device: torch.device) -> Tensor:
    """``[B, k]`` classes per image: all of them in order (k = 0 or K), else k drawn without replacement."""
    if k <= 0 or k >= num_classes:
        return torch.arange(num_classes, device=device).expand(batch, num_classes)
    return torch.rand(batch, num_classes, device=device).argsort(dim=1)[:, :k]


def _image_keys(images: Tensor) -> Tensor:
    """Images as uint8 on the CPU (floats in [0, 1] are rounded to 0..255) for exact matching."""
    if images.dtype == torch.uint8:
        return images.cpu()
    return (images.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8)


@dataclass
class TargetFile:
    """Precomputed target gradients g*(x, c) of the training images, found by image content."""

    path: str
    targets: Tensor
    index: dict[bytes, int]

    @classmethod
    def load(cls, path: str, num_classes: int, image_shape: tuple[int, ...]) -> "TargetFile":
        if not Path(path).is_file():
            raise RobustDistillError(f"--pag-targets {path!r}: no such file (or pass --pag-targets teacher)")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise RobustDistillError(f"--pag-targets {path!r} is not a readable tensor file of plain tensors: "
                                     f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        if not isinstance(obj, dict) or not {"images", "targets"} <= set(obj):
            raise RobustDistillError(f"--pag-targets {path!r} must hold a dict with 'images' [N, C, H, W] and "
                                     "'targets' [N, K, C, H, W]")
        images, targets = obj["images"], obj["targets"]
        expected = (len(images), num_classes, *image_shape)
        if tuple(images.shape[1:]) != tuple(image_shape) or tuple(targets.shape) != expected:
            raise RobustDistillError(f"--pag-targets {path!r}: images {tuple(images.shape)} and targets "
                                     f"{tuple(targets.shape)} do not fit {num_classes} classes of {tuple(image_shape)} "
                                     f"images (targets must be {expected})")
        keys = _image_keys(images).reshape(len(images), -1).numpy()
        return cls(path, targets, {row.tobytes(): i for i, row in enumerate(keys)})

    def lookup(self, x: Tensor) -> Tensor:
        """``[B, K, C, H, W]`` targets of the batch images ``x`` (on ``x``'s device)."""
        keys = _image_keys(x).reshape(len(x), -1).numpy()
        rows = [self.index.get(row.tobytes()) for row in keys]
        if any(r is None for r in rows):
            missing = sum(r is None for r in rows)
            raise RobustDistillError(f"--pag-targets {self.path!r} has no targets for {missing} image(s) of the batch; "
                                     "it must cover the training images (un-augmented)")
        return self.targets[torch.tensor(rows)].to(device=x.device, dtype=torch.float32)


def target_gradients(ctx: StepContext, x_rep: Tensor, classes: Tensor) -> Tensor:
    """g*(x, c) for each replicated image and its class: from the teacher, or from the target file."""
    bank: TargetFile | None = ctx.run.state.get("pag")
    if bank is None:
        return teacher_gradient(ctx, x_rep, log_prob_objective(classes.reshape(-1)))
    stored = bank.lookup(ctx.x)
    picked = stored[torch.arange(len(ctx.x), device=stored.device)[:, None], classes.to(stored.device)]
    return picked.reshape(x_rep.shape)


@hookimpl
def train_start(run: RunView) -> None:
    opts = run.config.pag
    k = run.arch.num_classes
    if not 0 <= opts.classes <= k:
        raise RobustDistillError(f"--pag-classes {opts.classes} must be between 0 (all) and {k}")
    if opts.targets == "teacher":
        if run.teacher is None:
            raise RobustDistillError("pag takes its target gradients from a robust teacher: pass --teacher CKPT, "
                                     "or a precomputed file with --pag-targets FILE")
        return
    if run.dataset.augment != "none":
        raise RobustDistillError(f"--pag-targets FILE matches batch images to the file, but {run.data.info.name} "
                                 "batches are augmented; use --pag-targets teacher")
    image_shape = (run.arch.in_channels, run.arch.image_size, run.arch.image_size)
    run.state["pag"] = TargetFile.load(opts.targets, k, image_shape)


@hookimpl
def loss(ctx: StepContext) -> list[LossTerm]:
    opts = ctx.config.pag
    logits = ctx.student_out("clean", ctx.x)
    num_classes = logits.shape[1]
    classes = choose_classes(len(ctx.x), num_classes, opts.classes, ctx.x.device)
    k = classes.shape[1]
    x_rep = ctx.x.repeat_interleave(k, dim=0)
    flat = classes.reshape(-1)
    x_in, rep_logits = student_forward(ctx, f"clean×{k}|pag", x_rep)
    grads = student_gradient(ctx, x_in, rep_logits, log_prob_objective(flat), create_graph=True)
    targets = target_gradients(ctx, x_rep, classes)
    weight = opts.coeff * opts.scale * (opts.early_factor if ctx.epoch <= opts.early_epochs else 1.0)
    return [LossTerm("ce", F.cross_entropy(logits, ctx.y)),
            LossTerm("pag", alignment_loss(grads, targets), weight=weight)]
