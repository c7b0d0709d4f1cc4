"""The typed configurations of ``eval``, ``report`` and ``finetune-head``, declared like
:class:`~robustdistill._config.RunConfig`: each field carries its option, so the parser, the option files and the
command read one declaration, and the options several commands share are declared once in
:mod:`robustdistill._config`.

This module does not import torch, so that ``--help`` starts at once.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from ._config import (AUTOATTACK_VERSIONS, DATA_DIR, DEVICE, DOWNLOAD, NORMS, OPS_BACKEND, ROBUSTBENCH_DIR,
                      _option, _positional, fold_bn_option, from_option, normalize_option, parse_number)


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def nonnegative_int(text: str) -> int:
    """A whole number of at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 0")
    return value


@dataclass(frozen=True)
class EvalConfig:
    """``robustdistill eval``: a model, the attacks and their budgets, the evaluated images."""

    checkpoint: str = _positional("checkpoint", "checkpoint or run directory written by `robustdistill train` (its "
                                  "final model; RUN_DIR@student for the student), robustbench:NAME, or a plain "
                                  "state_dict with --arch", metavar="CKPT")
    attacks: str = _option("--attacks", "clean,fgsm,pgd20,cw", "comma-separated attacks: clean, fgsm, pgd20, cw, "
                           "autoattack, apgd-ce+apgd-t, or any a plugin registers", metavar="LIST")
    subset: int | None = _option("--subset", None, "evaluate on the first N test images (default: the whole test set)",
                                 type=positive_int, metavar="N")
    json: str | None = _option("--json", None, "write the results to this JSON file, after each finished attack; when "
                               "it exists, the attacks already in it are skipped (the settings must match)",
                               type=str, metavar="PATH")
    redo: bool = _option("--redo", False, "evaluate every attack again and start the --json file over")
    dataset: str | None = _option("--dataset", None, "dataset to evaluate on (default: the checkpoint's training "
                                  "dataset)", type=str, metavar="NAME")
    data_dir: str | None = from_option(DATA_DIR, help="where the dataset lives (default: the checkpoint's data "
                                                      "directory, else $ROBUSTDISTILL_DATA)")
    batch_size: int = _option("--batch-size", 256, "images per batch", type=positive_int, metavar="N")
    eps: float | None = _option("--eps", None, "perturbation radius, e.g. 8/255 (default: the checkpoint's, else the "
                                "dataset's)", type=parse_number, metavar="EPS")
    step_size: float | None = _option("--step-size", None, "PGD/CW step size, e.g. 2/255 (default: the checkpoint's, "
                                      "else the dataset's)", type=parse_number, metavar="ALPHA")
    pgd_steps: int = _option("--pgd-steps", 20, "steps of the pgd20 attack", type=positive_int, metavar="N")
    cw_steps: int = _option("--cw-steps", 30, "steps of the cw attack", type=positive_int, metavar="N")
    kappa: float = _option("--kappa", 50.0, "confidence of the C&W margin loss", metavar="K")
    restarts: int = _option("--restarts", 1, "random restarts of pgd20, and of cw unless --cw-restarts is given",
                            type=positive_int, metavar="N")
    cw_restarts: int | None = _option("--cw-restarts", None, "random restarts of cw (default: --restarts; IGDM's "
                                      "evaluation: 10)", type=positive_int, metavar="N")
    autoattack_version: str = _option("--autoattack-version", "standard", "AutoAttack version of the autoattack attack "
                                      "(standard, as every paper here)", choices=AUTOATTACK_VERSIONS)
    preset: str | None = _option("--preset", None, "a paper's evaluation protocol as defaults: attacks, ε, steps, "
                                 "restarts, AutoAttack version (`robustdistill presets` lists them; other options "
                                 "given here win)", type=str, metavar="NAME")
    norm: str | None = _option("--norm", None, "threat model (default: the checkpoint's, else linf)", type=str,
                               choices=NORMS)
    device: str = from_option(DEVICE)
    ops_backend: str | None = from_option(OPS_BACKEND)
    fold_bn: str = from_option(fold_bn_option("the evaluated model"))
    arch: str | None = _option("--arch", None, "architecture of a plain state_dict from another tool (e.g. wrn-34-10, "
                               "torchvision:resnet50, or official-wrn for a WideResNet from the TRADES, ARD, RSLAD or "
                               "IGDM code); classes and input shape then come from --dataset", type=str,
                               metavar="NAME")
    normalize: str | None = from_option(normalize_option("--normalize", "the model"))
    robustbench_dir: str | None = from_option(ROBUSTBENCH_DIR)
    download: bool = from_option(DOWNLOAD)
    seed: int = _option("--seed", 0, "seed of the attacks' random starts")
    sanity: bool = _option("--sanity", False, "also run the sanity checks of the evaluation (deterministic forward, "
                           "logits, zero gradients, accuracy against eps, large and unbounded eps, FGSM against PGD, "
                           "more steps and the loss's convergence, black-box Square, transfer from the teacher), each "
                           "with a verdict; about 2-3x the cost of pgd20 on --sanity-images images")
    sanity_images: int = _option("--sanity-images", 1000, "the first N evaluated images get the sanity checks",
                                 type=positive_int, metavar="N")
    sanity_teacher: str | None = _option(
        "--sanity-teacher", None, "the model spec the transfer check crafts PGD on (default: the run's teacher, "
        "when the checkpoint records one and it can be found; none: no transfer check)", type=str, metavar="SPEC")
    gradient_cosine: str | None = _option(
        "--gradient-cosine", None, "also measure how the model's input gradients align with a teacher's: the mean "
        "over the evaluated images of cos(∇x CE of the model, ∇x CE of the teacher) at the test image; SPEC or "
        "teacher (the run's teacher)", type=str, metavar="SPEC|teacher")
    progress: bool = _option("--progress", True, "report on stderr each attack as it starts and ends, the progress "
                             "within long attacks (AutoAttack's log, a line every 30 s, a bar on a terminal) and the "
                             "time left")


@dataclass(frozen=True)
class ReportConfig:
    """``robustdistill report``: the runs, the figures' budgets, the teacher of the gradient figure."""

    runs: tuple[str, ...] = _positional("runs", "run directories written by `robustdistill train`", metavar="RUN_DIR",
                                        many=True)
    out: str = _option("--out", "runs/report", "where to write the report", metavar="DIR")
    eval_json: str = _option("--eval-json", "eval.json", "the evaluation file in each run directory", metavar="NAME")
    eps: str | None = _option("--eps", None, "radii of the robust-accuracy curve, e.g. 0,0.05,0.1,8/255 (default: 0, "
                              "¼, ½, ¾, 1, 1.5, 2 × each run's training ε)", type=str, metavar="LIST")
    pgd_steps: int = _option("--pgd-steps", 20, "PGD steps of the curve", type=positive_int)
    subset: int = _option("--subset", 1000, "test images for the curve", type=positive_int, metavar="N")
    grad_images: int = _option("--grad-images", 6, "test images in the gradient figure (0: no gradient figure)",
                               metavar="K")
    teacher: str | None = _option("--teacher", None, "teacher whose gradients are shown: a checkpoint, a run directory "
                                  "or robustbench:NAME (default: the first run's --teacher, loaded with that run's "
                                  "options)", type=str, metavar="SPEC")
    teacher_arch: str | None = _option("--teacher-arch", None, "architecture of a --teacher that is a plain "
                                       "state_dict (as for train)", type=str, metavar="NAME")
    teacher_normalize: str | None = from_option(normalize_option("--teacher-normalize", "the teacher"))
    robustbench_dir: str | None = from_option(ROBUSTBENCH_DIR)
    models: bool = _option("--models", True, "draw the figures that load models (robust accuracy vs ε, gradients)")
    batch_size: int = _option("--batch-size", 256, "images per batch of the figures' attacks", type=positive_int,
                              metavar="N")
    device: str = from_option(DEVICE)


@dataclass(frozen=True)
class FinetuneConfig:
    """``robustdistill finetune-head``: a teacher of another task, the target dataset, the head's training."""

    checkpoint: str = _positional("checkpoint", "teacher trained on another task (label set): a checkpoint or a run "
                                  "directory", metavar="TEACHER_CKPT")
    dataset: str = _option("--dataset", None, "the target dataset whose classes the new head predicts", type=str,
                           required=True)
    out: str = _option("--out", None, "where to write the new teacher checkpoint", type=str, metavar="PATH",
                       required=True)
    epochs: int = _option("--epochs", 5, "epochs over the target training set", type=positive_int)
    batch_size: int = _option("--batch-size", 64, "images per head step (as the official code)", type=positive_int)
    lr: float = _option("--lr", 1e-3, "Adam learning rate")
    weight_decay: float = _option("--weight-decay", 2e-4, "L2 on the head's weights")
    subset: int | None = _option("--subset", None, "use only the first N training images", type=positive_int,
                                 metavar="N")
    val_size: int = _option("--val-size", 1000, "test images for the clean accuracy printed at the end (0: none)",
                            metavar="N")
    data_dir: str | None = from_option(DATA_DIR)
    download: bool = from_option(DOWNLOAD, help="download the dataset if it is not found locally")
    arch: str | None = _option("--arch", None, "architecture of a teacher that is a plain state_dict from another tool "
                               "(a model name, or official-wrn for a WideResNet from the TRADES, ARD, RSLAD or IGDM "
                               "code)", type=str, metavar="NAME")
    normalize: str | None = from_option(normalize_option("--normalize", "such a state_dict"))
    source_classes: int | None = _option("--source-classes", None, "classes of such a plain state_dict's head "
                                         "(default: the target's)", type=positive_int, metavar="K")
    device: str = from_option(DEVICE)
    seed: int = _option("--seed", 0, "seed of the head's initialisation and the data order")


@dataclass(frozen=True)
class StudyConfig:
    """``robustdistill study``: the study file and what the command line adds to it, the storage, the workers."""

    file: str | None = _option("--file", None, "the study file (YAML; see docs/studies.md): fixed train options, the "
                               "grid, searched options, the objective, the evaluation", type=str, metavar="STUDY.yaml")
    out: str | None = _option("--out", None, "where the trials' run directories (OUT/trials/), the study's storage "
                              "and the table go (default: runs/study-NAME)", type=str, metavar="DIR")
    storage: str | None = _option("--storage", None, "the study's storage: an Optuna RDB URL (sqlite:///…, "
                                  "postgresql://…, mysql://…) or a journal file on a shared file system (a path) "
                                  "(default: sqlite:///OUT/study.db)", type=str, metavar="URL|PATH")
    report: str = _option("--report", "curves", "at the end, `robustdistill report` of the best trial of each grid "
                          "cell (by the objective) into OUT/report: curves (the figures from the runs' records), models "
                          "(also those that load the models: robust accuracy against eps, input gradients), off",
                          choices=("curves", "models", "off"))
    results: str | None = _option("--results", None, "also copy the small files of every finished trial and teacher "
                                  "(config, metrics, environment, evaluations; no checkpoints) and the table here, "
                                  "as ROW/seed-N/ — a folder that can be committed", type=str, metavar="DIR")
    name: str | None = _option("--name", None, "the study's name in the storage (default: the file's name key, else "
                               "its file name)", type=str)
    workers: int = _option("--workers", 1, "trials run at once on this machine, each on its own GPU (else a share of "
                           "the CPU threads); more machines join by running the same command on the same storage",
                           type=positive_int, metavar="N")
    heartbeat: int = _option("--heartbeat", 60, "seconds between a running trial's heartbeats on an RDB storage; a "
                             "trial silent for twice as long is retried", type=positive_int, metavar="S")
    progress_every: float = _option("--progress-every", 60.0, "seconds between progress lines (and one whenever a "
                                    "trial ends)", type=parse_number, metavar="S")
    set: tuple[str, ...] | None = _option("--set", None, "a fixed train option of every trial (over the file's "
                                          "train key), e.g. --set epochs=30", type=str, metavar="OPTION=VALUE",
                                          repeat=True)
    row: tuple[str, ...] | None = _option("--row", None, "a grid row, its plugins joined by + (replaces the file's "
                                          "rows), e.g. --row rslad --row rslad+igdm", type=str, metavar="PLUGINS",
                                          repeat=True)
    seeds: str | None = _option("--seeds", None, "the seeds of every cell, e.g. 0,1,2", type=str, metavar="LIST")
    grid: tuple[str, ...] | None = _option("--grid", None, "an option's values to cross with the rows and seeds, e.g. "
                                           "--grid lr=0.05,0.1", type=str, metavar="OPTION=V1,V2", repeat=True)
    search: tuple[str, ...] | None = _option("--search", None, "a searched option, e.g. --search "
                                             "igdm-alpha=0.2:220:log (:int for whole numbers)", type=str,
                                             metavar="OPTION=LOW:HIGH", repeat=True)
    first: tuple[str, ...] | None = _option("--first", None, "values of the searched options to try first, one "
                                            "trial per use, e.g. --first igdm-alpha=10", type=str,
                                            metavar="OPTION=V[,OPTION=V]", repeat=True)
    trials: int | None = _option("--trials", None, "trials per grid cell of a search (default: 10)",
                                 type=positive_int, metavar="N")
    objective: str | None = _option("--objective", None, "the validation metric selected on, and at which epoch, "
                                    "e.g. val_pgd:best (default: val_pgd:last)", type=str, metavar="METRIC[:EPOCH]")
    prune: bool = _option("--prune", False, "prune trials by successive halving on the objective after each epoch, "
                          "even if the study file does not ask for it")
    attacks: str | None = _option("--attacks", None, "evaluate each finished trial on the test set with these "
                                  "attacks (reported, never selected on), e.g. clean,pgd20", type=str, metavar="LIST")
    eval_subset: int | None = _option("--eval-subset", None, "test images of that evaluation", type=positive_int,
                                      metavar="N")
    control: tuple[str, ...] | None = _option("--control", None, "a paired difference in the table, e.g. --control "
                                              "rslad+igdm=rslad", type=str, metavar="ROW=CONTROL", repeat=True)
    slurm: bool = _option("--slurm", False, "submit the --workers as a SLURM array job (through submitit) instead of "
                          "starting them here; this command then follows the study and writes the table")
    slurm_partition: str | None = _option("--slurm-partition", None, "the SLURM partition of the jobs (default: the "
                                          "cluster's)", type=str, metavar="NAME")
    slurm_time: int = _option("--slurm-time", 60, "the time limit of each job; before it, the running trial is "
                              "stopped at its checkpoint, queued again and the job requeued", type=positive_int,
                              metavar="MINUTES")
    slurm_gpus_per_task: int = _option("--slurm-gpus-per-task", 1, "GPUs of each job (its trials see them all; 0 on "
                                       "a CPU partition)", type=nonnegative_int, metavar="N")
    slurm_folder: str | None = _option("--slurm-folder", None, "where submitit keeps the jobs' scripts and logs "
                                       "(default: OUT/slurm)", type=str, metavar="DIR")
    slurm_cluster: str = _option("--slurm-cluster", "slurm", "where the jobs run: slurm, or local (submitit's local "
                                 "executor: the same jobs as processes of this machine, to try a study file or "
                                 "test on one machine), or auto (slurm where sbatch is found, else local)",
                                 choices=("slurm", "local", "auto"))
