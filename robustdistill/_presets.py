"""Presets: the training and evaluation protocols of the papers, as YAML files in ``robustdistill/presets/``.

A preset file is an option file of the kind ``train --config FILE.yaml`` reads, with a ``train`` and an ``eval``
section and three lines that say what it is (``summary``, ``source``, ``notes``). ``robustdistill train --preset
NAME`` and ``robustdistill eval --preset NAME`` take the section of their command as the parser's defaults,
exactly as ``--config`` does (a ``--config`` file and the command line override a preset; a ``--plugin`` on the
command line replaces the preset's methods). ``robustdistill presets`` lists them with their sources. Option
names are the flags without ``--``; values are what the command line accepts. Each preset sets what its paper
(or official script) reports and says in ``notes`` what it cannot set (a teacher checkpoint that is not on
RobustBench, an optimiser robustdistill does not have).

This module does not import torch, so that ``--help`` starts at once.
"""
from __future__ import annotations

import argparse
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ._config import OptionTable, option_defaults
from ._registry import RobustDistillError

PRESET_DIR = Path(__file__).parent / "presets"
SECTIONS = ("train", "eval")
DESCRIPTION = ("summary", "source", "notes")


@dataclass(frozen=True)
class Preset:
    """One paper protocol: ``train`` and ``eval`` map option names to values."""

    name: str
    summary: str
    source: str
    train: Mapping[str, Any] = field(default_factory=dict)
    eval: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "source": self.source, "train": dict(self.train),
                "eval": dict(self.eval), "notes": self.notes}


def read_option_file(path: str | Path, what: str) -> dict[str, Any]:
    """The YAML mapping in ``path``; ``what`` names it in errors (``--config FILE``, ``preset NAME``)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except OSError as err:
        raise RobustDistillError(f"cannot read {what}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise RobustDistillError(f"{what} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(values, dict):
        raise RobustDistillError(f"{what} must be a mapping of option names to values")
    return values


def section(values: Mapping[str, Any], command: str, what: str) -> dict[str, Any]:
    """The options of ``command`` in an option file: its ``train``/``eval`` section when the file has sections (a
    preset), else the whole flat mapping (for ``train``)."""
    if not any(key in values for key in SECTIONS):
        return dict(values)
    unknown = sorted(set(values) - set(SECTIONS) - set(DESCRIPTION))
    if unknown:
        raise RobustDistillError(f"{what}: unknown key(s) {', '.join(map(str, unknown))} beside the sections; a file "
                                 f"with sections holds {', '.join(SECTIONS)} and {', '.join(DESCRIPTION)}")
    chosen = values.get(command) or {}
    if not isinstance(chosen, dict):
        raise RobustDistillError(f"{what}: the {command} section must be a mapping of option names to values")
    return dict(chosen)


def _load(path: Path) -> Preset:
    what = f"preset {path.stem} ({path})"
    values = read_option_file(path, what)
    missing = [key for key in ("summary", "source", *SECTIONS) if key not in values]
    if missing:
        raise RobustDistillError(f"{what} lacks {', '.join(missing)}")
    return Preset(path.stem, str(values["summary"]), str(values["source"]),
                  MappingProxyType(section(values, "train", what)), MappingProxyType(section(values, "eval", what)),
                  str(values.get("notes", "")))


@functools.cache
def presets() -> Mapping[str, Preset]:
    """Every preset shipped in ``robustdistill/presets``, by name."""
    return MappingProxyType({p.name: p for p in map(_load, sorted(PRESET_DIR.glob("*.yaml")))})


def preset(name: str) -> Preset:
    """The preset ``name``; a clear error naming the known ones otherwise."""
    try:
        return presets()[name]
    except KeyError:
        raise RobustDistillError(f"unknown preset {name!r}; `robustdistill presets` lists them "
                                 f"({', '.join(presets())})") from None


# -- the command line ---------------------------------------------------------------------------------------

def apply_option_files(subparser: argparse.ArgumentParser, command: str, table: OptionTable, preset_name: str | None,
                       config_file: str | None) -> None:
    """The defaults of ``command`` (whose options are ``table``) from ``--preset NAME``, then from ``--config FILE``
    (which wins over the preset); the command line wins over both (a repeated option given there, such as
    ``--plugin`` or ``--teacher``, replaces the files' values)."""
    if preset_name is not None:
        chosen = preset(preset_name)
        values = dict(chosen.train if command == "train" else chosen.eval)
        subparser.set_defaults(**option_defaults(table, values, f"--preset {chosen.name}", command))
    if config_file is not None:
        what = f"--config {config_file}"
        values = section(read_option_file(config_file, what), command, what)
        subparser.set_defaults(**option_defaults(table, values, what, command))


def add_presets_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", default=None, help="show this preset's options")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _command_line(options: Mapping[str, Any]) -> str:
    parts = []
    for key, value in options.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is True:
                parts.append(f"--{key}")
            elif v is False:
                parts.append(f"--no-{key}")
            else:
                parts.append(f"--{key} {v}")
    return " ".join(parts)


def presets_command(args: argparse.Namespace) -> int:
    """``robustdistill presets [NAME] [--json]``."""
    chosen = [preset(args.name)] if args.name else list(presets().values())
    if args.json:
        print(json.dumps([p.to_dict() for p in chosen], indent=2))
        return 0
    if args.name:
        p = chosen[0]
        print(f"{p.name}: {p.summary}\nsource: {p.source}\nfile: {PRESET_DIR / (p.name + '.yaml')}")
        print(f"train: {_command_line(p.train)}")
        print(f"eval:  {_command_line(p.eval)}")
        if p.notes:
            print(f"notes: {p.notes}")
        return 0
    width = max(len(p.name) for p in chosen)
    for p in chosen:
        print(f"{p.name:<{width}}  {p.summary}\n{'':<{width}}  source: {p.source}")
    print(f"\n`robustdistill presets NAME` shows a preset's options; use it with `train --preset NAME` and "
          f"`eval CKPT --preset NAME` (options given on the command line win). The files are in {PRESET_DIR}; "
          "`train --config FILE.yaml` reads one of your own in the same format")
    return 0
