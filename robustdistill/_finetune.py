"""``robustdistill finetune-head``: a new linear head on a frozen teacher, for cross-task transfer.

IGAM transfers robustness from a teacher trained on another task (CIFAR-10 → CIFAR-100, Tiny-ImageNet →
CIFAR-10). The teacher keeps its robust feature extractor, frozen, and gains a new linear classifier for
the target classes, trained alone with Adam (lr 1e-3, weight decay 2e-4 on its weights) on the target
data (the official code: 4,700 steps at batch 64, about 5 epochs of a 60,000-image dataset). The result
is an ordinary robustdistill checkpoint with the target dataset's classes, usable as ``--teacher``.

A teacher trained at another image size keeps its size: target images are resized to it (bilinear)
while the head is trained, and students then use the new teacher with ``--teacher-resize``.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import __version__
from ._checkpoint import save_checkpoint
from ._command_config import FinetuneConfig
from ._config import resolve_device
from ._data import BatchIterator, take_subset
from ._models import Classifier, build_model
from ._registry import ImageData, ModelArch, Registry, RobustDistillError
from ._specs import load_model_spec, open_source


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def with_new_head(teacher: Classifier, arch: ModelArch, num_classes: int, registry: Registry) -> Classifier:
    """A copy of ``teacher`` for ``num_classes`` classes: the same body and normalisation, a fresh head."""
    new_arch = ModelArch(arch.name, num_classes, arch.in_channels, arch.image_size, arch.activation,
                         tuple(arch.mean), tuple(arch.std))
    model = build_model(new_arch, registry.models)
    body = {k: v for k, v in teacher.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(body, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise RobustDistillError(f"cannot move the body of {arch.name!r} to a new model: missing {missing}, "
                                 f"unexpected {unexpected}")
    return model


def accuracy(model: nn.Module, x_u8: Tensor, y: Tensor, device: torch.device, image_size: int,
             batch_size: int = 512) -> float:
    correct = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            x = _resize(x_u8[start:start + batch_size].to(device).float() / 255, image_size)
            correct += int((model(x).argmax(1) == y[start:start + batch_size].to(device)).sum())
    return correct / max(len(y), 1)


def finetune_head(model: Classifier, data: ImageData, *, epochs: int, batch_size: int, lr: float,
                  weight_decay: float, device: torch.device, seed: int, log=print) -> list[dict[str, Any]]:
    """Train ``model.head`` alone (Adam, L2 on its weight) on frozen features; the body stays in eval mode."""
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    head = model.head
    for p in head.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam([{"params": [head.weight], "weight_decay": weight_decay},
                                  {"params": [head.bias], "weight_decay": 0.0}], lr=lr)
    batches = BatchIterator(data.train_x, data.train_y, batch_size, shuffle=True, seed=seed, device=device,
                            augment=data.info.augment)
    size = model.arch.image_size
    history = []
    for epoch in range(1, epochs + 1):
        batches.set_epoch(epoch)
        started = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in batches.batches():
            with torch.no_grad():
                features = model.forward_features(_resize(x, size))
            logits = head(features)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        metrics = {"epoch": epoch, "loss": loss_sum / seen, "train_acc": correct / seen,
                   "seconds": time.perf_counter() - started}
        history.append(metrics)
        log(f"head epoch {epoch}/{epochs}  loss {metrics['loss']:.4f}  train acc {metrics['train_acc']:.3f}", flush=True)
    for p in head.parameters():
        p.requires_grad_(False)
    return history


def finetune_command(args: FinetuneConfig, registry: Registry) -> int:
    """Run ``robustdistill finetune-head``: write a teacher with a head for ``--dataset``. Returns 0."""
    source = open_source(args.checkpoint)
    if source.path is None or source.checkpoint is None:
        raise RobustDistillError(f"finetune-head writes a robustdistill checkpoint, which cannot rebuild {source.spec}; "
                                 "pass a robustdistill checkpoint, a run directory or a plain state_dict with --arch")
    out = Path(args.out)
    if out.resolve() == source.path.resolve():
        raise RobustDistillError("--out must differ from the teacher checkpoint it is made from")
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    data = registry.dataset(args.dataset).load(args.data_dir, args.download)
    data = take_subset(data, train=args.subset)
    info = data.info
    source_info = replace(info, num_classes=args.source_classes) if args.source_classes else info
    loaded = load_model_spec(source, info=source_info, models=registry.models, arch=args.arch,
                             normalize=args.normalize, flag_prefix="")
    teacher, arch = loaded.model, loaded.arch
    obj = source.checkpoint
    if arch.in_channels != info.in_channels:
        raise RobustDistillError(f"teacher {source.spec!r} takes {arch.in_channels}-channel images but {info.name} has "
                                 f"{info.in_channels}-channel images, and the new head keeps the teacher's body; "
                                 f"finetune a teacher trained on {info.in_channels}-channel images")
    if arch.image_size != info.image_size:
        print(f"note: the teacher takes {arch.image_size}×{arch.image_size} images; {info.name} images are resized to "
              "it here, and students use the new teacher with --teacher-resize", flush=True)
    model = with_new_head(teacher, arch, info.num_classes, registry)
    source_config = obj.get("config", {}) if isinstance(obj.get("config"), dict) else {}
    print(f"finetuning a new {info.num_classes}-class head on the frozen features of {source.spec} "
          f"({arch.name}, {arch.num_classes} classes, {source_config.get('dataset', 'unknown dataset')}) "
          f"on {info.name} ({len(data.train_y)} images) · {device}", flush=True)
    history = finetune_head(model, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            weight_decay=args.weight_decay, device=device, seed=args.seed)
    n_val = min(max(args.val_size, 0), len(data.test_y))
    if n_val:
        acc = accuracy(model, data.test_x[:n_val], data.test_y[:n_val], device, arch.image_size)
        history[-1]["val_clean"] = acc
        print(f"clean accuracy of the new teacher on {n_val} {info.name} test images: {acc:.3f}", flush=True)
    config = {key: source_config[key] for key in ("eps", "step_size", "norm") if key in source_config}
    config.update({"dataset": info.name, "data_dir": args.data_dir, "model": arch.name,
                   "activation": arch.activation, "plugin": ["finetune-head"], "finetuned_from": source.spec,
                   "source_dataset": source_config.get("dataset"), "source_classes": arch.num_classes,
                   "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                   "weight_decay": args.weight_decay, "subset": args.subset, "seed": args.seed})
    if config.get("dataset") != source_config.get("dataset"):
        for key in ("eps", "step_size", "norm"):  # the source's threat model was set for its own data
            config.pop(key, None)
    save_checkpoint(out, {"version": __version__, "arch": model.arch.to_dict(), "model": model.cpu().state_dict(),
                          "epoch": args.epochs, "config": config, "history": history})
    print(f"wrote {out}", flush=True)
    return 0
