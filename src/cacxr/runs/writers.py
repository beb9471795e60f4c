"""Writers of the run-folder files that training and evaluation produce: a fold's files, the run's
predictions.csv and its plots (the names and the layout belong to :mod:`cacxr.runs.folder`).

A fold's fold.json is written last: a fold is finished exactly when its fold.json exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cacxr.core import AGATSTON_BANDS, agatston_band, predicted_label, true_label, write_json
from cacxr.runs.folder import (
    FOLD_RECORD,
    PREDICTIONS,
    csv_number,
    write_csv,
)
from cacxr.stats import plots

__all__ = [
    "write_fold_files",
    "write_run_predictions",
    "write_run_plots",
    "write_score_plots",
]

_FOLD_COLUMNS = ("patient_id", "fold", "cac_score", "label", "score")
_OPTIONAL_COLUMNS = ("site", "log_cac", "probability", "score_compare", "predicted_label_compare", "gate")








def write_fold_files(
    directory: Path,
    task: str,
    record: dict[str, Any],
    test_ids: Sequence[str],
    test_scores: np.ndarray,
    cac: dict[str, float],
    threshold: float,
    viz: bool,
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """The fold's predictions.csv and plots, then its fold.json (which marks the fold as finished).

    Args:
        directory: ``RUN/fold_<k>``.
        task: ``classification`` or ``regression``.
        record: the fold.json content.
        test_ids: the fold's test patients.
        test_scores: their scores (probability or predicted CAC).
        cac: true CAC of every patient.
        threshold: positive means CAC > threshold.
        viz: draw roc.png and loss.png.
        extra: more score columns (regression: ``log_cac`` and ``probability``).
    """
    fold = int(record["fold"])
    extra = extra or {}
    rows = [
        {
            "patient_id": pid,
            "fold": fold,
            "cac_score": csv_number(cac[pid]),
            "label": int(true_label(cac[pid], threshold)),
            "score": csv_number(score),
            **{name: csv_number(values[i]) for name, values in extra.items()},
        }
        for i, (pid, score) in enumerate(zip(test_ids, test_scores, strict=True))
    ]
    write_csv(directory / PREDICTIONS, [*_FOLD_COLUMNS, *extra], rows)
    if viz:
        labels = [row["label"] for row in rows]
        plots.roc_plot(
            [(f"fold {fold} test", labels, test_scores)],
            directory / "roc.png",
            title=f"Fold {fold}: ROC on its test patients ({_positive(threshold)})",
        )
        plots.loss_plot({fold: record["history"]}, directory / "loss.png", {fold: record["best_epoch"]})
    write_json(directory / FOLD_RECORD, record)


def write_run_predictions(
    path: Path, task: str, rows: Sequence[dict[str, Any]], decision_thresholds: dict[Any, float]
) -> None:
    """RUN/predictions.csv (also an evaluation folder's): every patient once, with its predicted label.

    Columns: patient_id, fold, [site,] cac_score, label, score (probability, or predicted CAC),
    predicted_label; regression adds log_cac (predicted, unclipped) and probability (calibrated
    P(CAC > T)) when the rows have them, and cac_band and predicted_band (Agatston bands); an evaluation
    with a compared run adds score_compare and predicted_label_compare; an evaluation adds the view gate's verdict (gate).

    Args:
        path: the CSV file.
        task: ``classification`` or ``regression``.
        rows: one dict per patient; ``predicted_label`` is computed as score >= its fold's threshold
            unless given.
        decision_thresholds: fold -> its decision threshold.
    """
    present = [c for c in _OPTIONAL_COLUMNS if rows and all(c in row for row in rows)]
    columns = [*_FOLD_COLUMNS, "predicted_label"]
    if "site" in present:
        columns.insert(2, "site")
    columns += [c for c in ("log_cac", "probability") if c in present]
    if task == "regression":
        columns += ["cac_band", "predicted_band"]
    columns += [c for c in ("score_compare", "predicted_label_compare", "gate") if c in present]
    out = []
    for row in sorted(rows, key=lambda r: r["patient_id"]):
        record = {
            **row,
            **{c: csv_number(row[c]) for c in ("cac_score", "score", "log_cac", "probability", "score_compare")
               if c in row},
            "predicted_label": int(row.get("predicted_label", predicted_label(row["score"], decision_thresholds[row["fold"]]))),
        }  # fmt: skip
        if task == "regression":
            record["cac_band"] = AGATSTON_BANDS[int(agatston_band(row["cac_score"]))]
            record["predicted_band"] = AGATSTON_BANDS[int(agatston_band(row["score"]))]
        out.append(record)
    write_csv(path, columns, out)


def write_run_plots(
    plots_dir: Path,
    task: str,
    threshold: float,
    rows: Sequence[dict[str, Any]],
    metrics: dict[str, Any],
    histories: dict[int, list[dict]],
    best_epochs: dict[int, int],
) -> list[Path]:
    """RUN/plots/: ROC per fold and pooled, confusion, losses, score or error by band, calibration or scatter.

    Args:
        plots_dir: the folder to write into.
        task: ``classification`` or ``regression``.
        threshold: positive means CAC > threshold.
        rows: all out-of-fold predictions (``cacxr.runs.folder.read_run_predictions`` rows).
        metrics: the metrics.json content.
        histories: fold -> its epoch history.
        best_epochs: fold -> the selected epoch.

    Returns:
        The PNG files written.
    """
    folds = sorted({row["fold"] for row in rows})
    y = np.array([row["label"] for row in rows])
    score = np.array([row["score"] for row in rows])
    cac = np.array([row["cac_score"] for row in rows])
    per_fold = [(f"fold {k}", y[[r["fold"] == k for r in rows]], score[[r["fold"] == k for r in rows]]) for k in folds]
    written = write_score_plots(
        plots_dir, task, threshold, y, cac, score, metrics["pooled"],
        curves=per_fold, name="pooled", scope="out-of-fold predictions",
        confusion_title="Confusion matrix (each fold at its own decision threshold)",
    )  # fmt: skip
    return [*written[:2], plots.loss_plot(histories, plots_dir / "loss.png", best_epochs), *written[2:]]


def write_score_plots(
    plots_dir: Path,
    task: str,
    threshold: float,
    y: np.ndarray,
    cac: np.ndarray,
    score: np.ndarray,
    pooled: dict[str, Any],
    *,
    curves: Sequence[tuple[str, Any, Any]],
    name: str,
    scope: str,
    confusion_title: str,
) -> list[Path]:
    """The plot set of scored patients (a run's out-of-fold predictions, or an evaluation's).

    ROC (``curves`` thin, the scores ``name`` thick with the pooled CI), confusion matrix, then
    :func:`cacxr.stats.plots.outcome_plots` (score or error by band, calibration or scatter).

    Returns:
        The PNG files written.
    """
    positive = _positive(threshold)
    written = [
        plots.roc_plot(
            list(curves),
            plots_dir / "roc.png",
            title=f"ROC, {scope} ({positive})",
            pooled=(name, y, score),
            ci=tuple(pooled["auc_ci"]),
        ),
        plots.confusion_plot(
            pooled["confusion_matrix"],
            [f"CAC <= {threshold:g}", positive],
            plots_dir / "confusion.png",
            title=confusion_title,
        ),
    ]
    return written + plots.outcome_plots(plots_dir, task, y, cac, score, pooled)


def _positive(threshold: float) -> str:
    return f"CAC > {threshold:g}"



