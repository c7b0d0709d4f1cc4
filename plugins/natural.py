"""Natural (standard) training: cross-entropy on clean inputs. No attack."""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from robustdistill import hookimpl
from robustdistill.api import LossTerm, Method, StepContext


@hookimpl
def register_methods(register: Callable) -> None:
    register(Method(name="natural", summary="standard training: CE(f(x), y) on clean inputs"))


@hookimpl
def student_inputs(ctx: StepContext) -> dict[str, Tensor]:
    return {"clean": ctx.x}


@hookimpl
def loss(ctx: StepContext) -> LossTerm:
    clean = ctx.student_out("clean")
    return LossTerm("ce", F.cross_entropy(clean, ctx.y),
                    per_sample=lambda: F.cross_entropy(clean, ctx.y, reduction="none"))
