"""The plugin-author kit: run a plugin's hooks in tests the way the engine runs them — for this project and for
third-party plugins. Every helper builds a real run (the engine's resolution, run and step functions) around
tiny models and a random batch, so what passes here passes in ``robustdistill train``.

* :func:`plugin_host` — the built-ins plus the plugins under test (registered under their entry-point name
  when installed, so option prefixes and ``--plugin`` names are the real ones).
* :func:`train_config` — the ``train`` options as a :class:`~robustdistill.api.RunConfig`;
  :func:`options` — the same from keyword arguments named like the flags (``options(host, igdm_alpha=1.0)``).
* :func:`step_context` — one step's context after ``resolve_options``, ``train_start`` and ``epoch_start``;
  :func:`attack` runs the ``attack`` hook on it, :func:`loss_terms` the student inputs and ``loss`` (with any
  ``sample_weights``), :func:`run_step` the whole step as the engine does (attack, inputs, loss, backward,
  optimiser step, ``step_end``).
* :func:`train_run` — the real engine, whole lifecycle, on the built-in ``synthetic`` dataset in seconds.
* :class:`HookRecorder` — a plugin that records every hook call.

Teachers: pass ``teacher=`` (the default teacher) or ``teachers={role: model}``; a method that distils from
teachers the test does not give gets a tiny random teacher per role. The run directory is ``out`` when given
(e.g. pytest's ``tmp_path``), else a temporary directory removed with the run. The same helpers are pytest
fixtures (``rd_host``, ``rd_recorder``, ``rd_train``) through the ``pytest11`` entry point of
:mod:`robustdistill.pytest_plugin`.
"""
from __future__ import annotations

import importlib.metadata as metadata
import shutil
import tempfile
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import hookimpl
from ._config import RunConfig, config_from_args
from ._context import DEFAULT_TEACHER, LossTerm, RunView, StepContext
from ._data import DATASET_INFOS
from ._manager import ENTRY_POINT_GROUP, PluginHost, load_plugins
from ._registry import DatasetInfo, ImageData, ModelArch
from ._resolve import Resolution, resolve_config, role_values

SYNTHETIC = "synthetic"
KIT_TEACHER = "(a teacher given to the author kit)"


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


def options(host: PluginHost, **values: Any) -> RunConfig:
    """A configuration from keyword arguments named like the flags without ``--``, dashes as underscores:
    ``options(host, igdm_alpha=1.0, igdm_clip_minus=True, eps=0.1)`` is ``train_config(host, "--igdm-alpha",
    "1.0", "--igdm-clip-minus", "--eps", "0.1")``. A plugin's keywords start with its prefix like its flags
    (``logit_pairing_weight`` for ``--logit-pairing-weight``); ``True``/``False`` turn a flag on or off."""
    args: list[str] = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{flag[2:]}")
        else:
            args += [flag, str(value)]
    return train_config(host, *args)


def tiny_model(num_classes: int = 3, in_channels: int = 1, image_size: int = 8, seed: int = 0) -> nn.Module:
    """A small CNN classifier (inputs in [0,1]) for fast tests."""
    from ._models import build_model

    torch.manual_seed(seed)
    return build_model(ModelArch("cnn", num_classes, in_channels, image_size))


def teacher_roles(host: PluginHost, methods: Sequence[str]) -> list[str]:
    """The teacher roles a run of ``methods`` needs: the default teacher's and the roles the methods declare."""
    selected = [host.registry.methods[m] for m in host.resolve_methods(methods)]
    roles = [role for m in selected for role in m.teachers]
    if any(m.needs_teacher for m in selected) and not roles:
        roles.insert(0, DEFAULT_TEACHER)
    return list(dict.fromkeys(roles))


def _with_teachers(config: RunConfig, roles: Sequence[str]) -> RunConfig:
    """``config`` with a teacher entry for each role it does not name (the kit supplies the models)."""
    given = role_values(config.teacher, "--teacher")
    entries = [KIT_TEACHER if role == DEFAULT_TEACHER else f"{role}={KIT_TEACHER}"
               for role in dict.fromkeys(roles) if role not in given]
    return replace(config, teacher=(*(config.teacher or ()), *entries)) if entries else config


def resolution(host: PluginHost, methods: Sequence[str], info: DatasetInfo, config: RunConfig | None = None,
               train_images: int = 50_000) -> Resolution:
    """How a run of ``methods`` on data described by ``info`` resolves ``config`` (default: all defaults) — the
    engine's own resolution, on the CPU, with a placeholder for every teacher the methods need."""
    from ._ops import get_backend

    config = config if config is not None else train_config(host)
    config = _with_teachers(replace(config, plugin=tuple(methods)), teacher_roles(host, methods))
    return resolve_config(config, host, info, train_images=train_images, device_type="cpu",
                          ops_backend=get_backend())


def resolved_config(host: PluginHost, methods: Sequence[str], info: DatasetInfo,
                    config: RunConfig | None = None) -> RunConfig:
    """The configuration a run of ``methods`` on ``info`` trains with (see :func:`resolution`)."""
    return resolution(host, methods, info, config).config


def step_context(host: PluginHost, methods: Sequence[str], *, student: nn.Module | None = None,
                 teacher: nn.Module | None = None, teachers: Mapping[str, nn.Module] | None = None, batch: int = 4,
                 epoch: int = 1, epochs: int = 1, config: RunConfig | None = None, seed: int = 0,
                 steps_per_epoch: int = 1, step: int | None = None, out: str | Path | None = None) -> StepContext:
    """A :class:`StepContext` over a random batch of ``batch`` images, in a real run of ``methods`` with
    ``epochs`` epochs of ``steps_per_epoch`` steps, after the run's ``train_start`` and the ``epoch_start`` of
    epoch ``epoch`` (1-based); ``step`` defaults to the epoch's first.

    ``student`` (default: :func:`tiny_model`) fixes the data's shape and classes; ``teacher`` is the default
    teacher, ``teachers`` teachers by role; missing ones are tiny random models. ``config`` is the requested
    configuration (:func:`options`, :func:`train_config`), resolved as a run resolves it; the run is on the CPU
    unless it names a ``--device``. The models are used as given: BatchNorm folding (``--fold-bn``, a speed
    option that computes the same function) is off.
    """
    from ._loop import new_step, start
    from ._run import build_run

    student = student if student is not None else tiny_model()
    arch: ModelArch = student.arch  # type: ignore[assignment]
    info = replace(DATASET_INFOS[SYNTHETIC], name="test", num_classes=arch.num_classes,
                   in_channels=arch.in_channels, image_size=arch.image_size)
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, arch.in_channels, arch.image_size, arch.image_size, generator=generator)
    y = torch.randint(0, arch.num_classes, (batch,), generator=generator)
    images = (x * 255).round().to(torch.uint8)
    data = ImageData(info, images.repeat(steps_per_epoch, 1, 1, 1), y.repeat(steps_per_epoch), images, y)

    config = config if config is not None else train_config(host)
    roles = teacher_roles(host, methods)
    models = dict(teachers or {})
    if teacher is not None:
        models[DEFAULT_TEACHER] = teacher
    config = _with_teachers(config, [*roles, *models])
    for role in roles:
        models.setdefault(role, tiny_model(arch.num_classes, arch.in_channels, arch.image_size, seed=1 + len(models)))
    directory = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="robustdistill-step-"))
    config = replace(config, plugin=tuple(methods), epochs=epochs, batch_size=batch, val_split=0, out=str(directory),
                     device="cpu" if config.device == "auto" else config.device, fold_bn="off")
    run = build_run(config, host, data=data, student=student, teachers=models)
    if out is None:
        weakref.finalize(run, shutil.rmtree, directory, ignore_errors=True)
    run.view.epoch = epoch - 1
    start(run)
    run.hooks.event("epoch_start", run=run.view, epoch=epoch)
    step = (epoch - 1) * steps_per_epoch if step is None else step
    return new_step(run, x, y, epoch, step)


def attack(ctx: StepContext) -> Tensor | None:
    """The ``attack`` hook on ``ctx`` as the engine runs it; sets and returns ``ctx.x_adv``."""
    from ._loop import attack as run_attack

    run_attack(ctx._engine, ctx)  # type: ignore[arg-type]
    return ctx.x_adv


def loss_terms(ctx: StepContext) -> list[LossTerm]:
    """The loss terms of ``ctx`` (after its attack, if any) as the engine makes them: the declared student inputs
    are run first, then every active plugin's ``loss``, re-weighted by any ``sample_weights``."""
    from ._loop import loss_terms as terms, student_inputs

    student_inputs(ctx._engine, ctx)  # type: ignore[arg-type]
    return terms(ctx._engine, ctx)  # type: ignore[arg-type]


def run_step(host: PluginHost, methods: Sequence[str], **kwargs: Any) -> list[LossTerm]:
    """One training step as the engine runs it (:func:`step_context`'s keywords apply); checks that the attack
    returns a detached batch of the input's shape, that the loss is finite and that it reaches the student."""
    from ._loop import train_step

    ctx = step_context(host, methods, **kwargs)
    loss, terms = train_step(ctx._engine, ctx)  # type: ignore[arg-type]
    if ctx.x_adv is not None:
        assert ctx.x_adv.shape == ctx.x.shape and not ctx.x_adv.requires_grad, "attack must return a detached batch"
    assert torch.isfinite(loss), f"non-finite loss: {[(t.name, float(t.value)) for t in terms]}"
    assert any(p.grad is not None for p in ctx.student.parameters()), "the loss does not reach the student"
    return terms


def train_run(host: PluginHost, methods: Sequence[str], out: str | Path, *args: str, resume: bool = False,
              **overrides: Any) -> Any:
    """Train ``methods`` with the real engine (every hook, checkpoints, records) on the ``synthetic`` dataset
    for one epoch by default, into ``out``; ``args`` are further ``train`` options. Returns the finished run
    (``run.view.history`` holds the metrics)."""
    from ._loop import train

    argv = ["--dataset", SYNTHETIC, "--epochs", "1", "--batch-size", "64", "--val-split", "32",
            "--val-attack-steps", "2", "--device", "cpu", *args]
    for method in methods:
        argv += ["--plugin", method]
    config = replace(train_config(host, *argv, **overrides), out=str(out))
    return train(config, host, resume=resume)


class HookRecorder:
    """A plugin that records every hook call it sees, in order: ``calls`` holds ``(hook, details)`` — the epoch for
    lifecycle hooks, the step for step hooks (with the role for ``teacher_forward``), the base method for
    ``resolve_options``. It returns nothing, so it changes no run."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def _record(self, hook: str, details: Any = None) -> None:
        self.calls.append((hook, details))

    @hookimpl
    def register_methods(self, register: Callable[[Any], None]) -> None:
        self._record("register_methods")

    @hookimpl
    def register_options(self, register: Callable[[Any], None]) -> None:
        self._record("register_options")

    @hookimpl
    def register_models(self, register: Callable[[Any], None]) -> None:
        self._record("register_models")

    @hookimpl
    def register_datasets(self, register: Callable[[Any], None]) -> None:
        self._record("register_datasets")

    @hookimpl
    def register_attacks(self, register: Callable[[Any], None]) -> None:
        self._record("register_attacks")

    @hookimpl
    def register_eval_attacks(self, register: Callable[[Any], None]) -> None:
        self._record("register_eval_attacks")

    @hookimpl
    def register_compositions(self, register: Callable[[Any], None]) -> None:
        self._record("register_compositions")

    @hookimpl
    def resolve_options(self, base_method: str | None) -> None:
        self._record("resolve_options", base_method)

    @hookimpl(tryfirst=True)
    def teacher_forward(self, ctx: StepContext, role: str) -> None:
        self._record("teacher_forward", (ctx.step, role))

    @hookimpl(tryfirst=True)
    def input_gradient(self, ctx: StepContext) -> None:
        self._record("input_gradient", ctx.step)

    @hookimpl(tryfirst=True)
    def attack(self, ctx: StepContext) -> None:
        self._record("attack", ctx.step)

    @hookimpl
    def student_inputs(self, ctx: StepContext) -> None:
        self._record("student_inputs", ctx.step)

    @hookimpl
    def loss(self, ctx: StepContext) -> None:
        self._record("loss", ctx.step)

    @hookimpl
    def sample_weights(self, ctx: StepContext) -> None:
        self._record("sample_weights", ctx.step)

    @hookimpl
    def train_start(self, run: RunView) -> None:
        self._record("train_start", run.epoch)

    @hookimpl
    def epoch_start(self, epoch: int) -> None:
        self._record("epoch_start", epoch)

    @hookimpl
    def step_end(self, ctx: StepContext, terms: list[LossTerm]) -> None:
        self._record("step_end", (ctx.step, tuple(t.name for t in terms)))

    @hookimpl
    def epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        self._record("epoch_end", epoch)

    @hookimpl
    def checkpoint_saved(self, run: RunView) -> None:
        self._record("checkpoint_saved", run.epoch)

    @hookimpl
    def train_end(self, run: RunView) -> None:
        self._record("train_end", run.epoch)
