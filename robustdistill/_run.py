"""Building a training run: resolve and validate the configuration, load data, student and teacher, and
set up the optimiser — everything that can fail does so here, before any training."""
from __future__ import annotations

import platform
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import __version__
from .api import RunView
from ._checkpoint import load_checkpoint
from ._config import RunConfig, resolve_device
from ._data import take_subset
from ._distributed import Distributed
from ._folding import fold_or_keep, folded_pairs
from ._models import build_model
from ._ops import kernel_status, select_backend
from ._manager import PluginHost, StepHooks
from ._registry import DatasetInfo, ModelArch, RobustDistillError
from ._state import CHECKPOINT, EpochProgress, check_resumable, seed_everything
from ._zoo import check_teacher_fits, load_model_spec


@dataclass(eq=False)
class Run:
    """The engine's side of a run; hooks see only ``view`` (:class:`~robustdistill.api.RunView`).

    ``requested`` is the configuration as given (unset values ``None``), ``view.config`` as resolved.
    ``trainer`` is the module the loss forwards run through: the DDP wrapper of the student when
    distributed. ``resume_from`` is the checkpoint being resumed (``None`` for a new run).
    """

    view: RunView
    requested: RunConfig
    host: PluginHost
    hooks: StepHooks
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    dist: Distributed
    trainer: nn.Module
    ops_backend: dict[str, str]
    teacher_source: dict[str, Any] | None = None
    resume_from: dict[str, Any] | None = None
    progress: EpochProgress = field(default_factory=lambda: EpochProgress.start(torch.device("cpu")))
    plugin_modules: dict[str, tuple[nn.Module, torch.optim.Optimizer | None]] = field(default_factory=dict)

    @property
    def config(self) -> RunConfig:
        return self.view.config

    @property
    def student(self) -> nn.Module:
        return self.view.student

    @property
    def device(self) -> torch.device:
        return self.view.device

    @property
    def out(self) -> Path:
        return self.view.out

    # -- the view's sink ---------------------------------------------------------------------------

    def add_module(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer | None,
                   joint: bool) -> None:
        module.to(self.device)
        self.dist.share_module(module)
        if joint:
            self.optimizer.add_param_group({"params": list(module.parameters())})
            self.scheduler = make_scheduler(self.config, self.optimizer)  # schedule the new group too
        self.plugin_modules[name] = (module, optimizer)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


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


# -- configuration ----------------------------------------------------------------------------------------

def default_out(config: RunConfig) -> str:
    return str(Path("runs") / f"{'-'.join(config.plugin)}-{config.dataset}")


def check_options(config: RunConfig, host: PluginHost, world: int) -> None:
    """Checks that need neither data nor models."""
    if config.epochs < 1:
        raise RobustDistillError(f"--epochs {config.epochs} must be at least 1")
    if config.batch_size < 1:
        raise RobustDistillError(f"--batch-size {config.batch_size} must be at least 1")
    if config.batch_size % world:
        raise RobustDistillError(f"--batch-size {config.batch_size} is the global batch and must divide evenly over "
                                 f"{world} processes")
    if config.checkpoint_every is not None and config.checkpoint_every < 1:
        raise RobustDistillError(f"--checkpoint-every {config.checkpoint_every} must be at least 1 (steps)")
    if config.checkpoint_minutes < 0:
        raise RobustDistillError(f"--checkpoint-minutes {config.checkpoint_minutes} must be 0 (off) or positive")
    if config.model is not None:
        host.registry.model(config.model)
    host.registry.dataset(config.dataset)
    needs_teacher = [m for m in config.plugin if host.registry.methods[m].needs_teacher]
    if needs_teacher and not config.teacher:
        raise RobustDistillError(
            f"plugin {needs_teacher[0]!r} distils from a teacher: pass --teacher CKPT. Train one with "
            f"`robustdistill train --plugin at --dataset {config.dataset} --out runs/teacher`")


def resolve_core(config: RunConfig, info: DatasetInfo, device: torch.device, ops_backend: str) -> RunConfig:
    """Fill what the user left unset from the dataset and the device, and record what the run will use."""
    resolved = replace(
        config,
        eps=config.eps if config.eps is not None else info.eps,
        step_size=config.step_size if config.step_size is not None else info.step_size,
        attack_steps=config.attack_steps if config.attack_steps is not None else info.attack_steps,
        model=config.model or ("cnn" if info.image_size <= 28 else "resnet18"),
        milestones=config.milestones if config.milestones is not None or config.lr_schedule != "multistep"
        else default_milestones(config.epochs),
        amp=config.amp if device.type == "cuda" else "off",
        cudnn_benchmark=config.cudnn_benchmark if device.type == "cuda" else "off",
        channels_last=("on" if device.type == "cuda" else "off") if config.channels_last == "auto"
        else config.channels_last,
        ops_backend=ops_backend,
    )
    if not 0 < resolved.eps <= 1:
        raise RobustDistillError(f"--eps {resolved.eps} is outside (0, 1]; inputs are in [0,1], e.g. --eps 8/255 or 0.1")
    if not 0 < resolved.step_size <= 1:
        raise RobustDistillError(f"--step-size {resolved.step_size} is outside (0, 1]; e.g. --step-size 2/255")
    if resolved.attack_steps < 1:
        raise RobustDistillError(f"--attack-steps {resolved.attack_steps} must be at least 1")
    return resolved


# -- models -----------------------------------------------------------------------------------------------

def load_teacher(config: RunConfig, host: PluginHost, info: DatasetInfo,
                 device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen teacher ``--teacher`` names (checkpoint, run directory, state_dict or robustbench:NAME) and
    what was loaded (spec, architecture, input normalisation) for environment.json."""
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


def default_milestones(epochs: int) -> tuple[int, ...]:
    """Multistep milestones when none are given: 50% and 75% of the epochs."""
    return tuple(sorted({m for m in (epochs // 2, (3 * epochs) // 4) if m >= 1}))


def make_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    epochs = config.epochs
    if config.lr_schedule == "multistep":
        milestones = list(config.milestones or default_milestones(epochs))
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.lr_gamma)
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def scheduler_at(config: RunConfig, optimizer: torch.optim.Optimizer, epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The configured schedule fast-forwarded over ``epoch`` finished epochs.

    Rebuilt on ``--resume`` rather than loaded, so that a run resumed with a larger ``--epochs`` follows the
    schedule of its new options; with the same options the learning rates are the same, bit for bit.
    """
    for group in optimizer.param_groups:
        group["lr"] = group.get("initial_lr", group["lr"])
    scheduler = make_scheduler(config, optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
        for _ in range(epoch):
            scheduler.step()
    return scheduler


# -- the run ----------------------------------------------------------------------------------------------

def build_run(requested: RunConfig, host: PluginHost, resume: bool = False) -> Run:
    """Validate everything that can be validated and build the run, before any training.

    ``resume`` continues the run in ``--out`` from its checkpoint; a run directory without one starts anew.
    """
    requested = replace(requested, plugin=tuple(host.resolve_methods(requested.plugin)))
    requested = replace(requested, out=requested.out or default_out(requested))
    distributed = Distributed()
    check_options(requested, host, distributed.world)
    out = Path(requested.out)
    checkpoint = out / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise RobustDistillError(f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it, "
                                 "or choose another --out")
    saved = load_checkpoint(checkpoint) if resume and checkpoint.exists() else None
    device = distributed.setup(resolve_device(requested.device))
    ops_backend = select_backend(requested.ops_backend, device)
    seed_everything(requested.seed)
    data = host.registry.dataset(requested.dataset).load(requested.data_dir, requested.download)
    data = take_subset(data, train=requested.subset)
    info = data.info
    config = resolve_core(requested, info, device, ops_backend["requested"])
    config = replace(config, attack=host.resolve_attack(config.plugin, config.attack, config.teacher is not None))
    config = host.resolve_plugin_options(config, info)
    if saved is not None:
        check_resumable(saved, requested, config, host.registry, distributed.world)
    arch = ModelArch(config.model, info.num_classes, info.in_channels, info.image_size,
                     config.activation, info.mean, info.std)
    student = build_model(arch, host.registry.models).to(device)
    teacher, teacher_source = load_teacher(config, host, info, device) if config.teacher else (None, None)
    if config.channels_last == "on":
        for model in (student, teacher):
            if model is not None:
                model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark == "on"
    optimizer = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = make_scheduler(config, optimizer)
    methods = config.plugin
    hooks = host.step_hooks(methods)
    base = next(iter(host.attack_owners(methods)), None)
    trainer = distributed.wrap(student, device, config.sync_bn)
    if distributed.world > 1:
        student = trainer.module  # SyncBatchNorm conversion happens in place of the original layers
        torch.manual_seed(config.seed + distributed.rank)  # per-process attack noise; weights came from rank 0
    attack_student = student
    if config.fold_bn == "on":  # after every move and layer conversion: the views share them
        attack_student = fold_or_keep(student, live=True, what="student", log=distributed.print)
        if teacher is not None:
            teacher = fold_or_keep(teacher, live=False, what="teacher", log=distributed.print)
    steps_per_epoch = max(1, -(-len(data.train_y) // config.batch_size))
    run = Run(view=None, requested=requested, host=host, hooks=hooks, optimizer=optimizer,  # type: ignore[arg-type]
              scheduler=scheduler, dist=distributed, trainer=trainer, ops_backend=ops_backend,
              teacher_source=teacher_source, resume_from=saved,
              progress=EpochProgress.start(device))
    run.view = RunView(config=config, data=data, arch=arch, device=device, student=student, teacher=teacher,
                       attack_student=attack_student, methods=tuple(methods), base_method=base, out=out,
                       steps_per_epoch=steps_per_epoch, is_main=distributed.is_main, world_size=distributed.world,
                       sink=run, attack=host.registry.attacks.get(config.attack) if config.attack else None)
    return run


def run_environment(run: Run) -> dict[str, Any]:
    """Software and hardware a run trains on, and which backend the fused ops use (``environment.json``)."""
    device = run.device
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"robustdistill": __version__, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "command": sys.argv, "device": str(device),
            "device_name": device_name, "processes": run.dist.world, "cpu_threads": torch.get_num_threads(),
            "ops_backend": run.ops_backend, "kernels": kernel_status(device), "amp": run.config.amp, "channels_last": run.config.channels_last == "on",
            "cudnn_benchmark": device.type == "cuda" and torch.backends.cudnn.benchmark,
            "folded_conv_bn": {"student": folded_pairs(run.view.attack_student),
                               "teacher": folded_pairs(run.view.teacher)},
            "teacher": run.teacher_source}
