"""The ``robustdistill report`` command."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._checkpoint import atomic_write_text
from .._command_config import ReportConfig
from .._config import parse_number, resolve_device
from .._eval import (
    to_unit_float,
    weights_fingerprint,
)
from .._folding import fold_or_keep
from .._registry import DatasetInfo, ImageData, Registry, RobustDistillError
from .._resolve import recorded_teacher
from .._specs import ROBUSTBENCH, load_model_spec
from .computations import (
    _load_model,
    _test_data,
    input_gradients,
    robust_accuracy_curve,
)
from .figures import (
    _common,
    _pyplot,
    plot_curves,
    plot_gradients,
    plot_loss_terms,
    plot_robust_vs_eps,
)
from .records import DEFAULT_EPS_FACTORS, RunRecord, _unique_labels, load_run
from .tables import figure_captions, loss_terms_table, per_class_table, results_table, sanity_table


def _eps_list(text: str) -> list[float]:
    try:
        values = [parse_number(part) for part in text.split(",") if part.strip()]
    except argparse.ArgumentTypeError as err:
        raise RobustDistillError(f"--eps: {err}") from None
    if not values or any(v < 0 or v > 1 for v in values):
        raise RobustDistillError(f"--eps {text!r}: give radii in [0, 1], e.g. 0,0.05,0.1")
    return values


def report_command(args: ReportConfig, registry: Registry) -> int:
    """Write the report; prints what it wrote. Returns 0."""
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

    if args.models:
        written += _model_figures(args, runs, registry, out, fixed_eps)

    classes = per_class_table(runs)
    sanity = sanity_table(runs)
    text = ("# Results\n\n" + results_table(runs)
            + (f"\n## Accuracy per class\n\nAccuracy on each class's test images (by label), in percent.\n\n{classes}"
               if classes else "")
            + ("\n## Sanity checks of the evaluation\n\nThe verdicts of `robustdistill eval --sanity` (ok, warning, "
               "failed) with each check's figure (more is worse), and what each check that did not pass means.\n\n"
               f"{sanity}" if sanity else "")
            + "\n## Loss terms in the last epoch\n\n"
            "The loss is the sum of weighted terms; *term, unweighted* is the term's mean over the epoch, *weight × "
            "term* its contribution to the loss.\n\n" + loss_terms_table(runs) + "\n" + figure_captions(runs, written))
    atomic_write_text(out / "results.md", text)
    written.append("results.md")
    for run in runs:
        for note in run.notes:
            print(f"note: {run.label}: {note}")
    print(f"wrote {', '.join(written)} to {out}")
    return 0


def _model_figures(args: ReportConfig, runs: list[RunRecord], registry: Registry, out: Path,
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


def _teacher_options(args: ReportConfig, runs: list[RunRecord]) -> dict[str, Any] | None:
    """The teacher of the gradient figure: ``--teacher`` with the report's teacher options, else the first run's
    ``--teacher`` with that run's options (``--robustbench-dir`` given here overrides the run's)."""
    if args.teacher:
        return {"spec": args.teacher, "arch": args.teacher_arch, "normalize": args.teacher_normalize,
                "robustbench_dir": args.robustbench_dir, "activation": "relu", "explicit": True}
    config = next((r.config for r in runs if r.config.get("teacher")), None)
    recorded = recorded_teacher(config) if config is not None else None
    if recorded is None:
        return None
    return {**recorded, "robustbench_dir": args.robustbench_dir or recorded["robustbench_dir"], "explicit": False}


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
