"""What a checkpoint holds and how a run returns to it: weights, optimiser, plugin modules, RNG states of
every process, the position inside the epoch, the run's history and its configuration.

``last.pt`` is the truth of a run directory. ``config.json`` is written from the same configuration right
after it (and again when a run resumes), so no kill leaves the two disagreeing.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from . import __version__
from ._checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from ._config import RunConfig, core_fields, namespace, option_key
from ._registry import Registry, RobustDistillError

if TYPE_CHECKING:
    from .api import LossTerm
    from ._run import Run

CHECKPOINT = "last.pt"


@dataclass
class EpochProgress:
    """Where the current epoch stands: batches done and the running sums of its metrics (checkpointed)."""

    batch: int
    seen: int
    seconds: float
    loss_sum: Tensor
    term_sums: dict[str, Tensor]
    weighted_sums: dict[str, Tensor]

    @classmethod
    def start(cls, device: torch.device) -> "EpochProgress":
        return cls(0, 0, 0.0, torch.zeros((), device=device), {}, {})

    def add(self, loss: Tensor, terms: "list[LossTerm]", n: int) -> None:
        self.loss_sum = self.loss_sum + loss * n
        for term in terms:
            value = term.value.detach().float() * n
            zero = torch.zeros((), device=self.loss_sum.device)
            self.term_sums[term.name] = self.term_sums.get(term.name, zero) + value
            self.weighted_sums[term.name] = self.weighted_sums.get(term.name, zero) + term.weight * value
        self.seen += n

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "seen": self.seen, "seconds": self.seconds, "loss_sum": self.loss_sum.cpu(),
                "term_sums": {k: v.cpu() for k, v in self.term_sums.items()},
                "weighted_sums": {k: v.cpu() for k, v in self.weighted_sums.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: torch.device) -> "EpochProgress":
        return cls(int(d["batch"]), int(d["seen"]), float(d["seconds"]), d["loss_sum"].to(device),
                   {k: v.to(device) for k, v in d["term_sums"].items()},
                   {k: v.to(device) for k, v in d.get("weighted_sums", {}).items()})


# -- random number generators -------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# -- saving ---------------------------------------------------------------------------------------------

def save_run(run: "Run") -> None:
    """Checkpoint the run (rank 0 writes; every rank contributes its RNG state), then the records that
    follow it: ``config.json`` and, through ``checkpoint_saved``, the plugins' (``metrics.jsonl``)."""
    rng = run.dist.gather(rng_state())
    if run.dist.is_main:
        config = run.config.to_dict()
        save_checkpoint(run.out / CHECKPOINT, {
            "version": __version__,
            "arch": run.view.arch.to_dict(),
            "model": run.student.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "epoch": run.view.epoch,
            "progress": run.progress.to_dict(),
            "world_size": run.dist.world,
            "config": config,
            "requested": run.requested.to_dict(),
            "plugins": [info.to_dict() for info in run.host.plugin_infos()],
            "plugin_modules": {name: {"module": m.state_dict(), "optimizer": o.state_dict() if o else None}
                               for name, (m, o) in run.plugin_modules.items()},
            "history": run.view.history,
            "rng": rng,
        })
        write_config_json(run, config)
        run.hooks.event("checkpoint_saved", run=run.view)
    run.dist.barrier()


def write_config_json(run: "Run", config: dict[str, Any]) -> None:
    atomic_write_text(run.out / "config.json", json.dumps(config, indent=2) + "\n")


# -- resuming -------------------------------------------------------------------------------------------

def read_checkpoint(run_dir: Any) -> dict[str, Any]:
    return load_checkpoint(run_dir / CHECKPOINT)


def check_resumable(saved: dict[str, Any], requested: RunConfig, resolved: RunConfig, registry: Registry,
                    world: int) -> None:
    """Refuse ``--resume`` with options that change the run (each option declares whether it may change).

    An option counts as changed when it was requested differently *and* resolves differently: passing the
    value a default resolved to is no change, and values derived from an option that may change (the IGDM
    ramp from ``--epochs``) follow it.
    """
    if saved.get("world_size", 1) != world:
        raise RobustDistillError(f"--resume: the run was trained on {saved.get('world_size', 1)} processes and is "
                                 f"resumed on {world}; resume with the same number (exact resume needs each "
                                 "process's RNG state)")
    old_resolved = _flat(saved.get("config", {}), registry)
    old_requested = _flat(saved["requested"], registry) if "requested" in saved else old_resolved
    new_requested, new_resolved = _flat(requested.to_dict(), registry), _flat(resolved.to_dict(), registry)
    changed = []
    for flag, key in _fixed_options(resolved, registry):
        if old_requested.get(key) != new_requested.get(key) and old_resolved.get(key) != new_resolved.get(key):
            changed.append(f"{flag} {_show(old_resolved.get(key))} → {_show(new_resolved.get(key))}")
    if changed:
        raise RobustDistillError(f"--resume with options that change the run ({', '.join(changed)}); use the "
                                 "original options, or a new --out for a new run")


def _fixed_options(config: RunConfig, registry: Registry) -> list[tuple[str, str]]:
    """``(flag, key in the flattened config)`` of every option of the run that must not change on resume."""
    fixed = [(f.metadata["option"].flag, f.name) for f in core_fields() if f.metadata["option"].fixed_on_resume]
    for plugin, options in registry.options.items():
        if namespace(plugin) in config.plugin_options:
            fixed += [(o.flag, f"{namespace(plugin)}.{option_key(plugin, o)}") for o in options if o.fixed_on_resume]
    return fixed


def _flat(config: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """Core options by name, plugin options as ``plugin.key``; in checkpoints of robustdistill 0.1, whose
    configuration is one flat mapping, ``igdm_alpha`` is read as ``igdm.alpha``."""
    flat = {k: v for k, v in config.items() if k != "plugins"}
    for plugin, values in (config.get("plugins") or {}).items():
        flat.update({f"{plugin}.{k}": v for k, v in values.items()})
    if "plugins" not in config:
        for plugin, options in registry.options.items():
            flat.update({f"{namespace(plugin)}.{option_key(plugin, o)}": config[o.dest]
                         for o in options if o.dest in config})
    return flat


def _show(value: Any) -> str:
    return "unset" if value is None else repr(value)


def restore_training_state(run: "Run", ckpt: dict[str, Any]) -> None:
    """Weights, epoch, position in the epoch and history: before ``train_start``, so hooks see them."""
    run.student.load_state_dict(ckpt["model"])
    run.view.epoch = int(ckpt["epoch"])
    run.progress = EpochProgress.from_dict(ckpt["progress"], run.device)
    run.view.history[:] = list(ckpt.get("history", []))


def restore_optimisation_state(run: "Run", ckpt: dict[str, Any]) -> None:
    """Optimisers, plugin modules, schedule and RNG: after ``train_start`` added the plugins' modules and
    parameter groups (and drew their initial weights from the RNG)."""
    from ._run import scheduler_at

    run.optimizer.load_state_dict(ckpt["optimizer"])
    for name, saved_module in ckpt.get("plugin_modules", {}).items():
        if name in run.plugin_modules:
            module, optimizer = run.plugin_modules[name]
            module.load_state_dict(saved_module["module"])
            if optimizer is not None and saved_module["optimizer"] is not None:
                optimizer.load_state_dict(saved_module["optimizer"])
    run.scheduler = scheduler_at(run.config, run.optimizer, run.view.epoch)
    set_rng_state(ckpt["rng"][run.dist.rank])

