"""``robustdistill`` command line: train, eval, finetune-head, report, plugins, doctor."""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from typing import Any, NoReturn, Sequence

from . import __version__
from .config import add_run_arguments, config_from_args, option_defaults_from_file
from .plugin_manager import PluginError, PluginHost, PluginWarning, load_plugins
from .presets import add_presets_arguments, apply_preset, presets_command
from .registry import RobustDistillError

DEBUG_ENV = "ROBUSTDISTILL_DEBUG"


class Parser(argparse.ArgumentParser):
    """Parse errors as one line and a pointer to ``--help``, not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        raise RobustDistillError(f"{message} (see `{self.prog} --help`)")


def add_train_arguments(parser: argparse.ArgumentParser, host: PluginHost) -> None:
    reg = host.registry
    add_run_arguments(parser, reg.options, {
        "plugin": ", ".join(sorted(reg.methods)),
        "dataset": ", ".join(sorted(reg.datasets)),
        "model": ", ".join(e.name for e in reg.models),
    })
    g = parser.add_argument_group("this command")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt (a run "
                   "directory without one starts anew, so the same command relaunches a preempted job)")
    g.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="options from a YAML file (keys are option names); the command line overrides it")


def build_parser(host: PluginHost) -> argparse.ArgumentParser:
    from .evaluate import add_eval_arguments

    parser = Parser(prog="robustdistill",
                    description="Transfer adversarial robustness from a robust teacher to a student.")
    parser.add_argument("--version", action="version", version=f"robustdistill {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback of plugin errors (also ${DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    train = sub.add_parser("train", help="train a model with one or more method plugins",
                           usage="robustdistill train [--plugin NAME ...] [options]")
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
    add_presets_arguments(sub.add_parser("presets", help="list the presets of the papers' training and evaluation "
                                         "protocols (train/eval --preset NAME) and their sources"))
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
    from .loop import train

    train(config_from_args(args, host.registry.options), host, resume=args.resume)
    return 0


def _config_file(argv: Sequence[str]) -> str | None:
    """``train --config FILE`` (read before parsing: the file's values become the parser's defaults)."""
    if "train" not in argv:
        return None
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv[argv.index("train") + 1:])
    return known.config


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    if issubclass(category, PluginWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]  # accepted anywhere on the command line
    warnings.showwarning = _show_warning
    try:
        host = load_plugins()
        parser = build_parser(host)
        apply_preset(parser, argv)
        config_file = _config_file(argv)
        if config_file is not None:
            option_defaults_from_file(parser._subparsers._group_actions[0].choices["train"], config_file)  # type: ignore[union-attr]
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
        if args.command == "presets":
            return presets_command(args)
        return plugins_command(args, host)
    except RobustDistillError as err:
        if isinstance(err, PluginError) and debug:
            traceback.print_exception(err.__cause__ or err, file=sys.stderr)
        print(f"robustdistill: error: {err}", file=sys.stderr)
        if isinstance(err, PluginError) and not debug:
            print(f"robustdistill: (--debug or ${DEBUG_ENV}=1 prints the plugin's traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustdistill: interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = _default_showwarning
