"""``--wandb``: the run in Weights & Biases (main process) — its options as the config, the per-epoch metrics,
the results of ``eval.json`` when the run directory holds one (in the summary), and ``config.json``,
``metrics.jsonl`` and ``environment.json`` as the run's files at the end.

Offline by default: everything stays in ``DIR/wandb`` until ``wandb sync DIR/wandb/offline-run-*`` uploads it;
``--wandb-mode online`` logs to the server as the run goes. ``DIR/wandb.json`` keeps the W&B run's id and the
last epoch logged, so a resumed run continues the same W&B run without logging an epoch twice.
"""
from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable

from robustdistill import hookimpl
from robustdistill.api import Option, RobustDistillError, RunView, atomic_write_text

from .mlflow import RECORDS, eval_results

STATE = "wandb.json"


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--wandb", default=False, fixed_on_resume=False,
                    help="also log the run to Weights & Biases (offline into DIR/wandb unless --wandb-mode online): "
                         "options, per-epoch metrics, evaluation results and the run's records (needs the wandb "
                         "package)"))
    register(Option(flag="--wandb-project", default="robustdistill", fixed_on_resume=False,
                    help="the W&B project the run is logged under"))
    register(Option(flag="--wandb-mode", default="offline", choices=("offline", "online"), fixed_on_resume=False,
                    help="offline: keep the run in DIR/wandb for a later `wandb sync`; online: log to the server "
                         "(after `wandb login`)"))


def import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise RobustDistillError("--wandb needs the wandb package: pip install wandb "
                                 "(or pip install 'robustdistill[wandb]')") from None
    return wandb


def read_state(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def epoch_values(metrics: dict[str, Any]) -> dict[str, Any]:
    """An epoch's numbers, the loss terms nested under ``terms`` and ``weighted_terms``."""
    out: dict[str, Any] = {key: value for key, value in metrics.items()
                           if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)}
    out.update({group: dict(metrics[group]) for group in ("terms", "weighted_terms") if metrics.get(group)})
    return out


class Tracker:
    """The W&B run of this run directory: a new one, or the one ``DIR/wandb.json`` names."""

    def __init__(self, run: RunView) -> None:
        wandb = import_wandb()
        options = run.config.wandb
        self.out = run.out
        self.state = read_state(run.out)
        if "id" not in self.state:
            self.state = {"id": secrets.token_hex(4), "logged": 0}
            self.save_state()
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, x_save_requirements=False)
        self.run = wandb.init(project=options.project, dir=str(run.out), id=self.state["id"], name=run.out.name,
                              mode=options.mode, resume="allow", config=run.config.to_dict(), allow_val_change=True,
                              settings=settings, reinit="create_new")

    def save_state(self) -> None:
        atomic_write_text(self.out / STATE, json.dumps(self.state) + "\n")

    def log(self, epoch: int, metrics: dict[str, Any]) -> None:
        if epoch <= self.state["logged"]:
            return
        self.run.log({"epoch": epoch, **epoch_values(metrics)}, step=epoch)
        self.state["logged"] = epoch
        self.save_state()

    def finish(self) -> None:
        """Put the evaluation results in the summary, the records among the run's files, and end the W&B run."""
        self.run.summary.update(eval_results(self.out))
        for name in RECORDS:
            if (self.out / name).exists():
                shutil.copy2(self.out / name, Path(self.run.dir) / name)  # the run's files go with it on sync
        self.run.finish()


def tracker(run: RunView) -> Tracker:
    if "wandb" not in run.state:
        run.state["wandb"] = Tracker(run)
    return run.state["wandb"]


@hookimpl(tryfirst=True)
def train_start(run: RunView) -> None:
    if run.config.wandb.enabled:
        import_wandb()  # fail before training when the package is missing


@hookimpl(trylast=True)
def epoch_end(run: RunView, epoch: int, metrics: dict[str, Any]) -> None:
    if run.config.wandb.enabled and run.is_main:
        tracker(run).log(epoch, metrics)


@hookimpl
def train_end(run: RunView) -> None:
    if run.config.wandb.enabled and run.is_main:
        tracker(run).finish()
        run.state.pop("wandb")
