"""``robustdistill report``: figures and a results table for one or more training runs.

From each run directory (``robustdistill train --out DIR``) it reads ``metrics.jsonl``, ``config.json``,
``last.pt`` and, when present, the ``robustdistill eval --json`` file (``eval.json`` by default), and
writes into ``--out``:

- ``curves.png``: training loss, per-epoch clean and PGD accuracy, and learning rate of every run;
- ``loss_terms.png``: each run's named loss terms per epoch;
- ``robust_vs_eps.png`` / ``.json``: PGD accuracy of each run's model against the radius ε;
- ``gradients.png``: input gradients of the cross-entropy for a few test images, the teacher's next
  to each student's (the picture IGAM and PAG are built on);
- ``results.md``: a Markdown table of the runs' evaluations with method, seed, epochs and wall time.
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

from .attacks import ce_objective, model_mode
from .checkpoint import atomic_write_text, load_checkpoint, model_from_checkpoint
from .config import parse_number, resolve_device
from .evaluate import RESULT_METADATA_KEYS, EvalSettings, run_evaluation, to_unit_float
from .folding import fold_or_keep
from .models import build_model
from .registry import DatasetInfo, ImageData, ModelArch, Registry, RobustDistillError
from .step import exact_input_gradient
from .zoo import ROBUSTBENCH, add_source_arguments, load_model_spec

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
               _duration(sum(seconds)), *(_percent(evaluation.get(a)) for a in attacks),
               str(evaluation.get("n", "—"))]
        lines.append("| " + " | ".join(row) + " |")
    missing = [r.label for r in runs if r.evaluation is None]
    if missing:
        lines.append("")
        lines.append(f"No evaluation file for: {', '.join(missing)} (write one with `robustdistill eval "
                     "RUN/last.pt --json RUN/eval.json`).")
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


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


def _epoch_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def plot_curves(runs: list[RunRecord], path: Path) -> None:
    """Loss, per-epoch clean / PGD accuracy and learning rate of every run."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12.5 if len(runs) > 6 else 11, 7.5))
    panels = [("loss", "training loss", axes[0][0]), ("val_clean", "clean accuracy (validation)", axes[0][1]),
              ("val_pgd", "PGD accuracy (validation)", axes[1][0]), ("lr", "learning rate", axes[1][1])]
    styles = _line_styles(len(runs))
    for key, title, ax in panels:
        for run, style in zip(runs, styles):
            points = [(m["epoch"], m[key]) for m in run.history if isinstance(m.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=run.label, **style)
        ax.set_title(title)
        _epoch_axis(ax)
    axes[1][1].set_yscale("log")
    _legend(axes[0][1], len(runs))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_loss_terms(runs: list[RunRecord], path: Path) -> None:
    """One panel per run with each named loss term per epoch."""
    plt = _pyplot()
    cols = min(3, len(runs))
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
    for ax, run in zip(axes.flat, runs):
        names = list(dict.fromkeys(name for m in run.history for name in m.get("terms", {})))
        for name in names:
            points = [(m["epoch"], m["terms"][name]) for m in run.history if name in m.get("terms", {})]
            ax.plot(*zip(*points), marker="o", markersize=3, label=name)
        ax.set_title(f"{run.label} ({run.methods})", fontsize=9)
        _epoch_axis(ax)
        if names:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_robust_vs_eps(curves: dict[str, dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5 if len(curves) > 6 else 6, 4.2))
    for (label, curve), style in zip(curves.items(), _line_styles(len(curves))):
        ax.plot(curve["eps"], [100 * a for a in curve["accuracy"]], marker="o", markersize=3, label=label, **style)
    ax.set_xlabel("ε (L∞)")
    ax.set_ylabel(f"PGD-{next(iter(curves.values()))['steps']} accuracy (%)" if curves else "accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    _legend(ax, len(curves))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _gradient_image(grad: Tensor) -> tuple[Any, dict[str, Any]]:
    """One gradient map ready for ``imshow``: signed map for one channel, min-max scaled RGB for three."""
    if grad.shape[0] == 1:
        g = grad[0]
        scale = float(g.abs().max()) or 1.0
        return g.numpy(), {"cmap": "seismic", "vmin": -scale, "vmax": scale}
    lo, hi = grad.min(), grad.max()
    return ((grad - lo) / (hi - lo).clamp_min(1e-12)).permute(1, 2, 0).numpy(), {}


def plot_gradients(images: Tensor, labels: Tensor, columns: list[tuple[str, Tensor]], path: Path) -> None:
    """A grid: the image, then one input-gradient column per model."""
    plt = _pyplot()
    rows = images.shape[0]
    fig, axes = plt.subplots(rows, 1 + len(columns), figsize=(1.9 * (1 + len(columns)), 1.9 * rows),
                             squeeze=False)
    for i in range(rows):
        image = images[i]
        if image.shape[0] == 1:
            axes[i][0].imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            axes[i][0].imshow(image.permute(1, 2, 0).numpy())
        axes[i][0].set_ylabel(f"label {int(labels[i])}", fontsize=8)
        for j, (_, grads) in enumerate(columns, start=1):
            data, style = _gradient_image(grads[i])
            axes[i][j].imshow(data, **style)
    axes[0][0].set_title("image", fontsize=8)
    for j, (name, _) in enumerate(columns, start=1):
        axes[0][j].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Models and data


def input_gradients(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """∇ₓ CE(model(x), y) per image, in eval mode; the model's parameters get no gradient."""
    objective = ce_objective(model, y)
    with model_mode(model, train=False), torch.enable_grad():
        return exact_input_gradient(x.detach(), lambda z: objective(z).sum(), create_graph=False)


def _teacher_label(spec: str) -> str:
    """``robustbench:NAME`` as is; a run directory or its ``last.pt`` by the run's name."""
    if spec.startswith(ROBUSTBENCH):
        return spec
    path = Path(spec)
    return (path.name if path.is_dir() else path.parent.name) or spec


def _load_model(path: Path, registry: Registry, device: torch.device) -> tuple[nn.Module, ModelArch]:
    """The checkpoint's model on ``device`` in eval mode, BatchNorm folded (the same function, faster attacks)."""
    model, arch = model_from_checkpoint(load_checkpoint(path), lambda a: build_model(a, registry.models), str(path))
    return fold_or_keep(model.to(device).eval(), live=False, what=f"model of {path}"), arch


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


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by `robustdistill train`")
    parser.add_argument("--out", default="report", metavar="DIR", help="where to write the report (default: %(default)s)")
    parser.add_argument("--eval-json", default="eval.json", metavar="NAME",
                        help="the evaluation file in each run directory (default: %(default)s)")
    parser.add_argument("--eps", default=None, metavar="LIST",
                        help="radii of the robust-accuracy curve, e.g. 0,0.05,0.1,8/255 "
                             "(default: 0, ¼, ½, ¾, 1, 1.5, 2 × each run's training ε)")
    parser.add_argument("--pgd-steps", type=int, default=20, help="PGD steps of the curve (default: %(default)s)")
    parser.add_argument("--subset", type=int, default=1000, metavar="N",
                        help="test images for the curve (default: %(default)s)")
    parser.add_argument("--grad-images", type=int, default=6, metavar="K",
                        help="test images in the gradient figure (default: %(default)s)")
    parser.add_argument("--teacher", default=None, metavar="SPEC",
                        help="teacher whose gradients are shown: a checkpoint, a run directory or robustbench:NAME "
                             "(default: the first run's --teacher, loaded with that run's options)")
    parser.add_argument("--teacher-arch", default=None, metavar="NAME",
                        help="architecture of a --teacher that is a plain state_dict (as for train)")
    add_source_arguments(parser)
    parser.add_argument("--no-models", action="store_true",
                        help="skip the figures that load models (robust accuracy vs ε, gradients)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")


def _eps_list(text: str) -> list[float]:
    try:
        values = [parse_number(part) for part in text.split(",") if part.strip()]
    except argparse.ArgumentTypeError as err:
        raise RobustDistillError(f"--eps: {err}") from None
    if not values or any(v < 0 or v > 1 for v in values):
        raise RobustDistillError(f"--eps {text!r}: give radii in [0, 1], e.g. 0,0.05,0.1")
    return values


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

    atomic_write_text(out / "results.md", "# Results\n\n" + results_table(runs))
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
    grad_images: Tensor | None = None
    grad_labels: Tensor | None = None
    grad_info: DatasetInfo | None = None
    for run in runs:
        if run.checkpoint is None:
            run.notes.append("no last.pt; skipped in the model figures")
            continue
        print(f"{run.label}: robust accuracy vs ε and input gradients", flush=True)
        data = _test_data(run, registry, data_cache)
        model, _ = _load_model(run.checkpoint, registry, device)
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
                gradient_columns.append((run.label, grads))
            else:
                run.notes.append("images of another shape than the first run's; left out of gradients.png")
    written = []
    if curves:
        atomic_write_text(out / "robust_vs_eps.json", json.dumps(curves, indent=2) + "\n")
        plot_robust_vs_eps(curves, out / "robust_vs_eps.png")
        written += ["robust_vs_eps.png", "robust_vs_eps.json"]
    if gradient_columns and grad_images is not None and grad_labels is not None:
        teacher_options = _teacher_options(args, runs)
        if teacher_options is not None and grad_info is not None:
            teacher = _load_teacher_for_gradients(teacher_options, grad_info, registry, device, grad_images)
            if teacher is not None:
                grads = input_gradients(teacher, grad_images.to(device), grad_labels.to(device)).cpu()
                gradient_columns.insert(0, (f"teacher {_teacher_label(teacher_options['spec'])}", grads))
        plot_gradients(grad_images, grad_labels, gradient_columns, out / "gradients.png")
        written.append("gradients.png")
    return written


def _teacher_options(args: argparse.Namespace, runs: list[RunRecord]) -> dict[str, Any] | None:
    """The teacher of the gradient figure: ``--teacher`` with the report's teacher options, else the first run's
    ``--teacher`` with that run's options (``--robustbench-dir`` given here overrides the run's)."""
    if args.teacher:
        return {"spec": args.teacher, "arch": args.teacher_arch, "normalize": args.teacher_normalize,
                "robustbench_dir": args.robustbench_dir, "activation": "relu", "explicit": True}
    config = next((r.config for r in runs if r.config.get("teacher")), None)
    if config is None:
        return None
    return {"spec": str(config["teacher"]), "arch": config.get("teacher_arch"),
            "normalize": config.get("teacher_normalize"),
            "robustbench_dir": args.robustbench_dir or config.get("robustbench_dir"),
            "activation": config.get("activation", "relu"), "explicit": False}


def _load_teacher_for_gradients(options: dict[str, Any], info: DatasetInfo, registry: Registry,
                                device: torch.device, images: Tensor) -> nn.Module | None:
    """The teacher on ``device``, or ``None`` with a note when it cannot be shown next to the students (a
    teacher named by the runs' options that cannot be loaded here, or one for other images)."""
    spec = options["spec"]
    try:
        loaded = load_model_spec(spec, info=info, models=registry.models, arch=options["arch"],
                                 normalize=options["normalize"], robustbench_dir=options["robustbench_dir"],
                                 activation=options["activation"])
    except RobustDistillError as err:
        if options["explicit"]:
            raise
        print(f"note: the runs' teacher {spec!r} is not loaded ({err}); gradients.png shows the students only")
        return None
    arch = loaded.arch
    if (arch.in_channels, arch.image_size) != (images.shape[1], images.shape[-1]):
        print(f"note: teacher {spec!r} takes {arch.in_channels}×{arch.image_size}² images; "
              "gradients.png shows the students only")
        return None
    return fold_or_keep(loaded.model.to(device).eval(), live=False, what=f"teacher {spec}")
