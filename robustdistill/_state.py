"""The parts of a checkpoint that are not models: the position inside the epoch, the RNG states, plugin state,
and the check that a resumed run keeps its options. The run assembles and restores the checkpoint
(:mod:`robustdistill._run`); ``last.pt`` is the truth of a run directory.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ._config import RunConfig, core_fields, namespace, option_key
from ._registry import Registry, RobustDistillError

if TYPE_CHECKING:
    from ._context import LossTerm

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


# -- plugin state ---------------------------------------------------------------------------------------

def check_saveable(value: Any, where: str) -> None:
    """Refuse what ``torch.load(weights_only=True)`` could not read back, naming where it is."""
    if value is None or isinstance(value, (bool, int, float, str, Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_saveable(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise RobustDistillError(f"run.checkpointed: {where} has the key {key!r}; keys must be strings")
            check_saveable(item, f"{where}[{key!r}]")
        return
    hint = " (give trainable modules to run.add_module)" if isinstance(value, torch.nn.Module) else ""
    raise RobustDistillError(f"run.checkpointed: {where} is a {type(value).__name__}, which a checkpoint cannot hold; "
                             f"keep tensors, numbers, strings, booleans, None and lists or dicts of them{hint}")


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it moved to ``device`` (tuples stay tuples)."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


# -- resuming -------------------------------------------------------------------------------------------

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
    """Core options by name, plugin options as ``plugin.key``. Earlier checkpoints are read as what they
    trained: one flat mapping (``igdm_alpha`` is ``igdm.alpha``), a single ``teacher`` string (one teacher),
    no ``val_split`` (every training image trained: 0), no ``nesterov`` (plain momentum)."""
    flat = {k: v for k, v in config.items() if k not in ("plugins", "sources")}
    for key in ("teacher", "teacher_arch", "teacher_normalize"):
        if isinstance(flat.get(key), str):
            flat[key] = [flat[key]]
    flat.setdefault("val_split", 0)
    flat.setdefault("nesterov", False)
    for plugin, values in (config.get("plugins") or {}).items():
        flat.update({f"{plugin}.{k}": v for k, v in values.items()})
    if "plugins" not in config:
        for plugin, options in registry.options.items():
            flat.update({f"{namespace(plugin)}.{option_key(plugin, o)}": config[o.dest]
                         for o in options if o.dest in config})
    return flat


def _show(value: Any) -> str:
    return "unset" if value is None else repr(value)
