"""The report's figures: training curves, loss terms, robust accuracy against ε, input-gradient maps."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch import Tensor

from .._registry import RobustDistillError
from .records import RunRecord


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
