"""A training run: built in one phase from the resolved configuration — data, student, teachers, optimiser —
so that everything that can fail does so before any training; its checkpoint, and the return to it."""
from __future__ import annotations

import platform
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import __version__
from ._attacks import AttackSpec, model_mode, pgd
from ._checkpoint import load_checkpoint, save_checkpoint
from ._config import RunConfig, resolve_device
from ._context import DEFAULT_TEACHER, AttackObserver, RunView
from ._data import BatchIterator, hold_out
from ._distributed import Distributed
from ._doctor import kernel_status
from ._folding import fold_or_keep, folded_pairs
from ._manager import PluginHost, StepHooks
from ._models import build_model
from ._ops import select_backend
from ._registry import DatasetInfo, ImageData, ModelArch, RobustDistillError
from ._resolve import Resolution, default_milestones, resolve_config, role_values
from ._state import (CHECKPOINT, EpochProgress, check_resumable, check_saveable, rng_state, seed_everything,
                     set_rng_state, to_device)
from ._specs import check_teacher_fits, load_model_spec

VAL_BATCH = 256


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


@dataclass(eq=False)
class Run:
    """The engine's side of a run; hooks see only ``view`` (:class:`~robustdistill.api.RunView`).

    ``requested`` is the configuration as given (unset values ``None``), ``resolution.config`` as resolved.
    ``trainer`` is the module the loss forwards run through: the DDP wrapper of the student when distributed.
    ``resume_from`` is the checkpoint being resumed (``None`` for a new run); ``train_images`` the number of
    training images before the validation split was held out. ``stepped`` holds the optimisers of the plugin
    modules added with ``stepped=True``, each with its learning-rate schedule: every step steps them after the
    student's.
    """

    requested: RunConfig
    resolution: Resolution
    host: PluginHost
    hooks: StepHooks
    data: ImageData
    arch: ModelArch
    device: torch.device
    out: Path
    student: nn.Module
    attack_student: nn.Module
    trainer: nn.Module
    teachers: Mapping[str, nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    dist: Distributed
    ops_backend: dict[str, str]
    train_images: int = 0
    teacher_sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    resume_from: dict[str, Any] | None = None
    plugin_modules: dict[str, tuple[nn.Module, torch.optim.Optimizer | None]] = field(default_factory=dict)
    stepped: dict[str, tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]] = field(default_factory=dict)
    attack_observers: list[AttackObserver] = field(default_factory=list)
    final_model: tuple[str, nn.Module] | None = None
    view: RunView = field(init=False)
    progress: EpochProgress = field(init=False)

    def __post_init__(self) -> None:
        config = self.resolution.config
        self.progress = EpochProgress.start(self.device)
        self.view = RunView(
            config=config, data=self.data, arch=self.arch, device=self.device, student=self.student,
            attack_student=self.attack_student, teachers=MappingProxyType(dict(self.teachers)),
            default_teacher=self.resolution.default_teacher, methods=config.plugin,
            base_method=self.resolution.base_method,
            attack=self.host.registry.attacks.get(config.attack) if config.attack else None, out=self.out,
            steps_per_epoch=max(1, -(-len(self.data.train_y) // config.batch_size)), is_main=self.dist.is_main,
            world_size=self.dist.world, _engine=self)

    @property
    def config(self) -> RunConfig:
        return self.resolution.config

    # -- what the views ask of the engine ------------------------------------------------------------

    def add_module(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer | None,
                   joint: bool, stepped: bool = False) -> None:
        if stepped and (optimizer is None or joint):
            raise RobustDistillError(f"add_module({name!r}, stepped=True) needs the module's own optimizer= and "
                                     "joint=False (joint=True trains it with the student's optimiser instead)")
        module.to(self.device)
        self.dist.share_module(module)
        if joint:
            self.optimizer.add_param_group({"params": list(module.parameters())})
            self.scheduler = make_scheduler(self.config, self.optimizer)  # schedule the new group too
        self.plugin_modules[name] = (module, optimizer)
        if stepped and optimizer is not None:
            self.stepped[name] = (optimizer, make_scheduler(self.config, optimizer))

    def build_model(self, name: str | None) -> nn.Module:
        arch: ModelArch = getattr(self.student, "arch", self.arch)
        model = build_model(replace(arch, name=name) if name is not None else arch, self.host.registry.models)
        model.to(self.device)
        if self.config.channels_last == "on":
            model.to(memory_format=torch.channels_last)
        return model

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimisers every training step zeroes and steps: the student's, then those of the modules added
        with ``stepped=True``."""
        return [self.optimizer, *(optimizer for optimizer, _ in self.stepped.values())]

    def step_schedules(self) -> None:
        """The end of an epoch for the learning-rate schedules: the student's and the stepped modules'."""
        self.scheduler.step()
        for _, scheduler in self.stepped.values():
            scheduler.step()

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def set_final_model(self, name: str, module: nn.Module) -> None:
        if name in ("student", "final"):
            raise RobustDistillError(f"set_final_model: {name!r} is reserved; name the model after what it is "
                                     "(e.g. 'average')")
        self.final_model = (name, module)

    def reduce_sum(self, tensor: Tensor) -> Tensor:
        return self.dist.reduce_sum(tensor)

    def train_batches(self, augment: bool) -> Iterator[tuple[Tensor, Tensor]]:
        batches = BatchIterator(self.data.train_x, self.data.train_y, self.config.batch_size, shuffle=False,
                                seed=self.config.seed, device=self.device,
                                augment=self.data.info.augment if augment else "none")
        batches.set_epoch(self.view.epoch)
        return iter(batches)

    def validate(self, model: nn.Module, on: str) -> dict[str, float]:
        if on == "split":
            x_all, y_all = self.data.val_x, self.data.val_y
        elif on == "test":
            x_all, y_all = self.data.test_x[:self.config.val_test], self.data.test_y[:self.config.val_test]
        else:
            raise ValueError(f"validate(on={on!r}): use 'split' or 'test'")
        if x_all is None or len(y_all) == 0:
            return {}
        config = self.config
        spec = AttackSpec(eps=config.eps, step_size=config.step_size, steps=config.val_attack_steps)
        clean = robust = 0
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), model_mode(model, train=False):
            for start in range(0, len(y_all), VAL_BATCH):
                x = x_all[start:start + VAL_BATCH].to(self.device).float() / 255
                y = y_all[start:start + VAL_BATCH].to(self.device)
                with torch.no_grad():
                    clean += int((model(x).argmax(1) == y).sum())
                x_adv = pgd(model, x, y, spec)
                with torch.no_grad():
                    robust += int((model(x_adv).argmax(1) == y).sum())
        return {"clean": clean / len(y_all), "pgd": robust / len(y_all)}

    # -- the checkpoint --------------------------------------------------------------------------------

    def config_record(self) -> dict[str, Any]:
        """The resolved configuration as ``config.json`` and the checkpoint record it: the options, and where the
        defaults that plugins or compositions filled come from."""
        return {**self.config.to_dict(), "sources": dict(self.resolution.sources)}

    def save(self) -> None:
        """Checkpoint the run (rank 0 writes; every rank contributes its RNG state), then let the records follow
        it (``checkpoint_saved``: ``config.json``, ``metrics.jsonl``)."""
        rng = self.dist.gather(rng_state())
        if self.dist.is_main:
            for name, value in self.view.checkpointed.items():
                check_saveable(value, repr(name))
            final = self.final_model
            save_checkpoint(self.out / CHECKPOINT, {
                "version": __version__,
                "arch": self.arch.to_dict(),
                "model": self.student.state_dict(),
                "models": {final[0]: final[1].state_dict()} if final else {},
                "final": final[0] if final else "student",
                "optimizer": self.optimizer.state_dict(),
                "epoch": self.view.epoch,
                "progress": self.progress.to_dict(),
                "world_size": self.dist.world,
                "config": self.config_record(),
                "requested": self.requested.to_dict(),
                "plugins": [info.to_dict() for info in self.host.plugin_infos()],
                "plugin_modules": {name: {"module": m.state_dict(), "optimizer": o.state_dict() if o else None}
                                   for name, (m, o) in self.plugin_modules.items()},
                "checkpointed": self.view.checkpointed,
                "history": self.view.history,
                "rng": rng,
            })
            self.hooks.event("checkpoint_saved", run=self.view)
        self.dist.barrier()

    def restore_training_state(self) -> None:
        """Weights, epoch, position in the epoch, history and plugin state: before ``train_start``, so hooks see
        them."""
        ckpt = self.resume_from
        assert ckpt is not None
        self.student.load_state_dict(ckpt["model"])
        self.view.epoch = int(ckpt["epoch"])
        self.progress = EpochProgress.from_dict(ckpt["progress"], self.device)
        self.view.history[:] = list(ckpt.get("history", []))
        self.view.checkpointed.update(to_device(ckpt.get("checkpointed", {}), self.device))

    def restore_optimisation_state(self) -> None:
        """Optimisers, plugin modules, schedule and RNG: after ``train_start`` added the plugins' modules and
        parameter groups (and drew their initial weights from the RNG)."""
        ckpt = self.resume_from
        assert ckpt is not None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for name, saved in ckpt.get("plugin_modules", {}).items():
            if name in self.plugin_modules:
                module, optimizer = self.plugin_modules[name]
                module.load_state_dict(saved["module"])
                if optimizer is not None and saved["optimizer"] is not None:
                    optimizer.load_state_dict(saved["optimizer"])
        self.scheduler = scheduler_at(self.config, self.optimizer, self.view.epoch)
        for name, (optimizer, _) in self.stepped.items():
            self.stepped[name] = (optimizer, scheduler_at(self.config, optimizer, self.view.epoch))
        set_rng_state(ckpt["rng"][self.dist.rank])

    def environment(self) -> dict[str, Any]:
        """Software and hardware the run trains on, its data, teachers, and which backend the fused ops use
        (``environment.json``)."""
        device = self.device
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        config = self.config
        total = self.train_images
        return {"robustdistill": __version__, "torch": torch.__version__, "cuda": torch.version.cuda,
                "python": platform.python_version(), "command": sys.argv, "device": str(device),
                "device_name": device_name, "processes": self.dist.world, "cpu_threads": torch.get_num_threads(),
                "ops_backend": self.ops_backend, "kernels": kernel_status(device), "amp": config.amp,
                "channels_last": config.channels_last == "on",
                "cudnn_benchmark": device.type == "cuda" and torch.backends.cudnn.benchmark,
                "folded_conv_bn": {"student": folded_pairs(self.attack_student),
                                   **{f"teacher:{role}" if role != DEFAULT_TEACHER else "teacher": folded_pairs(t)
                                      for role, t in self.teachers.items()}},
                "data": {"train_images": [0, len(self.data.train_y)],
                         "validation_images": [total - (config.val_split or 0), total] if config.val_split else None,
                         "test_images_monitored": config.val_test},
                "teacher": self.teacher_sources.get(self.resolution.default_teacher or ""),
                "teachers": self.teacher_sources}


# -- building it ------------------------------------------------------------------------------------------

def default_out(config: RunConfig) -> str:
    return str(Path("runs") / f"{'-'.join(config.plugin)}-{config.dataset}")


def load_teacher(spec: str, role: str, config: RunConfig, host: PluginHost, info: DatasetInfo,
                 device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen teacher of ``role`` (checkpoint, run directory, state_dict or robustbench:NAME) and what was
    loaded (spec, architecture, input normalisation) for environment.json."""
    archs = role_values(config.teacher_arch, "--teacher-arch")
    norms = role_values(config.teacher_normalize, "--teacher-normalize")
    loaded = load_model_spec(spec, info=info, models=host.registry.models,
                             arch=archs.get(role, archs.get(DEFAULT_TEACHER)),
                             normalize=norms.get(role, norms.get(DEFAULT_TEACHER)),
                             robustbench_dir=config.robustbench_dir, download=config.download,
                             activation=config.activation)
    teacher = loaded.model
    if check_teacher_fits(loaded, info, resize=config.teacher_resize):
        teacher = ResizedTeacher(teacher, loaded.arch.image_size)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, loaded.describe()


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


def build_run(requested: RunConfig, host: PluginHost, resume: bool = False, *, data: ImageData | None = None,
              student: nn.Module | None = None, teachers: Mapping[str, nn.Module] | None = None) -> Run:
    """Validate everything that can be validated and build the run, before any training.

    ``resume`` continues the run in ``--out`` from its checkpoint; a run directory without one starts anew.
    ``data``, ``student`` and ``teachers`` (by role) replace what the configuration would load or build (the
    author kit's tiny runs).
    """
    host.registry.dataset(requested.dataset)  # names known before anything is loaded
    if requested.model is not None:
        host.registry.model(requested.model)
    distributed = Distributed()
    device = distributed.setup(resolve_device(requested.device))
    ops_backend = select_backend(requested.ops_backend, device)
    seed_everything(requested.seed)
    if data is None:
        data = host.registry.dataset(requested.dataset).load(requested.data_dir, requested.download)
    info = data.info
    resolution = resolve_config(requested, host, info, train_images=len(data.train_y), device_type=device.type,
                                ops_backend=ops_backend["requested"], world=distributed.world)
    config = resolution.config
    requested = replace(requested, plugin=config.plugin, out=requested.out or default_out(config))
    config = replace(config, out=requested.out)
    resolution = replace(resolution, config=config)
    out = Path(config.out)
    checkpoint = out / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise RobustDistillError(f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it, "
                                 "or choose another --out")
    saved = load_checkpoint(checkpoint) if resume and checkpoint.exists() else None
    if saved is not None:
        check_resumable(saved, requested, config, host.registry, distributed.world)
    for line in resolution.borrowed():
        distributed.print(f"robustdistill: {line}", flush=True)
    train_images = len(data.train_y)
    data = hold_out(data, config.subset, config.val_split or 0)
    arch = ModelArch(config.model, info.num_classes, info.in_channels, info.image_size, config.activation, info.mean,
                     info.std)
    student = (student if student is not None else build_model(arch, host.registry.models)).to(device)
    sources: dict[str, dict[str, Any]] = {}
    if teachers is None:
        loaded = {}
        for role, spec in resolution.teachers.items():
            loaded[role], sources[role] = load_teacher(spec, role, config, host, info, device)
        teachers = loaded
    else:
        teachers = {role: t.to(device).eval() for role, t in teachers.items()}
        sources = {role: {"spec": spec} for role, spec in resolution.teachers.items()}
    if config.channels_last == "on":
        for model in (student, *teachers.values()):
            model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark == "on"
    optimizer = torch.optim.SGD([{"params": list(student.parameters())}], lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    trainer = distributed.wrap(student, device, config.sync_bn)
    if distributed.world > 1:
        student = trainer.module  # SyncBatchNorm conversion happens in place of the original layers
        torch.manual_seed(config.seed + distributed.rank)  # per-process attack noise; weights came from rank 0
    attack_student = student
    if config.fold_bn == "on":  # after every move and layer conversion: the views share them
        attack_student = fold_or_keep(student, live=True, what="student", log=distributed.print)
        teachers = {role: fold_or_keep(t, live=False, what="teacher" if role == DEFAULT_TEACHER else f"teacher {role}",
                                       log=distributed.print) for role, t in teachers.items()}
    return Run(requested=requested, resolution=resolution, host=host, hooks=host.step_hooks(config.plugin), data=data,
               arch=arch, device=device, out=out, student=student, attack_student=attack_student, trainer=trainer,
               teachers=teachers, optimizer=optimizer, scheduler=make_scheduler(config, optimizer), dist=distributed,
               ops_backend=ops_backend, train_images=train_images, teacher_sources=sources, resume_from=saved)
