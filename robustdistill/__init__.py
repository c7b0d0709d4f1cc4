"""robustdistill: transfer adversarial robustness from a robust teacher to a student.

Plugins implement the hooks of :mod:`robustdistill.hookspecs` with :data:`hookimpl`.
"""
from .hookspecs import hookimpl
from .registry import DatasetEntry, EvalAttack, Method, ModelArch, ModelEntry, Option, RobustDistillError
from .step import LossTerm, StepContext, TeacherOutput

__version__ = "0.1.0"

__all__ = [
    "hookimpl", "DatasetEntry", "EvalAttack", "Method", "ModelArch", "ModelEntry", "Option",
    "RobustDistillError", "LossTerm", "StepContext", "TeacherOutput", "__version__",
]
