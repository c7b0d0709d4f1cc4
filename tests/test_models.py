"""Tests for the built-in classifiers and model construction."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robustdistill._models import (
    ACTIVATIONS,
    BUILTIN_MODELS,
    Classifier,
    build_model,
)
from robustdistill._registry import ModelArch, ModelEntry, RobustDistillError

FAMILIES = ["cnn", "smallcnn", "resnet18", "preact-resnet18", "wrn-16-2", "mobilenetv2"]


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("in_channels,image_size", [(1, 28), (3, 32)])
def test_shapes_and_features(name: str, in_channels: int, image_size: int) -> None:
    arch = ModelArch(name, num_classes=10, in_channels=in_channels, image_size=image_size)
    model = build_model(arch).eval()
    assert isinstance(model, Classifier)
    assert model.arch == arch
    assert model.head.in_features == model.feature_dim
    assert model.head.out_features == 10
    x = torch.rand(2, in_channels, image_size, image_size)
    with torch.no_grad():
        logits = model(x)
        logits2, features = model(x, return_features=True)
        direct = model.forward_features(x)
    assert logits.shape == (2, 10)
    assert features.shape == (2, model.feature_dim)
    torch.testing.assert_close(features, direct)
    torch.testing.assert_close(logits2, model.head(direct))
    torch.testing.assert_close(logits, logits2)


@pytest.mark.parametrize("name", ["cnn", "wrn-16-2", "mobilenetv2"])
def test_larger_images(name: str) -> None:
    model = build_model(ModelArch(name, num_classes=7, in_channels=3, image_size=64)).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 7)


def test_parameter_counts() -> None:
    arch = ModelArch("wrn-34-10", num_classes=10, in_channels=3, image_size=32)
    wrn = _n_params(build_model(arch))
    assert abs(wrn - 46_160_474) / 46_160_474 < 0.005
    resnet = _n_params(build_model(ModelArch("resnet18", 10, 3, 32)))
    assert abs(resnet - 11_173_962) / 11_173_962 < 0.01


def test_normalisation_is_inside_the_model() -> None:
    torch.manual_seed(1)
    shifted = build_model(ModelArch("cnn", 10, 3, 32, mean=(0.5,), std=(0.5,))).eval()
    torch.manual_seed(1)
    plain = build_model(ModelArch("cnn", 10, 3, 32)).eval()
    assert shifted.mean.shape == (1, 3, 1, 1)
    torch.testing.assert_close(shifted.mean, torch.full((1, 3, 1, 1), 0.5))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(shifted(x), plain((x - 0.5) / 0.5))


def test_per_channel_statistics() -> None:
    arch = ModelArch("cnn", 10, 3, 32, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    model = build_model(arch)
    torch.testing.assert_close(model.mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(model.std.flatten(), torch.tensor([0.4, 0.5, 0.6]))
    with pytest.raises(RobustDistillError, match="in_channels"):
        build_model(ModelArch("cnn", 10, 3, 32, mean=(0.1, 0.2)))
    with pytest.raises(RobustDistillError, match="positive"):
        build_model(ModelArch("cnn", 10, 1, 28, std=(0.0,)))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activations_and_input_gradients(name: str, activation: str) -> None:
    model = build_model(ModelArch(name, 10, 1, 28, activation=activation))
    used = {type(m) for m in model.modules() if isinstance(m, tuple(ACTIVATIONS.values()))}
    assert used == {ACTIVATIONS[activation]}
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    model(x).logsumexp(dim=1).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_unknown_model() -> None:
    with pytest.raises(RobustDistillError) as info:
        build_model(ModelArch("vgg16", 10, 3, 32))
    message = str(info.value)
    assert "unknown model 'vgg16'" in message
    for entry in BUILTIN_MODELS:
        assert entry.name in message


def test_unknown_activation() -> None:
    with pytest.raises(RobustDistillError) as info:
        build_model(ModelArch("cnn", 10, 1, 28, activation="tanh"))
    message = str(info.value)
    assert "'tanh'" in message
    for name in ("relu", "gelu", "silu"):
        assert name in message


@pytest.mark.parametrize("name", ["wrn-30-10", "wrn-4-1"])
def test_bad_wrn_depth(name: str) -> None:
    with pytest.raises(RobustDistillError, match=r"depth.*\(depth - 4\) % 6 == 0"):
        build_model(ModelArch(name, 10, 3, 32))


def test_wrn_pattern_matches_general_names() -> None:
    entry = next(e for e in BUILTIN_MODELS if e.pattern is not None)
    assert entry.matches("wrn-34-10") and entry.matches("wrn-16-4")
    assert not entry.matches("wrn-34") and not entry.matches("resnet18")
    model = build_model(ModelArch("wrn-10-1", 10, 3, 32))
    assert model.feature_dim == 64


def test_state_dict_round_trip() -> None:
    arch = ModelArch("cnn", 10, 3, 32, mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261))
    source = build_model(arch).eval()
    state = source.state_dict()
    assert "mean" in state and "std" in state
    target = build_model(ModelArch("cnn", 10, 3, 32)).eval()
    target.load_state_dict(state)
    torch.testing.assert_close(target.mean, source.mean)
    torch.testing.assert_close(target.std, source.std)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def test_custom_entries() -> None:
    entries = [ModelEntry(name="tiny", factory=lambda arch: nn.Linear(2, 2), summary="not a classifier")]
    with pytest.raises(RobustDistillError, match="Classifier"):
        build_model(ModelArch("tiny", 10, 1, 28), entries)
    with pytest.raises(RobustDistillError, match="known models: tiny"):
        build_model(ModelArch("cnn", 10, 1, 28), entries)
