"""The command line of every ``robustdistill`` command, and nothing else: building it imports no torch, so
``--help`` answers at once."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, NoReturn, Sequence

from . import __version__
from ._catalog import Catalog
from ._command_config import EvalConfig, FinetuneConfig, ReportConfig, StudyConfig
from ._config import REPLACED_OPTIONS, RunConfig, add_config_arguments, add_run_arguments, option_table
from ._presets import add_presets_arguments
from ._registry import RobustDistillError

DEBUG_ENV = "ROBUSTDISTILL_DEBUG"


class Parser(argparse.ArgumentParser):
    """Parse errors as one line and a pointer to ``--help``, not the whole usage block. ``commands`` holds the
    parsers of the subcommands by name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        raise RobustDistillError(f"{message} (see `{self.prog} --help`)")


HELP = ("-h", "--help")


@dataclass(frozen=True)
class PreParsed:
    """What is read of a command line before its parser exists: the subcommand, whether help is asked for,
    ``--debug``, and the option files (``--preset``, ``--config``) whose values become the parser's defaults.
    ``argv`` is the command line without ``--debug`` (accepted anywhere)."""

    argv: list[str]
    command: str | None
    help: bool
    debug: bool
    preset: str | None
    config: str | None


def pre_parse(argv: Sequence[str]) -> PreParsed:
    """The one look at ``argv`` before parsing (see :class:`PreParsed`)."""
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    rest = argv[argv.index(command) + 1:] if command is not None else []
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(rest)
    return PreParsed(argv, command, any(arg in HELP for arg in argv), debug, known.preset,
                     known.config if command == "train" else None)


class Replaced(argparse.Action):
    """An option that no longer exists: using it says what replaced it (on the command line; option files are
    checked against the same :data:`~robustdistill._config.REPLACED_OPTIONS`)."""

    def __init__(self, option_strings: list[str], dest: str, replaced_by: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.replaced_by = replaced_by

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        raise RobustDistillError(f"{option_string} was replaced: {self.replaced_by}")


def add_train_arguments(parser: argparse.ArgumentParser, catalog: Catalog) -> None:
    """Add the options of ``robustdistill train``: the core ones and those of the plugins in ``catalog``."""
    add_run_arguments(parser, catalog.options, catalog.known())
    for name, replaced_by in REPLACED_OPTIONS["train"].items():
        parser.add_argument(f"--{name}", action=Replaced, replaced_by=replaced_by, dest=f"replaced:{name}")
    g = parser.add_argument_group("this command")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt (a run "
                   "directory without one starts anew, so the same command relaunches a preempted job)")
    g.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="options from a YAML file (keys are option names); the command line overrides it")


COMMAND_CONFIGS = {"eval": EvalConfig, "report": ReportConfig, "finetune-head": FinetuneConfig, "study": StudyConfig}
"""The typed configurations of the commands other than ``train`` (whose configuration is :class:`RunConfig`)."""


def command_options(command: str, catalog: Catalog) -> dict[str, Any]:
    """The option table of a command, for the option files: ``train``'s with the plugins' options."""
    if command == "train":
        return option_table(RunConfig, catalog.options)
    return option_table(COMMAND_CONFIGS[command])


def build_parser(catalog: Catalog) -> Parser:
    """The whole command line; ``train``'s plugin options are those of ``catalog``."""
    parser = Parser(prog="robustdistill",
                    description="Transfer adversarial robustness from a robust teacher to a student.")
    parser.add_argument("--version", action="version", version=f"robustdistill {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback of plugin errors (also ${DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser.commands[name] = sub.add_parser(name, **kwargs)
        return parser.commands[name]

    train = command("train", help="train a model with one or more method plugins",
                    usage="robustdistill train [--plugin NAME ...] [options]")
    add_train_arguments(train, catalog)
    add_config_arguments(command("eval", help="evaluate a checkpoint under attacks"), EvalConfig)
    add_config_arguments(command("finetune-head", help="finetune a new linear head on a frozen teacher's features for "
                                 "another label set (cross-task transfer)"), FinetuneConfig)
    add_config_arguments(command("report", help="figures (curves, robust accuracy vs ε, input-gradient maps) and a "
                                 "results table for run directories"), ReportConfig)
    add_config_arguments(command("study", help="grids, seeds and searches of train commands on an Optuna storage, "
                                 "run by workers on one machine or many (pip install 'robustdistill[study]')"),
                         StudyConfig)
    doctor = command("doctor", help="show torch, CUDA, compiler and fused-kernel status, and which backend each op "
                                    "uses")
    doctor.add_argument("--json", action="store_true", help="print the backend report as JSON")
    add_presets_arguments(command("presets", help="list the presets of the papers' training and evaluation protocols "
                                  "(train/eval --preset NAME) and their sources"))
    plugins = command("plugins", help="list the loaded plugins, their versions and hooks")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    return parser
