"""Robust-accuracy evaluation: clean, FGSM, PGD-20, CW∞ and AutoAttack, and ``robustdistill eval``.

An evaluation attack is an :class:`~robustdistill._registry.EvalAttack` whose
``run(model, x, y, settings)`` returns adversarial inputs for a batch ``x`` (float, in
``[0, 1]``, on the model's device); the model is already in eval mode. An attack that batches
internally (AutoAttack) is registered with ``whole_set=True``: it then receives the whole evaluation set
at once, on the CPU, plus the keywords ``batch_size`` and ``verbose``, and moves its batches to the
model's device itself.

Every adversarial batch is checked to lie in ``[0, 1]`` and within ε of the clean input. Accuracy is also counted
per class (the label's), and the lowest of those is the worst-class accuracy.
"""
from __future__ import annotations

from .attacks import BUILTIN_EVAL_ATTACKS
from .autoattack import attack_details
from .harness import EvalResult, check_adversarial, evaluate, run_evaluation, to_unit_float, worst_class
from .progress import EvalProgress, attack_cost
from .results import weights_fingerprint
from .settings import AUTOATTACK_MISSING, RESULT_METADATA_KEYS, EvalSettings

__all__ = [
    "AUTOATTACK_MISSING", "BUILTIN_EVAL_ATTACKS", "RESULT_METADATA_KEYS", "EvalProgress", "EvalResult", "EvalSettings",
    "attack_cost", "attack_details", "check_adversarial", "evaluate", "run_evaluation", "to_unit_float",
    "weights_fingerprint", "worst_class",
]
