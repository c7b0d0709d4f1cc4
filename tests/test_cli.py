"""The command line: options, --config files, and every bad-input path gives one clear error."""
import json
import re
import pickle
import subprocess
import sys

import pytest
import torch

from robustdistill._cli import main

from support import needs_fashion_mnist


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def error_of(capsys, *args):
    code, _, err = run_cli(capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_plugins_table_and_json(capsys):
    code, out, _ = run_cli(capsys, "plugins")
    assert code == 0 and "at" in out and "built-in" in out and "attack" in out
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert {"core", "natural", "at", "trades"} <= {p["name"] for p in json.loads(out)}


def test_python_dash_m_is_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "robustdistill", "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--plugin", "--teacher", "--eps", "--trades-beta", "--at-init", "--config", "--resume", "--amp"):
        assert flag in result.stdout


def test_unknown_plugin_lists_the_known_ones(capsys, tmp_path):
    err = error_of(capsys, "train", "--plugin", "nope", "--out", str(tmp_path / "r"))
    assert "unknown plugin 'nope'; known plugins: adaad, adaiad, akd, ard, at, edgereg, fairard, gradnorm, iad, iad2, igam, igdm, mtard, natural, pag, peeraid, rrm, rslad, saad, trades" in err


def test_unknown_model_and_dataset(capsys, tmp_path):
    err = error_of(capsys, "train", "--model", "vgg99", "--dataset", "mnist", "--data-dir", str(tmp_path),
                   "--out", str(tmp_path / "r"))
    assert "unknown model 'vgg99'; known models: cnn" in err and "wrn-D-K" in err
    err = error_of(capsys, "train", "--dataset", "imagenet-1k", "--out", str(tmp_path / "r"))
    assert "unknown dataset 'imagenet-1k'; known datasets:" in err and "fashion-mnist" in err


def test_missing_dataset_names_where_it_looked_and_the_fix(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("ROBUSTDISTILL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    err = error_of(capsys, "train", "--dataset", "cifar10", "--data-dir", str(empty), "--out", str(tmp_path / "r"))
    assert str(empty) in err and "--download" in err


@pytest.mark.parametrize("eps, message", [("2", "outside (0, 1]"), ("0", "outside (0, 1]"), ("-8/255", "outside (0, 1]")])
@needs_fashion_mnist
def test_bad_eps(capsys, tmp_path, eps, message):
    err = error_of(capsys, "train", "--plugin", "at", f"--eps={eps}", "--subset", "64", "--out", str(tmp_path / "r"))
    assert message in err and "--eps" in err


def test_a_value_the_parser_rejects_is_one_line_with_a_pointer_to_help(capsys):
    assert main(["train", "--eps", "eight"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "robustdistill: error: argument --eps: 'eight' is not a number (examples: 0.1, 8/255) "
        "(see `robustdistill train --help`)"]
    assert main(["train", "--epochs", "three"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "robustdistill: error: argument --epochs: 'three' is not a whole number (see `robustdistill train --help`)"]
    assert main(["evaluate"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "invalid choice: 'evaluate'" in err and "robustdistill --help" in err


def test_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert "(default: None)" not in flat and not re.search(r"\(default: [^)]*\) \(default:", flat)
    for flag, default in (("--epochs", "10"), ("--lr", "0.1"), ("--seed", "0"), ("--plugin", "natural"),
                          ("--trades-beta", "6.0"), ("--igdm-clip-minus", "off")):
        block = out[out.index(f"  {flag}"):].split("\n  -")[0]
        assert f"(default: {default})" in " ".join(block.split()), flag


@needs_fashion_mnist
def test_bad_steps(capsys, tmp_path):
    err = error_of(capsys, "train", "--plugin", "at", "--attack-steps", "0", "--subset", "64", "--out", str(tmp_path))
    assert "--attack-steps 0 must be at least 1" in err


def test_a_checkpoint_that_is_not_a_checkpoint(capsys, tmp_path):
    bogus = tmp_path / "notes.pt"
    bogus.write_text("this is not a checkpoint")
    err = error_of(capsys, "eval", str(bogus), "--attacks", "clean")
    assert "not a readable PyTorch checkpoint" in err
    truncated = tmp_path / "truncated.pt"
    torch.save({"model": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    assert "not a readable PyTorch checkpoint" in error_of(capsys, "eval", str(truncated), "--attacks", "clean")
    err = error_of(capsys, "eval", str(tmp_path / "missing.pt"), "--attacks", "clean")
    assert "does not exist" in err


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_that_would_run_code_is_refused(capsys, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(str(marker))}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    err = error_of(capsys, "eval", str(evil), "--attacks", "clean")
    assert "refused to load" in err
    assert not marker.exists(), "unpickling ran code"
    err = error_of(capsys, "train", "--plugin", "at", "--teacher", str(evil), "--subset", "64",
                   "--out", str(tmp_path / "r"))
    assert "refused to load" in err and not marker.exists()


def test_config_file_sets_options_and_the_command_line_wins(tmp_path):
    from robustdistill._arguments import build_parser, command_options
    from robustdistill._catalog import Catalog
    from robustdistill._config import config_from_args
    from robustdistill._manager import load_plugins
    from robustdistill._presets import apply_option_files

    cfg = tmp_path / "run.yaml"
    cfg.write_text("plugin: trades\neps: 8/255\nstep-size: 0.01\ntrades_beta: 3\nepochs: 7\nigdm-clip-minus: true\n")
    host = load_plugins(autoload=False)
    parser = build_parser(Catalog.of(host))
    apply_option_files(parser.commands["train"], "train", command_options("train", Catalog.of(host)), None, str(cfg))
    config = config_from_args(parser.parse_args(["train", "--config", str(cfg), "--epochs", "2"]),
                              host.registry.options)
    assert config.plugin == ("trades",) and config.eps == pytest.approx(8 / 255) and config.step_size == 0.01
    assert config.trades.beta == 3.0 and config.epochs == 2 and config.igdm.clip_minus is True


def test_config_file_errors(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epocs: 3\n")
    assert "unknown option 'epocs'" in error_of(capsys, "train", "--config", str(cfg))
    cfg.write_text("eps: [1, 2\n")
    assert "not valid YAML" in error_of(capsys, "train", "--config", str(cfg))
    assert "cannot read --config" in error_of(capsys, "train", "--config", str(tmp_path / "none.yaml"))
    cfg.write_text("train: {epochs: 2}\nsummry: typo\n")
    assert "unknown key(s) summry beside the sections" in error_of(capsys, "train", "--config", str(cfg))


def test_a_config_file_in_the_preset_format_gives_its_train_section(tmp_path):
    from robustdistill._arguments import build_parser, command_options
    from robustdistill._catalog import Catalog
    from robustdistill._config import config_from_args
    from robustdistill._manager import load_plugins
    from robustdistill._presets import PRESET_DIR, apply_option_files, preset

    host = load_plugins(autoload=False)
    parser = build_parser(Catalog.of(host))
    table = command_options("train", Catalog.of(host))
    apply_option_files(parser.commands["train"], "train", table, None, str(PRESET_DIR / "igdm-ard-cifar10.yaml"))
    from_file = config_from_args(parser.parse_args(["train"]), host.registry.options)
    parser = build_parser(Catalog.of(host))
    apply_option_files(parser.commands["train"], "train", table, "igdm-ard-cifar10", None)
    from_preset = config_from_args(parser.parse_args(["train"]), host.registry.options)
    assert from_file == from_preset and from_file.igdm.alpha == preset("igdm-ard-cifar10").train["igdm-alpha"]


@needs_fashion_mnist
def test_existing_run_is_not_overwritten_and_resume_checks_options(capsys, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--plugin", "natural", "--subset", "128", "--epochs", "1", "--val-split", "32", "--out", str(out)]
    assert run_cli(capsys, *args)[0] == 0
    before = (out / "last.pt").read_bytes()
    err = error_of(capsys, *args)
    assert "already holds a run" in err and "--resume" in err
    err = error_of(capsys, *args, "--resume", "--model", "smallcnn")
    assert "--resume with options that change the run" in err and "smallcnn" in err
    assert (out / "last.pt").read_bytes() == before
    fresh = tmp_path / "fresh"
    code, out_text, _ = run_cli(capsys, "train", "--resume", "--subset", "128", "--epochs", "1", "--val-split", "32",
                                "--out", str(fresh))
    assert code == 0 and "holds no checkpoint yet: starting the run" in out_text and (fresh / "last.pt").is_file()


def test_doctor_reports_toolchain_and_backend_per_op(capsys):
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 0
    assert "torch " in out and "ninja" in out and "C++ compiler" in out
    for op in ("pgd_step", "fd_align"):
        assert f"{op} on cpu:" in out and f"{op} on cuda:" in out
    code, out, _ = run_cli(capsys, "doctor", "--json")
    report = json.loads(out)
    assert code == 0 and set(report["ops"]) == {"pgd_step", "fd_align"}


def test_ext_backend_without_kernels_fails_before_training(capsys, tmp_path, monkeypatch):
    from robustdistill import _ext, _ops as ops

    monkeypatch.setattr(ops, "_backend_override", None)
    monkeypatch.setattr(_ext, "_status", _ext.ExtStatus(loaded=False, error="simulated: no compiler"))
    err = error_of(capsys, "train", "--ops-backend", "ext", "--subset", "64", "--out", str(tmp_path / "r"))
    assert "--ops-backend ext" in err and "simulated: no compiler" in err and "robustdistill doctor" in err
    assert not (tmp_path / "r").exists()


@needs_fashion_mnist
def test_run_records_its_environment_and_ops_backend(capsys, tmp_path, monkeypatch):
    from robustdistill import _ops as ops

    monkeypatch.setattr(ops, "_backend_override", None)
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "--ops-backend", "ref", "--subset", "64", "--epochs", "1", "--val-split", "16",
                   "--out", str(out))[0] == 0
    env = json.loads((out / "environment.json").read_text())
    assert env["ops_backend"] == {"requested": "ref", "pgd_step": "ref", "fd_align": "ref"}
    assert env["torch"] == torch.__version__
    assert env["device"].split(":")[0] == ("cuda" if torch.cuda.is_available() else "cpu"), "--device auto"


@needs_fashion_mnist
def test_resume_with_more_epochs_follows_the_new_schedule(capsys, tmp_path):
    common = ["train", "--plugin", "natural", "--subset", "64", "--val-split", "16"]

    def lrs(out):
        return [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    straight, extended = tmp_path / "straight", tmp_path / "extended"
    assert run_cli(capsys, *common, "--epochs", "4", "--out", str(straight))[0] == 0
    assert run_cli(capsys, *common, "--epochs", "2", "--out", str(extended))[0] == 0
    assert lrs(extended) == pytest.approx([0.1, 0.01])  # milestone at 50% of 2 epochs
    assert run_cli(capsys, *common, "--epochs", "4", "--resume", "--out", str(extended))[0] == 0
    # epochs 3 and 4 follow the 4-epoch schedule (milestones 2 and 3), not the saved 2-epoch one
    assert lrs(straight) == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert lrs(extended)[2:] == lrs(straight)[2:]


@needs_fashion_mnist
def test_channels_last_layout_gives_the_same_step(tmp_path):
    from robustdistill._loop import new_step, train_step
    from robustdistill._run import build_run
    from robustdistill.testing import plugin_host, train_config

    host = plugin_host()
    losses = {}
    for layout in ("on", "off"):
        config = train_config(host, "--plugin", "at", "--subset", "64", "--channels-last", layout,
                              "--out", str(tmp_path / layout))
        run = build_run(config, host)
        conv = next(p for p in run.student.parameters() if p.dim() == 4 and p.shape[1] > 1)
        assert run.config.channels_last == layout
        assert conv.is_contiguous(memory_format=torch.channels_last) == (layout == "on")
        x = run.view.data.train_x[:32].float() / 255
        torch.manual_seed(0)
        losses[layout] = float(train_step(run, new_step(run, x, run.view.data.train_y[:32], 1, 0))[0])
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-5)


def test_distillation_without_a_teacher_says_how_to_make_one(capsys, tmp_path):
    assert main(["train", "--plugin", "igdm", "--subset", "64", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "pass --teacher CKPT" in err and "robustdistill train --plugin at" in err
    assert not (tmp_path / "r").exists()
