"""Presets of the papers' protocols, and the README's tables of defaults checked against the plugins."""
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from robustdistill._arguments import build_parser
from robustdistill._catalog import Catalog
from robustdistill._cli import main
from robustdistill._config import config_from_args
from robustdistill._data import DATASET_INFOS
from robustdistill.plugins.igdm import ALPHA
from robustdistill._arguments import command_options, pre_parse
from robustdistill._presets import apply_option_files, preset, presets

PRESETS = presets()
IGDM_BASES = ("at", "trades", "ard", "rslad", "adaad")
from robustdistill.testing import plugin_host, resolved_config, train_config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.fixture(scope="module")
def host():
    return plugin_host()


def with_preset(host, *argv):
    parser = build_parser(Catalog.of(host))
    pre = pre_parse(argv)
    apply_option_files(parser.commands[pre.command], pre.command, command_options(pre.command, Catalog.of(host)),
                       pre.preset, pre.config)
    return parser.parse_args(argv)


def written_out(options):
    """A preset's options as command-line arguments."""
    args = []
    for key, value in options.items():
        for v in value if isinstance(value, list) else [value]:
            args += [f"--{key}"] if v is True else [f"--no-{key}"] if v is False else [f"--{key}", str(v)]
    return args


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_is_its_options_written_out_for_train_and_eval(host, name):
    chosen = preset(name)
    config = config_from_args(with_preset(host, "train", "--preset", name), host.registry.options)
    expected = train_config(host, *written_out(chosen.train), "--preset", name)
    assert config == expected
    assert config.preset == name and config.plugin == tuple(chosen.train["plugin"])
    evaluation = with_preset(host, "eval", "run/last.pt", "--preset", name)
    assert vars(evaluation) == vars(build_parser(Catalog.of(host)).parse_args(["eval", "run/last.pt", *written_out(chosen.eval),
                                                                   "--preset", name]))


def test_the_command_line_overrides_a_preset(host):
    args = with_preset(host, "train", "--preset", "igdm-ard-cifar10", "--epochs", "3", "--plugin", "rslad",
                       "--plugin=igdm", "--igdm-alpha", "2")
    config = config_from_args(args, host.registry.options)
    assert (config.epochs, config.plugin, config.igdm.alpha) == (3, ("rslad", "igdm"), 2.0)
    assert config.weight_decay == 5e-4 and config.milestones == (100, 150), "the rest of the preset stays"
    teachers = with_preset(host, "train", "--preset", "igdm-ard-cifar10", "--teacher", "runs/mine")
    assert list(config_from_args(teachers, host.registry.options).teacher) == ["runs/mine"], \
        "a repeated option on the command line replaces the preset's values, it does not add to them"
    evaluation = with_preset(host, "eval", "x.pt", "--preset", "igdm-at-cifar10", "--cw-restarts", "2")
    assert (evaluation.cw_steps, evaluation.cw_restarts, evaluation.autoattack_version) == (50, 2, "standard")


def test_an_unknown_preset_is_one_error_line(capsys):
    assert main(["train", "--preset", "igdm-cifar10"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'igdm-cifar10'" in err and "igdm-rslad-cifar10" in err and "Traceback" not in err


def test_presets_lists_every_preset_with_its_source(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for p in PRESETS.values():
        assert p.name in out and p.source in out
    assert main(["presets", "igdm-adaad-cifar100", "--json"]) == 0
    (shown,) = json.loads(capsys.readouterr().out)
    assert shown["train"]["igdm-alpha"] == 15 and shown["eval"]["cw-restarts"] == 10


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "svhn"])
def test_igdm_presets_agree_with_the_plugins_alpha_table(host, dataset):
    info, table = DATASET_INFOS[dataset], ALPHA[dataset]
    for base in IGDM_BASES:
        chosen = preset(f"igdm-{base}-{dataset}")
        assert chosen.train["igdm-alpha"] == table[base]
        defaults = resolved_config(host, [base, "igdm"], info)
        assert defaults.igdm.alpha == chosen.train["igdm-alpha"]


# -- the README's tables ------------------------------------------------------------------------------------

def section(title: str) -> str:
    start = README.index(title)
    following = re.search(r"\n## ", README[start + len(title):])
    return README[start:start + len(title) + (following.start() if following else len(README))]


def table_rows(text: str, header: str) -> list[list[str]]:
    lines = text[text.index(header):].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def flag_args(cell: str) -> list[str]:
    args = []
    for span in re.findall(r"`(--[^`]+)`", cell):
        args += span.split(" ", 1)
    return args


def test_readme_method_defaults_are_the_plugins_defaults(host):
    methods = section("## Methods")
    listed = set()
    for header in ("| plugin | method | attack (on the student) | loss | defaults (official code) |",
                   "| plugin | method | loss | defaults (official code) |"):
        for row in table_rows(methods, header):
            plugin, args = row[0].strip("`"), flag_args(row[-1])
            listed.add(plugin)
            if not args:
                continue
            owner = host.registry.method_plugin[plugin]
            stated, actual = train_config(host, *args), train_config(host)
            assert stated.options_of(owner) == actual.options_of(owner), f"README's defaults of {plugin}: {args}"
    assert listed == set(host.registry.methods), "every built-in method has its row"


def test_readme_defaults_per_composition_are_what_runs_resolve(host):
    rows = table_rows(section("### Defaults per composition and dataset"),
                      "| `--plugin` | classes | resolved defaults | as the code of |")
    assert len(rows) == 16
    flags = set()
    for plugins, classes, cell, _ in rows:
        methods = plugins.strip("`").split()
        info = replace(DATASET_INFOS["synthetic"], num_classes=int(classes))
        args = flag_args(cell)
        flags |= set(args[::2])
        stated = resolved_config(host, methods, info, train_config(host, *args))
        actual = resolved_config(host, methods, info)
        assert stated == actual, f"README: {plugins} on {classes} classes resolves {args}"
    assert flags == {"--ard-tau", "--ard-kl-reduction", "--ard-attack-bn", "--rslad-scale", "--adaad-reduction",
                     "--igdm-alpha"}


def test_readme_lists_every_preset_with_its_source():
    rows = table_rows(section("## Papers' protocols: presets"), "| preset | protocol | source |")
    assert sorted((name.strip("`"), summary, source) for name, summary, source in rows) == \
        sorted((p.name, p.summary, p.source) for p in PRESETS.values())
