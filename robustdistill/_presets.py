"""Presets: the training and evaluation protocols of the papers, as data.

``robustdistill train --preset NAME`` and ``robustdistill eval --preset NAME`` take a preset's options as
the parser's defaults, the same way ``train --config FILE.yaml`` does (a ``--config`` file and the
command line override a preset; a ``--plugin`` on the command line replaces the preset's methods).
``robustdistill presets`` lists them with their sources. Option names are the flags without ``--``;
values are what the command line accepts. Each preset sets what its paper (or official script) reports
and says in ``notes`` what it cannot set (a teacher checkpoint that is not on RobustBench, an optimiser
robustdistill does not have).

This module does not import torch, so that ``--help`` starts at once.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from ._config import option_defaults
from ._registry import RobustDistillError


@dataclass(frozen=True)
class Preset:
    """One paper protocol: ``train`` and ``eval`` map option names to values."""

    name: str
    summary: str
    source: str
    train: Mapping[str, Any] = field(default_factory=dict)
    eval: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "source": self.source, "train": dict(self.train),
                "eval": dict(self.eval), "notes": self.notes}


# -- evaluation protocols -------------------------------------------------------------------------------

IGDM_EVAL = {"attacks": "clean,fgsm,pgd20,cw,autoattack", "eps": "8/255", "step-size": "2/255", "pgd-steps": 20,
             "restarts": 1, "cw-steps": 50, "cw-restarts": 10, "autoattack-version": "standard"}
"""IGDM (App. B, code): FGSM, PGD-20 (2/255, random start), CW∞ (50 steps of 2/255, 10 restarts, as the first
author's ``cw_Linf_attack``), standard AutoAttack, on the full test set, last-epoch model."""

AD_EVAL = {"attacks": "clean,fgsm,pgd20,cw,autoattack", "eps": "8/255", "step-size": "2/255", "pgd-steps": 20,
           "restarts": 1, "autoattack-version": "standard"}
"""The AD papers' common columns (methods-ad §3.3): FGSM, PGD-20 of 2/255 from a random start, CW∞, AutoAttack."""

# -- IGDM on each base, per dataset (paper App. B.1, α from App. B.2 for the ResNet-18 student) -----------

IGDM_BASES = ("at", "trades", "ard", "rslad", "adaad")
IGDM_DATASETS: dict[str, dict[str, Any]] = {
    # dataset: (teacher, α per base, epochs and milestones of the bases other than RSLAD, Table)
    "cifar10": {"teacher": "robustbench:Chen2021LTD_WRN34_10", "alpha": (60, 20, 5, 0.9, 5),
                "schedule": (200, "100,150"), "table": "Table 3, LTD teacher"},
    "cifar100": {"teacher": "robustbench:Chen2021LTD_WRN34_10", "alpha": (100, 5, 50, 3, 15),
                 "schedule": (200, "100,150"), "table": "Table 2, LTD teacher"},
    "svhn": {"teacher": None, "alpha": (60, 30, 50, 3, 9), "schedule": (50, "40,45"),
             "table": "Table 3, PGD-AT WRN-34-10 teacher"},
}
RSLAD_SCHEDULE = (300, "215,260,285")  # App. B.1: RSLAD and IGDM_RSLAD train 300 epochs (CIFAR)


def _igdm_presets() -> list[Preset]:
    presets = []
    for dataset, setting in IGDM_DATASETS.items():
        for base, alpha in zip(IGDM_BASES, setting["alpha"]):
            epochs, milestones = setting["schedule"]
            if base == "rslad" and dataset != "svhn":
                epochs, milestones = RSLAD_SCHEDULE
            train: dict[str, Any] = {
                "plugin": [base, "igdm"], "dataset": dataset, "model": "resnet18", "epochs": epochs,
                "lr-schedule": "multistep", "milestones": milestones, "lr": 0.1, "momentum": 0.9,
                "weight-decay": 5e-4, "batch-size": 128, "eps": "8/255", "step-size": "2/255", "attack-steps": 10,
                "igdm-alpha": alpha}
            notes = ("weight decay 5e-4 as the paper (the code: 2e-4); the α ramp over --epochs as the paper (the "
                     "code: over 200, 300 for RSLAD: --igdm-ramp-epochs)")
            if setting["teacher"]:
                train["teacher"] = setting["teacher"]
            else:
                notes = "teacher: the paper's own PGD-AT WRN-34-10, not published (pass --teacher); " + notes
            presets.append(Preset(
                f"igdm-{base}-{dataset}", f"IGDM on {_BASE_NAMES[base]}, ResNet-18 student, {_DATASET_NAMES[dataset]}",
                f"Lee et al. 2025 (IGDM) App. B.1-B.2, {setting['table']}", train, IGDM_EVAL, notes))
    return presets


_DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN"}
_BASE_NAMES = {"at": "PGD-AT", "trades": "TRADES", "ard": "ARD", "rslad": "RSLAD", "adaad": "AdaAD"}

# -- the other papers' protocols ----------------------------------------------------------------------------

_CIFAR_ATTACK = {"eps": "8/255", "step-size": "2/255", "attack-steps": 10}

OTHER_PRESETS = [
    Preset("ard-cifar10", "ARD, MobileNetV2 student of a TRADES WRN-34-10 teacher, CIFAR-10",
           "goldblum/AdversariallyRobustDistillation main.py (defaults; methods-ad §2.1)",
           {"plugin": ["ard"], "dataset": "cifar10", "model": "mobilenetv2", "epochs": 200,
            "lr-schedule": "multistep", "milestones": "100,150", "lr": 0.1, "momentum": 0.9, "weight-decay": 2e-4,
            "batch-size": 128, **_CIFAR_ATTACK, "ard-tau": 30, "ard-alpha": 1, "ard-kl-reduction": "mean",
            "ard-attack-bn": "train"},
           {"attacks": "clean,pgd20", "eps": "8/255", "step-size": "2/255", "pgd-steps": 20},
           "teacher: TRADES' WRN-34-10 checkpoint (--teacher model_cifar_wrn.pt --teacher-arch official-wrn); the "
           "code's adjust_learning_rate decays only once (0.1 → 0.01 at 100), the preset at both milestones"),
    Preset("ard-cifar100", "ARD, MobileNetV2 student, CIFAR-100 (batch 256)",
           "goldblum/AdversariallyRobustDistillation main.py, CIFAR-100 branch (methods-ad §2.1)",
           {"plugin": ["ard"], "dataset": "cifar100", "model": "mobilenetv2", "epochs": 200,
            "lr-schedule": "multistep", "milestones": "100,150", "lr": 0.1, "momentum": 0.9, "weight-decay": 2e-4,
            "batch-size": 256, **_CIFAR_ATTACK, "ard-tau": 30, "ard-alpha": 1, "ard-kl-reduction": "mean",
            "ard-attack-bn": "train"},
           {"attacks": "clean,pgd20", "eps": "8/255", "step-size": "2/255", "pgd-steps": 20},
           "the CIFAR-100 teachers of the paper are not published (pass --teacher)"),
    Preset("rslad-cifar10", "RSLAD, ResNet-18 student of a TRADES WRN-34-10 teacher, CIFAR-10",
           "Zi et al. 2021 (RSLAD); zibojia/RSLAD resnet18_rslad_cifar10.py (methods-ad §2.2)",
           {"plugin": ["rslad"], "dataset": "cifar10", "model": "resnet18", "epochs": 300,
            "lr-schedule": "multistep", "milestones": "215,260,285", "lr": 0.1, "momentum": 0.9,
            "weight-decay": 2e-4, "batch-size": 128, **_CIFAR_ATTACK, "rslad-reduction": "mean", "rslad-scale": 1},
           {"attacks": "clean,pgd20,autoattack", "eps": "8/255", "step-size": "0.003", "pgd-steps": 20,
            "autoattack-version": "standard"},
           "teacher: TRADES' WRN-34-10 checkpoint (--teacher model_cifar_wrn.pt --teacher-arch official-wrn); "
           "milestones as the paper (the code: 210,258,285); PGD-20 with the script's step 0.003"),
    Preset("rslad-cifar100", "RSLAD, ResNet-18 student, CIFAR-100 (both terms ×10)",
           "zibojia/RSLAD resnet18_rslad_cifar100.py (methods-ad §2.2)",
           {"plugin": ["rslad"], "dataset": "cifar100", "model": "resnet18", "epochs": 300,
            "lr-schedule": "multistep", "milestones": "215,260,285", "lr": 0.1, "momentum": 0.9,
            "weight-decay": 2e-4, "batch-size": 128, **_CIFAR_ATTACK, "rslad-reduction": "mean", "rslad-scale": 10},
           {"attacks": "clean,pgd20,autoattack", "eps": "8/255", "step-size": "0.003", "pgd-steps": 20,
            "autoattack-version": "standard"},
           "teacher: the script's DeepMind WRN-70-16 without extra data, run in fp16 there (pass --teacher)"),
    Preset("adaad-cifar10", "AdaAD, ResNet-18 student of the LTD WRN-34-20 teacher, CIFAR-10",
           "Huang et al. 2023 (AdaAD); boyellow/AdaAD main.py and README commands (methods-ad §2.3)",
           {"plugin": ["adaad"], "dataset": "cifar10", "model": "resnet18",
            "teacher": "robustbench:Chen2021LTD_WRN34_20", "epochs": 200, "lr-schedule": "multistep", "milestones": "100,150", "lr": 0.1, "momentum": 0.9,
            "weight-decay": 5e-4, "batch-size": 128, **_CIFAR_ATTACK, "adaad-lambda": 1, "adaad-reduction": "mean"},
           {"attacks": "clean,fgsm,pgd20,autoattack", "eps": "8/255", "step-size": "2/255", "pgd-steps": 10,
            "autoattack-version": "standard"},
           "the code reports the checkpoint with the best PGD-10 test accuracy (epoch 181), not the last; its \"CW\" "
           "column is CW-L2, which robustdistill does not run; its \"PGD\" has 10 steps (the pgd20 attack here)"),
    Preset("adaad-cifar100", "AdaAD, ResNet-18 student of the LTD WRN-34-10 teacher, CIFAR-100",
           "boyellow/AdaAD main.py, CIFAR-100 branch (methods-ad §2.3)",
           {"plugin": ["adaad"], "dataset": "cifar100", "model": "resnet18",
            "teacher": "robustbench:Chen2021LTD_WRN34_10", "epochs": 200, "lr-schedule": "multistep",
            "milestones": "100,150", "lr": 0.1, "momentum": 0.9, "weight-decay": 5e-4, "batch-size": 128,
            **_CIFAR_ATTACK, "adaad-lambda": 1, "adaad-reduction": "batchmean"},
           {"attacks": "clean,fgsm,pgd20,autoattack", "eps": "8/255", "step-size": "2/255", "pgd-steps": 10,
            "autoattack-version": "standard"},
           "best-PGD-10 checkpoint selection in the code is not reproduced (the last epoch is evaluated)"),
    Preset("igam-cifar10-to-cifar100", "IGAM, WRN-34-10 student on CIFAR-100 from a CIFAR-10 PGD-AT teacher",
           "Chan et al. 2020 (IGAM) Alg. 1; alvinchangw/IGAM_CVPR2020 run_IGAM_c10toc100.sh (methods-grad §1.3)",
           {"plugin": ["igam"], "dataset": "cifar100", "model": "wrn-34-10", "epochs": 205,
            "lr-schedule": "multistep", "milestones": "102,154", "lr": 0.1, "momentum": 0.9, "weight-decay": 2e-4,
            "batch-size": 32, "igam-lambda-adv": 2, "igam-lambda-diff": 10, "igam-disc-layers": 5,
            "igam-disc-width": 16, "igam-disc-every": 5, "igam-plain-ce-steps": 280000,
            "igam-grad-target": "true-prob", "igam-disc-input": "zero-mean-l2"},
           {"attacks": "clean,fgsm,pgd20", "eps": "8/255", "step-size": "2/255", "pgd-steps": 20},
           "320k steps of batch 32 = 205 epochs, lr ÷10 at 160k and 240k steps (epochs 102, 154); teacher: Madry's "
           "CIFAR-10 WRN with a new CIFAR-100 head (robustdistill finetune-head); the script's uniform input "
           "noise is not reproduced"),
    Preset("igam-tinyimagenet-to-cifar10", "IGAM, WRN-34-10 student on CIFAR-10 from a 64×64 Tiny-ImageNet teacher",
           "alvinchangw/IGAM_CVPR2020 run_IGAM_tinyimagenettoc10_upresize.sh (methods-grad §1.3-1.4)",
           {"plugin": ["igam"], "dataset": "cifar10", "model": "wrn-34-10", "epochs": 205,
            "lr-schedule": "multistep", "milestones": "102,154", "lr": 0.1, "momentum": 0.9, "weight-decay": 2e-4,
            "batch-size": 32, "igam-lambda-adv": 5, "igam-lambda-diff": 10, "igam-disc-layers": 4,
            "igam-disc-width": 8, "igam-disc-every": 5, "igam-plain-ce-steps": 280000, "teacher-resize": True},
           {"attacks": "clean,fgsm,pgd20", "eps": "8/255", "step-size": "2/255", "pgd-steps": 20},
           "teacher: a Tiny-ImageNet PGD-AT WRN with a new CIFAR-10 head (robustdistill finetune-head)"),
    Preset("rrm-cifar10", "RRM, CIFAR-10 L∞, cosine schedule over 48 epochs",
           "Vaishnavi et al. 2022 (RRM); Ethos-lab/robust-representation-matching l_inf/train_rrm.py "
           "(methods-grad §2.3)",
           {"plugin": ["rrm"], "dataset": "cifar10", "epochs": 48, "lr-schedule": "cosine", "lr": 0.1,
            "momentum": 0.9, "weight-decay": 5e-4, "batch-size": 128, "rrm-xent-weight": 0.005,
            "rrm-feat-weight": 1, "rrm-feat-loss": "cosine"},
           {"attacks": "clean,pgd20,autoattack", "eps": "8/255", "step-size": "2/255", "pgd-steps": 50,
            "restarts": 10, "autoattack-version": "standard"},
           "student: the paper's CIFAR ResNet-50 is not built in (pass --model); teacher: a Fast-AT VGG11 or "
           "ResNet-18 (pass --teacher); the code's cosine decays per step to 1e-6 (here per epoch to 0) under apex "
           "AMP O2; its evaluation is ART's AutoPGD (50 iterations, 10 restarts), here PGD-50 with 10 restarts"),
    Preset("gradnorm-cifar10", "GradNorm, PreAct ResNet-18 with GELU, CIFAR-10",
           "Rodríguez-Muñoz et al. 2024 Eq. 2; adriarm/robustness_input_gradients configs_cifar/"
           "gradnorm_prn18_gelu.yaml (methods-grad §3.1)",
           {"plugin": ["gradnorm"], "dataset": "cifar10", "model": "preact-resnet18", "activation": "gelu",
            "epochs": 300, "lr-schedule": "cosine", "batch-size": 128, "gradnorm-ce-weight": 0.8,
            "gradnorm-weight": 1.2, "gradnorm-eps": "4/255", "gradnorm-warmup-epochs": 5, "gradnorm-bn": "eval"},
           {"attacks": "clean,pgd20,autoattack", "eps": "8/255", "step-size": "2/255", "pgd-steps": 20,
            "autoattack-version": "standard"},
           "the code trains with AdamW (lr 1.25e-3·batch/512) from a natural-training snapshot and mixup/cutmix; "
           "robustdistill trains with SGD from scratch on hard labels; the paper reports ImageNet only"),
    Preset("edgereg-cifar10", "EdgeReg with the GradNorm CIFAR recipe, PreAct ResNet-18 with GELU, CIFAR-10",
           "Rodríguez-Muñoz et al. 2024; adriarm/robustness_input_gradients adversarial_training_logit.py, "
           "configs_logit/*hard05*.yaml (methods-grad §3.2)",
           {"plugin": ["edgereg"], "dataset": "cifar10", "model": "preact-resnet18", "activation": "gelu",
            "epochs": 300, "lr-schedule": "cosine", "batch-size": 128, "edgereg-weight": 1,
            "edgereg-weight-step": 0.09, "edgereg-weight-max": 19, "edgereg-temperature": 0.5, "edgereg-sigma": 1},
           {"attacks": "clean,pgd20,autoattack", "eps": "8/255", "step-size": "2/255", "pgd-steps": 20,
            "autoattack-version": "standard"},
           "EdgeReg has no CIFAR configuration (ImageNet Swin-B / ResNet-50 only); the schedule is the GradNorm "
           "CIFAR one, with SGD instead of AdamW"),
    Preset("pag-cifar10", "PAG, ResNet-18, CIFAR-10, all 10 class gradients per image",
           "Ganz et al. 2023 (PAG); royg27/PAG-ROB configs/cifar10_sbg_rn18.yaml (methods-grad §4.1)",
           {"plugin": ["pag"], "dataset": "cifar10", "model": "resnet18", "epochs": 100, "lr-schedule": "multistep",
            "milestones": "50,75", "lr": 0.01, "momentum": 0.9, "weight-decay": 1e-4, "batch-size": 64,
            "seed": 3407, "pag-coeff": 1.5, "pag-scale": 10, "pag-classes": 0},
           {"attacks": "clean,pgd20", "norm": "l2", "eps": "0.5", "step-size": "3/28", "pgd-steps": 7},
           "targets: the paper's score-based gradients are a download of the authors (--pag-targets FILE); the "
           "default takes them from a robust teacher; the evaluation is the code's per-epoch L2 PGD (ε 0.5, 7 steps "
           "of 1.5·ε/7)"),
    Preset("pgd-at-cifar10", "PGD-AT teacher (Madry), WRN-34-10, CIFAR-10",
           "Madry et al. 2018; MadryLab/cifar10_challenge config.json (methods-ad §3.1)",
           {"plugin": ["at"], "dataset": "cifar10", "model": "wrn-34-10", "epochs": 205, "lr-schedule": "multistep",
            "milestones": "102,153", "lr": 0.1, "momentum": 0.9, "weight-decay": 2e-4, "batch-size": 128,
            **_CIFAR_ATTACK, "at-init": "uniform", "at-attack-bn": "train"},
           {"attacks": "clean,pgd20,cw", "eps": "8/255", "step-size": "2/255", "pgd-steps": 20, "cw-steps": 20,
            "kappa": 50},
           "80k steps of batch 128 ≈ 205 epochs, lr ÷10 at 40k and 60k steps (epochs 102, 153); the leaderboard's "
           "20-step PGD on the CE and on the CW loss"),
    Preset("pgd-at-preact-cifar10", "PGD-AT (Rice et al.), PreAct ResNet-18, CIFAR-10",
           "locuslab/robust_overfitting train_cifar.py (methods-ad §3.1)",
           {"plugin": ["at"], "dataset": "cifar10", "model": "preact-resnet18", "epochs": 200,
            "lr-schedule": "multistep", "milestones": "100,150", "lr": 0.1, "momentum": 0.9, "weight-decay": 5e-4,
            "batch-size": 128, **_CIFAR_ATTACK, "at-init": "uniform", "at-attack-bn": "train"},
           AD_EVAL,
           "the paper's point is early stopping: evaluate the checkpoint of the best PGD epoch, not only the last"),
    Preset("trades-cifar10", "TRADES teacher, WRN-34-10, CIFAR-10, β = 6",
           "Zhang et al. 2019; yaodongyu/TRADES train_trades_cifar10.py and pgd_attack_cifar10.py (methods-ad §3.2)",
           {"plugin": ["trades"], "dataset": "cifar10", "model": "wrn-34-10", "epochs": 76,
            "lr-schedule": "multistep", "milestones": "75", "lr": 0.1, "momentum": 0.9, "weight-decay": 2e-4,
            "batch-size": 128, "eps": "0.031", "step-size": "0.007", "attack-steps": 10, "trades-beta": 6},
           {"attacks": "clean,pgd20,autoattack", "eps": "0.031", "step-size": "0.003", "pgd-steps": 20,
            "autoattack-version": "standard"}),
]

PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in [*_igdm_presets(), *OTHER_PRESETS]})


def preset(name: str) -> Preset:
    """The preset ``name``; a clear error naming the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise RobustDistillError(f"unknown preset {name!r}; `robustdistill presets` lists them "
                                 f"({', '.join(PRESETS)})") from None


# -- the command line ---------------------------------------------------------------------------------------

def _command(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """The subcommand (the first argument that is not an option) and the arguments after it."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            return arg, list(argv[i + 1:])
    return None, []


def given_flags(argv: Sequence[str]) -> set[str]:
    """The long options present in ``argv`` (``--plugin``, ``--plugin=at`` → ``--plugin``)."""
    return {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}


def apply_preset(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """``train --preset NAME`` / ``eval --preset NAME``: the preset's options become the subcommand's defaults."""
    command, rest = _command(argv)
    if command not in ("train", "eval"):
        return
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    known, _ = pre.parse_known_args(rest)
    if known.preset is None:
        return
    chosen = preset(known.preset)
    values = dict(chosen.train if command == "train" else chosen.eval)
    if command == "train" and "--plugin" in given_flags(rest):
        values.pop("plugin", None)  # the command line's methods replace the preset's
    subparser = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    subparser.set_defaults(**option_defaults(subparser, values, f"--preset {chosen.name}"))


def add_presets_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", default=None, help="show this preset's options")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _command_line(options: Mapping[str, Any]) -> str:
    parts = []
    for key, value in options.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is True:
                parts.append(f"--{key}")
            elif v is False:
                parts.append(f"--no-{key}")
            else:
                parts.append(f"--{key} {v}")
    return " ".join(parts)


def presets_command(args: argparse.Namespace) -> int:
    """``robustdistill presets [NAME] [--json]``."""
    chosen = [preset(args.name)] if args.name else list(PRESETS.values())
    if args.json:
        print(json.dumps([p.to_dict() for p in chosen], indent=2))
        return 0
    if args.name:
        p = chosen[0]
        print(f"{p.name}: {p.summary}\nsource: {p.source}")
        print(f"train: {_command_line(p.train)}")
        print(f"eval:  {_command_line(p.eval)}")
        if p.notes:
            print(f"notes: {p.notes}")
        return 0
    width = max(len(p.name) for p in chosen)
    for p in chosen:
        print(f"{p.name:<{width}}  {p.summary}\n{'':<{width}}  source: {p.source}")
    print("\n`robustdistill presets NAME` shows a preset's options; use it with `train --preset NAME` and "
          "`eval CKPT --preset NAME` (options given on the command line win)")
    return 0
