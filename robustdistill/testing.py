"""Helpers for testing robustdistill plugins, for this project and for plugin authors.

Typical use in a third-party plugin's tests::

    from robustdistill.testing import plugin_host, run_step
    import my_plugin

    def test_my_loss_trains():
        host = plugin_host(my_plugin)
        terms = run_step(host, ["my-method"])
        assert {t.name for t in terms} == {"my_term"}
"""
from __future__ import annotations

from argparse import Namespace
from typing import Any, Sequence

import torch
from torch import nn

from .plugin_manager import PluginHost, load_plugins
from .registry import ModelArch
from .step import LossTerm, StepContext


def plugin_host(*plugins: object, autoload: bool = False) -> PluginHost:
    """A plugin host with the built-ins and ``plugins`` registered (third-party autoload off by default)."""
    host = load_plugins(autoload=autoload)
    for plugin in plugins:
        name = getattr(plugin, "__name__", type(plugin).__name__)
        host.register(plugin, name, "test", "third-party")
    host.build_registry()
    return host


def train_config(host: PluginHost, *args: str, **overrides: Any) -> Namespace:
    """The ``robustdistill train`` options with their defaults (plugin options included), then overrides."""
    from .cli import build_parser

    config = build_parser(host).parse_args(["train", *args])
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny_model(num_classes: int = 3, in_channels: int = 1, image_size: int = 8, seed: int = 0) -> nn.Module:
    """A small CNN classifier (inputs in [0,1]) for fast tests."""
    from .models import build_model

    torch.manual_seed(seed)
    return build_model(ModelArch("cnn", num_classes, in_channels, image_size))


def step_context(host: PluginHost, methods: Sequence[str], *, student: nn.Module | None = None,
                 teacher: nn.Module | None = None, batch: int = 4, epoch: int = 1, epochs: int = 1,
                 config: Namespace | None = None, seed: int = 0) -> StepContext:
    """A :class:`StepContext` over a random batch, with the hooks of ``methods`` active."""
    from .engine import resolve_methods

    methods = resolve_methods(host, list(methods))
    student = student if student is not None else tiny_model()
    arch: ModelArch = student.arch  # type: ignore[assignment]
    config = config if config is not None else train_config(host, eps=0.1, step_size=0.02, attack_steps=3)
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, arch.in_channels, arch.image_size, arch.image_size, generator=generator)
    y = torch.randint(0, arch.num_classes, (batch,), generator=generator)
    return StepContext(x=x, y=y, student=student, teacher=teacher.eval() if teacher is not None else None,
                       config=config, epoch=epoch, epochs=epochs, step=0, hooks=host.step_hooks(methods))


def run_step(host: PluginHost, methods: Sequence[str], **kwargs: Any) -> list[LossTerm]:
    """Run attack and loss hooks once and backpropagate; checks the loss is finite and reaches the student."""
    ctx = step_context(host, methods, **kwargs)
    ctx.student.train()
    ctx.x_adv = ctx.hooks.attack(ctx)
    if ctx.x_adv is not None:
        assert ctx.x_adv.shape == ctx.x.shape and not ctx.x_adv.requires_grad, "attack must return a detached batch"
    terms = ctx.hooks.loss(ctx)
    assert terms, "the selected plugins contributed no loss term"
    total = sum(t.weight * t.value for t in terms)
    assert torch.isfinite(total), f"non-finite loss: {[(t.name, float(t.value)) for t in terms]}"
    total.backward()
    assert any(p.grad is not None for p in ctx.student.parameters()), "the loss does not reach the student"
    return terms
