"""Model specs and foreign models (robustdistill._specs, robustdistill._models.foreign): run directories, RobustBench teachers, the official
WideResNet layout, torchvision and timm models, explicit input normalisation, and their errors.

All offline: RobustBench architectures get random weights saved in RobustBench's file layout, datasets are
small CIFAR-format files written here.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustdistill import _specs as zoo
from robustdistill._models import foreign
from robustdistill._checkpoint import save_checkpoint
from robustdistill._cli import main
from robustdistill._data import DATASET_INFOS
from robustdistill._models import build_model
from robustdistill._registry import ModelArch, RobustDistillError
from robustdistill.testing import plugin_host

HAS_ROBUSTBENCH = importlib.util.find_spec("robustbench") is not None
HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_robustbench = pytest.mark.skipif(not HAS_ROBUSTBENCH, reason="pip install 'robustdistill[robustbench]'")
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="pip install timm")

CIFAR = DATASET_INFOS["cifar10"]
FMNIST = DATASET_INFOS["fashion-mnist"]
RB_NAME = "Wong2020Fast"  # a PreAct ResNet-18 that normalises its inputs itself
N_TEST = 24


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def error_of(capsys, *args) -> str:
    code, _, err = run_cli(capsys, *args)
    assert code == 2, err
    assert err.startswith("robustdistill: error: ") and err.count("\n") == 1, err
    return err


def write_cifar10(root, test_x: np.ndarray, test_y: list[int], n_train: int = 4, seed: int = 0) -> str:
    """torchvision's cifar-10-batches-py layout: five training batches of ``n_train`` random images each."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    batches = {f"data_batch_{i}": (rng.integers(0, 256, (n_train, 3072), dtype=np.uint8),
                                   rng.integers(0, 10, n_train).tolist()) for i in range(1, 6)}
    batches["test_batch"] = (test_x.reshape(len(test_y), 3072), list(test_y))
    for name, (x, y) in batches.items():
        with open(os.path.join(folder, name), "wb") as fh:
            pickle.dump({"data": x, "labels": y}, fh)
    with open(os.path.join(folder, "batches.meta"), "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    return str(root)


def random_images(n: int = N_TEST, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar"), random_images(), [i % 10 for i in range(N_TEST)])


def native_checkpoint(path, arch: ModelArch, seed: int = 0):
    torch.manual_seed(seed)
    save_checkpoint(path, {"arch": arch.to_dict(), "model": build_model(arch).state_dict(), "config": {}})
    return path


def load(spec, info=CIFAR, **kwargs) -> zoo.LoadedModel:
    return zoo.load_model_spec(spec, info=info, models=plugin_host().registry.models, **kwargs)


# ---------------------------------------------------------------------------------------------
# Run directories wherever a checkpoint is accepted
# ---------------------------------------------------------------------------------------------

def test_a_run_directory_stands_for_its_last_pt(tmp_path, cifar, capsys):
    teacher_dir = tmp_path / "teacher"
    native_checkpoint(teacher_dir / "last.pt", ModelArch("cnn", 10, 3, 32, mean=CIFAR.mean, std=CIFAR.std))
    assert zoo.resolve_checkpoint_path(teacher_dir) == teacher_dir / "last.pt"
    code, out, err = run_cli(capsys, "eval", teacher_dir, "--dataset", "cifar10", "--data-dir", cifar,
                             "--attacks", "clean", "--json", tmp_path / "eval.json", "--device", "cpu")
    assert code == 0, err
    assert "recorded in the checkpoint" in out
    student = tmp_path / "student"
    code, _, err = run_cli(capsys, "train", "--plugin", "ard", "--teacher", teacher_dir, "--dataset", "cifar10",
                           "--data-dir", cifar, "--model", "cnn", "--epochs", "1", "--batch-size", "10",
                           "--attack-steps", "1", "--val-split", "4", "--val-attack-steps", "1", "--out", student, "--device", "cpu")
    assert code == 0, err
    environment = json.loads((student / "environment.json").read_text())
    assert environment["teacher"]["spec"] == str(teacher_dir) and environment["teacher"]["arch"] == "cnn"
    code, out, err = run_cli(capsys, "report", student, "--teacher", teacher_dir, "--out", tmp_path / "report",
                             "--subset", "4", "--pgd-steps", "1", "--grad-images", "2", "--device", "cpu")
    assert code == 0, err
    assert "note" not in out and (tmp_path / "report" / "gradients.png").is_file()


def test_a_directory_without_last_pt_says_what_was_expected(tmp_path, cifar, capsys):
    (tmp_path / "empty").mkdir()
    expected = "is a directory without last.pt; expected a run directory written by `robustdistill train --out DIR`"
    assert expected in error_of(capsys, "eval", tmp_path / "empty", "--dataset", "cifar10", "--data-dir", cifar)
    assert expected in error_of(capsys, "train", "--plugin", "ard", "--teacher", tmp_path / "empty", "--dataset",
                                "cifar10", "--data-dir", cifar, "--out", tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert "does not exist; pass a run directory" in error_of(capsys, "eval", tmp_path / "nowhere.pt")


# ---------------------------------------------------------------------------------------------
# Explicit input normalisation
# ---------------------------------------------------------------------------------------------

def test_parse_normalization():
    assert zoo.parse_normalization("none", CIFAR, "--n") == ((0.0,), (1.0,))
    assert zoo.parse_normalization("dataset", CIFAR, "--n") == (CIFAR.mean, CIFAR.std)
    assert zoo.parse_normalization("0.5/0.25", CIFAR, "--n") == ((0.5,), (0.25,))
    assert zoo.parse_normalization("0.1,0.2,0.3/1,2,4", CIFAR, "--n") == ((0.1, 0.2, 0.3), (1.0, 2.0, 4.0))
    for bad, message in (("imagenet", "use none, dataset, or MEAN/STD"), ("0.1,0.2/1", "one finite value or 3"),
                         ("0.5/0", "must be positive"), ("nan/1", "one finite value")):
        with pytest.raises(RobustDistillError, match=message):
            zoo.parse_normalization(bad, CIFAR, "--n")


def test_a_plain_state_dict_needs_its_normalization_said_and_it_is_applied(tmp_path):
    arch = ModelArch("cnn", 10, 3, 32)
    torch.manual_seed(0)
    reference = build_model(arch).eval()  # mean 0, std 1: the raw network
    state = {f"module.{k}": v for k, v in reference.state_dict().items() if k not in ("mean", "std")}
    torch.save(state, tmp_path / "plain.pt")
    with pytest.raises(RobustDistillError, match="does not record its input normalisation; say which with "
                                                 "--teacher-normalize none"):
        load(tmp_path / "plain.pt", arch="cnn")
    x = torch.rand(4, 3, 32, 32)
    none = load(tmp_path / "plain.pt", arch="cnn", normalize="none")
    assert torch.equal(none.model(x), reference(x))
    assert none.normalization == "none: the model takes images in [0, 1] as they are (--teacher-normalize none)"
    scaled = load(tmp_path / "plain.pt", arch="cnn", normalize="0.5/0.25")
    assert torch.allclose(scaled.model(x), reference((x - 0.5) / 0.25), atol=1e-6)
    assert scaled.arch.mean == (0.5,) and scaled.arch.std == (0.25,)
    assert scaled.normalization == "mean [0.5], std [0.25] (--teacher-normalize 0.5/0.25)"
    with_stats = tmp_path / "with-stats.pt"
    torch.save(build_model(ModelArch("cnn", 10, 3, 32, mean=CIFAR.mean, std=CIFAR.std)).state_dict(), with_stats)
    recorded = load(with_stats, arch="cnn")
    assert recorded.arch.mean == pytest.approx(CIFAR.mean) and "recorded in the state_dict" in recorded.normalization
    with pytest.raises(RobustDistillError, match="records its input normalisation .*drop --teacher-normalize"):
        load(with_stats, arch="cnn", normalize="none")
    native = native_checkpoint(tmp_path / "native.pt", ModelArch("cnn", 10, 3, 32))
    with pytest.raises(RobustDistillError, match="records its input normalisation; drop --normalize"):
        load(native, normalize="dataset", flag_prefix="")


def test_plain_state_dict_errors_name_the_fix(tmp_path):
    torch.save(build_model(ModelArch("cnn", 10, 3, 32)).state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(RobustDistillError, match="without an architecture; name it with --arch NAME.*official-wrn"):
        load(tmp_path / "cnn.pt", flag_prefix="")
    with pytest.raises(RobustDistillError, match="do not fit architecture 'smallcnn'.*name the architecture it was "
                                                 "saved from with --teacher-arch, and check that it was trained on"):
        load(tmp_path / "cnn.pt", arch="smallcnn")
    torch.save({"epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(RobustDistillError, match="neither a robustdistill checkpoint nor a state_dict"):
        load(tmp_path / "other.pt", arch="cnn")


# ---------------------------------------------------------------------------------------------
# WideResNet state_dicts of the official TRADES / ARD / RSLAD / IGDM code
# ---------------------------------------------------------------------------------------------

def official_wrn_state(depth: int, widen: int, classes: int = 10, channels: int = 3, seed: int = 0,
                       sub_block1: bool = True) -> dict[str, torch.Tensor]:
    """Random weights and BatchNorm statistics under the official WideResNet's keys."""
    g = torch.Generator().manual_seed(seed)
    n = (depth - 4) // 6
    widths = (16, 16 * widen, 32 * widen, 64 * widen)
    state: dict[str, torch.Tensor] = {}

    def conv(key, cout, cin, k):
        state[key] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2 / (cin * k * k))

    def bn(key, c):
        state[f"{key}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        state[f"{key}.bias"] = 0.1 * torch.randn(c, generator=g)
        state[f"{key}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        state[f"{key}.running_var"] = 0.5 + torch.rand(c, generator=g)
        state[f"{key}.num_batches_tracked"] = torch.tensor(7)

    conv("conv1.weight", 16, channels, 3)
    for block in (["block1", "sub_block1"] if sub_block1 else ["block1"]) + ["block2", "block3"]:
        b = 1 if block.endswith("block1") else int(block[-1])
        for i in range(n):
            cin, cout = (widths[b - 1] if i == 0 else widths[b]), widths[b]
            prefix = f"{block}.layer.{i}"
            bn(f"{prefix}.bn1", cin)
            conv(f"{prefix}.conv1.weight", cout, cin, 3)
            bn(f"{prefix}.bn2", cout)
            conv(f"{prefix}.conv2.weight", cout, cout, 3)
            if cin != cout:
                conv(f"{prefix}.convShortcut.weight", cout, cin, 1)
    bn("bn1", widths[3])
    state["fc.weight"] = torch.randn(classes, widths[3], generator=g) / math.sqrt(widths[3])
    state["fc.bias"] = 0.1 * torch.randn(classes, generator=g)
    return state


def official_wrn_forward(state: dict[str, torch.Tensor], x: torch.Tensor, depth: int) -> torch.Tensor:
    """The official WideResNet's forward pass, written from its description with functional ops."""
    def bn(key, t):
        return F.batch_norm(t, state[f"{key}.running_mean"], state[f"{key}.running_var"], state[f"{key}.weight"],
                            state[f"{key}.bias"], training=False, eps=1e-5)

    out = F.conv2d(x, state["conv1.weight"], padding=1)
    for b, stride in ((1, 1), (2, 2), (3, 2)):
        for i in range((depth - 4) // 6):
            prefix, s = f"block{b}.layer.{i}", stride if i == 0 else 1
            pre = F.relu(bn(f"{prefix}.bn1", out))
            shortcut = F.conv2d(pre, state[f"{prefix}.convShortcut.weight"], stride=s) \
                if f"{prefix}.convShortcut.weight" in state else out
            h = F.relu(bn(f"{prefix}.bn2", F.conv2d(pre, state[f"{prefix}.conv1.weight"], stride=s, padding=1)))
            out = shortcut + F.conv2d(h, state[f"{prefix}.conv2.weight"], padding=1)
    out = F.avg_pool2d(F.relu(bn("bn1", out)), 8).flatten(1)
    return F.linear(out, state["fc.weight"], state["fc.bias"])


@pytest.mark.parametrize("depth, widen", [(10, 2), (16, 1)])
def test_official_wrn_state_dict_loads_with_one_flag_and_computes_the_official_network(tmp_path, depth, widen):
    state = official_wrn_state(depth, widen)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "trades.pt")
    loaded = load(tmp_path / "trades.pt", arch="official-wrn")
    assert loaded.arch.name == f"wrn-{depth}-{widen}" and loaded.arch.image_size == 32
    assert loaded.arch.mean == (0.0,) and loaded.arch.std == (1.0,)
    assert loaded.normalization.startswith("none: the model takes images in [0, 1] as they are (the official code")
    x = torch.rand(5, 3, 32, 32)
    logits, features = loaded.model(x, return_features=True)
    assert torch.allclose(logits, official_wrn_forward(state, x, depth), atol=1e-5)
    assert features.shape == (5, 64 * widen)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": state}, wrapped)
    assert torch.equal(load(wrapped, arch="official-wrn").model(x), logits)
    normalized = load(wrapped, arch="official-wrn", normalize="dataset")
    mean, std = torch.tensor(CIFAR.mean).view(1, 3, 1, 1), torch.tensor(CIFAR.std).view(1, 3, 1, 1)
    assert torch.allclose(normalized.model(x), official_wrn_forward(state, (x - mean) / std, depth), atol=1e-5)


def test_official_wrn_evaluates_and_teaches_through_the_cli(tmp_path, cifar, capsys):
    state = official_wrn_state(10, 2)
    torch.save(state, tmp_path / "rslad-teacher.pt")
    x = torch.from_numpy(random_images()).float() / 255
    expected = float((official_wrn_forward(state, x, 10).argmax(1) == torch.arange(N_TEST) % 10).float().mean())
    code, out, err = run_cli(capsys, "eval", tmp_path / "rslad-teacher.pt", "--arch", "official-wrn", "--dataset",
                             "cifar10", "--data-dir", cifar, "--attacks", "clean", "--json", tmp_path / "e.json",
                             "--device", "cpu")
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["clean"] == pytest.approx(expected) and result["arch"] == "wrn-10-2"
    assert result["normalization"].startswith("none: the model takes images in [0, 1]")
    code, _, err = run_cli(capsys, "train", "--plugin", "rslad", "--teacher", tmp_path / "rslad-teacher.pt",
                           "--teacher-arch", "official-wrn", "--dataset", "cifar10", "--data-dir", cifar, "--model",
                           "cnn", "--epochs", "1", "--batch-size", "10", "--attack-steps", "1", "--val-split", "4", "--val-attack-steps", "1",
                           "--out", tmp_path / "student", "--device", "cpu")
    assert code == 0, err


def test_official_wrn_errors_name_the_fix(tmp_path):
    state = official_wrn_state(10, 1)
    torch.save(state, tmp_path / "trades.pt")
    with pytest.raises(RobustDistillError, match="layout of the official TRADES/ARD/RSLAD/IGDM WideResNet: use "
                                                 "--teacher-arch official-wrn"):
        load(tmp_path / "trades.pt", arch="wrn-10-1", normalize="none")
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, tmp_path / "headless.pt")
    with pytest.raises(RobustDistillError, match="not a WideResNet state_dict in the layout of the official .*missing "
                                                 "fc.weight"):
        load(tmp_path / "headless.pt", arch="official-wrn")
    torch.save({**state, "block2.extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(RobustDistillError, match="unexpected key 'block2.extra.weight'"):
        load(tmp_path / "extra.pt", arch="official-wrn")
    torch.save({k: v for k, v in state.items() if not k.startswith("block3.")}, tmp_path / "short.pt")
    with pytest.raises(RobustDistillError, match="must each hold layers 0..n−1"):
        load(tmp_path / "short.pt", arch="official-wrn")
    torch.save(official_wrn_state(10, 1, classes=100), tmp_path / "c100.pt")
    loaded = load(tmp_path / "c100.pt", arch="official-wrn")
    with pytest.raises(RobustDistillError, match="has 100 classes but cifar10 has 10; .*finetune-head"):
        zoo.check_teacher_fits(loaded, CIFAR, resize=False)


# ---------------------------------------------------------------------------------------------
# torchvision and timm models; the feature mechanism
# ---------------------------------------------------------------------------------------------

def test_foreign_features_are_the_input_of_the_final_linear_layer():
    """The split model computes the library model's logits, and its features are what the library's own
    classifier receives (observed by a hook on an untouched copy)."""
    import torchvision.models as tvm

    for name, classifier in (("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3")):
        torch.manual_seed(0)
        network = tvm.get_model(name, weights=None, num_classes=10).eval()
        original = copy.deepcopy(network)
        seen = {}
        original.get_submodule(classifier).register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
        model = foreign.wrap_foreign(ModelArch(f"torchvision:{name}", 10, 3, 32), network, name).eval()
        assert model.classifier_name == classifier
        x = torch.rand(3, 3, 32, 32)
        logits, features = model(x, return_features=True)
        assert torch.equal(logits, original(x)) and torch.equal(features, seen["x"])


def test_a_model_without_a_final_linear_layer_gives_logits_only_or_is_refused():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))

        def forward(self, x):
            return 2 * self.body(x)

    arch = ModelArch("robustbench:Scaled", 10, 3, 8)
    with pytest.raises(RobustDistillError, match="not the output of one final nn.Linear layer"):
        foreign.wrap_foreign(arch, Scaled(), "Scaled")
    network = Scaled()
    model = foreign.wrap_foreign(arch, network, "Scaled", need_features=False)
    x = torch.rand(2, 3, 8, 8)
    logits, features = model(x, return_features=True)
    assert torch.equal(logits, network(x)) and features is None
    from robustdistill.testing import step_context

    ctx = step_context(plugin_host(), ["rslad"], student=build_model(ModelArch("cnn", 10, 3, 8)), teacher=model)
    out = ctx.teacher_out("clean", ctx.x)
    assert out.features is None and torch.equal(out.logits, network(ctx.x))


def test_layer_outputs_records_named_submodules():
    torch.manual_seed(0)
    model = build_model(ModelArch("torchvision:resnet18", 10, 3, 32)).eval()
    x = torch.rand(2, 3, 32, 32)
    with foreign.layer_outputs(model, ["network.layer4"]) as outputs:
        _, features = model(x, return_features=True)
    assert outputs["network.layer4"].shape == (2, 512, 1, 1)
    assert torch.equal(outputs["network.layer4"].flatten(1), features)
    with pytest.raises(RobustDistillError, match="no submodule 'network.layer9'"):
        with foreign.layer_outputs(model, ["network.layer9"]):
            pass


def test_torchvision_student_trains_and_its_checkpoint_evaluates(tmp_path, cifar, capsys):
    out = tmp_path / "tv"
    code, _, err = run_cli(capsys, "train", "--plugin", "at", "--dataset", "cifar10", "--data-dir", cifar, "--model",
                           "torchvision:resnet18", "--epochs", "1", "--batch-size", "10", "--attack-steps", "1",
                           "--val-split", "4", "--val-attack-steps", "1", "--out", out, "--device", "cpu")
    assert code == 0, err
    code, stdout, err = run_cli(capsys, "eval", out, "--attacks", "clean", "--subset", "8", "--device", "cpu")
    assert code == 0, err
    assert "torchvision:resnet18 on cifar10" in stdout and "mean [0.4914, 0.4822, 0.4465]" in stdout


def test_a_torchvision_state_dict_teacher_loads_with_its_architecture(tmp_path):
    import torchvision.models as tvm

    torch.manual_seed(0)
    network = tvm.resnet18(weights=None, num_classes=10).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in network.state_dict().items()}}, tmp_path / "tv.pt")
    loaded = load(tmp_path / "tv.pt", arch="torchvision:resnet18", normalize="dataset")
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(CIFAR.mean).view(1, 3, 1, 1), torch.tensor(CIFAR.std).view(1, 3, 1, 1)
    assert torch.allclose(loaded.model(x), network((x - mean) / std), atol=1e-6)


@pytest.mark.parametrize("arch, message", [
    (ModelArch("torchvision:resnet18", 10, 1, 28), "takes 3-channel images but the data has 1 channel.*timm:NAME"),
    (ModelArch("torchvision:resnet81", 10, 3, 32), "unknown torchvision model 'resnet81'; did you mean resnet18"),
    (ModelArch("torchvision:squeezenet1_1", 10, 3, 32), "not the output of one final nn.Linear layer"),
    (ModelArch("torchvision:inception_v3", 10, 3, 32), "does not run on 3×32×32 images"),
    (ModelArch("torchvision:resnet18", 10, 3, 32, activation="gelu"), "--activation gelu applies to the built-in"),
])
def test_torchvision_mismatches_are_clear_errors(arch, message):
    with pytest.raises(RobustDistillError, match=message):
        build_model(arch)


@needs_timm
def test_timm_models_take_any_channel_count_and_size():
    torch.manual_seed(0)
    cnn = build_model(ModelArch("timm:resnet18", 10, 1, 28, mean=FMNIST.mean, std=FMNIST.std))
    logits, features = cnn(torch.rand(2, 1, 28, 28), return_features=True)
    assert logits.shape == (2, 10) and features.shape == (2, 512) and cnn.classifier_name == "fc"
    vit = build_model(ModelArch("timm:vit_tiny_patch16_224", 10, 3, 32)).eval()
    logits, features = vit(torch.rand(2, 3, 32, 32), return_features=True)
    assert logits.shape == (2, 10) and features.shape == (2, 192)
    assert torch.equal(vit.head(features), logits)
    with pytest.raises(RobustDistillError, match="unknown timm model 'resnett18'; did you mean resnet18"):
        build_model(ModelArch("timm:resnett18", 10, 3, 32))


@needs_timm
def test_timm_student_rrm_matches_a_timm_teachers_features(tmp_path, cifar, capsys):
    torch.manual_seed(0)
    teacher = build_model(ModelArch("timm:resnet18", 10, 3, 32, mean=CIFAR.mean, std=CIFAR.std))
    save_checkpoint(tmp_path / "teacher.pt", {"arch": teacher.arch.to_dict(), "model": teacher.state_dict(),
                                              "config": {}})
    code, _, err = run_cli(capsys, "train", "--plugin", "rrm", "--teacher", tmp_path / "teacher.pt", "--dataset",
                           "cifar10", "--data-dir", cifar, "--model", "timm:resnet18", "--epochs", "1",
                           "--batch-size", "10", "--val-split", "4", "--val-attack-steps", "1", "--out", tmp_path / "rrm", "--device", "cpu")
    assert code == 0, err
    history = [json.loads(line) for line in (tmp_path / "rrm" / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(history[0]["terms"]["rrm_feat"])


# ---------------------------------------------------------------------------------------------
# RobustBench teachers
# ---------------------------------------------------------------------------------------------

def robustbench_architecture(name: str = RB_NAME) -> nn.Module:
    zoo.import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf][name]["model"]()


@pytest.fixture(scope="module")
def robustbench_setup(tmp_path_factory):
    """Random weights in RobustBench's file layout, and CIFAR-10 test files whose labels RobustBench's own
    loader gets exactly half right (its prediction on the first half, another class on the second)."""
    if not HAS_ROBUSTBENCH:
        pytest.skip("pip install 'robustdistill[robustbench]'")
    root = tmp_path_factory.mktemp("robustbench")
    torch.manual_seed(0)
    network = robustbench_architecture()
    weights = root / "models" / "cifar10" / "Linf" / f"{RB_NAME}.pt"
    weights.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in network.state_dict().items()}}, weights)
    from robustbench.utils import load_model

    reference = load_model(RB_NAME, model_dir=str(root / "models"), dataset="cifar10", threat_model="Linf")
    images = random_images()
    with torch.no_grad():
        predictions = reference(torch.from_numpy(images).float() / 255).argmax(1)
    labels = [int(p) if i < N_TEST // 2 else (int(p) + 1) % 10 for i, p in enumerate(predictions)]
    data = write_cifar10(root / "data", images, labels)
    return {"models": root / "models", "data": data, "reference": reference}


def test_robustbench_teacher_is_robustbench_s_own_model(robustbench_setup):
    setup = robustbench_setup
    loaded = load(f"robustbench:{RB_NAME}", robustbench_dir=str(setup["models"]))
    assert loaded.arch == ModelArch(f"robustbench:{RB_NAME}", 10, 3, 32)
    assert "the RobustBench model normalises them itself" in loaded.normalization
    x = torch.rand(6, 3, 32, 32)
    seen = {}
    reference = setup["reference"]
    handle = reference.linear.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    with torch.no_grad():
        expected = reference(x)
    handle.remove()
    logits, features = loaded.model(x, return_features=True)
    assert torch.equal(logits, expected) and torch.equal(features, seen["x"])


def test_eval_of_a_robustbench_model_gives_robustbench_s_clean_accuracy(robustbench_setup, tmp_path, capsys):
    setup = robustbench_setup
    for fold in ("on", "off"):
        out = tmp_path / f"eval-{fold}.json"
        code, stdout, err = run_cli(capsys, "eval", f"robustbench:{RB_NAME}", "--dataset", "cifar10", "--data-dir",
                                    setup["data"], "--robustbench-dir", setup["models"], "--attacks", "clean",
                                    "--fold-bn", fold, "--json", out, "--device", "cpu")
        assert code == 0, err
        result = json.loads(out.read_text())
        assert result["clean"] == 0.5 and result["n"] == N_TEST  # RobustBench's own load_model gets 0.5
        assert result["arch"] == f"robustbench:{RB_NAME}" and result["checkpoint"] == f"robustbench:{RB_NAME}"
        assert "normalises them itself" in result["normalization"]


def test_robustbench_teacher_teaches_a_student_and_gives_features(robustbench_setup, tmp_path, capsys):
    setup = robustbench_setup
    common = ["--teacher", f"robustbench:{RB_NAME}", "--robustbench-dir", setup["models"], "--dataset", "cifar10",
              "--data-dir", setup["data"], "--model", "cnn", "--epochs", "1", "--batch-size", "10",
              "--val-split", "4", "--val-attack-steps", "1", "--device", "cpu"]
    out = tmp_path / "rslad"
    code, _, err = run_cli(capsys, "train", "--plugin", "rslad", "--attack-steps", "1", *common, "--out", out)
    assert code == 0, err
    environment = json.loads((out / "environment.json").read_text())
    assert environment["teacher"]["arch"] == f"robustbench:{RB_NAME}"
    assert environment["folded_conv_bn"]["teacher"] > 0
    code, _, err = run_cli(capsys, "train", "--plugin", "rrm", *common, "--out", tmp_path / "rrm")
    assert code == 0, err  # RRM matches the RobustBench teacher's penultimate features
    code, stdout, err = run_cli(capsys, "report", out, "--out", tmp_path / "report", "--subset", "4",
                                "--pgd-steps", "1", "--grad-images", "2", "--device", "cpu")
    assert code == 0, err
    assert "note" not in stdout  # the teacher, robustbench:NAME from the run's options, is in gradients.png


def test_the_teacher_a_step_sees_is_robustbench_s_model(robustbench_setup, tmp_path):
    from robustdistill._run import build_run
    from robustdistill.testing import train_config

    setup = robustbench_setup
    host = plugin_host()
    config = train_config(host, "--plugin", "rslad", "--teacher", f"robustbench:{RB_NAME}", "--robustbench-dir",
                          str(setup["models"]), "--dataset", "cifar10", "--data-dir", setup["data"], "--model", "cnn",
                          "--device", "cpu", "--out", str(tmp_path / "run"))
    run = build_run(config, host)
    x = run.view.data.test_x[:6].float() / 255
    logits, features = run.view.teacher(x, return_features=True)
    with torch.no_grad():
        expected = setup["reference"](x)
    assert torch.allclose(logits, expected, atol=1e-5) and features.shape == (6, 512)


def test_robustbench_errors_name_the_fix(robustbench_setup, tmp_path, capsys):
    setup = robustbench_setup
    models = str(setup["models"])
    err = error_of(capsys, "eval", "robustbench:Standard", "--dataset", "cifar10", "--data-dir", setup["data"],
                   "--robustbench-dir", tmp_path / "empty")
    assert f"weights not found at {tmp_path / 'empty' / 'cifar10' / 'Linf' / 'Standard.pt'}; rerun with --download" \
        in err
    assert not (tmp_path / "empty").exists()  # nothing was downloaded or created
    with pytest.raises(RobustDistillError, match="weights not found at .*cifar10/L2/Standard.pt"):
        load("robustbench:Standard", norm="l2", robustbench_dir=str(tmp_path / "empty"))  # the threat model of --norm
    ensemble = zoo.robustbench_weight_files("Chen2020Adversarial", "cifar10", "Linf", "m")
    assert ensemble == [Path(f"m/cifar10/Linf/Chen2020Adversarial.pt_m{i}.pt") for i in range(3)]
    for spec, kwargs, message in (
        (f"robustbench:{RB_NAME}x", {}, f"no cifar10 Linf model '{RB_NAME}x'; did you mean {RB_NAME}"),
        (f"robustbench:{RB_NAME}", {"arch": "wrn-28-10"}, "--teacher-arch does not apply to robustbench:"),
        (f"robustbench:{RB_NAME}", {"normalize": "dataset"}, "--teacher-normalize does not apply"),
        (f"robustbench:{RB_NAME}", {"norm": "l2", "info": DATASET_INFOS["cifar100"]}, "no L2 models for cifar100"),
        (f"robustbench:{RB_NAME}", {"info": FMNIST}, "--dataset fashion-mnist is not one of them"),
        ("robustbench:", {}, "needs a model name"),
    ):
        with pytest.raises(RobustDistillError, match=message):
            load(spec, robustbench_dir=models, **kwargs)
    err = error_of(capsys, "finetune-head", f"robustbench:{RB_NAME}", "--dataset", "cifar10", "--out",
                   tmp_path / "t.pt")
    assert "cannot rebuild robustbench:" in err


def test_robustbench_import_says_what_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "robustbench", raising=False)
    for missing, message in (("robustbench", "pip install 'robustdistill\\[robustbench\\]'"),
                             ("pkg_resources", "setuptools 81 and later no longer ship")):
        if missing != "robustbench" and not HAS_ROBUSTBENCH:
            continue
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, missing=missing: None if name == missing else real_find_spec(name, *a))
        with pytest.raises(RobustDistillError, match=message):
            zoo.import_robustbench()
