"""The files of a run folder that training writes and merging reads back.

Per fold (``RUN/fold_<k>/``): ``model.safetensors`` (with ``--save``), ``predictions.csv`` (the fold's test
patients), ``roc.png`` and ``loss.png`` (with ``--viz``) and ``fold.json``, written last: a fold is finished
exactly when its fold.json exists. Per run: ``folds.csv``, ``predictions.csv`` (all out-of-fold
predictions) and ``plots/*.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cacxr import plots
from cacxr.atomic import write_json, write_text
from cacxr.errors import CacxrError
from cacxr.metrics import AGATSTON_BANDS, agatston_band
from cacxr.splits import Fold, folds_table

__all__ = [
    "FOLD_RECORD",
    "MODEL_FILE",
    "PREDICTIONS",
    "fold_dir",
    "fold_done",
    "read_fold_record",
    "read_predictions",
    "write_folds_csv",
    "write_fold_files",
    "write_run_predictions",
    "write_run_plots",
]

FOLD_RECORD = "fold.json"
MODEL_FILE = "model.safetensors"
PREDICTIONS = "predictions.csv"
_FOLD_COLUMNS = ("patient_id", "fold", "cac_score", "label", "score")
# Optional columns (calibrated regression runs): unclipped predicted log CAC, calibrated P(CAC > T).
_OPTIONAL_COLUMNS = ("log_cac", "probability")


def fold_dir(run_dir: Path, fold: int) -> Path:
    """``RUN/fold_<k>``."""
    return Path(run_dir) / f"fold_{fold}"


def fold_done(run_dir: Path, fold: int) -> bool:
    """True when fold ``fold`` has finished (its fold.json exists)."""
    return (fold_dir(run_dir, fold) / FOLD_RECORD).is_file()


def read_fold_record(run_dir: Path, fold: int) -> dict[str, Any]:
    """The fold.json of a finished fold.

    Raises:
        CacxrError: missing or unreadable.
    """
    path = fold_dir(run_dir, fold) / FOLD_RECORD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacxrError(f"{path}: missing (fold {fold} has not finished)") from None
    except (OSError, ValueError) as exc:
        raise CacxrError(f"{path}: unreadable ({exc})") from None


def write_folds_csv(path: Path, folds: Sequence[Fold]) -> None:
    """folds.csv: patient_id, fold, role (train | val | test), fold by fold."""
    _write_csv(path, ("patient_id", "fold", "role"), folds_table(folds))


def write_fold_files(
    directory: Path,
    task: str,
    record: dict[str, Any],
    test_ids: Sequence[str],
    test_scores: np.ndarray,
    cac: dict[str, float],
    threshold: float,
    viz: bool,
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
    """
    fold = int(record["fold"])
    rows = [
        {
            "patient_id": pid,
            "fold": fold,
            "cac_score": _number(cac[pid]),
            "label": int(cac[pid] > threshold),
            "score": _number(score),
        }
        for pid, score in zip(test_ids, test_scores, strict=True)
    ]
    _write_csv(directory / PREDICTIONS, _FOLD_COLUMNS, rows)
    if viz:
        labels = [row["label"] for row in rows]
        plots.roc_plot(
            [(f"fold {fold} test", labels, test_scores)],
            directory / "roc.png",
            title=f"Fold {fold}: ROC on its test patients ({_positive(threshold)})",
        )
        plots.loss_plot({fold: record["history"]}, directory / "loss.png", {fold: record["best_epoch"]})
    write_json(directory / FOLD_RECORD, record)


def read_predictions(run_dir: Path, fold: int) -> list[dict[str, Any]]:
    """The test predictions of a finished fold (``RUN/fold_<k>/predictions.csv``).

    Raises:
        CacxrError: missing or malformed file.
    """
    path = fold_dir(run_dir, fold) / PREDICTIONS
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return [
            {
                "patient_id": row["patient_id"],
                "fold": int(row["fold"]),
                "cac_score": float(row["cac_score"]),
                "label": int(row["label"]),
                "score": float(row["score"]),
                **{name: float(row[name]) for name in _OPTIONAL_COLUMNS if row.get(name) not in (None, "")},
            }
            for row in rows
        ]
    except FileNotFoundError:
        raise CacxrError(f"{path}: missing (fold {fold} has not finished)") from None
    except (KeyError, ValueError) as exc:
        raise CacxrError(f"{path}: malformed ({exc})") from None


def write_run_predictions(
    path: Path, task: str, rows: Sequence[dict[str, Any]], decision_thresholds: dict[int, float]
) -> None:
    """RUN/predictions.csv: every patient once, with the label its fold's model predicts.

    Columns: patient_id, fold, cac_score, label, score (probability, or predicted CAC), predicted_label;
    regression adds cac_band and predicted_band (Agatston bands).
    """
    columns = [*_FOLD_COLUMNS, *(c for c in _OPTIONAL_COLUMNS if rows and all(c in r for r in rows)), "predicted_label"]
    if task == "regression":
        columns += ["cac_band", "predicted_band"]
    out = []
    for row in sorted(rows, key=lambda r: r["patient_id"]):
        record = {
            **row,
            "cac_score": _number(row["cac_score"]),
            "score": _number(row["score"]),
            **{c: _number(row[c]) for c in _OPTIONAL_COLUMNS if c in columns},
            "predicted_label": int(row["score"] >= decision_thresholds[row["fold"]]),
        }
        if task == "regression":
            record["cac_band"] = AGATSTON_BANDS[int(agatston_band(row["cac_score"]))]
            record["predicted_band"] = AGATSTON_BANDS[int(agatston_band(row["score"]))]
        out.append(record)
    _write_csv(path, columns, out)


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
        rows: all out-of-fold predictions (``read_predictions`` rows).
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
    pooled = metrics["pooled"]
    positive = _positive(threshold)
    written = [
        plots.roc_plot(
            per_fold,
            plots_dir / "roc.png",
            title=f"ROC, out-of-fold predictions ({positive})",
            pooled=("pooled", y, score),
            ci=tuple(pooled["auc_ci"]),
        ),
        plots.confusion_plot(
            pooled["confusion_matrix"],
            [f"CAC <= {threshold:g}", positive],
            plots_dir / "confusion.png",
            title="Confusion matrix (each fold at its own decision threshold)",
        ),
        plots.loss_plot(histories, plots_dir / "loss.png", best_epochs),
    ]
    return written + plots.outcome_plots(plots_dir, task, y, cac, score, pooled)


def _positive(threshold: float) -> str:
    return f"CAC > {threshold:g}"


def _number(value: float) -> str:
    """Shortest text that reads back as the same float (so merged runs reproduce metrics exactly)."""
    value = float(value)
    return "" if math.isnan(value) else repr(value)


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())
