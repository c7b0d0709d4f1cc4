"""``--mlflow``: the run in an MLflow tracking store (main process) — its options as parameters, the per-epoch
metrics, the results of ``eval.json`` when the run directory holds one, and ``config.json``, ``metrics.jsonl``
and ``environment.json`` as artifacts at the end.

The store is ``sqlite:///DIR/mlflow.db`` (artifacts in ``DIR/mlartifacts``) unless ``--mlflow-uri`` names one
(a server, a database). ``DIR/mlflow.json`` keeps the MLflow run's id, so a resumed run continues the same MLflow
run; an epoch the store already holds (logged by a killed process after its checkpoint) is not logged again.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from robustdistill import hookimpl
from robustdistill.api import Option, RobustDistillError, RunView, atomic_write_text

STATE = "mlflow.json"
RECORDS = ("config.json", "metrics.jsonl", "environment.json", "eval.json")
BATCH = 100  # parameters per request (the store's limit)


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--mlflow", default=False, fixed_on_resume=False,
                    help="also log the run to MLflow: options, per-epoch metrics, evaluation results and the run's "
                         "records (needs the mlflow package)"))
    register(Option(flag="--mlflow-uri", default=None, type=str, metavar="URI", fixed_on_resume=False,
                    help="the MLflow tracking URI: a server (http://…) or a database (sqlite:///…) "
                         "(default: sqlite:///DIR/mlflow.db)"))
    register(Option(flag="--mlflow-experiment", default="robustdistill", fixed_on_resume=False,
                    help="the MLflow experiment the run is logged under"))


def client_class() -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise RobustDistillError("--mlflow needs the mlflow package: pip install mlflow "
                                 "(or pip install 'robustdistill[mlflow]')") from None
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its notes on creating a store's tables
    return MlflowClient


def flat(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested options as parameters: ``{"plugins": {"igdm": {"alpha": 5}}}`` → ``{"plugins.igdm.alpha": "5"}``."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def epoch_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """An epoch's numbers by metric name (loss terms as ``terms/NAME`` and ``weighted_terms/NAME``)."""
    out = {key: float(value) for key, value in metrics.items()
           if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)}
    for group in ("terms", "weighted_terms"):
        out.update({f"{group}/{name}": float(value) for name, value in metrics.get(group, {}).items()})
    return out


def eval_results(out: Path) -> dict[str, float]:
    """The finished attacks' accuracies of ``DIR/eval.json`` as ``eval/ATTACK`` (empty without one)."""
    try:
        data = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    pending = set(data.get("pending", []))
    return {f"eval/{name}": float(data[name]) for name in data.get("seconds", {}) if name not in pending and name in data}


class Tracker:
    """The MLflow run of this run directory: created on first use, or continued from ``DIR/mlflow.json``."""

    def __init__(self, run: RunView) -> None:
        from mlflow.entities import Param

        options = run.config.mlflow
        local = options.uri is None
        self.uri = options.uri or f"sqlite:///{(run.out / 'mlflow.db').resolve()}"
        self.client = client_class()(tracking_uri=self.uri)
        state = self.read_state(run.out)
        if state is not None:
            self.run_id = state["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            experiment = self.experiment(options.experiment, (run.out / "mlartifacts").resolve().as_uri()
                                         if local else None)
            self.run_id = self.client.create_run(experiment, run_name=run.out.name, tags={
                "robustdistill.run_dir": str(run.out.resolve())}).info.run_id
            params = [Param(key, value) for key, value in flat(run.config.to_dict()).items()]
            for start in range(0, len(params), BATCH):
                self.client.log_batch(self.run_id, params=params[start:start + BATCH])
            atomic_write_text(run.out / STATE, json.dumps({"tracking_uri": self.uri, "run_id": self.run_id}) + "\n")
        self.logged = {m.step for m in self.client.get_metric_history(self.run_id, "loss")}

    def read_state(self, out: Path) -> dict[str, str] | None:
        """The MLflow run this directory logged to before, when it is in the same store."""
        try:
            state = json.loads((out / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return state if state.get("tracking_uri") == self.uri else None

    def experiment(self, name: str, artifacts: str | None) -> str:
        """The experiment's id, created when the store lacks it (another run may create it at the same time)."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except MlflowException:
            return self.client.get_experiment_by_name(name).experiment_id

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, stamp, step) for key, value in values.items()])

    def finish(self, run: RunView) -> None:
        """Log the evaluation results not yet in the store and the records, and mark the MLflow run finished."""
        results = {key: value for key, value in eval_results(run.out).items()
                   if run.epoch not in {m.step for m in self.client.get_metric_history(self.run_id, key)}}
        if results:
            self.log(results, run.epoch)
        for name in RECORDS:
            if (run.out / name).exists():
                self.client.log_artifact(self.run_id, str(run.out / name))
        self.client.set_terminated(self.run_id, "FINISHED")


def tracker(run: RunView) -> Tracker:
    if "mlflow" not in run.state:
        run.state["mlflow"] = Tracker(run)
    return run.state["mlflow"]


@hookimpl(tryfirst=True)
def train_start(run: RunView) -> None:
    options = run.config.mlflow
    if not options.enabled and options.uri is not None:
        raise RobustDistillError("--mlflow-uri needs --mlflow")
    if options.enabled:
        client_class()  # fail before training when the package is missing


@hookimpl(trylast=True)
def epoch_end(run: RunView, epoch: int, metrics: dict[str, Any]) -> None:
    if not run.config.mlflow.enabled or not run.is_main:
        return
    logger = tracker(run)
    if epoch not in logger.logged:
        logger.log(epoch_scalars(metrics), epoch)
        logger.logged.add(epoch)


@hookimpl
def train_end(run: RunView) -> None:
    if run.config.mlflow.enabled and run.is_main:
        tracker(run).finish(run)
        run.state.pop("mlflow")
