"""``robustdistill report``: figures and a results table for one or more training runs.

From each run directory (``robustdistill train --out DIR``) it reads ``metrics.jsonl``, ``config.json``,
``last.pt`` and, when present, the ``robustdistill eval --json`` file (``eval.json`` by default), and
writes into ``--out`` (default ``runs/report``):

- ``curves.png``: training loss (a panel per objective), per-epoch clean and PGD accuracy, learning rate;
- ``loss_terms.png``: each run's loss terms per epoch, weighted (their contribution to the loss) and
  unweighted;
- ``robust_vs_eps.png`` / ``.json``: PGD accuracy of each run's model against the radius ε;
- ``gradients.png``: input gradients of the cross-entropy for a few test images, the teacher's (once)
  next to each run's (the picture IGAM and PAG are built on), with a colour bar;
- ``results.md``: a Markdown table of the runs' evaluations with method, seed, epochs and wall time, the
  loss terms of the last epoch, and a caption per figure.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._attacks import ce_objective, model_mode
from ._checkpoint import atomic_write_text, load_checkpoint, model_from_checkpoint
from ._config import format_duration, parse_number, resolve_device
from ._eval import (
    RESULT_METADATA_KEYS,
    EvalSettings,
    run_evaluation,
    to_unit_float,
    weights_fingerprint,
)
from ._folding import fold_or_keep
from ._models import build_model
from ._context import DEFAULT_TEACHER, exact_input_gradient
from ._resolve import role_values
from ._registry import DatasetInfo, ImageData, ModelArch, Registry, RobustDistillError
from ._specs import ROBUSTBENCH, load_model_spec

EVAL_COLUMNS = {"clean": "clean", "fgsm": "FGSM", "pgd20": "PGD-20", "cw": "CW∞", "autoattack": "AutoAttack"}
DEFAULT_EPS_FACTORS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


@dataclass
class RunRecord:
    """What the report knows about one run directory."""

    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    evaluation: dict[str, Any] | None
    label: str = ""
    checkpoint: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def methods(self) -> str:
        plugins = self.config.get("plugin") or ["natural"]
        return "+".join(plugins) if isinstance(plugins, list) else str(plugins)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RobustDistillError(f"cannot read {what} {str(path)!r}: {err}") from None


def load_run(path: str | Path, eval_name: str = "eval.json") -> RunRecord:
    """Read a run directory; a clear error when it is not one."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RobustDistillError(f"{str(run_dir)!r} is not a directory; pass run directories written by "
                                 "`robustdistill train --out DIR`")
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise RobustDistillError(f"{str(run_dir)!r} has no metrics.jsonl: not a training run directory "
                                 "(or it has not finished an epoch yet)")
    history = []
    for number, line in enumerate(metrics.read_text().splitlines(), 1):
        if line.strip():
            try:
                history.append(json.loads(line))
            except json.JSONDecodeError:
                raise RobustDistillError(f"{metrics}:{number} is not valid JSON") from None
    config = _read_json(run_dir / "config.json", "run options") if (run_dir / "config.json").is_file() else {}
    eval_path = run_dir / eval_name
    evaluation = _read_json(eval_path, "evaluation") if eval_path.is_file() else None
    checkpoint = run_dir / "last.pt"
    return RunRecord(run_dir, config, history, evaluation, label=run_dir.name,
                     checkpoint=checkpoint if checkpoint.is_file() else None)


def _unique_labels(runs: list[RunRecord]) -> None:
    names = [r.path.name for r in runs]
    for run in runs:
        run.label = run.path.name if names.count(run.path.name) == 1 else str(run.path)


# ---------------------------------------------------------------------------------------------
# Results table


def _percent(value: Any) -> str:
    return f"{100 * float(value):.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def eval_columns(runs: list[RunRecord]) -> list[str]:
    """Attack names present in any run's evaluation: the standard ones first, then plugin attacks."""
    present: list[str] = []
    for run in runs:
        for key, value in (run.evaluation or {}).items():
            if key not in RESULT_METADATA_KEYS and isinstance(value, (int, float)) and key not in present:
                present.append(key)
    return [k for k in EVAL_COLUMNS if k in present] + [k for k in present if k not in EVAL_COLUMNS]


def results_table(runs: list[RunRecord]) -> str:
    """Markdown table: one row per run, accuracies in percent."""
    attacks = eval_columns(runs)
    header = ["run", "method", "model", "seed", "epochs", "s/epoch", "wall time",
              *(EVAL_COLUMNS.get(a, a) for a in attacks), "eval images"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        seconds = [float(m.get("seconds", m.get("train_seconds", 0.0))) for m in run.history]
        train_seconds = [float(m.get("train_seconds", 0.0)) for m in run.history]
        evaluation = run.evaluation or {}
        row = [run.label, run.methods, str(run.config.get("model", "?")), str(run.config.get("seed", "?")),
               str(len(run.history)), f"{sum(train_seconds) / max(len(train_seconds), 1):.1f}",
               format_duration(sum(seconds)), *(_percent(evaluation.get(a)) for a in attacks),
               str(evaluation.get("n", "—"))]
        lines.append("| " + " | ".join(row) + " |")
    missing = [r.label for r in runs if r.evaluation is None]
    if missing:
        lines.append("")
        lines.append(f"No evaluation file for: {', '.join(missing)} (write one with `robustdistill eval "
                     "RUN/last.pt --json RUN/eval.json`).")
    unfinished = [f"{r.label} ({', '.join(map(str, r.evaluation['pending']))})" for r in runs
                  if r.evaluation is not None and r.evaluation.get("pending")]
    if unfinished:
        lines.append("")
        lines.append(f"Evaluation not finished for: {'; '.join(unfinished)} (the same `robustdistill eval` command "
                     "continues it).")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Figures


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise RobustDistillError("`robustdistill report` draws with matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _line_styles(count: int) -> list[dict[str, Any]]:
    """Distinct colour and dash per run: tab10 up to ten runs, else tab20 with alternating dashes."""
    plt = _pyplot()
    if count <= 10:
        return [{"color": plt.get_cmap("tab10")(i)} for i in range(count)]
    return [{"color": plt.get_cmap("tab20")(i % 20), "linestyle": "-" if i % 2 == 0 else "--"} for i in range(count)]


def _legend(ax: Any, count: int) -> None:
    if count > 6:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)


def _epochs(runs: list[RunRecord]) -> list[int]:
    return sorted({int(m["epoch"]) for run in runs for m in run.history if isinstance(m.get("epoch"), (int, float))})


def _epoch_axis(ax: Any, epochs: list[int]) -> None:
    """An x axis of whole epochs: every epoch ticked up to 12 of them, and room around a single one."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if not epochs:
        return
    lo, hi = epochs[0], epochs[-1]
    if hi - lo < 12:
        ax.set_xticks(range(lo, hi + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if hi - lo < 4:
        ax.set_xlim(lo - 0.5, hi + 0.5)


def _points(run: RunRecord, key: str) -> list[tuple[int, float]]:
    return [(int(m["epoch"]), float(m[key])) for m in run.history
            if isinstance(m.get(key), (int, float)) and isinstance(m.get("epoch"), (int, float))]


MAX_LOSS_PANELS = 3
"""Up to this many objectives get a loss panel each; more share one panel of loss relative to epoch 1."""


def _common(runs: list[RunRecord], key: str) -> Any:
    """The config value ``key`` if every run has the same one, else None."""
    values = {json.dumps(run.config.get(key)) for run in runs}
    return runs[0].config.get(key) if len(values) == 1 and runs else None


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def plot_curves(runs: list[RunRecord], path: Path) -> None:
    _save(curves_figure(runs), path)


def curves_figure(runs: list[RunRecord]) -> Any:
    """Training loss (a panel per objective), per-epoch clean / PGD validation accuracy and learning rate."""
    plt = _pyplot()
    styles = dict(zip((r.label for r in runs), _line_styles(len(runs))))
    objectives = list(dict.fromkeys(run.methods for run in runs))
    per_objective = len(objectives) <= MAX_LOSS_PANELS
    panels = (len(objectives) if per_objective else 1) + 3
    cols = 2 if panels <= 4 else 3
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols + (1.8 if len(runs) > 6 else 0), 3.6 * rows),
                             squeeze=False)
    flat = list(axes.flat)
    epochs = _epochs(runs)
    loss_axes = []
    if per_objective:
        for objective, ax in zip(objectives, flat):
            for run in (r for r in runs if r.methods == objective):
                if points := _points(run, "loss"):
                    ax.plot(*zip(*points), marker="o", markersize=3, label=run.label, **styles[run.label])
            ax.set_title(f"training loss: {objective}", fontsize=10)
            ax.set_ylabel("loss (mean over the epoch)")
            loss_axes.append(ax)
    else:
        ax = flat[0]
        for run in runs:
            points = _points(run, "loss")
            if points and points[0][1] > 0:
                ax.plot([e for e, _ in points], [v / points[0][1] for _, v in points], marker="o", markersize=3,
                        label=run.label, **styles[run.label])
        ax.set_title("training loss relative to its first epoch (objectives differ)", fontsize=10)
        ax.set_ylabel("loss ÷ loss of the first epoch")
        loss_axes.append(ax)
    split, val_steps, eps = _common(runs, "val_split"), _common(runs, "val_attack_steps"), _common(runs, "eps")
    images = (f"{split} validation images held out from training" if split
              else "first test images" if _common(runs, "val_size") else "validation images")
    attack = f"PGD-{val_steps}" if val_steps else "PGD"
    radius = f", ε = {eps:g}" if isinstance(eps, (int, float)) else ""
    start = len(loss_axes)
    accuracy_axes = flat[start:start + 2]
    for ax, key, title in ((accuracy_axes[0], "val_clean", f"clean accuracy ({images})"),
                           (accuracy_axes[1], "val_pgd", f"accuracy under {attack}{radius} ({images})")):
        for run in runs:
            if points := _points(run, key):
                ax.plot([e for e, _ in points], [100 * v for _, v in points], marker="o", markersize=3,
                        label=run.label, **styles[run.label])
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
    lr_ax = flat[start + 2]
    lrs = []
    for run in runs:
        if points := _points(run, "lr"):
            lr_ax.plot(*zip(*points), marker="o", markersize=3, drawstyle="steps-mid", label=run.label,
                       **styles[run.label])
            lrs += [v for _, v in points if v > 0]
    lr_ax.set_title("learning rate (during the epoch)", fontsize=10)
    lr_ax.set_ylabel("learning rate")
    if lrs and max(lrs) / min(lrs) >= 10:
        lr_ax.set_yscale("log")
    for ax in [*loss_axes, *accuracy_axes, lr_ax]:
        _epoch_axis(ax, epochs)
    for ax in flat[start + 3:]:
        ax.axis("off")
    for ax in loss_axes:
        if ax.lines:
            _legend(ax, len(ax.lines))
    _legend(accuracy_axes[0], len(runs))
    fig.tight_layout()
    return fig


def _terms(metrics: dict[str, Any], key: str) -> dict[str, float]:
    terms = metrics.get(key)
    return {k: float(v) for k, v in terms.items() if isinstance(v, (int, float))} if isinstance(terms, dict) else {}


def term_weights(run: RunRecord, name: str) -> list[float]:
    """The weight of loss term ``name`` in each epoch that logged it weighted: weighted ÷ unweighted."""
    weights = []
    for m in run.history:
        raw, weighted = _terms(m, "terms").get(name), _terms(m, "weighted_terms").get(name)
        if raw is not None and weighted is not None and raw != 0:
            weights.append(weighted / raw)
    return weights


def _weight_label(weights: list[float]) -> str:
    if not weights:
        return ""
    lo, hi = weights[0], weights[-1]
    same = math.isclose(min(weights), max(weights), rel_tol=1e-3)
    return f" (× {lo:.3g})" if same else f" (× {lo:.3g} → {hi:.3g})"


def has_weighted_terms(run: RunRecord) -> bool:
    return any(_terms(m, "weighted_terms") for m in run.history)


def plot_loss_terms(runs: list[RunRecord], path: Path) -> None:
    _save(loss_terms_figure(runs), path)


def loss_terms_figure(runs: list[RunRecord]) -> Any:
    """Per run: each loss term's contribution to the loss (weight × term, with the loss they add up to) and,
    below, the unweighted terms. Runs logged before weighted terms existed show the unweighted ones only."""
    plt = _pyplot()
    weighted_rows = any(has_weighted_terms(run) for run in runs)
    cols = min(3, len(runs))
    lines = math.ceil(len(runs) / cols)
    per_run = 2 if weighted_rows else 1
    fig, axes = plt.subplots(lines * per_run, cols, figsize=(5.0 * cols, 3.1 * lines * per_run), squeeze=False)
    for index, run in enumerate(runs):
        line, col = divmod(index, cols)
        column = [axes[line * per_run + k][col] for k in range(per_run)]
        names = list(dict.fromkeys(name for m in run.history for name in _terms(m, "terms")))
        styles = dict(zip(names, _line_styles(len(names))))
        raw_ax = column[-1]
        for name in names:
            points = [(int(m["epoch"]), _terms(m, "terms")[name]) for m in run.history if name in _terms(m, "terms")]
            raw_ax.plot(*zip(*points), marker="o", markersize=3, label=name, **styles[name])
        raw_ax.set_ylabel("term, unweighted")
        raw_ax.set_title(f"{run.label} ({run.methods}): terms before weighting", fontsize=9)
        if names:
            raw_ax.legend(fontsize=7)
        if weighted_rows:
            ax = column[0]
            ax.set_title(f"{run.label} ({run.methods}): contribution to the loss", fontsize=9)
            ax.set_ylabel("weight × term")
            if has_weighted_terms(run):
                for name in names:
                    points = [(int(m["epoch"]), _terms(m, "weighted_terms")[name]) for m in run.history
                              if name in _terms(m, "weighted_terms")]
                    if points:
                        ax.plot(*zip(*points), marker="o", markersize=3,
                                label=name + _weight_label(term_weights(run, name)), **styles[name])
                if loss := _points(run, "loss"):
                    ax.plot(*zip(*loss), color="black", linestyle="--", linewidth=1, label="loss (their sum)")
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "weighted terms not logged\n(run written by an older version)",
                        ha="center", va="center", fontsize=8, transform=ax.transAxes)
                ax.set_yticks([])
        for ax in column:
            _epoch_axis(ax, _epochs([run]))
    for line in range(lines):
        for col in range(cols):
            if line * cols + col >= len(runs):
                for k in range(per_run):
                    axes[line * per_run + k][col].axis("off")
    fig.tight_layout()
    return fig


def plot_robust_vs_eps(curves: dict[str, dict[str, Any]], path: Path, *, norm: str = "linf",
                       train_eps: float | None = None) -> None:
    _save(robust_vs_eps_figure(curves, norm=norm, train_eps=train_eps), path)


def robust_vs_eps_figure(curves: dict[str, dict[str, Any]], *, norm: str = "linf",
                         train_eps: float | None = None) -> Any:
    """PGD accuracy of each run against the radius ε, with the training ε marked when the runs share it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5 if len(curves) > 6 else 6.2, 4.4))
    for (label, curve), style in zip(curves.items(), _line_styles(len(curves))):
        ax.plot(curve["eps"], [100 * a for a in curve["accuracy"]], marker="o", markersize=3, label=label, **style)
    if train_eps:
        ax.axvline(train_eps, color="grey", linestyle=":", linewidth=1, label=f"training ε = {train_eps:g}")
    first = next(iter(curves.values()), {})
    steps, n = first.get("steps", 20), first.get("n")
    ax.set_xlabel(f"ε, radius of the {'L∞' if norm == 'linf' else 'L2'} ball (pixel values in [0, 1])")
    ax.set_ylabel(f"accuracy under PGD-{steps} (%)")
    ax.set_title(f"Robust accuracy against the attack radius{f' (first {n} test images)' if n else ''}",
                 fontsize=10)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    _legend(ax, len(curves) + (1 if train_eps else 0))
    fig.tight_layout()
    return fig


CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist": tuple(str(d) for d in range(10)),
    "svhn": tuple(str(d) for d in range(10)),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
"""Class names of the built-in datasets by label; other datasets show ``class k``."""


def class_name(dataset: str | None, label: int) -> str:
    names = CLASS_NAMES.get(str(dataset), ())
    return names[label] if 0 <= label < len(names) else f"class {label}"


def _signed_map(grad: Tensor) -> Any:
    """A gradient summed over channels and scaled by its largest magnitude into [-1, 1]."""
    g = grad.sum(dim=0)
    return (g / (float(g.abs().max()) or 1.0)).numpy()


GRADIENT_CAPTION = ("Red: brightening the pixel raises the cross-entropy of the true class (the model grows less "
                    "sure of it); blue: brightening it lowers the loss.\nEach map is scaled to its own largest "
                    "magnitude{channels}; robust models' maps tend to trace the object.")


def plot_gradients(images: Tensor, labels: Tensor, columns: list[tuple[str, Tensor]], path: Path, *,
                   dataset: str | None = None) -> None:
    _save(gradients_figure(images, labels, columns, dataset=dataset), path)


def gradients_figure(images: Tensor, labels: Tensor, columns: list[tuple[str, Tensor]], *,
                     dataset: str | None = None) -> Any:
    """A grid: the image (row labelled with its class), then one input-gradient column per model."""
    plt = _pyplot()
    rows = images.shape[0]
    fig, axes = plt.subplots(rows, 1 + len(columns), figsize=(1.9 * (1 + len(columns)) + 1.6, 1.9 * rows + 1.5),
                             squeeze=False, layout="constrained")
    shown = None
    for i in range(rows):
        image = images[i]
        if image.shape[0] == 1:
            axes[i][0].imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            axes[i][0].imshow(image.permute(1, 2, 0).numpy())
        axes[i][0].set_ylabel(class_name(dataset, int(labels[i])), fontsize=9)
        for j, (_, grads) in enumerate(columns, start=1):
            shown = axes[i][j].imshow(_signed_map(grads[i]), cmap="seismic", vmin=-1, vmax=1)
    axes[0][0].set_title("image\n(true class)", fontsize=8)
    for j, (name, _) in enumerate(columns, start=1):
        axes[0][j].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if shown is not None:
        bar = fig.colorbar(shown, ax=axes[:, 1:].ravel().tolist(), shrink=min(0.9, 3.0 / rows + 0.3), ticks=[-1, 0, 1])
        bar.ax.set_yticklabels(["−max", "0", "+max"], fontsize=8)
        bar.set_label("∂ CE / ∂ pixel (scaled per map)", fontsize=8)
    fig.suptitle("Input gradients of the cross-entropy, ∇ₓ CE(model(x), true class)", fontsize=10)
    channels = " (summed over the colour channels)" if images.shape[1] > 1 else ""
    fig.supxlabel(GRADIENT_CAPTION.format(channels=channels), fontsize=7.5)
    return fig


# ---------------------------------------------------------------------------------------------
# Models and data


def input_gradients(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """∇ₓ CE(model(x), y) per image, in eval mode; the model's parameters get no gradient."""
    objective = ce_objective(model, y)
    with model_mode(model, train=False), torch.enable_grad():
        return exact_input_gradient(x.detach(), lambda z: objective(z).sum(), create_graph=False)


def _load_model(path: Path, registry: Registry, device: torch.device) -> tuple[nn.Module, ModelArch, str]:
    """The checkpoint's model on ``device`` in eval mode, BatchNorm folded (the same function, faster attacks),
    its architecture and the digest of its weights."""
    model, arch = model_from_checkpoint(load_checkpoint(path), lambda a: build_model(a, registry.models), str(path))
    digest = weights_fingerprint(model)
    return fold_or_keep(model.to(device).eval(), live=False, what=f"model of {path}"), arch, digest


def _test_data(run: RunRecord, registry: Registry, cache: dict[tuple[str, str | None], ImageData]) -> ImageData:
    name = run.config.get("dataset")
    if not name:
        raise RobustDistillError(f"{run.path}/config.json does not name the dataset; was it written by "
                                 "`robustdistill train`?")
    key = (str(name), run.config.get("data_dir"))
    if key not in cache:
        cache[key] = registry.dataset(str(name)).load(run.config.get("data_dir"), False)
    return cache[key]


def robust_accuracy_curve(model: nn.Module, x: Tensor, y: Tensor, eps_values: list[float], *, steps: int,
                          registry: Registry, batch_size: int, device: torch.device) -> list[float]:
    """PGD accuracy at each ε (step size 2.5·ε/steps; ε = 0 is clean accuracy)."""
    accuracies = []
    for eps in eps_values:
        name = "clean" if eps == 0 else "pgd20"
        settings = EvalSettings(eps=eps, step_size=max(2.5 * eps / steps, 1e-12), pgd_steps=steps)
        result = run_evaluation(model, x, y, [registry.eval_attacks[name]], settings, batch_size=batch_size,
                                device=device)
        accuracies.append(result.accuracy[name])
    return accuracies


# ---------------------------------------------------------------------------------------------
# The command


def _eps_list(text: str) -> list[float]:
    try:
        values = [parse_number(part) for part in text.split(",") if part.strip()]
    except argparse.ArgumentTypeError as err:
        raise RobustDistillError(f"--eps: {err}") from None
    if not values or any(v < 0 or v > 1 for v in values):
        raise RobustDistillError(f"--eps {text!r}: give radii in [0, 1], e.g. 0,0.05,0.1")
    return values


def figure_captions(runs: list[RunRecord], written: list[str]) -> str:
    """One sentence per written figure, for results.md."""
    weighted = any(has_weighted_terms(run) for run in runs)
    captions = {
        "curves.png": "Training curves per epoch: the training loss ("
                      + ("one panel per objective, since losses of different objectives are not comparable"
                         if len({run.methods for run in runs}) <= MAX_LOSS_PANELS else
                         "relative to its first epoch, since losses of different objectives are not comparable")
                      + "), clean and PGD accuracy on the validation images in percent, and the learning rate.",
        "loss_terms.png": ("Each run's loss terms per epoch: on top each term's contribution to the loss (weight × "
                           "term, legend giving the weight, dashed: the loss they add up to), below the same terms "
                           "unweighted." if weighted else
                           "Each run's loss terms per epoch, unweighted (these runs did not log the weights)."),
        "robust_vs_eps.png": "Accuracy of each run's final model under PGD against the radius ε of the attack "
                             "(ε = 0: clean accuracy), dotted: the training ε.",
        "gradients.png": "Input gradients of the cross-entropy for a few test images (rows, named by their true "
                         "class), the teacher's first and then each run's: red pixels raise the loss when "
                         "brightened, blue ones lower it, each map scaled to its largest magnitude.",
    }
    lines = ["## Figures", ""]
    for name in written:
        if name in captions:
            lines += [f"![{name}]({name})", "", f"**{name}** — {captions[name]}", ""]
    return "\n".join(lines)


def loss_terms_table(runs: list[RunRecord]) -> str:
    """Markdown table of each run's loss terms in its last epoch: unweighted, weight, weighted, share."""
    header = ["run", "term", "term, unweighted", "weight", "weight × term", "share of the loss"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        last = run.history[-1] if run.history else {}
        raw, weighted = _terms(last, "terms"), _terms(last, "weighted_terms")
        loss = last.get("loss")
        for name, value in raw.items():
            contribution = weighted.get(name)
            weight = contribution / value if contribution is not None and value else None
            share = (f"{100 * contribution / loss:.1f}%" if contribution is not None
                     and isinstance(loss, (int, float)) and loss else "—")
            lines.append(f"| {run.label} | {name} | {value:.4g} | {'—' if weight is None else f'{weight:.4g}'} | "
                         f"{'—' if contribution is None else f'{contribution:.4g}'} | {share} |")
    notes = [run.label for run in runs if run.history and not _terms(run.history[-1], "weighted_terms")]
    text = "\n".join(lines) + "\n"
    if notes:
        text += f"\nWeights not logged (runs written by an older version): {', '.join(notes)}.\n"
    return text


def report_command(args: argparse.Namespace, registry: Registry) -> int:
    """Write the report; prints what it wrote. Returns 0."""
    for name, value in (("--pgd-steps", args.pgd_steps), ("--subset", args.subset),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            raise RobustDistillError(f"{name} {value} must be at least 1")
    if args.grad_images < 0:
        raise RobustDistillError(f"--grad-images {args.grad_images} must be 0 or more")
    fixed_eps = _eps_list(args.eps) if args.eps is not None else None
    runs = [load_run(path, args.eval_json) for path in args.runs]
    _unique_labels(runs)
    _pyplot()  # fail before any work when matplotlib is missing
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    plot_curves(runs, out / "curves.png")
    plot_loss_terms(runs, out / "loss_terms.png")
    written += ["curves.png", "loss_terms.png"]

    if not args.no_models:
        written += _model_figures(args, runs, registry, out, fixed_eps)

    text = ("# Results\n\n" + results_table(runs) + "\n## Loss terms in the last epoch\n\n"
            "The loss is the sum of weighted terms; *term, unweighted* is the term's mean over the epoch, *weight × "
            "term* its contribution to the loss.\n\n" + loss_terms_table(runs) + "\n" + figure_captions(runs, written))
    atomic_write_text(out / "results.md", text)
    written.append("results.md")
    for run in runs:
        for note in run.notes:
            print(f"note: {run.label}: {note}")
    print(f"wrote {', '.join(written)} to {out}")
    return 0


def _model_figures(args: argparse.Namespace, runs: list[RunRecord], registry: Registry, out: Path,
                   fixed_eps: list[float] | None) -> list[str]:
    device = resolve_device(args.device)
    data_cache: dict[tuple[str, str | None], ImageData] = {}
    curves: dict[str, dict[str, Any]] = {}
    gradient_columns: list[tuple[str, Tensor]] = []
    digests: dict[str, str] = {}
    grad_images: Tensor | None = None
    grad_labels: Tensor | None = None
    grad_info: DatasetInfo | None = None
    for run in runs:
        if run.checkpoint is None:
            run.notes.append("no last.pt; skipped in the model figures")
            continue
        print(f"{run.label}: robust accuracy vs ε and input gradients", flush=True)
        data = _test_data(run, registry, data_cache)
        model, _, digest = _load_model(run.checkpoint, registry, device)
        n = min(args.subset, int(data.test_y.shape[0]))
        x = to_unit_float(data.test_x[:n])
        y = data.test_y[:n].long()
        run_eps = float(run.config.get("eps") or data.info.eps)
        eps_values = fixed_eps or [round(f * run_eps, 6) for f in DEFAULT_EPS_FACTORS]
        accuracy = robust_accuracy_curve(model, x, y, eps_values, steps=args.pgd_steps, registry=registry,
                                         batch_size=args.batch_size, device=device)
        curves[run.label] = {"eps": eps_values, "accuracy": accuracy, "steps": args.pgd_steps, "n": n}
        if args.grad_images:
            k = min(args.grad_images, n)
            if grad_images is None:
                grad_images, grad_labels, grad_info = x[:k], y[:k], data.info
            if grad_images.shape[1:] == x.shape[1:]:
                grads = input_gradients(model, grad_images.to(device), grad_labels.to(device)).cpu()
                title = f"{run.label}\n({run.methods})"
                gradient_columns.append((title, grads))
                digests[title] = digest
            else:
                run.notes.append("images of another shape than the first run's; left out of gradients.png")
    written = []
    if curves:
        atomic_write_text(out / "robust_vs_eps.json", json.dumps(curves, indent=2) + "\n")
        train_eps = _common(runs, "eps")
        plot_robust_vs_eps(curves, out / "robust_vs_eps.png", norm=str(_common(runs, "norm") or "linf"),
                           train_eps=float(train_eps) if isinstance(train_eps, (int, float)) else None)
        written += ["robust_vs_eps.png", "robust_vs_eps.json"]
    if gradient_columns and grad_images is not None and grad_labels is not None:
        teacher_options = _teacher_options(args, runs)
        if teacher_options is not None and grad_info is not None:
            _add_teacher_column(teacher_options, grad_info, registry, device, grad_images, grad_labels,
                                gradient_columns, digests)
        plot_gradients(grad_images, grad_labels, gradient_columns, out / "gradients.png",
                       dataset=grad_info.name if grad_info is not None else None)
        written.append("gradients.png")
    return written


def _teacher_label(spec: str) -> str:
    """``robustbench:NAME`` as is; a run directory or its ``last.pt`` by the run's name."""
    if spec.startswith(ROBUSTBENCH):
        return spec
    path = Path(spec)
    return (path.name if path.is_dir() else path.parent.name) or spec


def _teacher_options(args: argparse.Namespace, runs: list[RunRecord]) -> dict[str, Any] | None:
    """The teacher of the gradient figure: ``--teacher`` with the report's teacher options, else the first run's
    ``--teacher`` with that run's options (``--robustbench-dir`` given here overrides the run's)."""
    if args.teacher:
        return {"spec": args.teacher, "arch": args.teacher_arch, "normalize": args.teacher_normalize,
                "robustbench_dir": args.robustbench_dir, "activation": "relu", "explicit": True}
    config = next((r.config for r in runs if r.config.get("teacher")), None)
    if config is None:
        return None
    teachers = role_values(config["teacher"], "--teacher")
    role = DEFAULT_TEACHER if DEFAULT_TEACHER in teachers else next(iter(teachers))
    archs = role_values(config.get("teacher_arch"), "--teacher-arch")
    norms = role_values(config.get("teacher_normalize"), "--teacher-normalize")
    return {"spec": teachers[role], "arch": archs.get(role, archs.get(DEFAULT_TEACHER)),
            "normalize": norms.get(role, norms.get(DEFAULT_TEACHER)),
            "robustbench_dir": args.robustbench_dir or config.get("robustbench_dir"),
            "activation": config.get("activation", "relu"), "explicit": False}


def _add_teacher_column(options: dict[str, Any], info: DatasetInfo, registry: Registry, device: torch.device,
                        images: Tensor, labels: Tensor, columns: list[tuple[str, Tensor]],
                        digests: dict[str, str]) -> None:
    """Put the teacher's gradients first, once: a run with the teacher's weights becomes the teacher column. A
    teacher named by the runs' options that cannot be loaded here, or one for other images, is left out with
    a note; an explicit ``--teacher`` that cannot be loaded is an error."""
    spec = options["spec"]
    try:
        loaded = load_model_spec(spec, info=info, models=registry.models, arch=options["arch"],
                                 normalize=options["normalize"], robustbench_dir=options["robustbench_dir"],
                                 activation=options["activation"])
    except RobustDistillError as err:
        if options["explicit"]:
            raise
        print(f"note: the runs' teacher {spec!r} is not loaded ({err}); gradients.png shows the runs only")
        return
    digest = weights_fingerprint(loaded.model)
    for index, (title, grads) in enumerate(columns):
        if digests.get(title) == digest:
            columns.insert(0, (f"teacher\n({title.splitlines()[0]})", columns.pop(index)[1]))
            return
    arch = loaded.arch
    if (arch.in_channels, arch.image_size) != (images.shape[1], images.shape[-1]):
        print(f"note: teacher {spec!r} takes {arch.in_channels}×{arch.image_size}² images; "
              "gradients.png shows the runs only")
        return
    teacher = fold_or_keep(loaded.model.to(device).eval(), live=False, what=f"teacher {spec}")
    grads = input_gradients(teacher, images.to(device), labels.to(device)).cpu()
    columns.insert(0, (f"teacher\n({_teacher_label(spec)})", grads))
