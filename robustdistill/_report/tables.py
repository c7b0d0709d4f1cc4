"""The report's Markdown: the results table, the accuracy per class, the loss terms of the last epoch, the figures'
captions."""
from __future__ import annotations

import math
from typing import Any

from .._config import format_duration
from .._eval import (
    RESULT_METADATA_KEYS,
)
from .figures import MAX_LOSS_PANELS, _terms, has_weighted_terms
from .records import EVAL_COLUMNS, RunRecord


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


def _worst_class(run: RunRecord) -> dict[str, Any]:
    return (run.evaluation or {}).get("worst_class") or {}


def _per_class(run: RunRecord) -> dict[str, Any]:
    return (run.evaluation or {}).get("per_class") or {}


def results_table(runs: list[RunRecord]) -> str:
    """Markdown table: one row per run, accuracies in percent; the worst-class accuracy of each attack whose
    evaluation counted it."""
    attacks = eval_columns(runs)
    worst = [a for a in attacks if any(a in _worst_class(run) for run in runs)]
    header = ["run", "method", "model", "seed", "epochs", "s/epoch", "wall time",
              *(EVAL_COLUMNS.get(a, a) for a in attacks), *(f"{EVAL_COLUMNS.get(a, a)} worst class" for a in worst),
              "eval images"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        seconds = [float(m.get("seconds", m.get("train_seconds", 0.0))) for m in run.history]
        train_seconds = [float(m.get("train_seconds", 0.0)) for m in run.history]
        evaluation = run.evaluation or {}
        row = [run.label, run.methods, str(run.config.get("model", "?")), str(run.config.get("seed", "?")),
               str(len(run.history)), f"{sum(train_seconds) / max(len(train_seconds), 1):.1f}",
               format_duration(sum(seconds)), *(_percent(evaluation.get(a)) for a in attacks),
               *(_percent(_worst_class(run).get(a)) for a in worst), str(evaluation.get("n", "—"))]
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


def per_class_table(runs: list[RunRecord]) -> str:
    """Markdown table of the accuracy on each class (columns, by label), one row per run and attack; empty when
    no evaluation counted it."""
    rows = [(run, attack, _per_class(run)[attack]) for run in runs for attack in eval_columns([run])
            if isinstance(_per_class(run).get(attack), list)]
    if not rows:
        return ""
    classes = max(len(values) for _, _, values in rows)
    header = ["run", "attack", *map(str, range(classes))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, attack, values in rows:
        cells = [_percent(values[c]) if c < len(values) else "—" for c in range(classes)]
        lines.append(f"| {run.label} | {EVAL_COLUMNS.get(attack, attack)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sanity_table(runs: list[RunRecord]) -> str:
    """Markdown table of the ``eval --sanity`` verdicts: one row per run that has them, a column per check (its
    verdict and figure), and the meaning of each check that did not pass; empty when no run has them."""
    sections = [(run, (run.evaluation or {}).get("sanity")) for run in runs]
    sections = [(run, section) for run, section in sections if isinstance(section, dict)]
    if not sections:
        return ""
    names = list(dict.fromkeys(c["name"] for _, section in sections for c in section["checks"]))
    header = ["run", "images", "verdict", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for run, section in sections:
        checks = {c["name"]: c for c in section["checks"]}
        cells = [f"{checks[n]['verdict']} ({checks[n]['figure']:.3g})" if n in checks else "—" for n in names]
        lines.append(f"| {run.label} | {section['images']} | {section['verdict']} | " + " | ".join(cells) + " |")
        notes += [f"- {run.label}, {c['name']} ({c['verdict']}): {c['meaning']}" for c in section["checks"]
                  if c["verdict"] != "ok"]
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


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
