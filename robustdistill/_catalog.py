"""What the installed plugins register, remembered between commands so that ``train --help`` starts at once.

Importing the plugins means importing torch (seconds). Their registrations — methods, options, models,
datasets, attacks — change only when the installed packages or robustdistill's own sources change, so every
command that loads the plugins writes them to ``~/.cache/robustdistill/_catalog-KEY.json``, KEY being a digest of
the installed distributions and versions, robustdistill's source files (name, size, modification time), the
Python version and the plugin environment variables. Help is drawn from a catalog with the current KEY and
never from a stale one; everything else loads the plugins.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._registry import Option

if TYPE_CHECKING:
    from ._manager import PluginHost

CACHE_ENV = "ROBUSTDISTILL_CACHE"
PLUGIN_ENVS = ("ROBUSTDISTILL_DISABLE_PLUGIN_AUTOLOAD", "ROBUSTDISTILL_BLOCK_PLUGINS")


@dataclass
class Catalog:
    """The registrations the command line shows: option declarations per plugin, and the names users choose from."""

    options: dict[str, list[Option]] = field(default_factory=dict)
    methods: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, host: "PluginHost") -> "Catalog":
        reg = host.registry
        return cls({plugin: list(options) for plugin, options in reg.options.items()}, sorted(reg.methods),
                   sorted(reg.datasets), [entry.name for entry in reg.models])

    def known(self) -> dict[str, str]:
        """The names ``--plugin``, ``--dataset`` and ``--model`` take, for their help."""
        return {"plugin": ", ".join(self.methods), "dataset": ", ".join(self.datasets),
                "model": ", ".join(self.models)}

    def to_json(self) -> str:
        def option(o: Option) -> dict[str, Any]:
            # the parser's value type is not needed to show help; flags stay flags without it
            return {**{k: v for k, v in asdict(o).items() if k != "type"}, "typed": o.type is not None}
        return json.dumps({"options": {p: [option(o) for o in opts] for p, opts in self.options.items()},
                           "methods": self.methods, "datasets": self.datasets, "models": self.models})

    @classmethod
    def from_json(cls, text: str) -> "Catalog":
        data = json.loads(text)

        def option(d: dict[str, Any]) -> Option:
            typed = d.pop("typed")
            choices = tuple(d.pop("choices")) if d.get("choices") is not None else d.pop("choices")
            return Option(**d, choices=choices, type=str if typed else None)
        return cls({p: [option(o) for o in opts] for p, opts in data["options"].items()}, data["methods"],
                   data["datasets"], data["models"])


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "robustdistill")


def _key() -> str:
    digest = hashlib.sha256()
    digest.update(sys.version.encode())
    for name in PLUGIN_ENVS:
        digest.update(f"{name}={os.environ.get(name, '')}".encode())
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())
    digest.update("\n".join(dists).encode())
    package = Path(__file__).parent
    for folder in (package, package.parent / "plugins", package / "plugins"):
        if folder.is_dir():
            for path in sorted(folder.glob("*.py")):
                stat = path.stat()
                digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _path() -> Path:
    return cache_dir() / f"catalog-{_key()}.json"


def cached() -> Catalog | None:
    """The catalog of the current installation, if a command has written it."""
    try:
        return Catalog.from_json(_path().read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember(host: "PluginHost") -> None:
    """Write the catalog of ``host`` (best effort: an unwritable cache only costs speed)."""
    from ._checkpoint import atomic_write_text

    path = _path()
    try:
        atomic_write_text(path, Catalog.of(host).to_json())
        for stale in path.parent.glob("catalog-*.json"):
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError:
        pass
