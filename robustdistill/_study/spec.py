"""The study file: what a study trains (fixed options, the grid, searched options), what it selects on (a
validation metric) and what it reports (an evaluation on the test set), read once and checked with one-line
errors that name the key and the fix.

A study's trials are *slots*: each grid cell (a row × a seed × one value of every listed option) holds
``search.trials`` slots (one without a search). This module does not import torch or Optuna.
"""
from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._config import OptionTable, option_defaults, parse_int, parse_number, value_type
from .._presets import read_option_file
from .._registry import RobustDistillError

KEYS = ("name", "train", "teachers", "rows", "seeds", "grid", "search", "objective", "pruning", "evaluate",
        "controls")
RESERVED = {"plugin": "name the methods in rows", "seed": "list the seeds under seeds",
            "out": "trials write to OUT/trials/ (study --out)", "config": "put the options under train",
            "resume": "a trial always resumes its run directory"}
"""Train options a study sets itself, and what to write instead."""
EVAL_RESERVED = {"checkpoint": "each trial's run directory is evaluated",
                 "json": "the results go to NAME.json in the run directory (evaluate's name, eval by default)",
                 "attacks": "use evaluate.attacks", "subset": "use evaluate.subset"}
EPOCHS = ("last", "best")
DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "random")


@dataclass(frozen=True)
class Row:
    """One grid row: a composition of method plugins and its own train options."""

    name: str
    plugins: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Teacher:
    """A teacher the study trains once, before the trials that name it (``teacher: NAME`` in ``train``, a row's
    options or ``grid``): its plugins and its options over the study's ``train`` options (without ``teacher``)."""

    name: str
    plugins: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Searched:
    """A searched option: a float or int range, uniform or log-uniform."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class Objective:
    """What the study selects on: ``metric`` of ``metrics.jsonl`` at the last or the best epoch."""

    metric: str = "val_pgd"
    epoch: str = "last"
    direction: str = "maximize"

    @property
    def title(self) -> str:
        return f"{self.metric} ({self.epoch})"


@dataclass(frozen=True)
class Pruning:
    """Asynchronous successive halving on the objective's metric after each epoch."""

    min_epochs: int = 1
    reduction_factor: int = 3


@dataclass(frozen=True)
class Evaluation:
    """``robustdistill eval`` at the end of each trial, on the test set, into ``NAME.json``: reported, never selected
    on."""

    name: str = "eval"
    attacks: str = "clean,pgd20"
    subset: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """One grid cell: a row, a seed and a value of every listed option."""

    row: Row
    seed: int
    values: tuple[tuple[str, Any], ...]

    @property
    def key(self) -> str:
        """``rslad+igdm seed=0 lr=0.05``: the cell's name in the storage."""
        return " ".join([self.row.name, f"seed={self.seed}", *(f"{k}={v}" for k, v in self.values)])

    @property
    def group(self) -> str:
        """The cell without its seed: the table's row."""
        return " ".join([self.row.name, *(f"{k}={v}" for k, v in self.values)])


@dataclass(frozen=True)
class StudySpec:
    """A whole study as its file says (see ``docs/studies.md``)."""

    name: str
    train: dict[str, Any]
    rows: tuple[Row, ...]
    teachers: tuple[Teacher, ...] = ()
    seeds: tuple[int, ...] = (0,)
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    search: tuple[Searched, ...] = ()
    trials: int = 1
    first: tuple[dict[str, Any], ...] = ()
    sampler: str = "tpe"
    objective: Objective = Objective()
    pruning: Pruning | None = None
    evaluate: tuple[Evaluation, ...] = ()
    controls: tuple[tuple[str, str], ...] = ()

    def cells(self) -> list[Cell]:
        """Every grid cell: the listed options' values × seeds × rows, in the file's order (every row of a seed
        before the next seed, so a study stopped early holds pairs of rows at the same seed)."""
        names = [name for name, _ in self.grid]
        combos = itertools.product(*(values for _, values in self.grid))
        return [Cell(row, seed, tuple(zip(names, combo))) for combo in combos for seed in self.seeds
                for row in self.rows]

    def first_for(self, cell: Cell) -> list[dict[str, Any]]:
        """The values a cell's trials try first, in order: those of ``search.first`` for every row or for the
        cell's (``row: NAME``)."""
        return [{k: v for k, v in values.items() if k != "row"} for values in self.first
                if values.get("row") in (None, cell.row.name)]

    def slots(self) -> list[tuple[Cell, int]]:
        """Every trial of the study as (cell, index in the cell), the first values of every cell first."""
        cells = self.cells()
        return [(cell, k) for k in range(self.trials) for cell in cells]

    def cell(self, key: str) -> Cell:
        for cell in self.cells():
            if cell.key == key:
                return cell
        raise RobustDistillError(f"study {self.name}: the storage names a grid cell {key!r} the study file does not "
                                 "have; run the study with the file that made it")

    def identity(self) -> str:
        """The study as JSON, to check that a continued study is the same one."""
        return json.dumps(asdict(self), sort_keys=True, default=str)


def slot_key(cell: Cell, index: int) -> str:
    return f"{cell.key} #{index}"


# -- reading and checking ---------------------------------------------------------------------------------------

class Checker:
    """One-line errors that say where: ``study.yaml: search.options.igdm-alpha.low: ...``."""

    def __init__(self, source: str, train_table: OptionTable, eval_table: OptionTable, methods: Sequence[str]) -> None:
        self.row_names: list[str] = []
        self.source = source
        self.train_table = train_table
        self.eval_table = eval_table
        self.methods = methods

    def fail(self, key: str, problem: str) -> RobustDistillError:
        return RobustDistillError(f"{self.source}: {key}: {problem}")

    def mapping(self, key: str, value: Any, example: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a mapping (e.g. {example})")
        return {str(k).lstrip("-").replace("_", "-"): v for k, v in value.items()}

    def sequence(self, key: str, value: Any, example: str) -> list[Any]:
        if not isinstance(value, (list, tuple)) or not value:
            raise self.fail(key, f"must be a non-empty list (e.g. {example})")
        return list(value)

    def choice(self, key: str, value: Any, choices: Sequence[str]) -> str:
        if value not in choices:
            raise self.fail(key, f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    def whole(self, key: str, value: Any, least: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise self.fail(key, f"{value!r} must be a whole number of at least {least}")
        return value

    def train_options(self, key: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """Train options as an option file holds them, each checked as ``train`` would."""
        for name in values:
            if name in RESERVED:
                raise self.fail(f"{key}.{name}", f"a study sets it; {RESERVED[name]}")
        option_defaults(self.train_table, values, f"{self.source}: {key}", "train")
        return dict(values)

    def plugins(self, key: str, item: Mapping[str, Any], name: str, example: str) -> list[str]:
        """The plugins of a row or teacher ``item`` (a name, a list, or without the key ``name`` split at ``+``),
        each a known method."""
        plugins = item.get("plugins", name.split("+"))
        plugins = [plugins] if isinstance(plugins, str) else self.sequence(key, plugins, example)
        for plugin in plugins:
            if plugin not in self.methods:
                raise self.fail(key, f"unknown method {plugin!r}; known: {', '.join(self.methods)}")
        return plugins

    def rows(self, value: Any) -> tuple[Row, ...]:
        rows = []
        for i, item in enumerate(self.sequence("rows", value, "[natural, rslad+igdm]")):
            where = f"rows[{i}]"
            if isinstance(item, str):
                item = {"name": item}
            item = self.mapping(where, item, "{name: rslad+igdm, plugins: [rslad, igdm]}")
            unknown = sorted(set(item) - {"name", "plugins", "options"})
            if unknown:
                raise self.fail(f"{where}.{unknown[0]}", "unknown key; a row has name, plugins and options")
            if not isinstance(item.get("name"), str) or not item["name"] or "/" in item["name"]:
                raise self.fail(f"{where}.name", "give each row a name without / (e.g. rslad+igdm)")
            plugins = self.plugins(f"{where}.plugins", item, item["name"], "[rslad, igdm]")
            options = self.train_options(f"{where}.options", self.mapping(f"{where}.options", item.get("options"),
                                                                          "{igdm-alpha: 10}"))
            rows.append(Row(item["name"], tuple(plugins), options))
        names = [row.name for row in rows]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise self.fail("rows", f"two rows are named {duplicated[0]}; give each row its own name")
        return tuple(rows)

    def seeds(self, value: Any) -> tuple[int, ...]:
        seeds = [self.whole("seeds", seed, 0) for seed in self.sequence("seeds", value, "[0, 1, 2]")]
        if len(set(seeds)) != len(seeds):
            raise self.fail("seeds", "list each seed once")
        return tuple(seeds)

    def grid(self, value: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        grid = []
        for name, values in self.mapping("grid", value, "{lr: [0.05, 0.1]}").items():
            values = self.sequence(f"grid.{name}", values, "[0.05, 0.1]")
            for v in values:
                self.train_options("grid", {name: v})
            grid.append((name, tuple(values)))
        return tuple(grid)

    def searched(self, name: str, value: Any) -> Searched:
        where = f"search.options.{name}"
        item = self.mapping(where, value, "{low: 0.2, high: 220, log: true}")
        unknown = sorted(set(item) - {"low", "high", "log", "type"})
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}", "unknown key; a searched option has low, high, log and type")
        if name in RESERVED:
            raise self.fail(where, f"a study sets it; {RESERVED[name]}")
        if name not in self.train_table:
            raise self.fail(where, "unknown option; see `robustdistill train --help`")
        parse = value_type(self.train_table[name][1])
        kind = item.get("type", "int" if parse in (parse_int, int) else "float")
        self.choice(f"{where}.type", kind, ("float", "int"))
        integer = parse in (parse_int, int)
        if not integer and parse not in (parse_number, float) or (integer and kind == "float"):
            raise self.fail(where, "only number options can be searched; list values under grid instead")
        bounds = []
        for bound in ("low", "high"):
            number = item.get(bound)
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise self.fail(f"{where}.{bound}", f"give a number (e.g. {bound}: {0.2 if bound == 'low' else 220})")
            bounds.append(number)
        log = item.get("log", False)
        if not isinstance(log, bool):
            raise self.fail(f"{where}.log", "must be true or false")
        if not bounds[0] < bounds[1] or (log and bounds[0] <= 0):
            raise self.fail(where, "needs low < high (and low > 0 with log: true)")
        return Searched(name, float(bounds[0]), float(bounds[1]), log, kind == "int")

    def search(self, value: Any) -> tuple[tuple[Searched, ...], int, tuple[dict[str, Any], ...], str]:
        item = self.mapping("search", value, "{trials: 8, options: {igdm-alpha: {low: 0.2, high: 220, log: true}}}")
        if not item:
            return (), 1, (), "tpe"
        unknown = sorted(set(item) - {"options", "trials", "first", "sampler"})
        if unknown:
            raise self.fail(f"search.{unknown[0]}", "unknown key; search has options, trials, first and sampler")
        options = self.mapping("search.options", item.get("options"), "{igdm-alpha: {low: 0.2, high: 220}}")
        if not options:
            raise self.fail("search.options", "name at least one option to search (e.g. igdm-alpha: {low: 0.2, "
                                              "high: 220, log: true})")
        searched = tuple(self.searched(name, spec) for name, spec in options.items())
        trials = self.whole("search.trials", item.get("trials", 10), 1)
        first = []
        for i, values in enumerate(item.get("first") or []):
            values = self.mapping(f"search.first[{i}]", values, "{igdm-alpha: 10}")
            if "row" in values and values["row"] not in self.row_names:
                raise self.fail(f"search.first[{i}].row", f"{values['row']!r} is not a row; rows: "
                                + ", ".join(self.row_names))
            for name, v in values.items():
                if name == "row":
                    continue
                match = next((s for s in searched if s.name == name), None)
                if match is None:
                    raise self.fail(f"search.first[{i}].{name}", "not a searched option; name one of "
                                    + ", ".join(s.name for s in searched))
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not match.low <= v <= match.high:
                    raise self.fail(f"search.first[{i}].{name}", f"{v!r} must be a number in [{match.low:g}, "
                                    f"{match.high:g}]")
            first.append(values)
        most = max((sum(1 for f in first if f.get("row") in (None, row)) for row in self.row_names), default=0)
        if most > trials:
            raise self.fail("search.first", f"{most} first values for a row but {trials} trials per cell; raise "
                                            "search.trials")
        return searched, trials, tuple(first), self.choice("search.sampler", item.get("sampler", "tpe"), SAMPLERS)

    def objective(self, value: Any, train: Mapping[str, Any]) -> Objective:
        item = self.mapping("objective", value, "{metric: val_pgd, epoch: last}")
        unknown = sorted(set(item) - {"metric", "epoch", "direction"})
        if unknown:
            raise self.fail(f"objective.{unknown[0]}", "unknown key; objective has metric, epoch and direction")
        metric = item.get("metric", "val_pgd")
        if not isinstance(metric, str) or not metric.startswith("val_"):
            raise self.fail("objective.metric", f"{metric!r} is not a validation metric; select on the held-out "
                            "split (val_pgd, val_clean): the test set is for the evaluation at the end")
        if str(train.get("val-split", "")) == "0":
            raise self.fail("train.val-split", "0 holds nothing out, so there is no validation metric to select "
                                               "on; hold out some training images (e.g. val-split: 500)")
        return Objective(metric, self.choice("objective.epoch", item.get("epoch", "last"), EPOCHS),
                         self.choice("objective.direction", item.get("direction", "maximize"), DIRECTIONS))

    def pruning(self, value: Any) -> Pruning | None:
        if value is None or value is False:
            return None
        item = self.mapping("pruning", {} if value is True else value, "{min-epochs: 1, reduction-factor: 3}")
        unknown = sorted(set(item) - {"min-epochs", "reduction-factor"})
        if unknown:
            raise self.fail(f"pruning.{unknown[0]}", "unknown key; pruning has min-epochs and reduction-factor")
        return Pruning(self.whole("pruning.min-epochs", item.get("min-epochs", 1), 1),
                       self.whole("pruning.reduction-factor", item.get("reduction-factor", 3), 2))

    def evaluate(self, value: Any) -> tuple[Evaluation, ...]:
        if value is None or value is False:
            return ()
        items = value if isinstance(value, (list, tuple)) else [value]
        evaluations = tuple(self.evaluation("evaluate" if len(items) == 1 and not isinstance(value, (list, tuple))
                                            else f"evaluate[{i}]", item, "eval" if i == 0 else None)
                            for i, item in enumerate(items))
        names = [e.name for e in evaluations]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise self.fail("evaluate", f"two evaluations are named {duplicated[0]}; each writes NAME.json, so give "
                                        "each its own name")
        return evaluations

    def evaluation(self, where: str, value: Any, default_name: str | None) -> Evaluation:
        item = self.mapping(where, value, "{attacks: clean,pgd20, subset: 1000}")
        unknown = sorted(set(item) - {"name", "attacks", "subset", "options"})
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}", "unknown key; an evaluation has name, attacks, subset and options")
        name = item.get("name", default_name)
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise self.fail(f"{where}.name", "give each evaluation after the first a file name without / (e.g. "
                                             "name: aa1000)")
        attacks = item.get("attacks", "clean,pgd20")
        attacks = ",".join(attacks) if isinstance(attacks, list) else attacks
        if not isinstance(attacks, str) or not attacks.strip(","):
            raise self.fail(f"{where}.attacks", "name the attacks (e.g. clean,pgd20,autoattack)")
        subset = item.get("subset")
        if subset is not None:
            self.whole(f"{where}.subset", subset, 1)
        options = self.mapping(f"{where}.options", item.get("options"), "{pgd-steps: 20}")
        for option in options:
            if option in EVAL_RESERVED:
                raise self.fail(f"{where}.options.{option}", f"a study sets it; {EVAL_RESERVED[option]}")
        option_defaults(self.eval_table, options, f"{self.source}: {where}.options", "eval")
        return Evaluation(name, attacks, subset, options)

    def teachers(self, value: Any) -> tuple[Teacher, ...]:
        teachers = []
        for name, item in self.mapping("teachers", value, "{teacher-at: {plugins: [at], options: {epochs: 30}}}"
                                       ).items():
            where = f"teachers.{name}"
            if not name or "/" in name:
                raise self.fail(where, "give each teacher a name without / (e.g. teacher-at)")
            item = self.mapping(where, item, "{plugins: [at], options: {epochs: 30}}")
            unknown = sorted(set(item) - {"plugins", "options"})
            if unknown:
                raise self.fail(f"{where}.{unknown[0]}", "unknown key; a teacher has plugins and options")
            plugins = self.plugins(f"{where}.plugins", item, name, "[at]")
            options = self.mapping(f"{where}.options", item.get("options"), "{epochs: 30, model: resnet18}")
            if "teacher" in options:
                raise self.fail(f"{where}.options.teacher", "a study's teacher trains without a teacher; train it "
                                "first and name its run directory as the teacher instead")
            for option in RESERVED.keys() - {"seed"}:
                if option in options:
                    raise self.fail(f"{where}.options.{option}", f"a study sets it; {RESERVED[option]}")
            option_defaults(self.train_table, options, f"{self.source}: {where}.options", "train")
            teachers.append(Teacher(str(name), tuple(plugins), dict(options)))
        return tuple(teachers)

    def controls(self, value: Any, rows: Sequence[Row]) -> tuple[tuple[str, str], ...]:
        names = [row.name for row in rows]
        pairs = []
        for treatment, control in self.mapping("controls", value, "{rslad+igdm: rslad}").items():
            for name in (treatment, control):
                if name not in names:
                    raise self.fail(f"controls.{treatment}", f"{name!r} is not a row; rows: {', '.join(names)}")
            pairs.append((str(treatment), str(control)))
        return tuple(pairs)


def build_spec(values: Mapping[str, Any], source: str, default_name: str, train_table: OptionTable,
               eval_table: OptionTable, methods: Sequence[str]) -> StudySpec:
    """The :class:`StudySpec` of a study file's mapping (``source`` names it in errors)."""
    check = Checker(source, train_table, eval_table, methods)
    values = check.mapping("study", values, "train: {...}, rows: [...]")
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise check.fail(unknown[0], f"unknown key; a study file has {', '.join(KEYS)}")
    if "rows" not in values:
        raise check.fail("rows", "missing; list the methods to train (e.g. rows: [natural, rslad+igdm])")
    name = values.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise check.fail("name", "give the study a name (e.g. name: igdm-alpha)")
    train = check.train_options("train", check.mapping("train", values.get("train"), "{dataset: cifar10}"))
    rows = check.rows(values["rows"])
    check.row_names = [row.name for row in rows]
    teachers = check.teachers(values.get("teachers"))
    searched, trials, first, sampler = check.search(values.get("search"))
    grid = check.grid(values.get("grid"))
    clash = sorted({s.name for s in searched} & {name for name, _ in grid})
    if clash:
        raise check.fail(f"search.options.{clash[0]}", "is also listed under grid; search it or list it, not both")
    return StudySpec(name=name, train=train, rows=rows, teachers=teachers, seeds=check.seeds(values.get("seeds", [0])),
                     grid=grid, search=searched, trials=trials, first=first, sampler=sampler,
                     objective=check.objective(values.get("objective"), train), pruning=check.pruning(values.get(
                         "pruning")), evaluate=check.evaluate(values.get("evaluate")),
                     controls=check.controls(values.get("controls"), rows))


def read_study_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a study file (one-line errors for a missing file or bad YAML)."""
    return read_option_file(path, f"study file {path}")


def pairs(items: Sequence[str], flag: str, example: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` command-line items as pairs; a one-line error naming ``flag`` otherwise."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise RobustDistillError(f"{flag} {item!r} is not KEY=VALUE (e.g. {flag} {example})")
        out.append((key.lstrip("-"), value))
    return out


def search_range(text: str) -> dict[str, Any]:
    """``0.2:220:log`` (and ``:int``) as a searched option of a study file."""
    parts = text.split(":")
    try:
        item: dict[str, Any] = {"low": parse_number(parts[0]), "high": parse_number(parts[1])}
    except (IndexError, argparse.ArgumentTypeError):
        raise RobustDistillError(f"--search {text!r} is not LOW:HIGH[:log][:int] (e.g. --search "
                                 "igdm-alpha=0.2:220:log)") from None
    for flag in parts[2:]:
        if flag not in ("log", "int"):
            raise RobustDistillError(f"--search {text!r}: {flag!r} is neither log nor int")
        item["log" if flag == "log" else "type"] = True if flag == "log" else "int"
    return item
