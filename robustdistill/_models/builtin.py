"""The built-in classifiers: a small CNN, ResNet-18, PreAct ResNet-18, WideResNets and MobileNetV2.

Every model takes images in ``[0, 1]`` and normalises them itself, so attacks work in pixel
space. All networks use the CIFAR layouts (3x3 stride-1 stems, no max-pooling) and end in
global average pooling, so they accept any channel count and image sizes such as 28, 32 or 64.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from robustdistill._registry import ModelArch, RobustDistillError

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        known = ", ".join(ACTIVATIONS)
        raise RobustDistillError(f"unknown activation {name!r}; choose one of: {known}")
    return ACTIVATIONS[name]()


def _channel_stats(values: Sequence[float], channels: int, what: str) -> Tensor:
    """``values`` as a ``[1, C, 1, 1]`` tensor; a single value is repeated over channels."""
    if len(values) == 1:
        values = tuple(values) * channels
    if len(values) != channels:
        raise RobustDistillError(
            f"model {what} has {len(values)} values but in_channels is {channels}; "
            f"give one value or one per channel"
        )
    return torch.tensor(values, dtype=torch.float32).reshape(1, channels, 1, 1)


class Classifier(nn.Module):
    """Base of every model: normalisation, a feature body and a linear head.

    Subclasses build their layers, then implement :meth:`body`, which maps normalised
    images to ``[B, feature_dim]`` features.
    """

    def __init__(self, arch: ModelArch, feature_dim: int, head: nn.Module | None = None) -> None:
        super().__init__()
        self.arch = arch
        make_activation(arch.activation)  # fail early on an unknown name
        std = _channel_stats(arch.std, arch.in_channels, "std")
        if (std <= 0).any():
            raise RobustDistillError(f"model std must be positive; got {list(arch.std)}")
        self.register_buffer("mean", _channel_stats(arch.mean, arch.in_channels, "mean"))
        self.register_buffer("std", std)
        self.feature_dim = feature_dim
        self.head = head if head is not None else nn.Linear(feature_dim, arch.num_classes)

    def act(self) -> nn.Module:
        """A new instance of this model's activation."""
        return make_activation(self.arch.activation)

    def body(self, x: Tensor) -> Tensor:
        """Penultimate features ``[B, feature_dim]`` of normalised images."""
        raise NotImplementedError

    def forward_features(self, x: Tensor) -> Tensor:
        """Normalise images in ``[0, 1]`` and return penultimate features ``[B, D]``."""
        return self.body((x - self.mean) / self.std)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits ``[B, num_classes]``, or ``(logits, features)`` with ``return_features``."""
        features = self.forward_features(x)
        logits = self.head(features)
        return (logits, features) if return_features else logits

    def init_weights(self) -> None:
        """Kaiming-normal convolutions, unit BatchNorm, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def _pool_flatten(x: Tensor) -> Tensor:
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


# ----------------------------------------------------------------------------- small CNN


class SmallCNN(Classifier):
    """Conv-BN-act stages, each followed by 2x2 max-pooling, then an FC feature layer.

    ``cnn`` (16 | 32 | 64 channels, 128 features, about 4 MFLOPs per 28x28 image) is light enough for
    adversarial training on a CPU; ``smallcnn`` (32-32 | 64-64, 256 features) follows the layout of
    the SmallCNN used for MNIST in the TRADES code.
    """

    def __init__(self, arch: ModelArch, stages: tuple[tuple[int, ...], ...], pooled: int, features: int) -> None:
        super().__init__(arch, feature_dim=features)
        layers: list[nn.Module] = []
        cin = arch.in_channels
        for stage in stages:
            for cout in stage:
                layers += [_conv3x3(cin, cout), nn.BatchNorm2d(cout), self.act()]
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(
            *layers,
            nn.AdaptiveAvgPool2d(pooled),
            nn.Flatten(),
            nn.Linear(cin * pooled * pooled, features),
            self.act(),
        )
        self.init_weights()

    def body(self, x: Tensor) -> Tensor:
        return self.features(x)


# ----------------------------------------------------------------------------- ResNet-18


class BasicBlock(nn.Module):
    """Post-activation residual block: conv-bn-act-conv-bn (+ shortcut), act."""

    def __init__(self, cin: int, cout: int, stride: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = act()
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = act()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation residual block: bn-act-conv-bn-act-conv (+ shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = act()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = act()
        self.conv2 = _conv3x3(cout, cout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = _conv1x1(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(x))
        residual = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + residual


class ResNet18(Classifier):
    """CIFAR ResNet-18 (or its pre-activation variant): 3x3 stem, stages of 64..512."""

    def __init__(self, arch: ModelArch, preact: bool = False) -> None:
        super().__init__(arch, feature_dim=512)
        act = self.act
        block = PreActBlock if preact else BasicBlock
        self.stem: nn.Module = _conv3x3(arch.in_channels, 64)
        if not preact:
            self.stem = nn.Sequential(self.stem, nn.BatchNorm2d(64), act())
        layers: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [block(cin, cout, stride, act), block(cout, cout, 1, act)]
            cin = cout
        if preact:
            layers += [nn.BatchNorm2d(512), act()]
        self.layers = nn.Sequential(*layers)
        self.init_weights()

    def body(self, x: Tensor) -> Tensor:
        return _pool_flatten(self.layers(self.stem(x)))


# ----------------------------------------------------------------------------- WideResNet


class WideResNet(Classifier):
    """CIFAR WideResNet-``depth``-``widen`` (Zagoruyko & Komodakis; as used by TRADES)."""

    def __init__(self, arch: ModelArch, depth: int, widen: int) -> None:
        if depth < 10 or (depth - 4) % 6 != 0:
            raise RobustDistillError(
                f"bad WideResNet depth {depth} in {arch.name!r}: depth must be at least 10 "
                f"with (depth - 4) % 6 == 0, e.g. wrn-16-4, wrn-28-10, wrn-34-10"
            )
        if widen < 1:
            raise RobustDistillError(f"bad WideResNet widen factor in {arch.name!r}: must be >= 1")
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        super().__init__(arch, feature_dim=widths[3])
        act = self.act
        n = (depth - 4) // 6
        self.stem = _conv3x3(arch.in_channels, widths[0])
        layers: list[nn.Module] = []
        cin = widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            layers.append(PreActBlock(cin, cout, stride, act))
            layers += [PreActBlock(cout, cout, 1, act) for _ in range(n - 1)]
            cin = cout
        layers += [nn.BatchNorm2d(cin), act()]
        self.layers = nn.Sequential(*layers)
        self.init_weights()

    def body(self, x: Tensor) -> Tensor:
        return _pool_flatten(self.layers(self.stem(x)))


# ----------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection.

    Stride-1 blocks add a shortcut (a 1x1 conv + BN when the width changes), as in the
    CIFAR MobileNetV2 used by adversarial-distillation code bases.
    """

    def __init__(
        self, cin: int, cout: int, expansion: int, stride: int, act: Callable[[], nn.Module]
    ) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1
        self.layers = nn.Sequential(
            _conv1x1(cin, hidden),
            nn.BatchNorm2d(hidden),
            act(),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            act(),
            _conv1x1(hidden, cout),
            nn.BatchNorm2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if self.residual and cin != cout:
            self.shortcut = nn.Sequential(_conv1x1(cin, cout), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return out + self.shortcut(x) if self.residual else out


class MobileNetV2(Classifier):
    """CIFAR MobileNetV2: stride-1 stem and second stage, 1280 pooled features."""

    # (expansion, width, blocks, stride of the first block)
    STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
              (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, arch: ModelArch) -> None:
        super().__init__(arch, feature_dim=1280)
        act = self.act
        layers: list[nn.Module] = [_conv3x3(arch.in_channels, 32), nn.BatchNorm2d(32), act()]
        cin = 32
        for expansion, cout, blocks, stride in self.STAGES:
            for i in range(blocks):
                layers.append(InvertedResidual(cin, cout, expansion, stride if i == 0 else 1, act))
                cin = cout
        layers += [_conv1x1(cin, 1280), nn.BatchNorm2d(1280), act()]
        self.layers = nn.Sequential(*layers)
        self.init_weights()

    def body(self, x: Tensor) -> Tensor:
        return _pool_flatten(self.layers(x))
