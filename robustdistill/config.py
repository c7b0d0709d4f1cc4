"""Option parsing helpers shared by the commands."""
from __future__ import annotations

import argparse
import math
from fractions import Fraction

import torch

from .ops import BACKEND_ENV, BACKENDS
from .registry import RobustDistillError


def parse_number(text: str) -> float:
    """Parse ``0.0314``, ``8/255`` or ``1e-3`` into a float."""
    try:
        if "/" in text:
            num, den = text.split("/")
            value = float(Fraction(num.strip()) / Fraction(den.strip()))
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (examples: 0.1, 8/255)") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RobustDistillError(f"--device {name} was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise RobustDistillError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def add_fold_bn_argument(parser: argparse._ActionsContainer, what: str) -> None:
    """Add ``--fold-bn on|off`` (see :mod:`robustdistill.folding`)."""
    parser.add_argument("--fold-bn", default="on", choices=("on", "off"),
                        help=f"fold eval-mode BatchNorm into the preceding convolutions of {what} "
                             "(the same function, less memory traffic) (default: %(default)s)")


def add_ops_backend_argument(parser: argparse._ActionsContainer) -> None:
    """Add ``--ops-backend`` (the choice of :func:`robustdistill.ops.set_backend`)."""
    parser.add_argument("--ops-backend", default=None, choices=BACKENDS,
                        help="fused kernels for the PGD step and IGDM's loss: auto (when built for the device), "
                             f"ext (require them), ref (pure PyTorch) (default: ${BACKEND_ENV} or auto)")
