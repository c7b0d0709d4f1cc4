"""Reliability: exact resume after SIGKILL, no torn checkpoints, bad input, data-parallel training."""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from robustdistill import LossTerm, Method, RobustDistillError, hookimpl
from robustdistill.checkpoint import load_checkpoint, save_checkpoint
from robustdistill.cli import main
from robustdistill.engine import train
from robustdistill.testing import plugin_host, train_config

from conftest import needs_fashion_mnist

pytestmark = needs_fashion_mnist

RUN = ["train", "--plugin", "at", "--dataset", "fashion-mnist", "--subset", "384", "--batch-size", "32",
       "--epochs", "2", "--attack-steps", "2", "--val-size", "64", "--seed", "3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "robustdistill", *args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def finished(out):
    proc = cli(*RUN, "--out", str(out))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()


def metrics_without_timing(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if "seconds" not in k and k != "images_per_s"} for m in lines]


def assert_same_run(a, b):
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    for key, value in ca["model"].items():
        assert torch.equal(value, cb["model"][key]), key
    assert metrics_without_timing(a) == metrics_without_timing(b)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    finished(out)
    return out


def test_sigkill_at_random_moments_leaves_loadable_checkpoints_and_resume_is_exact(straight, tmp_path):
    out = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for attempt in range(40):
        resume = ["--resume"] if (out / "last.pt").exists() else []
        proc = cli(*RUN, "--checkpoint-every", "1", "--out", str(out), *resume)
        before = (out / "last.pt").stat().st_mtime_ns if (out / "last.pt").exists() else 0
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:  # wait for a new checkpoint, then kill soon after
            path = out / "last.pt"
            if path.exists() and path.stat().st_mtime_ns != before:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.25))
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        load_checkpoint(out / "last.pt")  # every left checkpoint loads
    else:
        pytest.fail("the run never finished")
    assert kills >= 3, f"only {kills} kills landed during training"
    if proc.returncode is None or not (out / "metrics.jsonl").exists():
        pytest.fail("the run did not complete")
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    assert_same_run(straight, out)


def test_checkpoint_every_steps_records_the_data_position(tmp_path):
    out = tmp_path / "run"
    proc = cli(*RUN, "--epochs", "1", "--checkpoint-every", "5", "--out", str(out))
    seen = set()
    while proc.poll() is None:
        if (out / "last.pt").exists():
            try:
                ckpt = load_checkpoint(out / "last.pt")
                seen.add((ckpt["epoch"], ckpt["progress"]["batch"]))
            except RobustDistillError:
                pytest.fail("a checkpoint was readable only partly")
        time.sleep(0.02)
    assert proc.returncode == 0, proc.stderr.read()
    assert {b for e, b in seen if e == 0} <= {5, 10}
    assert (1, 0) in seen or load_checkpoint(out / "last.pt")["epoch"] == 1


class GoesNaN:
    @hookimpl
    def register_methods(self, register):
        register(Method("nan-at-2", "a loss that turns NaN in epoch 2"))

    @hookimpl
    def loss(self, ctx):
        logits = ctx.student_out("clean", ctx.x)
        value = torch.nn.functional.cross_entropy(logits, ctx.y)
        return LossTerm("fragile", value * (float("nan") if ctx.epoch == 2 else 1.0))


def test_non_finite_loss_stops_names_the_term_and_keeps_the_last_good_checkpoint(tmp_path):
    host = plugin_host(GoesNaN())
    config = train_config(host, "--plugin", "nan-at-2", "--subset", "128", "--epochs", "2", "--val-size", "32",
                          "--out", str(tmp_path / "run"))
    with pytest.raises(RobustDistillError, match=r"non-finite in epoch 2 \(term\(s\): total, fragile\).*last good"):
        train(config, host)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


class RunsOutOfMemory:
    @hookimpl
    def register_methods(self, register):
        register(Method("oom", "always out of memory"))

    @hookimpl
    def loss(self, ctx):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_says_which_batch_size_to_try(tmp_path):
    host = plugin_host(RunsOutOfMemory())
    config = train_config(host, "--plugin", "oom", "--subset", "64", "--batch-size", "64", "--out", str(tmp_path))
    with pytest.raises(RobustDistillError, match="out of GPU memory at --batch-size 64; try --batch-size 32"):
        train(config, host)


@pytest.fixture(scope="module")
def teacher(straight):
    return straight / "last.pt"


def error(capsys, *args):
    assert main(list(args)) == 2
    return capsys.readouterr().err


def saved_teacher(path, **arch_changes):
    """A checkpoint of a freshly built teacher whose architecture differs from the data as given."""
    from robustdistill.models import build_model
    from robustdistill.registry import ModelArch

    arch = ModelArch(**{**dict(name="cnn", num_classes=10, in_channels=1, image_size=28), **arch_changes})
    save_checkpoint(path, {"arch": arch.to_dict(), "model": build_model(arch).state_dict(), "config": {}})
    return path


def test_teacher_of_another_architecture_classes_channels_or_size_is_refused(teacher, tmp_path, capsys):
    ckpt = load_checkpoint(teacher)
    save_checkpoint(tmp_path / "arch.pt", {**{k: v for k, v in ckpt.items() if k != "format"},
                                           "arch": {**ckpt["arch"], "name": "smallcnn"}})
    cases = {  # each error names the problem and what to do
        tmp_path / "arch.pt": "do not fit architecture 'smallcnn' (10 classes, 1 channels) it records, so the file "
                              "was edited or damaged; train or finetune it again",
        saved_teacher(tmp_path / "classes.pt", num_classes=100):
            "has 100 classes but fashion-mnist has 10; distil from a teacher trained on fashion-mnist, or give this "
            f"one a new 10-class head with `robustdistill finetune-head {tmp_path / 'classes.pt'} --dataset "
            "fashion-mnist",
        saved_teacher(tmp_path / "channels.pt", in_channels=3):
            "takes 3-channel images but fashion-mnist has 1-channel images; distil from a teacher trained on "
            "1-channel data, e.g. one trained with `robustdistill train --plugin at --dataset fashion-mnist",
        saved_teacher(tmp_path / "size.pt", image_size=32): "pass --teacher-resize",
    }
    for path, message in cases.items():
        out = tmp_path / ("run-" + path.stem)
        err = error(capsys, "train", "--plugin", "ard", "--teacher", str(path), "--subset", "64", "--out", str(out))
        assert message in err, err
        assert not out.exists()


def test_teacher_at_another_resolution_is_bridged_by_resizing(tmp_path):
    path = saved_teacher(tmp_path / "t32.pt", image_size=32)
    assert main(["train", "--plugin", "ard", "--teacher", str(path), "--teacher-resize",
                 "--subset", "64", "--epochs", "1", "--val-size", "16", "--out", str(tmp_path / "run")]) == 0


def test_wrapped_state_dict_teacher_loads_safely_with_explicit_normalization(teacher, tmp_path, capsys):
    state = load_checkpoint(teacher)["model"]
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items() if k not in ("mean", "std")}}
    torch.save(wrapped, tmp_path / "rb.pt")
    common = ["train", "--plugin", "ard", "--teacher", str(tmp_path / "rb.pt"), "--teacher-arch", "cnn",
              "--subset", "64", "--epochs", "1", "--val-size", "16"]
    err = error(capsys, *common, "--out", str(tmp_path / "guess"))
    assert "does not record its input normalisation; say which with --teacher-normalize none" in err
    assert main([*common, "--teacher-normalize", "dataset", "--out", str(tmp_path / "run")]) == 0
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert environment["teacher"] == {"spec": str(tmp_path / "rb.pt"), "arch": "cnn",
                                      "normalization": "mean [0.286], std [0.353] (--teacher-normalize dataset)"}


def test_a_plain_state_dict_without_architecture_asks_for_teacher_arch(teacher, tmp_path, capsys):
    torch.save(load_checkpoint(teacher)["model"], tmp_path / "sd.pt")
    err = error(capsys, "train", "--plugin", "ard", "--teacher", str(tmp_path / "sd.pt"), "--subset", "64",
                "--out", str(tmp_path / "run"))
    assert "plain state_dict without an architecture; name it with --teacher-arch NAME" in err


def test_bad_checkpoint_every_and_indivisible_global_batch(capsys, tmp_path):
    err = error(capsys, "train", "--checkpoint-every", "0", "--subset", "64", "--out", str(tmp_path / "a"))
    assert "--checkpoint-every 0 must be at least 1" in err


# -- data-parallel training -------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc, *args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                           "-m", "robustdistill", *args], env=ENV, capture_output=True, text=True, timeout=600)


def test_two_gloo_processes_agree_with_one_process_on_the_same_global_batch(straight, tmp_path):
    """Tolerance: per-epoch training loss within 10% and validation accuracies within 0.1 of the 1-process
    run. The runs differ only by BatchNorm statistics (per process: half the global batch) and attack noise."""
    out = tmp_path / "ddp"
    result = torchrun(2, *RUN, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 2/2") == 1, "only rank 0 logs"
    one, two = metrics_without_timing(straight), metrics_without_timing(out)
    assert [m["epoch"] for m in two] == [1, 2]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.10)
        assert abs(a["val_clean"] - b["val_clean"]) <= 0.1 and abs(a["val_pgd"] - b["val_pgd"]) <= 0.1
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
    resumed = torchrun(2, *RUN, "--epochs", "3", "--resume", "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [m["epoch"] for m in metrics_without_timing(out)] == [1, 2, 3]
    one_process = subprocess.run([sys.executable, "-m", "robustdistill", *RUN, "--epochs", "4", "--resume",
                                  "--out", str(out)], env=ENV, capture_output=True, text=True)
    assert one_process.returncode == 2 and "trained on 2 processes and is resumed on 1" in one_process.stderr
