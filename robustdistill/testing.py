"""The plugin-author kit: run a plugin's hooks in tests, for this project and for third-party plugins.

* :func:`plugin_host` — the built-ins plus the plugins under test (registered under their entry-point name
  when installed, so option prefixes and ``--plugin`` names are the real ones).
* :func:`train_config` — the ``train`` options as a :class:`~robustdistill._config.RunConfig`.
* :func:`options` — the same from keyword arguments (``options(host, igdm_alpha=1.0, eps=0.1)``).
* :func:`step_context` / :func:`run_step` — one step on a random batch with given (or tiny) models:
  ``resolve_options``, ``train_start`` and ``epoch_start`` run first; ``run_step`` then runs ``attack``,
  ``student_inputs``, ``loss``, the backward pass, an optimiser step and ``step_end``; :func:`loss_terms`
  runs only the student inputs and ``loss``.
* :func:`train_run` — the real engine, whole lifecycle, on the built-in ``synthetic`` dataset in seconds.
* :class:`HookRecorder` — a plugin that records every step and lifecycle hook call.

The same helpers are pytest fixtures (``rd_host``, ``rd_recorder``, ``rd_train``) through the ``pytest11``
entry point of :mod:`robustdistill.pytest_plugin`.
"""
from __future__ import annotations

import importlib.metadata as metadata
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from . import hookimpl
from .api import LossTerm, RunView, StepContext
from ._config import RunConfig, config_from_args
from ._data import DATASET_INFOS
from ._manager import ENTRY_POINT_GROUP, PluginHost, StepHooks, load_plugins
from ._registry import DatasetInfo, ImageData, ModelArch

SYNTHETIC = "synthetic"
TEST_ATTACK = {"eps": 0.1, "step_size": 0.02, "attack_steps": 3}
"""ε, step and steps of tests' attacks where a configuration leaves them unset."""


def plugin_name(plugin: object) -> str:
    """The name ``plugin`` is installed under in the ``robustdistill`` entry-point group, else its module's or
    class's name."""
    module = getattr(plugin, "__name__", None) or type(plugin).__module__
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.value == module:
            return ep.name
    return getattr(plugin, "__name__", type(plugin).__name__).rsplit(".", 1)[-1].lower()


def plugin_host(*plugins: object, names: Sequence[str] | None = None, autoload: bool = False) -> PluginHost:
    """A plugin host with the built-ins and ``plugins`` registered (third-party autoload off by default).

    Each plugin is registered under ``names[i]``, else under :func:`plugin_name`.
    """
    host = load_plugins(autoload=autoload)
    for i, plugin in enumerate(plugins):
        name = names[i] if names is not None else plugin_name(plugin)
        if host.pm.has_plugin(name):
            host.pm.unregister(name=name)
        host.register(plugin, name, "test", "third-party")
    host.build_registry()
    return host


def train_config(host: PluginHost, *args: str, **overrides: Any) -> RunConfig:
    """``robustdistill train ARGS`` as a configuration (core ``overrides`` by field name, e.g. ``epochs=2``)."""
    from ._arguments import build_parser
    from ._catalog import Catalog

    config = config_from_args(build_parser(Catalog.of(host)).parse_args(["train", *args]), host.registry.options)
    return replace(config, **overrides)


def tiny_model(num_classes: int = 3, in_channels: int = 1, image_size: int = 8, seed: int = 0) -> nn.Module:
    """A small CNN classifier (inputs in [0,1]) for fast tests."""
    from ._models import build_model

    torch.manual_seed(seed)
    return build_model(ModelArch("cnn", num_classes, in_channels, image_size))


class _Sink:
    """Collects plugin modules for :func:`step_context` runs: a plain SGD optimiser over the student and
    the joint modules."""

    def __init__(self, student: nn.Module, lr: float) -> None:
        self.optimizer = torch.optim.SGD([{"params": list(student.parameters())}], lr=lr)
        self.modules: dict[str, tuple[nn.Module, torch.optim.Optimizer | None]] = {}

    def add_module(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer | None, joint: bool) -> None:
        if joint:
            self.optimizer.add_param_group({"params": list(module.parameters())})
        self.modules[name] = (module, optimizer)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def resolved_config(host: PluginHost, methods: Sequence[str], info: DatasetInfo,
                    config: RunConfig | None = None) -> RunConfig:
    """``config`` (default: all defaults) for ``methods`` with unset attack settings from :data:`TEST_ATTACK`
    and the plugins' options resolved as a run would resolve them."""
    config = config if config is not None else train_config(host)
    config = replace(config, plugin=tuple(host.resolve_methods(methods)),
                     **{k: v for k, v in TEST_ATTACK.items() if getattr(config, k) is None})
    config = replace(config, model=config.model or "cnn", amp="off")
    return host.resolve_plugin_options(config, info)


def step_context(host: PluginHost, methods: Sequence[str], *, student: nn.Module | None = None,
                 teacher: nn.Module | None = None, batch: int = 4, epoch: int = 1, epochs: int = 1,
                 config: RunConfig | None = None, seed: int = 0, steps_per_epoch: int = 1,
                 step: int | None = None) -> StepContext:
    """A :class:`StepContext` over a random batch with the hooks of ``methods`` active, after the run's
    ``train_start`` and the epoch's ``epoch_start``. ``ctx.run.sink`` holds the plugins' modules; ``ctx.run.out``
    is a new temporary directory."""
    student = student if student is not None else tiny_model()
    arch: ModelArch = student.arch  # type: ignore[assignment]
    info = replace(DATASET_INFOS[SYNTHETIC], name="test", num_classes=arch.num_classes,
                   in_channels=arch.in_channels, image_size=arch.image_size)
    config = replace(resolved_config(host, methods, info, config), epochs=epochs)
    config = replace(config, attack=host.resolve_attack(config.plugin, config.attack, teacher is not None))
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, arch.in_channels, arch.image_size, arch.image_size, generator=generator)
    y = torch.randint(0, arch.num_classes, (batch,), generator=generator)
    images = (x * 255).round().to(torch.uint8)
    view = RunView(config=config, data=ImageData(info, images, y, images, y), arch=arch, device=x.device,
                   student=student, teacher=teacher.eval() if teacher is not None else None, attack_student=student,
                   methods=config.plugin, base_method=next(iter(host.attack_owners(config.plugin)), None),
                   out=Path(tempfile.mkdtemp(prefix="robustdistill-step-")), steps_per_epoch=steps_per_epoch, is_main=True, world_size=1,
                   sink=_Sink(student, config.lr), epoch=epoch - 1,
                   attack=host.registry.attacks.get(config.attack) if config.attack else None)
    hooks = host.step_hooks(config.plugin)
    hooks.event("train_start", run=view)
    hooks.event("epoch_start", run=view, epoch=epoch)
    step = (epoch - 1) * steps_per_epoch if step is None else step
    return StepContext(x=x, y=y, run=view, epoch=epoch, step=step, hooks=hooks)


def loss_terms(ctx: StepContext) -> list[LossTerm]:
    """The ``loss`` hooks' terms for ``ctx`` (after its attack, if any): the declared student inputs are run
    first, as the engine runs them."""
    hooks: StepHooks = ctx.hooks  # type: ignore[assignment]
    ctx.run_student_inputs(hooks.student_inputs(ctx), batched=ctx.config.batch_student_forwards)
    return hooks.loss(ctx)


def options(host: PluginHost, **values: Any) -> RunConfig:
    """A configuration with plugin and core options given by their dest names: ``options(host, igdm_alpha=1.0,
    igdm_clip_minus=True, eps=0.1)`` = ``train_config(host, "--igdm-alpha", "1.0", "--igdm-clip-minus", ...)``."""
    args: list[str] = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{flag[2:]}")
        else:
            args += [flag, str(value)]
    return train_config(host, *args)


def run_step(host: PluginHost, methods: Sequence[str], **kwargs: Any) -> list[LossTerm]:
    """One training step as the engine runs it; checks the loss is finite and reaches the student."""
    ctx = step_context(host, methods, **kwargs)
    ctx.student.train()
    hooks: StepHooks = ctx.hooks  # type: ignore[assignment]
    ctx.x_adv = hooks.attack(ctx)
    if ctx.x_adv is not None:
        assert ctx.x_adv.shape == ctx.x.shape and not ctx.x_adv.requires_grad, "attack must return a detached batch"
    terms = loss_terms(ctx)
    assert terms, "the selected plugins contributed no loss term"
    total = sum(t.weight * t.value for t in terms)
    assert torch.isfinite(total), f"non-finite loss: {[(t.name, float(t.value)) for t in terms]}"
    optimizer = ctx.run.sink.optimizer  # type: ignore[attr-defined]
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    assert any(p.grad is not None for p in ctx.student.parameters()), "the loss does not reach the student"
    optimizer.step()
    hooks.event("step_end", run=ctx.run, ctx=ctx, terms=terms)
    return terms


def train_run(host: PluginHost, methods: Sequence[str], out: str | Path, *args: str, resume: bool = False,
              **overrides: Any) -> Any:
    """Train ``methods`` with the real engine (every hook, checkpoints, records) on the ``synthetic`` dataset
    for one epoch by default, into ``out``; ``args`` are further ``train`` options. Returns the finished run
    (``run.view.history`` holds the metrics)."""
    from ._loop import train

    argv = ["--dataset", SYNTHETIC, "--epochs", "1", "--batch-size", "64", "--val-size", "32",
            "--val-attack-steps", "2", "--device", "cpu", *args]
    for method in methods:
        argv += ["--plugin", method]
    config = replace(train_config(host, *argv, **overrides), out=str(out))
    return train(config, host, resume=resume)


class HookRecorder:
    """A plugin that records the step and lifecycle hooks it sees, in order: ``calls`` holds
    ``(hook, details)`` with the epoch for epoch hooks and the step for step hooks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    @hookimpl
    def train_start(self, run: RunView) -> None:
        self.calls.append(("train_start", run.epoch))

    @hookimpl
    def epoch_start(self, epoch: int) -> None:
        self.calls.append(("epoch_start", epoch))

    @hookimpl
    def student_inputs(self, ctx: StepContext) -> None:
        self.calls.append(("student_inputs", ctx.step))

    @hookimpl
    def loss(self, ctx: StepContext) -> None:
        self.calls.append(("loss", ctx.step))

    @hookimpl
    def step_end(self, ctx: StepContext, terms: list[LossTerm]) -> None:
        self.calls.append(("step_end", (ctx.step, tuple(t.name for t in terms))))

    @hookimpl
    def epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.calls.append(("epoch_end", epoch))

    @hookimpl
    def checkpoint_saved(self, run: RunView) -> None:
        self.calls.append(("checkpoint_saved", run.epoch))

    @hookimpl
    def train_end(self, run: RunView) -> None:
        self.calls.append(("train_end", run.epoch))
