"""The training engine: builds a run from its configuration and drives the epochs and steps."""
from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
import time
import warnings
from argparse import Namespace
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import __version__
from .attacks import model_mode, pgd
from .checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from .config import resolve_device
from .data import BatchIterator, take_subset
from .folding import fold_or_keep, folded_pairs
from .models import build_model
from .ops import select_backend
from .plugin_manager import PluginHost, StepHooks
from .registry import ImageData, ModelArch, RobustDistillError
from .step import LossTerm, StepContext
from .zoo import check_teacher_fits, load_model_spec

RESUME_MUST_MATCH = ("model", "activation", "dataset", "plugin", "subset", "batch_size", "seed", "teacher")


@dataclass
class Run:
    """Everything a training run holds; lifecycle hooks receive it.

    ``base_method`` is the selected method that runs the attack (``None`` when none does). ``trainer`` is
    the module the loss forwards run through: the DDP wrapper of ``student`` when distributed.
    ``attack_student`` is the student as attacks call it (its BatchNorm-folded view with ``--fold-bn on``;
    ``student`` when not given); ``teacher`` is the frozen teacher as the step uses it (folded the same way).
    """

    config: Namespace
    host: PluginHost
    hooks: StepHooks
    methods: list[str]
    data: ImageData
    arch: ModelArch
    student: nn.Module
    teacher: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    out: Path
    base_method: str | None = None
    dist: "Distributed" = field(default_factory=lambda: Distributed())
    trainer: nn.Module | None = None
    epoch: int = 0
    progress: "EpochProgress" = field(default_factory=lambda: EpochProgress.start(torch.device("cpu")))
    history: list[dict[str, Any]] = field(default_factory=list)
    plugin_modules: dict[str, tuple[nn.Module, torch.optim.Optimizer | None]] = field(default_factory=dict)
    ops_backend: dict[str, str] = field(default_factory=dict)
    channels_last: bool = False
    attack_student: nn.Module | None = None
    teacher_source: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.attack_student is None:
            self.attack_student = self.student

    def add_module(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                   joint: bool = False) -> nn.Module:
        """Give a plugin-owned trainable module to the run: moved to the device, saved in every checkpoint
        and restored on ``--resume``. ``joint=True`` trains it with the student's optimiser (e.g. RRM's
        feature projection); otherwise the plugin steps its own ``optimizer`` (e.g. IGAM's discriminator).
        Call it from ``train_start``. Returns the module."""
        module.to(self.device)
        if joint:
            self.optimizer.add_param_group({"params": list(module.parameters())})
            self.scheduler = _make_scheduler(self.config, self.optimizer)  # schedule the new group too
        self.plugin_modules[name] = (module, optimizer)
        return module


class ResizedTeacher(nn.Module):
    """Bridges a teacher trained at another resolution: inputs are resized (bilinear) to its size."""

    def __init__(self, teacher: nn.Module, image_size: int) -> None:
        super().__init__()
        self.teacher = teacher
        self.arch = teacher.arch
        self.image_size = image_size

    def forward(self, x: Tensor, return_features: bool = False) -> Any:
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.teacher(x, return_features=return_features)


@dataclass
class EpochProgress:
    """Where the current epoch stands: batches done and the running sums of its metrics (checkpointed)."""

    batch: int
    seen: int
    seconds: float
    loss_sum: Tensor
    term_sums: dict[str, Tensor]

    @classmethod
    def start(cls, device: torch.device) -> "EpochProgress":
        return cls(0, 0, 0.0, torch.zeros((), device=device), {})

    def add(self, loss: Tensor, terms: list[LossTerm], n: int) -> None:
        self.loss_sum = self.loss_sum + loss * n
        for term in terms:
            previous = self.term_sums.get(term.name, torch.zeros((), device=self.loss_sum.device))
            self.term_sums[term.name] = previous + term.value.detach().float() * n
        self.seen += n

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "seen": self.seen, "seconds": self.seconds, "loss_sum": self.loss_sum.cpu(),
                "term_sums": {k: v.cpu() for k, v in self.term_sums.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: torch.device) -> "EpochProgress":
        return cls(int(d["batch"]), int(d["seen"]), float(d["seconds"]), d["loss_sum"].to(device),
                   {k: v.to(device) for k, v in d["term_sums"].items()})


class Distributed:
    """Data-parallel training under ``torchrun``: NCCL on GPUs, gloo on CPUs; a no-op in one process.

    Every rank walks the same global batch order and takes every ``world``-th sample of each batch, so a
    run on N processes sees the same global batches as one process with the same ``--batch-size``.
    """

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, device: torch.device) -> torch.device:
        """Join the process group; on CUDA each process takes the GPU of its local rank."""
        if self.world == 1:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device

    def wrap(self, student: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
        if self.world == 1:
            return student
        if sync_bn:
            if device.type != "cuda":
                raise RobustDistillError("--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU kernels); "
                                         "drop --sync-bn for CPU runs")
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        return DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)

    def shard(self, batch: Tensor) -> Tensor:
        return batch if self.world == 1 else batch[self.rank::self.world]

    def sum(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.is_main:
            print(*args, **kwargs)

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


# -- configuration ----------------------------------------------------------------------------------

def resolve_methods(host: PluginHost, names: list[str]) -> list[str]:
    """Validate the selected methods and add the default base of add-on methods selected alone."""
    registry = host.registry
    methods: list[str] = []
    for name in names:
        if name not in registry.methods:
            known = ", ".join(sorted(registry.methods))
            raise RobustDistillError(f"unknown plugin {name!r}; known plugins: {known} "
                                     "(third-party plugins are found through the 'robustdistill' entry-point group)")
        if name not in methods:
            methods.append(name)
    attackers = _attack_owners(host, methods)
    if len(attackers) > 1:
        raise RobustDistillError(f"plugins {' and '.join(attackers)} both run an attack; select one base method "
                                 "(e.g. --plugin rslad --plugin igdm)")
    if not attackers:
        bases = {registry.methods[m].default_base for m in methods} - {None}
        if len(bases) > 1:
            raise RobustDistillError(f"the selected plugins need different base methods ({', '.join(sorted(bases))}); "
                                     "select one base method explicitly")
        if bases:
            methods.insert(0, bases.pop())
    return methods


def _attack_owners(host: PluginHost, methods: list[str]) -> list[str]:
    owners = {host.registry.method_plugin[m]: m for m in methods}
    implementing = {impl.plugin_name for impl in host.pm.hook.attack.get_hookimpls()}
    return [method for plugin, method in owners.items() if plugin in implementing]


def fill_dataset_defaults(config: Namespace, data: ImageData) -> None:
    """Attack settings left unset take the dataset's defaults; then check them."""
    info = data.info
    for key in ("eps", "step_size", "attack_steps"):
        if getattr(config, key) is None:
            setattr(config, key, getattr(info, key))
    if not 0 < config.eps <= 1:
        raise RobustDistillError(f"--eps {config.eps} is outside (0, 1]; inputs are in [0,1], e.g. --eps 8/255 or 0.1")
    if not 0 < config.step_size <= 1:
        raise RobustDistillError(f"--step-size {config.step_size} is outside (0, 1]; e.g. --step-size 2/255")
    if config.attack_steps < 1:
        raise RobustDistillError(f"--attack-steps {config.attack_steps} must be at least 1")


def config_to_dict(config: Namespace) -> dict[str, Any]:
    return {k: v for k, v in sorted(vars(config).items()) if not k.startswith("_") and k not in ("command", "func")}


# -- building ---------------------------------------------------------------------------------------

def _load_teacher(config: Namespace, host: PluginHost, data: ImageData,
                  device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen teacher ``--teacher`` names (checkpoint, run directory, state_dict or robustbench:NAME) and
    what was loaded (spec, architecture, input normalisation) for environment.json."""
    info = data.info
    loaded = load_model_spec(config.teacher, info=info, models=host.registry.models, arch=config.teacher_arch,
                             normalize=config.teacher_normalize, robustbench_dir=config.robustbench_dir,
                             download=config.download, activation=config.activation)
    teacher = loaded.model
    if check_teacher_fits(loaded, info, resize=config.teacher_resize):
        teacher = ResizedTeacher(teacher, loaded.arch.image_size)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, loaded.describe()


def _make_scheduler(config: Namespace, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    epochs = config.epochs
    if config.lr_schedule == "multistep":
        milestones = config.milestones or sorted({m for m in (epochs // 2, (3 * epochs) // 4) if m >= 1})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.lr_gamma)
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _use_channels_last(config: Namespace, device: torch.device) -> bool:
    """``--channels-last auto`` means on CUDA (tensor-core convolutions are NHWC), off elsewhere."""
    choice = getattr(config, "channels_last", "auto")
    return device.type == "cuda" if choice == "auto" else choice == "on"


def _scheduler_at(config: Namespace, optimizer: torch.optim.Optimizer, epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The configured schedule fast-forwarded over ``epoch`` finished epochs.

    Rebuilt on ``--resume`` rather than loaded, so that a run resumed with a larger ``--epochs`` (or
    other ``--milestones``) follows the schedule of its new options; with the same options the learning
    rates are the same, bit for bit, as the run's own.
    """
    for group in optimizer.param_groups:
        group["lr"] = group.get("initial_lr", group["lr"])
    scheduler = _make_scheduler(config, optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
        for _ in range(epoch):
            scheduler.step()
    return scheduler


def build_run(config: Namespace, host: PluginHost) -> Run:
    """Validate everything that can be validated and build the run, before any training."""
    methods = resolve_methods(host, config.plugin)
    config.plugin = methods
    needs_teacher = [m for m in methods if host.registry.methods[m].needs_teacher]
    if needs_teacher and not config.teacher:
        raise RobustDistillError(
            f"plugin {needs_teacher[0]!r} distils from a teacher: pass --teacher CKPT. Train one with "
            f"`robustdistill train --plugin at --dataset {config.dataset} --out runs/teacher`")
    if config.epochs < 1:
        raise RobustDistillError(f"--epochs {config.epochs} must be at least 1")
    if config.batch_size < 1:
        raise RobustDistillError(f"--batch-size {config.batch_size} must be at least 1")
    out = Path(config.out)
    if (out / "last.pt").exists() and not config.resume:
        raise RobustDistillError(f"{out} already holds a run (last.pt); pass --resume to continue it, "
                                 "or choose another --out")
    if config.model is not None:
        host.registry.model(config.model)
    host.registry.dataset(config.dataset)
    distributed = Distributed()
    if config.batch_size % distributed.world:
        raise RobustDistillError(f"--batch-size {config.batch_size} is the global batch and must divide evenly over "
                                 f"{distributed.world} processes")
    if config.checkpoint_every is not None and config.checkpoint_every < 1:
        raise RobustDistillError(f"--checkpoint-every {config.checkpoint_every} must be at least 1 (steps)")
    device = distributed.setup(resolve_device(config.device))
    ops_backend = select_backend(getattr(config, "ops_backend", None), device)
    if getattr(config, "tensorboard", False):
        _summary_writer_class()
    seed_everything(config.seed)
    data = host.registry.dataset(config.dataset).load(config.data_dir, config.download)
    data = take_subset(data, train=config.subset)
    fill_dataset_defaults(config, data)
    info = data.info
    if config.model is None:
        config.model = "cnn" if info.image_size <= 28 else "resnet18"
    arch = ModelArch(config.model, info.num_classes, info.in_channels, info.image_size,
                     config.activation, info.mean, info.std)
    student = build_model(arch, host.registry.models).to(device)
    teacher, teacher_source = _load_teacher(config, host, data, device) if config.teacher else (None, None)
    channels_last = _use_channels_last(config, device)
    if channels_last:
        for model in (student, teacher):
            if model is not None:
                model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = getattr(config, "cudnn_benchmark", "on") == "on"
    optimizer = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = _make_scheduler(config, optimizer)
    hooks = host.step_hooks(methods)
    base = next(iter(_attack_owners(host, methods)), None)
    trainer = distributed.wrap(student, device, config.sync_bn)
    if distributed.world > 1:
        student = trainer.module  # SyncBatchNorm conversion happens in place of the original layers
        torch.manual_seed(config.seed + distributed.rank)  # per-process attack noise; weights came from rank 0
    attack_student = student
    if getattr(config, "fold_bn", "on") == "on":  # after every move and layer conversion: the views share them
        attack_student = fold_or_keep(student, live=True, what="student", log=distributed.print)
        if teacher is not None:
            teacher = fold_or_keep(teacher, live=False, what="teacher", log=distributed.print)
    return Run(config, host, hooks, methods, data, arch, student, teacher, optimizer, scheduler, device, out, base,
               distributed, trainer, progress=EpochProgress.start(device), ops_backend=ops_backend,
               channels_last=channels_last, attack_student=attack_student,
               teacher_source=teacher_source)


# -- state ------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_run(run: Run) -> None:
    """Checkpoint the run (rank 0 writes; every rank contributes its RNG state) and rewrite metrics.jsonl."""
    rng = run.dist.gather(_rng_state())
    if run.dist.is_main:
        save_checkpoint(run.out / "last.pt", {
            "version": __version__,
            "arch": run.arch.to_dict(),
            "model": run.student.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "epoch": run.epoch,
            "progress": run.progress.to_dict(),
            "world_size": run.dist.world,
            "config": config_to_dict(run.config),
            "plugins": [info.to_dict() for info in run.host.plugin_infos()],
            "plugin_modules": {name: {"module": m.state_dict(), "optimizer": o.state_dict() if o else None}
                               for name, (m, o) in run.plugin_modules.items()},
            "history": run.history,
            "rng": rng,
        })
        write_metrics(run)
    run.dist.barrier()


def resume_run(run: Run) -> None:
    """Restore weights, optimiser, scheduler, plugin modules, history and RNG from ``out/last.pt``."""
    path = run.out / "last.pt"
    if not path.exists():
        raise RobustDistillError(f"--resume: {path} does not exist; start the run without --resume")
    ckpt = load_checkpoint(path)
    saved = ckpt.get("config", {})
    current = config_to_dict(run.config)
    changed = [k for k in RESUME_MUST_MATCH if saved.get(k) != current.get(k)]
    if ckpt.get("world_size", 1) != run.dist.world:
        raise RobustDistillError(f"--resume: the run was trained on {ckpt.get('world_size', 1)} processes and is resumed "
                                 f"on {run.dist.world}; resume with the same number (exact resume needs each "
                                 "process's RNG state)")
    if changed:
        detail = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} → {current.get(k)!r}" for k in changed)
        raise RobustDistillError(f"--resume with options that change the run ({detail}); "
                                 "use the original options or a new --out")
    run.student.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    for name, saved_module in ckpt.get("plugin_modules", {}).items():
        if name in run.plugin_modules:
            module, optimizer = run.plugin_modules[name]
            module.load_state_dict(saved_module["module"])
            if optimizer is not None and saved_module["optimizer"] is not None:
                optimizer.load_state_dict(saved_module["optimizer"])
    run.epoch = int(ckpt["epoch"])
    run.scheduler = _scheduler_at(run.config, run.optimizer, run.epoch)
    run.progress = EpochProgress.from_dict(ckpt["progress"], run.device)
    run.history = list(ckpt.get("history", []))
    _set_rng_state(ckpt["rng"][run.dist.rank])


# -- the loop ---------------------------------------------------------------------------------------

def _autocast(run: Run) -> Any:
    if run.config.amp == "bf16" and run.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def train_step(run: Run, x: Tensor, y: Tensor, epoch: int, step: int) -> tuple[Tensor, list[LossTerm]]:
    """One step: attack (firstresult) → loss terms from every active plugin → optimiser step."""
    if run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = StepContext(x=x, y=y, student=run.student, teacher=run.teacher, config=run.config,
                      epoch=epoch, epochs=run.config.epochs, step=step, hooks=run.hooks, trainer=run.trainer,
                      attack_student=run.attack_student)
    run.student.train()
    with _autocast(run):
        ctx.x_adv = run.hooks.attack(ctx)
        if getattr(run.config, "batch_student_forwards", False):
            ctx.prefetch_student(run.hooks.student_inputs(ctx))
        terms = run.hooks.loss(ctx)
    if not terms:
        raise RobustDistillError(f"the selected plugins ({', '.join(run.methods)}) contributed no loss term")
    total = sum(term.weight * term.value.float() for term in terms)
    run.optimizer.zero_grad(set_to_none=True)
    total.backward()
    run.optimizer.step()
    run.hooks.event("step_end", run=run, ctx=ctx, terms=terms)
    return total.detach(), terms


def validate(run: Run) -> dict[str, float]:
    """Clean and PGD accuracy on the first ``--val-size`` test images."""
    n = min(run.config.val_size, len(run.data.test_y))
    if n == 0:
        return {}
    correct_clean = correct_pgd = 0
    batch = max(run.config.batch_size, 256)
    model = run.attack_student
    with model_mode(run.student, train=False):
        for start in range(0, n, batch):
            x = run.data.test_x[start:min(start + batch, n)].to(run.device).float() / 255
            y = run.data.test_y[start:min(start + batch, n)].to(run.device)
            with torch.no_grad():
                correct_clean += int((model(x).argmax(1) == y).sum())
            x_adv = pgd(model, x, y, eps=run.config.eps, step_size=run.config.step_size,
                        steps=run.config.val_attack_steps)
            with torch.no_grad():
                correct_pgd += int((model(x_adv).argmax(1) == y).sum())
    return {"val_clean": correct_clean / n, "val_pgd": correct_pgd / n}


def check_finite(run: Run, epoch: int) -> None:
    """Stop before anything is written when a loss term went NaN/Inf since the last checkpoint."""
    progress = run.progress
    sums = {"total": progress.loss_sum, **progress.term_sums}
    bad = [name for name, value in sums.items() if not math.isfinite(float(value))]
    if bad:
        raise RobustDistillError(
            f"the loss became non-finite in epoch {epoch} (term(s): {', '.join(bad)}); training stopped and the last "
            f"good checkpoint in {run.out} is kept. Lower --lr or check that term's plugin options")


def train_epoch(run: Run, batches: BatchIterator, epoch: int) -> dict[str, Any]:
    """Train one epoch from ``run.progress`` (mid-epoch after a resume); returns the epoch's train metrics."""
    progress = run.progress
    started = time.perf_counter() - progress.seconds
    every = run.config.checkpoint_every
    bar = tqdm(batches.batches(start=progress.batch), total=len(batches), initial=progress.batch,
               desc=f"epoch {epoch}/{run.config.epochs}", unit="batch",
               disable=not sys.stderr.isatty() or not run.dist.is_main, leave=False)
    for x, y in bar:
        x, y = run.dist.shard(x), run.dist.shard(y)
        loss, terms = train_step(run, x, y, epoch, (epoch - 1) * len(batches) + progress.batch)
        progress.add(loss, terms, len(y))
        progress.batch += 1
        progress.seconds = time.perf_counter() - started
        if not bar.disable and progress.batch % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{progress.seen / progress.seconds:.0f}")
        if every and progress.batch % every == 0 and progress.batch < len(batches):
            check_finite(run, epoch)
            save_run(run)
    check_finite(run, epoch)
    seen = run.dist.sum(float(progress.seen))
    return {"loss": run.dist.sum(float(progress.loss_sum)) / max(seen, 1),
            "terms": {name: run.dist.sum(float(v)) / max(seen, 1) for name, v in progress.term_sums.items()},
            "train_seconds": progress.seconds, "images_per_s": seen / max(progress.seconds, 1e-9)}


def run_environment(run: Run) -> dict[str, Any]:
    """Software and hardware a run trains on, and which backend the fused ops use (``environment.json``)."""
    device_name = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else platform.processor() or "cpu"
    return {"robustdistill": __version__, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "device": str(run.device), "device_name": device_name,
            "processes": run.dist.world, "cpu_threads": torch.get_num_threads(), "ops_backend": run.ops_backend,
            "amp": run.config.amp if run.device.type == "cuda" else "off", "channels_last": run.channels_last,
            "cudnn_benchmark": run.device.type == "cuda" and torch.backends.cudnn.benchmark,
            "folded_conv_bn": {"student": folded_pairs(run.attack_student),
                               "teacher": folded_pairs(run.teacher)},
            "teacher": run.teacher_source}


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RobustDistillError("--tensorboard needs the tensorboard package: pip install tensorboard "
                                 "(or pip install 'robustdistill[tensorboard]')") from None
    return SummaryWriter


def _tensorboard(run: Run) -> Any | None:
    """A TensorBoard writer into ``out/tensorboard`` when ``--tensorboard`` is on (main process only).

    On ``--resume`` the events of epochs after the checkpoint are purged, so a restarted epoch is not
    logged twice.
    """
    if not getattr(run.config, "tensorboard", False) or not run.dist.is_main:
        return None
    return _summary_writer_class()(log_dir=str(run.out / "tensorboard"), purge_step=run.epoch + 1)


def _log_scalars(board: Any, metrics: dict[str, Any]) -> None:
    epoch = metrics["epoch"]
    for key in ("loss", "lr", "val_clean", "val_pgd", "images_per_s", "seconds"):
        if isinstance(metrics.get(key), (int, float)):
            board.add_scalar(key, metrics[key], epoch)
    for name, value in metrics["terms"].items():
        board.add_scalar(f"terms/{name}", value, epoch)
    board.flush()


def write_metrics(run: Run) -> None:
    atomic_write_text(run.out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in run.history))


def _out_of_memory(err: BaseException, config: Namespace) -> RobustDistillError:
    smaller = max(1, config.batch_size // 2)
    return RobustDistillError(f"out of GPU memory at --batch-size {config.batch_size}; try --batch-size {smaller} "
                              "(and --resume to continue from the last checkpoint)")


def train(config: Namespace, host: PluginHost) -> Run:
    """Train as configured; returns the finished run."""
    try:
        return _train(config, host)
    except torch.cuda.OutOfMemoryError as err:
        raise _out_of_memory(err, config) from None


def _train(config: Namespace, host: PluginHost) -> Run:
    run = build_run(config, host)
    if run.dist.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
    run.hooks.event("train_start", run=run)
    if config.resume:
        resume_run(run)
    if run.dist.is_main:
        for leftover in run.out.glob(".*.tmp"):  # a kill during a write leaves its temporary file
            leftover.unlink(missing_ok=True)
        atomic_write_text(run.out / "config.json", json.dumps(config_to_dict(config), indent=2) + "\n")
        atomic_write_text(run.out / "environment.json", json.dumps(run_environment(run), indent=2) + "\n")
    board = _tensorboard(run)
    batches = BatchIterator(run.data.train_x, run.data.train_y, config.batch_size, shuffle=True, seed=config.seed,
                            device=run.device, augment=run.data.info.augment)
    log = run.dist.print if run.epoch < config.epochs else (lambda *_, **__: None)
    log(f"training {'+'.join(run.methods)} · {run.arch.name} on {run.data.info.name} "
        f"({len(run.data.train_y)} images) · ε={config.eps:.4g} · {run.device}"
        f"{f' × {run.dist.world} processes' if run.dist.world > 1 else ''} → {run.out}", flush=True)
    while run.epoch < config.epochs:
        epoch = run.epoch + 1
        batches.set_epoch(epoch)
        if run.progress.batch == 0:
            run.hooks.event("epoch_start", run=run, epoch=epoch)
        lr = run.optimizer.param_groups[0]["lr"]
        metrics = {"epoch": epoch, "lr": lr, **train_epoch(run, batches, epoch)}
        run.scheduler.step()
        validation_started = time.perf_counter()
        if run.dist.is_main:
            metrics.update(validate(run))
        metrics["seconds"] = metrics["train_seconds"] + time.perf_counter() - validation_started
        run.hooks.event("epoch_end", run=run, epoch=epoch, metrics=metrics)
        run.history.append(metrics)
        if board is not None:
            _log_scalars(board, metrics)
        run.epoch = epoch
        run.progress = EpochProgress.start(run.device)
        save_run(run)
        run.dist.print(f"epoch {epoch}/{config.epochs}  loss {metrics['loss']:.4f}  "
                       + "  ".join(f"{k} {v:.4f}" for k, v in metrics["terms"].items())
                       + f"  val clean {metrics.get('val_clean', float('nan')):.3f}"
                       f"  val pgd {metrics.get('val_pgd', float('nan')):.3f}"
                       f"  {metrics['images_per_s']:.0f} img/s", flush=True)
    run.hooks.event("train_end", run=run)
    if board is not None:
        board.close()
    run.dist.close()
    return run
