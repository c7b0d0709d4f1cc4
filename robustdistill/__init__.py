"""robustdistill: transfer adversarial robustness from a robust teacher to a student.

Plugins implement the hooks of :mod:`robustdistill.hookspecs` with :data:`hookimpl`; everything they may use is
in :mod:`robustdistill.api`, whose main types are re-exported here. Names other than ``hookimpl`` are imported
on first use, so that importing the package (and ``robustdistill --help``) does not load torch.
"""
from typing import Any

from ._markers import hookimpl

__version__ = "0.1.0"

_API = ("API_VERSION", "RunView", "StepContext", "LossTerm", "TeacherOutput", "AttackIterate", "RunConfig",
        "PluginOptions", "Method", "Option", "ModelEntry", "ModelArch", "DatasetEntry", "DatasetInfo", "ImageData",
        "Attack", "EvalAttack", "Composition", "Default", "AttackSpec", "RobustDistillError")

__all__ = ["hookimpl", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'robustdistill' has no attribute {name!r}")
