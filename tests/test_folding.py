"""BatchNorm folding: the folded views compute the model's function, follow its weights, and fail clearly."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustdistill._attacks import model_mode
from robustdistill._checkpoint import save_checkpoint
from robustdistill._loop import new_step, start, train_step
from robustdistill._run import ResizedTeacher, build_run
from robustdistill._folding import (FoldedModel, FoldError, LiveConvBN, NothingToFold, fold_batchnorm, fold_or_keep,
                                   unfolded)
from robustdistill._models import build_model
from robustdistill._registry import ModelArch
from robustdistill.testing import plugin_host, train_config

from support import needs_fashion_mnist


def _model(name: str, channels: int = 3, size: int = 32, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelArch(name, classes, channels, size, "relu", [0.5] * channels, [0.25] * channels))
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


# (model, folded pairs): every post-activation pair folds; pre-activation BatchNorms follow a residual sum
@pytest.mark.parametrize("name,pairs", [("cnn", 3), ("smallcnn", 4), ("resnet18", 20), ("preact-resnet18", 8),
                                        ("wrn-10-2", 4), ("mobilenetv2", 57)])
@pytest.mark.parametrize("live", [True, False])
def test_folded_model_computes_the_same_logits_features_and_input_gradient(name: str, pairs: int, live: bool) -> None:
    channels, size = (1, 28) if "cnn" in name else (3, 32)
    model = _model(name, channels, size).double()
    view = fold_batchnorm(model, live=live)
    assert isinstance(view, FoldedModel) and view.folded == pairs and unfolded(view) is model
    assert view.arch == model.arch
    left = [n for n in view.graph.graph.nodes
            if n.op == "call_module" and isinstance(view.graph.get_submodule(n.target), nn.BatchNorm2d)]
    assert len(left) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) - pairs
    replacement = LiveConvBN if live else nn.Conv2d
    assert sum(type(m) is replacement for n, m in view.graph.named_children() if n.startswith("folded")) == pairs
    x = torch.rand(4, channels, size, size, dtype=torch.float64)
    logits, features = model(x, return_features=True)
    v_logits, v_features = view(x, return_features=True)
    torch.testing.assert_close(v_logits, logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(v_features, features, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(view(x), logits, rtol=1e-10, atol=1e-10)
    y = torch.arange(4) % 10

    def grad(m: nn.Module) -> torch.Tensor:
        z = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(m(z), y), z)
        return g
    torch.testing.assert_close(grad(view), grad(model), rtol=1e-9, atol=1e-12)


def test_fp32_folding_differs_by_rounding_only() -> None:
    model = _model("resnet18")
    view = fold_batchnorm(model, live=False)
    x = torch.rand(8, 3, 32, 32)
    torch.testing.assert_close(view(x), model(x), rtol=1e-4, atol=1e-4)


def test_live_view_follows_optimizer_steps_and_running_statistics() -> None:
    model = _model("cnn", 1, 28).train()
    view = fold_batchnorm(model, live=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    for _ in range(3):  # train-mode steps change weights and BatchNorm statistics
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(view(x), model(x), rtol=1e-5, atol=1e-5)


def test_live_view_in_training_mode_is_the_model_and_updates_its_statistics() -> None:
    model = _model("cnn", 1, 28).train()
    twin = copy.deepcopy(model)
    view = fold_batchnorm(model, live=True)
    x = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(view(x), twin(x))
    bn, twin_bn = model.features[1], twin.features[1]
    torch.testing.assert_close(bn.running_mean, twin_bn.running_mean)
    assert bn.num_batches_tracked == 1


def test_live_view_passes_gradients_to_the_parameters_as_the_model_does() -> None:
    model = _model("cnn", 1, 28).double()
    view = fold_batchnorm(model, live=True)
    x, y = torch.rand(4, 1, 28, 28, dtype=torch.float64), torch.arange(4)
    params = list(model.parameters())
    expected = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    got = torch.autograd.grad(F.cross_entropy(view(x), y), params)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_frozen_view_is_a_snapshot_without_gradients() -> None:
    model = _model("cnn", 1, 28)
    view = fold_batchnorm(model, live=False)
    assert not any(p.requires_grad for name, p in view.named_parameters() if "folded" in name)
    x = torch.rand(2, 1, 28, 28)
    before = view(x)
    with torch.no_grad():
        model.features[0].weight.mul_(2)  # the snapshot does not follow the source
    torch.testing.assert_close(view(x), before)


def test_frozen_fold_needs_eval_mode() -> None:
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(_model("cnn", 1, 28).train(), live=False)


def test_resized_teacher_folds() -> None:
    teacher = ResizedTeacher(_model("cnn", 1, 28), 28).eval()
    view = fold_batchnorm(teacher, live=False)
    x = torch.rand(2, 1, 20, 20)
    torch.testing.assert_close(view(x), teacher(x), rtol=1e-4, atol=1e-5)
    assert view.arch.name == "cnn"


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow
            x = -x
        return self.bn(self.conv(x))


class NoBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.conv(x)


def test_untraceable_model_is_kept_with_one_line_saying_why() -> None:
    model = Untraceable().eval()
    with pytest.raises(FoldError, match="does not trace"):
        fold_batchnorm(model, live=True)
    lines: list[str] = []
    assert fold_or_keep(model, live=True, what="teacher", log=lines.append) is model
    assert len(lines) == 1 and "folding is off for the teacher" in lines[0] and "does not trace" in lines[0]


def test_model_without_conv_batchnorm_pairs_is_kept_silently() -> None:
    model = NoBatchNorm().eval()
    with pytest.raises(NothingToFold, match="no convolution"):
        fold_batchnorm(model, live=False)
    lines: list[str] = []
    assert fold_or_keep(model, live=False, what="teacher", log=lines.append) is model and not lines


def test_shared_convolution_output_is_not_folded() -> None:
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)
            self.other = nn.Conv2d(1, 2, 3)
            self.bn2 = nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor, return_features: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.conv(x)
            out = self.bn(h) + h  # the convolution's output is used twice: folding would change it
            return out, self.bn2(self.other(x))

    model = Branch().eval()
    view = fold_batchnorm(model, live=False)
    assert view.folded == 1
    x = torch.rand(2, 1, 6, 6)
    torch.testing.assert_close(view(x, return_features=True), model(x, return_features=True))


@needs_fashion_mnist
@pytest.mark.parametrize("plugins", [("at",), ("rslad", "igdm"), ("adaad",)])
def test_training_step_with_folding_equals_the_unfolded_step(tmp_path, plugins: tuple[str, ...]) -> None:
    host = plugin_host()
    teacher_arch = ModelArch("cnn", 10, 1, 28, "relu", (0.2860,), (0.3530,))
    save_checkpoint(tmp_path / "teacher.pt", {"arch": teacher_arch.to_dict(), "config": {},
                                              "model": _model("cnn", 1, 28).state_dict()})
    losses = {}
    for fold in ("on", "off"):
        args = [a for p in plugins for a in ("--plugin", p)]
        config = train_config(host, *args, "--teacher", str(tmp_path / "teacher.pt"), "--subset", "64",
                              "--fold-bn", fold, "--clip-start", "on", "--out", str(tmp_path / fold))
        run = build_run(config, host)
        start(run)
        assert isinstance(run.view.attack_student, FoldedModel) == (fold == "on")
        assert isinstance(run.view.teacher, FoldedModel) == (fold == "on")
        assert run.environment()["folded_conv_bn"] == ({"student": 3, "teacher": 3} if fold == "on"
                                                          else {"student": 0, "teacher": 0})
        x = run.view.data.train_x[:32].float() / 255
        torch.manual_seed(0)
        losses[fold] = float(train_step(run, new_step(run, x, run.view.data.train_y[:32], 1, 0))[0])
        with model_mode(run.student, train=False), torch.no_grad():  # the view follows the step's update
            torch.testing.assert_close(run.view.attack_student(x), run.student(x), rtol=1e-5, atol=1e-5)
    # One step only, from starts clipped to [0, 1]: later steps (and the unclipped starts of the RSLAD and AdaAD
    # codes, whose gradients at the many black Fashion-MNIST pixels are tiny) agree as closely, but sign-PGD turns
    # rounding-level differences in a near-zero gradient component into a different adversarial pixel now and
    # then.
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-5)


def test_folded_weights_keep_the_channels_last_layout() -> None:
    model = _model("resnet18").to(memory_format=torch.channels_last)
    frozen = fold_batchnorm(model, live=False)
    weights = [m.weight for n, m in frozen.graph.named_children() if n.startswith("folded") and m.kernel_size != (1, 1)]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    live = fold_batchnorm(model, live=True)
    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(live(x), frozen(x), rtol=1e-4, atol=1e-4)
