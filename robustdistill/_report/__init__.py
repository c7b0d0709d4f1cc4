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
- ``results.md``: a Markdown table of the runs' evaluations with method, seed, epochs and wall time (and each
  attack's worst-class accuracy), the accuracy per class, the loss terms of the last epoch, and a caption per
  figure.

The run records are :mod:`.records`, the Markdown :mod:`.tables`, the figures :mod:`.figures`, what is computed
from models :mod:`.computations`, and the command :mod:`.command`.
"""
from __future__ import annotations

from .command import report_command
from .computations import input_gradients, robust_accuracy_curve
from .figures import (
           curves_figure,
           gradients_figure,
           loss_terms_figure,
           robust_vs_eps_figure,
)
from .records import RunRecord, load_run
from .tables import figure_captions, loss_terms_table, per_class_table, results_table, sanity_table

__all__ = ["RunRecord", "curves_figure", "figure_captions", "gradients_figure", "input_gradients", "load_run",
           "loss_terms_figure", "loss_terms_table", "per_class_table", "report_command", "results_table",
           "robust_accuracy_curve", "robust_vs_eps_figure", "sanity_table"]
