"""What an evaluation runs with: the threat model and the attacks' budgets."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .. import _attacks as attacks
from .._config import AUTOATTACK_VERSIONS, NORMS
from .._registry import RobustDistillError

AUTOATTACK_MISSING = ("autoattack needs the pyautoattack package: pip install 'robustdistill[autoattack]' "
                      "(or pip install pyautoattack)")
APGD_ATTACKS = ("apgd-ce", "apgd-t")
"""The first two stages of standard AutoAttack, run on their own as the attack ``apgd-ce+apgd-t``."""
AUTOATTACK_SEED = 0
"""Seed handed to AutoAttack so that its random starts, and so its result, are reproducible."""

RESULT_METADATA_KEYS = frozenset({"eps", "n", "dataset", "checkpoint", "arch", "normalization", "weights_sha256",
                                  "weights", "settings", "seconds", "per_class", "worst_class", "pending", "preset",
                                  "correct", "worst_case", "worst_case_attacks", "sanity",
                                  "gradient_cosine"})
"""Keys of an ``eval --json`` file that are not attack names."""


@dataclass
class EvalSettings:
    """Threat model and attack budgets shared by the evaluation attacks."""

    eps: float
    step_size: float
    pgd_steps: int = 20
    cw_steps: int = 30
    kappa: float = 50.0
    restarts: int = 1
    norm: str = "linf"
    cw_restarts: int | None = None
    autoattack_version: str = "standard"

    @property
    def cw_runs(self) -> int:
        """Random restarts of CW∞: ``cw_restarts``, else ``restarts``."""
        return self.cw_restarts if self.cw_restarts is not None else self.restarts

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise RobustDistillError(f"unknown norm {self.norm!r}; use one of: {', '.join(NORMS)}")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise RobustDistillError(f"eps must be a finite number >= 0; got {self.eps}")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise RobustDistillError(f"step size must be a finite number > 0; got {self.step_size}")
        if self.pgd_steps < 1 or self.cw_steps < 1:
            raise RobustDistillError(f"attack steps must be >= 1; got pgd {self.pgd_steps}, cw {self.cw_steps}")
        if self.restarts < 1 or self.cw_runs < 1:
            raise RobustDistillError(f"restarts must be >= 1; got {self.restarts} (pgd20), {self.cw_runs} (cw)")
        if self.autoattack_version not in AUTOATTACK_VERSIONS:
            raise RobustDistillError(f"unknown AutoAttack version {self.autoattack_version!r}; use one of: "
                                     f"{', '.join(AUTOATTACK_VERSIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def spec(self, attack: str) -> attacks.AttackSpec:
        """The :class:`~robustdistill._attacks.AttackSpec` of a built-in attack: ``fgsm``, ``pgd20`` or ``cw``."""
        if attack == "fgsm":
            return attacks.fgsm_spec(self.eps, self.norm)
        loss, steps, restarts = {"pgd20": ("ce", self.pgd_steps, self.restarts),
                                 "cw": ("cw", self.cw_steps, self.cw_runs)}[attack]
        return attacks.AttackSpec(eps=self.eps, step_size=self.step_size, steps=steps, norm=self.norm,
                                  init="uniform", restarts=restarts, loss=loss, kappa=self.kappa)
