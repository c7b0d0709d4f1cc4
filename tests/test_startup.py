"""Commands start at once: help imports no torch; train's help takes plugin options from the catalog that the
last command loading the plugins wrote, never from a stale one."""
import json
import os
import subprocess
import sys

import pytest

from robustdistill import _catalog as catalog
from robustdistill._manager import DISABLE_AUTOLOAD_ENV, load_plugins

HELP_WITHOUT_TORCH = """
import sys
from robustdistill._cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("torch loaded" if "torch" in sys.modules else "no torch")
"""


def run_help(tmp_path, *args):
    env = {**os.environ, catalog.CACHE_ENV: str(tmp_path / "cache"), DISABLE_AUTOLOAD_ENV: "1"}
    result = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TORCH, *args], env=env, capture_output=True,
                            text=True, timeout=300)
    return result.stdout


@pytest.mark.parametrize("command", [[], ["eval"], ["report"], ["finetune-head"], ["study"], ["presets"], ["doctor"],
                                     ["plugins"]])
def test_help_of_every_command_imports_no_torch(tmp_path, command):
    out = run_help(tmp_path, *command, "--help")
    assert out.strip().endswith("no torch") and "usage: robustdistill" in out


def test_train_help_uses_the_catalog_the_last_plugin_loading_command_wrote(tmp_path):
    first = run_help(tmp_path, "train", "--help")
    assert first.strip().endswith("torch loaded"), "no catalog yet: the plugins are loaded"
    assert list((tmp_path / "cache").glob("catalog-*.json")), "and their catalog written"
    second = run_help(tmp_path, "train", "--help")
    assert second.strip().endswith("no torch")
    assert second.replace("no torch", "") == first.replace("torch loaded", ""), "the same help, from the catalog"
    assert "--igdm-clip-minus, --no-igdm-clip-minus" in second and "plugin trades:" in second


def test_a_catalog_of_another_installation_is_never_used(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path))
    host = load_plugins(autoload=False)
    catalog.remember(host)
    assert catalog.cached() is not None
    restored = catalog.cached()
    assert restored.options["igdm"] == [o if o.type is None else type(o)(**{**o.__dict__, "type": str})
                                        for o in host.registry.options["igdm"]]
    assert restored.methods == sorted(host.registry.methods)
    monkeypatch.setenv("ROBUSTDISTILL_BLOCK_PLUGINS", "igdm")  # another set of plugins: another key
    assert catalog.cached() is None
    monkeypatch.delenv("ROBUSTDISTILL_BLOCK_PLUGINS")
    path = next(tmp_path.glob("catalog-*.json"))
    path.write_text(json.dumps({"options": {}}))  # a damaged file is no catalog
    assert catalog.cached() is None
