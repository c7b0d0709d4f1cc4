"""robustdistill: transfer adversarial robustness from a robust teacher to a student.

Plugins implement the hooks of :mod:`robustdistill.hookspecs` with :data:`hookimpl`; what hooks see is
defined in :mod:`robustdistill.api` and re-exported here. Names other than ``hookimpl`` are imported on
first use, so that importing the package (and ``robustdistill --help``) does not load torch.
"""
from typing import Any

from ._markers import hookimpl

__version__ = "0.1.0"

_API = ("RunView", "StepContext", "LossTerm", "TeacherOutput", "RunConfig", "PluginOptions", "Method", "Option",
        "ModelEntry", "ModelArch", "DatasetEntry", "DatasetInfo", "ImageData", "Attack", "EvalAttack", "AttackSpec",
        "RobustDistillError")

__all__ = ["hookimpl", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'robustdistill' has no attribute {name!r}")
