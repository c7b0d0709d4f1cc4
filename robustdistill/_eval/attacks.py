"""The built-in evaluation attacks: clean, FGSM, PGD-20, CW∞, AutoAttack and its first two stages."""
from __future__ import annotations

from torch import Tensor, nn

from .. import _attacks as attacks
from .._registry import EvalAttack
from .autoattack import _autoattack, _import_autoattack
from .settings import APGD_ATTACKS, EvalSettings


def _clean(model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings) -> Tensor:
    """No attack: the clean inputs."""
    return x


def _fgsm(model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings) -> Tensor:
    """One gradient step of size ε (sign step for L∞, normalised gradient for L2); a point the step does not
    fool but the clean input does keeps the clean input."""
    return attacks.pgd(model, x, y, settings.spec("fgsm"))


def _pgd(model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings) -> Tensor:
    """PGD on cross-entropy from a uniform random start, with restarts; each point's best iterate."""
    return attacks.pgd(model, x, y, settings.spec("pgd20"))


def _cw(model: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings) -> Tensor:
    """CW∞: PGD on the C&W margin loss with confidence κ; each point's best iterate."""
    return attacks.pgd(model, x, y, settings.spec("cw"))


BUILTIN_EVAL_ATTACKS: list[EvalAttack] = [
    EvalAttack(name="clean", run=_clean, summary="no attack: accuracy on the clean inputs"),
    EvalAttack(name="fgsm", run=_fgsm, summary="FGSM: one gradient step of size eps"),
    EvalAttack(name="pgd20", run=_pgd,
               summary="PGD on cross-entropy, --pgd-steps steps (20) of --step-size, random start"),
    EvalAttack(name="cw", run=_cw, summary="CW-inf: PGD on the C&W margin loss, --cw-steps steps (30), kappa --kappa"),
    EvalAttack(name="autoattack", run=_autoattack(),
               summary="AutoAttack, --autoattack-version (standard: APGD-CE, APGD-T, FAB-T, Square); needs pip install "
               "pyautoattack", whole_set=True, check=_import_autoattack),
    EvalAttack(name="apgd-ce+apgd-t", run=_autoattack(APGD_ATTACKS),
               summary="the first two stages of standard AutoAttack (APGD-CE, then APGD-T on the 9 most likely other "
               "classes), with its parameters and seed: an upper bound on its accuracy at a fraction of the cost; "
               "needs pip install pyautoattack", whole_set=True, check=_import_autoattack),
]
