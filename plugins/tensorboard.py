"""``--tensorboard``: the per-epoch metrics as TensorBoard scalars in ``DIR/tensorboard`` (main process).

On ``--resume`` the events of epochs after the checkpoint are purged, so a restarted epoch is not
logged twice.
"""
from __future__ import annotations

from typing import Any, Callable

from robustdistill import hookimpl
from robustdistill.api import Option, RobustDistillError, RunView

SCALARS = ("loss", "lr", "val_clean", "val_pgd", "images_per_s", "train_seconds")


@hookimpl
def register_options(register: Callable) -> None:
    register(Option(flag="--tensorboard", default=False, fixed_on_resume=False,
                    help="also log the per-epoch metrics for TensorBoard into DIR/tensorboard (needs the tensorboard "
                         "package)"))


def summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RobustDistillError("--tensorboard needs the tensorboard package: pip install tensorboard "
                                 "(or pip install 'robustdistill[tensorboard]')") from None
    return SummaryWriter


@hookimpl(tryfirst=True)
def train_start(run: RunView) -> None:
    if run.config.tensorboard.enabled:
        summary_writer_class()  # fail before training when the package is missing


@hookimpl(trylast=True)
def epoch_end(run: RunView, epoch: int, metrics: dict[str, Any]) -> None:
    if not run.config.tensorboard.enabled or not run.is_main:
        return
    board = run.state.get("tensorboard")
    if board is None:  # the first epoch of this process: purge what a killed process logged after the checkpoint
        board = run.state["tensorboard"] = summary_writer_class()(log_dir=str(run.out / "tensorboard"),
                                                                  purge_step=epoch)
    for key in SCALARS:
        if isinstance(metrics.get(key), (int, float)):
            board.add_scalar(key, metrics[key], epoch)
    for name, value in metrics["terms"].items():
        board.add_scalar(f"terms/{name}", value, epoch)
    for name, value in metrics.get("weighted_terms", {}).items():
        board.add_scalar(f"weighted_terms/{name}", value, epoch)
    board.flush()


@hookimpl
def train_end(run: RunView) -> None:
    board = run.state.pop("tensorboard", None)
    if board is not None:
        board.close()
