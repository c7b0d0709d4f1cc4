"""Reliability: exact resume after SIGKILL, no torn checkpoints, bad input, data-parallel training."""
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustdistill import LossTerm, Method, RobustDistillError, hookimpl
from robustdistill._checkpoint import load_checkpoint, save_checkpoint
from robustdistill._cli import main
from robustdistill._loop import train
from robustdistill.testing import plugin_host, train_config

from support import needs_fashion_mnist

pytestmark = needs_fashion_mnist

RUN = ["train", "--plugin", "at", "--dataset", "fashion-mnist", "--subset", "384", "--batch-size", "32",
       "--epochs", "2", "--attack-steps", "2", "--val-split", "64", "--seed", "3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TENSORBOARD = ["--tensorboard"] if importlib.util.find_spec("tensorboard") else []  # an optional extra


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


KILL_AFTER_WRITES = """
import os, signal, sys
import robustdistill._checkpoint as checkpoint
limit, written, write = int(os.environ.get("RD_KILL_AFTER_WRITES", "0")), [], checkpoint._atomic_write
def counted(path, payload):
    write(path, payload)
    written.append(path)
    if len(written) == limit:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint._atomic_write = counted
from robustdistill._cli import main
sys.exit(main(sys.argv[1:]))
"""


def assert_records_never_ahead(out):
    """What a kill leaves: a loadable last.pt, and records that hold nothing the checkpoint does not."""
    if not (out / "last.pt").exists():
        return
    ckpt = load_checkpoint(out / "last.pt")
    if (out / "metrics.jsonl").exists():
        epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [m["epoch"] for m in ckpt["history"]][:len(epochs)], "metrics.jsonl ahead of last.pt"
    assert json.loads((out / "config.json").read_text()) == ckpt["config"]


@pytest.mark.slow
def test_one_command_relaunched_after_kills_at_each_write_and_at_random_moments_finishes_exactly(straight, tmp_path):
    out = tmp_path / "relaunched"
    command = [*RUN, "--checkpoint-every", "1", "--resume", "--out", str(out)]
    launcher = tmp_path / "launch.py"
    launcher.write_text(KILL_AFTER_WRITES)
    # kill right after the k-th file write of a launch: the start's config.json, environment.json and
    # metrics.jsonl, then the first checkpoint's last.pt, config.json and metrics.jsonl, then the next last.pt
    for k in range(1, 8):
        proc = subprocess.run([sys.executable, str(launcher), *command], env={**ENV, "RD_KILL_AFTER_WRITES": str(k)},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert_records_never_ahead(out)
    rng = random.Random(0)
    kills = 0
    for attempt in range(40):
        proc = cli(*command)
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
        assert_records_never_ahead(out)
    else:
        pytest.fail("the run never finished")
    assert kills >= 3, f"only {kills} kills landed during training"
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    assert_same_run(straight, out)


STATEFUL_LAUNCHER = """
import os, re, sys
import robustdistill._manager as manager
from robustdistill import hookimpl
doc = open(os.environ["RD_DOC"]).read()
block = re.search(r"```python\\n# file: rd_adaptive_ce_doc\\.py\\n(.*?)```", doc, flags=re.S).group(1)
stateful = type(sys)("rd_adaptive_ce_doc")
exec(block, stateful.__dict__)
class Report:
    @hookimpl
    def train_end(self, run):
        print("STATE", os.environ.get("RANK", "0"), repr(run.checkpointed["adaptive-ce"]["weight"]), flush=True)
load = manager.load_plugins
def with_stateful(autoload=None):
    host = load(autoload)
    host.register(stateful, "adaptive-ce", "test", "third-party")
    host.register(Report(), "report", "test", "third-party")
    host.build_registry()
    return host
manager.load_plugins = with_stateful
""" + KILL_AFTER_WRITES
STATEFUL_RUN = ["train", "--plugin", "adaptive-ce", "--dataset", "fashion-mnist", "--subset", "384", "--batch-size",
                "32", "--epochs", "3", "--attack-steps", "2", "--val-split", "64", "--seed", "3", "--average", "swa",
                "--average-start", "2", "--checkpoint-every", "2"]


@pytest.mark.slow
def test_a_stateful_plugin_and_the_weight_average_survive_kills_bit_for_bit(tmp_path):
    """The docs' stateful add-on keeps its adaptive weight in run.checkpointed, and SWA its average: a run killed
    after each file write and at random moments, relaunched with the same command, ends as an unbroken one."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(STATEFUL_LAUNCHER)
    env = {**ENV, "RD_DOC": str(Path(__file__).parent.parent / "docs" / "plugins.md")}

    def launch(out, kill_after=0):
        return subprocess.run([sys.executable, str(launcher), *STATEFUL_RUN, "--resume", "--out", str(out)],
                              env={**env, "RD_KILL_AFTER_WRITES": str(kill_after)}, capture_output=True, text=True,
                              timeout=300)

    straight, out = tmp_path / "straight", tmp_path / "relaunched"
    assert launch(straight).returncode == 0
    for k in (1, 2, 3, 4, 5, 6, 7, 10, 13, 16, 19, 22):
        proc = launch(out, k)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert_records_never_ahead(out)
    else:
        assert launch(out).returncode == 0
    assert_same_run(straight, out)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["checkpointed"] == b["checkpointed"] and a["checkpointed"]["adaptive-ce"]["weight"] != 1.0
    assert a["final"] == b["final"] == "average"
    for key, value in a["models"]["average"].items():
        assert torch.equal(value, b["models"]["average"][key]), key


SIGNAL_AT_STEP = """
import os, signal, sys
import robustdistill._manager as manager
from robustdistill import hookimpl
step, name = int(os.environ["RD_SIGNAL_STEP"]), os.environ["RD_SIGNAL"]
class Signal:
    @hookimpl
    def step_end(self, run, ctx, terms):
        if ctx.step == step:
            os.kill(os.getpid(), getattr(signal, name))
load = manager.load_plugins
def with_signal(autoload=None):
    host = load(autoload)
    host.register(Signal(), "signal-at-step", "test", "third-party")
    host.build_registry()
    return host
manager.load_plugins = with_signal
from robustdistill._cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("name, step", [("SIGTERM", 3), ("SIGINT", 14), ("SIGTERM", 11)],
                         ids=["sigterm-mid-epoch", "sigint-in-epoch-2", "sigterm-at-the-last-step-of-epoch-1"])
def test_a_signal_writes_a_checkpoint_at_the_next_step_and_the_resumed_run_equals_an_unbroken_one(
        straight, tmp_path, name, step):
    # a scheduler's SIGTERM (preemption, time limit) or a Ctrl-C: the run checkpoints where it is and stops; the
    # same command with --resume then finishes as the unbroken run (12 steps per epoch here)
    launcher = tmp_path / "launch.py"
    launcher.write_text(SIGNAL_AT_STEP)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(launcher), *RUN, "--checkpoint-minutes", "0", "--out", str(out)],
                          env={**ENV, "RD_SIGNAL_STEP": str(step), "RD_SIGNAL": name}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr[-2000:]
    ckpt = load_checkpoint(out / "last.pt")
    position = (ckpt["epoch"], ckpt["progress"]["batch"])
    assert position == {3: (0, 4), 14: (1, 3), 11: (1, 0)}[step], "the checkpoint is the step after the signal"
    assert f"stopped by {name} at epoch" in proc.stderr and "--resume" in proc.stderr
    finished = cli(*RUN, "--resume", "--out", str(out))
    assert finished.wait(timeout=300) == 0, finished.stderr.read()
    assert_same_run(straight, out)


def test_a_finished_run_repairs_records_a_kill_left_behind(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--dataset", "synthetic", "--plugin", "at", "--epochs", "2", "--val-split", "16", "--out", str(out)]
    assert main(args) == 0
    full = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text(full.splitlines(keepends=True)[0])  # a kill between last.pt and this file
    (out / "config.json").unlink()
    assert main([*args, "--resume"]) == 0
    assert (out / "metrics.jsonl").read_text() == full
    assert json.loads((out / "config.json").read_text()) == load_checkpoint(out / "last.pt")["config"]


def test_resume_refuses_every_option_that_changes_the_run_and_nothing_else(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "synthetic", "--epochs", "1", "--val-split", "16", "--out", str(out)]
    assert main([*args, "--plugin", "at"]) == 0
    config, ckpt = (out / "config.json").read_text(), (out / "last.pt").read_bytes()
    changes = {("--lr", "0.05"): "--lr 0.1 → 0.05", ("--eps", "0.2"): "--eps 0.1 → 0.2",
               ("--model", "smallcnn"): "--model 'cnn' → 'smallcnn'", ("--seed", "1"): "--seed 0 → 1",
               ("--at-init", "normal"): "--at-init 'uniform' → 'normal'",
               ("--batch-student-forwards",): "--batch-student-forwards False → True",
               ("--weight-decay", "2e-4"): "--weight-decay 0.0005 → 0.0002",
               ("--subset", "100"): "--subset unset → 100"}
    for change, shown in changes.items():
        err = error(capsys, *args, "--plugin", "at", "--resume", *change)
        assert "--resume with options that change the run" in err and shown in err, err
        assert (out / "config.json").read_text() == config and (out / "last.pt").read_bytes() == ckpt
    err = error(capsys, *args, "--plugin", "trades", "--resume")
    assert "--plugin ['at'] → ['trades']" in err
    # what may change: epochs (to extend), device, validation, checkpoints, logging; and a value equal to the
    # one the run resolved is no change
    assert main([*args, "--plugin", "at", "--resume", "--epochs", "2", "--device", "cpu", "--val-test", "8",
                 "--checkpoint-every", "3", "--checkpoint-minutes", "1", "--progress-interval", "5",
                 "--eps", "0.1", *TENSORBOARD]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["epochs"] == 2 and saved["val_test"] == 8 and saved == load_checkpoint(out / "last.pt")["config"]


def test_time_based_checkpoints_within_an_epoch(tmp_path):
    from robustdistill.testing import HookRecorder, train_run

    counts = {}
    for minutes in ("0.000001", "0"):
        recorder = HookRecorder()
        host = plugin_host(recorder, names=["recorder"])
        train_run(host, ["natural"], tmp_path / minutes, "--batch-size", "32", "--val-split", "0",
                  "--checkpoint-minutes", minutes)
        counts[minutes] = recorder.names().count("checkpoint_saved")
    assert counts == {"0.000001": 8, "0": 1}, "every step but the last is due after 60 µs; with 0, the epoch end only"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_run_files_follow_the_umask(tmp_path, umask, mode):
    from robustdistill.testing import train_run

    old = os.umask(umask)
    try:
        train_run(plugin_host(), ["natural"], tmp_path / "run")
    finally:
        os.umask(old)
    for name in ("last.pt", "config.json", "metrics.jsonl", "environment.json"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == mode, name


@pytest.mark.slow
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
        register(Method(name="nan-at-2", summary="a loss that turns NaN in epoch 2"))

    @hookimpl
    def loss(self, ctx):
        logits = ctx.student_out("clean", ctx.x)
        value = torch.nn.functional.cross_entropy(logits, ctx.y)
        return LossTerm("fragile", value * (float("nan") if ctx.epoch == 2 else 1.0))


def test_non_finite_loss_stops_names_the_term_and_keeps_the_last_good_checkpoint(tmp_path):
    host = plugin_host(GoesNaN())
    config = train_config(host, "--plugin", "nan-at-2", "--subset", "128", "--epochs", "2", "--val-split", "32",
                          "--out", str(tmp_path / "run"))
    with pytest.raises(RobustDistillError, match=r"non-finite in epoch 2 \(term\(s\): total, fragile\).*last good"):
        train(config, host)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


class NaNFromTheStart(GoesNaN):
    @hookimpl
    def loss(self, ctx):
        return LossTerm("fragile", ctx.student_out("clean", ctx.x).sum() * float("nan"))


def test_a_loss_non_finite_before_any_checkpoint_says_there_is_none(tmp_path):
    host = plugin_host(NaNFromTheStart(), names=["nan-from-start"])
    config = train_config(host, "--plugin", "nan-at-2", "--subset", "128", "--val-split", "32",
                          "--out", str(tmp_path / "run"))
    with pytest.raises(RobustDistillError, match="non-finite in epoch 1.*no checkpoint was written yet"):
        train(config, host)
    assert not (tmp_path / "run" / "last.pt").exists()


class RunsOutOfMemory:
    @hookimpl
    def register_methods(self, register):
        register(Method(name="oom", summary="always out of memory"))

    @hookimpl
    def loss(self, ctx):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_says_which_batch_size_to_try(tmp_path):
    host = plugin_host(RunsOutOfMemory())
    config = train_config(host, "--plugin", "oom", "--subset", "64", "--batch-size", "64", "--out", str(tmp_path))
    with pytest.raises(RobustDistillError, match="out of GPU memory at --batch-size 64; try --batch-size 32"):
        train(config, host)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A teacher checkpoint that fits Fashion-MNIST (random weights: these tests load it, never rely on it)."""
    return saved_teacher(tmp_path_factory.mktemp("teacher") / "last.pt")


def error(capsys, *args):
    assert main(list(args)) == 2
    return capsys.readouterr().err


def saved_teacher(path, **arch_changes):
    """A checkpoint of a freshly built teacher whose architecture differs from the data as given."""
    from robustdistill._models import build_model
    from robustdistill._registry import ModelArch

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
                 "--subset", "64", "--epochs", "1", "--val-split", "16", "--out", str(tmp_path / "run")]) == 0


def test_wrapped_state_dict_teacher_loads_safely_with_explicit_normalization(teacher, tmp_path, capsys):
    state = load_checkpoint(teacher)["model"]
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items() if k not in ("mean", "std")}}
    torch.save(wrapped, tmp_path / "rb.pt")
    common = ["train", "--plugin", "ard", "--teacher", str(tmp_path / "rb.pt"), "--teacher-arch", "cnn",
              "--subset", "64", "--epochs", "1", "--val-split", "16"]
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


GLOO_ABORT = "terminate called without an active exception"
"""What a process prints when gloo's TCP transport aborts it now and then (pytorch/gloo#514), a flake upstream."""


def relaunch(command, env):
    """A ``--resume`` relaunch, made once more if gloo aborted a process (one more relaunch of the same command)."""
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode and GLOO_ABORT in result.stderr:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    return result


@pytest.fixture(scope="module")
def ddp_straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    result = torchrun(2, *RUN, "--out", str(out))
    if result.returncode and GLOO_ABORT in result.stderr:
        shutil.rmtree(out)
        result = torchrun(2, *RUN, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 2/2") == 1, "only rank 0 logs"
    return out


@pytest.mark.slow
def test_two_gloo_processes_agree_with_one_process_on_the_same_global_batch(straight, ddp_straight, tmp_path):
    """Tolerance: per-epoch training loss within 10% and validation accuracies within 0.1 of the 1-process
    run. The runs differ only by BatchNorm statistics (per process: half the global batch) and attack noise."""
    out = tmp_path / "ddp"
    shutil.copytree(ddp_straight, out)
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


@pytest.mark.slow
def test_a_killed_two_process_run_relaunched_with_the_same_command_finishes_like_an_unbroken_one(ddp_straight,
                                                                                             tmp_path):
    out = tmp_path / "relaunched"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "-m", "robustdistill", *RUN, "--checkpoint-every", "4", "--resume",
               "--out", str(out)]
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # kill every process once a mid-epoch checkpoint is in
        path = out / "last.pt"
        if path.exists() and load_checkpoint(path)["progress"]["batch"] >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(out / "last.pt")["epoch"] < 2
    command[command.index("--master-port") + 1] = str(free_port())
    relaunched = relaunch(command, ENV)
    assert relaunched.returncode == 0, relaunched.stderr[-3000:]
    assert_same_run(ddp_straight, out)


@pytest.mark.slow
def test_checkpointed_state_is_the_same_on_every_process_and_survives_a_kill(tmp_path):
    """The stateful add-on reduces its statistic over processes: both ranks hold the same adaptive weight (the
    product of 33 per-step factors, which compounds the processes' BatchNorm differences, so it is not compared
    with a one-process run's); a two-process run killed mid-epoch and relaunched ends as an unbroken one."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(STATEFUL_LAUNCHER)
    env = {**ENV, "RD_DOC": str(Path(__file__).parent.parent / "docs" / "plugins.md")}

    def command(out, nproc):
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
                "127.0.0.1", "--master-port", str(free_port()), str(launcher), *STATEFUL_RUN, "--resume", "--out",
                str(out)]

    def weights(stdout):
        return {line.split()[1]: float(line.split()[2]) for line in stdout.splitlines() if line.startswith("STATE")}

    one = subprocess.run(command(tmp_path / "one", 1), env=env, capture_output=True, text=True, timeout=600)
    two = subprocess.run(command(tmp_path / "two", 2), env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-3000:]
    per_rank = weights(two.stdout)
    assert set(per_rank) == {"0", "1"} and per_rank["0"] == per_rank["1"], per_rank
    assert 0 < per_rank["0"] < 1 and 0 < weights(one.stdout)["0"] < 1, "the term came down: the weight followed"
    out = tmp_path / "relaunched"
    proc = subprocess.Popen(command(out, 2), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        path = out / "last.pt"
        if path.exists() and load_checkpoint(path)["progress"]["batch"] >= 2 and load_checkpoint(path)["epoch"] == 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    relaunched = relaunch(command(out, 2), env)
    assert relaunched.returncode == 0, relaunched.stderr[-3000:]
    assert_same_run(tmp_path / "two", out)
    a, b = load_checkpoint(tmp_path / "two" / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["checkpointed"] == b["checkpointed"]
