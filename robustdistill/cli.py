"""``robustdistill`` command line: train, eval, finetune-head, report, plugins, doctor."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import yaml

from . import __version__
from .config import add_fold_bn_argument, add_ops_backend_argument, parse_number
from .plugin_manager import PluginHost, PluginWarning, load_plugins
from .registry import Option, RobustDistillError
from .zoo import add_source_arguments

LR_SCHEDULES = ("multistep", "cosine", "constant")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false)")


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of epochs, e.g. 100,150") from None


def _option_type(option: Option) -> Any:
    if option.type is not None:
        return option.type
    if isinstance(option.default, bool):
        return _parse_bool
    if isinstance(option.default, float):
        return parse_number
    if isinstance(option.default, int):
        return int
    return str


def add_train_arguments(parser: argparse.ArgumentParser, host: PluginHost) -> None:
    reg = host.registry
    g = parser.add_argument_group("method")
    g.add_argument("--plugin", action="append", default=None, metavar="NAME",
                   help=f"training method, repeatable to compose (default: natural). Known: {', '.join(sorted(reg.methods))}")
    g.add_argument("--teacher", default=None, metavar="SPEC",
                   help="teacher for distillation methods: a checkpoint, a run directory (its last.pt), a plain "
                        "state_dict with --teacher-arch, or robustbench:NAME (a RobustBench model for --dataset, "
                        "Linf; pip install 'robustdistill[robustbench]')")
    g.add_argument("--teacher-arch", default=None, metavar="NAME",
                   help="architecture of a --teacher that is a plain state_dict saved by another tool: a model name "
                        "(wrn-34-10, torchvision:resnet50, timm:resnet18), or official-wrn for a WideResNet from the "
                        "TRADES, ARD, RSLAD or IGDM code (depth and width read from the weights, no normalisation)")
    add_source_arguments(g)
    g.add_argument("--teacher-resize", action="store_true",
                   help="resize inputs inside a teacher trained at another image size (cross-resolution transfer)")
    g = parser.add_argument_group("data and model")
    g.add_argument("--dataset", default="fashion-mnist", help=f"one of: {', '.join(sorted(reg.datasets))}")
    g.add_argument("--data-dir", default=None, metavar="DIR", help="where the dataset files are (also $ROBUSTDISTILL_DATA)")
    g.add_argument("--download", action="store_true",
                   help="download the dataset, and robustbench:NAME weights, if they are not found locally")
    g.add_argument("--subset", type=int, default=None, metavar="N", help="use only the first N training images")
    g.add_argument("--model", default=None,
                   help="student architecture (default: cnn for 28×28 data, else resnet18). "
                        f"Known: {', '.join(e.name for e in reg.models)}")
    g.add_argument("--activation", default="relu", choices=("relu", "gelu", "silu"))
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=parse_number, default=0.1)
    g.add_argument("--momentum", type=parse_number, default=0.9)
    g.add_argument("--weight-decay", type=parse_number, default=5e-4,
                   help="SGD weight decay (IGDM paper: 5e-4; most official AD code: 2e-4)")
    g.add_argument("--lr-schedule", default="multistep", choices=LR_SCHEDULES)
    g.add_argument("--milestones", type=_int_list, default=None, metavar="E1,E2",
                   help="epochs where multistep divides the lr (default: 50%% and 75%% of --epochs)")
    g.add_argument("--lr-gamma", type=parse_number, default=0.1, help="multistep decay factor")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")
    g.add_argument("--amp", default="bf16", choices=("bf16", "off"), help="bf16 autocast (CUDA only)")
    add_ops_backend_argument(g)
    g.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                   help="channels_last memory layout for models and batches (auto: on CUDA only)")
    g.add_argument("--cudnn-benchmark", default="on", choices=("on", "off"),
                   help="let cuDNN pick the fastest convolution algorithms (CUDA only)")
    add_fold_bn_argument(g, "the teacher and of the student while it is attacked in eval mode")
    g.add_argument("--batch-student-forwards", action="store_true",
                   help="run the student's training-mode forwards of a step (e.g. S(x′), S(x), S(x−δ)) as one "
                        "batch: faster on a GPU, but BatchNorm then normalises over them together, which "
                        "changes the training (the papers' code runs them separately)")
    g = parser.add_argument_group("attack (defaults per dataset: Fashion-MNIST ε=0.1, step 0.01, 10 steps; "
                                  "CIFAR ε=8/255, step 2/255, 10 steps)")
    g.add_argument("--eps", type=parse_number, default=None, help="L∞ radius, e.g. 8/255 or 0.1")
    g.add_argument("--step-size", type=parse_number, default=None, help="attack step, e.g. 2/255")
    g.add_argument("--attack-steps", type=int, default=None, help="steps of the training attack")
    g.add_argument("--val-size", type=int, default=500, help="test images for the per-epoch clean/PGD check")
    g.add_argument("--val-attack-steps", type=int, default=20, help="PGD steps of the per-epoch check")
    g = parser.add_argument_group("output")
    g.add_argument("--out", default=None, metavar="DIR", help="run directory (default: runs/<plugins>-<dataset>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    g.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="also checkpoint every N steps within an epoch (default: at the end of each epoch only)")
    g.add_argument("--tensorboard", action="store_true",
                   help="also log the per-epoch metrics for TensorBoard into DIR/tensorboard (needs tensorboard)")
    g.add_argument("--sync-bn", action="store_true",
                   help="SyncBatchNorm across processes in distributed runs (torchrun)")
    g.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="options from a YAML file (keys are option names); the command line overrides it")
    for owner, options in sorted(reg.options.items()):
        g = parser.add_argument_group(f"plugin {owner}")
        for option in options:
            kwargs: dict[str, Any] = {"default": option.default, "help": f"{option.help} (default: {option.default})"}
            if isinstance(option.default, bool) and option.type is None:
                kwargs["type"] = _parse_bool
            else:
                kwargs["type"] = _option_type(option)
            if option.choices is not None:
                kwargs["choices"] = option.choices
            g.add_argument(option.flag, **kwargs)


def apply_config_file(parser: argparse.ArgumentParser, argv: Sequence[str]) -> dict[str, Any]:
    """Use a ``--config`` YAML file as the parser's defaults; returns the file's values."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is None:
        return {}
    path = Path(known.config)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise RobustDistillError(f"cannot read --config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise RobustDistillError(f"--config {path} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise RobustDistillError(f"--config {path} must be a mapping of option names to values")
    dests = {action.dest: action for action in parser._actions}
    normalised = {}
    for key, value in values.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in dests or dest in ("help", "config"):
            raise RobustDistillError(f"--config {path}: unknown option {key!r}; see `robustdistill train --help`")
        action = dests[dest]
        if dest == "plugin" and isinstance(value, str):
            value = [value]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and action.type is not None \
                and action.type not in (int, parse_number, float):
            value = str(value)
        normalised[dest] = value
    parser.set_defaults(**normalised)
    return normalised


def build_parser(host: PluginHost) -> argparse.ArgumentParser:
    from .evaluate import add_eval_arguments

    parser = argparse.ArgumentParser(prog="robustdistill",
                                     description="Transfer adversarial robustness from a robust teacher to a student.")
    parser.add_argument("--version", action="version", version=f"robustdistill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train = sub.add_parser("train", help="train a model with one or more method plugins",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_arguments(train, host)
    evaluate = sub.add_parser("eval", help="evaluate a checkpoint under attacks")
    add_eval_arguments(evaluate)
    from .finetune import add_finetune_arguments
    add_finetune_arguments(sub.add_parser("finetune-head", help="finetune a new linear head on a frozen teacher's "
                                          "features for another label set (cross-task transfer)"))
    from .report import add_report_arguments
    add_report_arguments(sub.add_parser("report", help="figures (curves, robust accuracy vs ε, input-gradient "
                                        "maps) and a results table for run directories"))
    doctor = sub.add_parser("doctor", help="show torch, CUDA, compiler and fused-kernel status, and which backend "
                                           "each op uses")
    doctor.add_argument("--json", action="store_true", help="print the backend report as JSON")
    plugins = sub.add_parser("plugins", help="list the loaded plugins, their versions and hooks")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    return parser


def plugins_command(args: argparse.Namespace, host: PluginHost) -> int:
    infos = host.plugin_infos()
    if args.json:
        print(json.dumps([info.to_dict() for info in infos], indent=2))
        return 0
    rows = [(i.name, i.version, i.source, ", ".join(i.methods) or "-", ", ".join(i.hooks)) for i in infos]
    header = ("plugin", "version", "source", "methods", "hooks")
    widths = [max(len(r[c]) for r in rows + [header]) for c in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
    return 0


def doctor_command(args: argparse.Namespace) -> int:
    from .ops import backend_report, doctor_lines

    print(json.dumps(backend_report(), indent=2) if args.json else "\n".join(doctor_lines()))
    return 0


def train_command(args: argparse.Namespace, host: PluginHost) -> int:
    from .engine import train

    if args.plugin is None:
        args.plugin = ["natural"]
    if args.out is None:
        args.out = str(Path("runs") / f"{'-'.join(args.plugin)}-{args.dataset}")
    train(args, host)
    return 0


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    if issubclass(category, PluginWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.showwarning = _show_warning
    try:
        host = load_plugins()
        parser = build_parser(host)
        if argv and argv[0] == "train":
            apply_config_file(parser._subparsers._group_actions[0].choices["train"], argv[1:])  # type: ignore[union-attr]
        args = parser.parse_args(argv)
        if args.command == "train":
            return train_command(args, host)
        if args.command == "eval":
            from .evaluate import eval_command
            return eval_command(args, host.registry)
        if args.command == "finetune-head":
            from .finetune import finetune_command
            return finetune_command(args, host.registry)
        if args.command == "report":
            from .report import report_command
            return report_command(args, host.registry)
        if args.command == "doctor":
            return doctor_command(args)
        return plugins_command(args, host)
    except RobustDistillError as err:
        print(f"robustdistill: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustdistill: interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = _default_showwarning
