"""``robustdistill`` command line: train, eval, finetune-head, report, plugins, doctor.

Help needs no plugins (``train --help`` takes the plugins' options from the catalog the last command that
loaded them wrote), so ``--help`` does not import torch; every other command loads the plugins.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from typing import TYPE_CHECKING, Any, Sequence

from . import _catalog as catalog
from ._arguments import COMMAND_CONFIGS, DEBUG_ENV, PreParsed, build_parser, command_options, pre_parse
from ._config import config_from_args, config_from_namespace
from ._presets import apply_option_files, presets_command
from ._registry import RobustDistillError

if TYPE_CHECKING:
    from ._manager import PluginHost

def plugins_command(args: argparse.Namespace, host: "PluginHost") -> int:
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
    from ._doctor import backend_report, doctor_lines

    print(json.dumps(backend_report(), indent=2) if args.json else "\n".join(doctor_lines()))
    return 0


def train_command(args: argparse.Namespace, host: "PluginHost") -> int:
    from ._loop import train

    train(config_from_args(args, host.registry.options), host, resume=args.resume)
    return 0


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    from ._manager import PluginWarning

    if issubclass(category, PluginWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def _catalog_without_plugins(pre: PreParsed) -> catalog.Catalog | None:
    """For ``--help`` and ``presets``, which need no plugins: no plugin options at all unless ``train``'s help is
    asked for, then the cached catalog (``None`` when there is none yet, or for any other command)."""
    if pre.command == "presets":
        return catalog.Catalog()
    if not pre.help:
        return None
    return catalog.cached() if pre.command == "train" else catalog.Catalog()


def main(argv: Sequence[str] | None = None) -> int:
    pre = pre_parse(list(sys.argv[1:] if argv is None else argv))
    debug = pre.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    warnings.showwarning = _show_warning
    try:
        known = _catalog_without_plugins(pre)
        host = None
        if known is None:
            from ._manager import load_plugins

            host = load_plugins()
            catalog.remember(host)
            known = catalog.Catalog.of(host)
        parser = build_parser(known)
        if pre.command in ("train", "eval") and (pre.preset or pre.config):
            apply_option_files(parser.commands[pre.command], pre.command, command_options(pre.command, known),
                               pre.preset, pre.config)
        args = parser.parse_args(pre.argv)
        if args.command == "presets":
            return presets_command(args)
        assert host is not None  # help exited in parse_args
        if args.command == "train":
            return train_command(args, host)
        if args.command in COMMAND_CONFIGS:
            config = config_from_namespace(COMMAND_CONFIGS[args.command], args)
            if args.command == "eval":
                from ._eval.command import eval_command
                return eval_command(config, host.registry)
            if args.command == "finetune-head":
                from ._finetune import finetune_command
                return finetune_command(config, host.registry)
            if args.command == "study":
                from ._study.command import study_command
                return study_command(config, host.registry)
            from ._report.command import report_command
            return report_command(config, host.registry)
        if args.command == "doctor":
            return doctor_command(args)
        return plugins_command(args, host)
    except RobustDistillError as err:
        from ._manager import PluginError

        if isinstance(err, PluginError) and debug:
            traceback.print_exception(err.__cause__ or err, file=sys.stderr)
        print(f"robustdistill: error: {err}", file=sys.stderr)
        if isinstance(err, PluginError) and not debug:
            print(f"robustdistill: (--debug or ${DEBUG_ENV}=1 prints the plugin's traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"robustdistill: {err or 'interrupted; the last checkpoint is kept (continue with --resume)'}",
              file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = _default_showwarning
