"""The run folder: every file name of a trained run, and the one reader and writer of each file.

A run folder (``cacxr train --out RUN``)::

    RUN/config.json              every setting, versions, the manifest's sha256 (+ "final" once fitted)
    RUN/folds.csv                patient_id, fold, role (train | val | test)
    RUN/fold_<k>/fold.json       the fold's record (written last: the fold is finished when it exists)
    RUN/fold_<k>/model.safetensors
    RUN/fold_<k>/predictions.csv the fold's test patients
    RUN/fold_<k>/checkpoint.pt   while the fold trains (resumable), deleted when it has finished
    RUN/final/final.json         the final model's record (written last), see cacxr.training.final
    RUN/final/model.safetensors
    RUN/predictions.csv          out-of-fold predictions, every patient once
    RUN/metrics.json             the cross-validated figures
    RUN/plots/*.png, RUN/report.html

The final model is addressed as fold :data:`FINAL_FOLD` (-1) everywhere: :func:`model_dir`,
:func:`model_path` and :func:`read_model_record` give its folder, weights and record like a fold's.
No other module spells one of these names; they import them (or the functions) from here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from cacxr.core import CacxrError, csv_text, read_csv_rows, read_json_object, write_json, write_text
from cacxr.ingest import MANIFEST_FILE

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "PREDICTIONS",
    "FOLDS_FILE",
    "FOLD_RECORD",
    "FINAL_DIR",
    "FINAL_RECORD",
    "FINAL_FOLD",
    "MODEL_FILE",
    "CHECKPOINT",
    "PLOTS_DIR",
    "REPORT_FILE",
    "INGEST_DIR",
    "CONFIG_FORMAT_VERSION",
    "find_run_manifest",
    "fold_dir",
    "model_dir",
    "model_path",
    "record_path",
    "fold_done",
    "has_final",
    "read_config",
    "write_config",
    "read_metrics",
    "write_metrics",
    "read_fold_record",
    "read_model_record",
    "write_model_record",
    "read_fold_predictions",
    "read_run_predictions",
    "read_fold_roles",
    "FOLD_ROLES",
    "folds_table",
    "write_folds_csv",
    "decision_threshold_override",
    "write_csv",
    "csv_number",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
PREDICTIONS = "predictions.csv"
FOLDS_FILE = "folds.csv"
FOLD_RECORD = "fold.json"
FINAL_DIR = "final"
FINAL_RECORD = "final.json"
MODEL_FILE = "model.safetensors"
CHECKPOINT = "checkpoint.pt"  # an unfinished fold's (or final model's) last epoch, deleted when it finishes
PLOTS_DIR = "plots"
REPORT_FILE = "report.html"
INGEST_DIR = "ingest"
# config.json's format_version: raise it when a change of the run folder would mislead an older cacxr.
# A run without one predates it (format 1) and still loads; a newer one is refused by name.
CONFIG_FORMAT_VERSION = 1
# The final model (trained on every patient) where a fold number is expected.
FINAL_FOLD = -1
# The roles of a fold's patients in folds.csv.
FOLD_ROLES = ("train", "val", "test")

PathLike = str | os.PathLike[str]


def fold_dir(run_dir: PathLike, fold: int) -> Path:
    """``RUN/fold_<k>`` (a cross-validation fold)."""
    return Path(run_dir) / f"fold_{fold}"


def model_dir(run_dir: PathLike, fold: int) -> Path:
    """The folder of a model: ``RUN/fold_<k>``, or ``RUN/final`` for :data:`FINAL_FOLD`."""
    return Path(run_dir) / FINAL_DIR if fold == FINAL_FOLD else fold_dir(run_dir, fold)


def model_path(run_dir: PathLike, fold: int) -> Path:
    """The weights of fold ``fold`` (``FINAL_FOLD``: the final model)."""
    return model_dir(run_dir, fold) / MODEL_FILE


def record_path(run_dir: PathLike, fold: int) -> Path:
    """fold.json of a fold, final.json of the final model."""
    return model_dir(run_dir, fold) / (FINAL_RECORD if fold == FINAL_FOLD else FOLD_RECORD)


def fold_done(run_dir: PathLike, fold: int) -> bool:
    """True when fold ``fold`` has finished (its fold.json exists)."""
    return record_path(run_dir, fold).is_file()


def has_final(run_dir: PathLike) -> bool:
    """True when the run has a finished final model (final.json and its weights)."""
    return record_path(run_dir, FINAL_FOLD).is_file() and model_path(run_dir, FINAL_FOLD).is_file()


# ---- JSON files -----------------------------------------------------------------------------------------


def read_config(run_dir: PathLike, required: bool = True) -> dict[str, Any] | None:
    """RUN/config.json.

    Args:
        run_dir: the run folder.
        required: raise when it is missing (else return None).

    Raises:
        CacxrError: missing (with ``required``), unreadable, or not a run configuration.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        if required:
            raise CacxrError(f"{run_dir}: not a trained run folder (no {CONFIG_FILE})")
        return None
    record = read_json_object(path)
    if "task" not in record:
        raise CacxrError(f"{path}: not a cacxr run configuration (no task)")
    version = record.get("format_version", 1)
    if not isinstance(version, int) or version > CONFIG_FORMAT_VERSION:
        raise CacxrError(
            f"{path}: run folder format_version {version!r} is newer than this cacxr reads "
            f"(up to {CONFIG_FORMAT_VERSION}); upgrade cacxr to use this run"
        )
    return record


def write_config(run_dir: PathLike, record: dict[str, Any]) -> None:
    """Write RUN/config.json atomically, stamped with this cacxr's ``format_version``."""
    write_json(Path(run_dir) / CONFIG_FILE, {"format_version": CONFIG_FORMAT_VERSION, **record})


def read_metrics(run_dir: PathLike, required: bool = True) -> dict[str, Any] | None:
    """RUN/metrics.json (also an evaluation folder's); None when absent and not ``required``.

    Raises:
        CacxrError: missing (with ``required``) or unreadable.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file() and not required:
        return None
    return read_json_object(path, "a finished run has one; train it, or merge its folds")


def write_metrics(run_dir: PathLike, metrics: dict[str, Any]) -> None:
    """Write RUN/metrics.json atomically."""
    write_json(Path(run_dir) / METRICS_FILE, metrics)


def read_fold_record(run_dir: PathLike, fold: int) -> dict[str, Any]:
    """The fold.json of a finished fold.

    Raises:
        CacxrError: missing or unreadable.
    """
    return read_model_record(run_dir, fold)


def read_model_record(run_dir: PathLike, fold: int) -> dict[str, Any]:
    """The record of a model: fold.json of fold ``fold``, final.json for :data:`FINAL_FOLD`.

    Raises:
        CacxrError: missing or unreadable.
    """
    what = "the final model has not been trained" if fold == FINAL_FOLD else f"fold {fold} has not finished"
    return read_json_object(record_path(run_dir, fold), what)


def write_model_record(run_dir: PathLike, fold: int, record: dict[str, Any]) -> None:
    """Write fold.json (or final.json): the last file of a model, marking it complete."""
    write_json(record_path(run_dir, fold), record)


def decision_threshold_override(run_dir: PathLike) -> float | None:
    """The run's operating-point threshold (``metrics.json["operating_point"]["threshold"]``), if any.

    When present it is the decision threshold of every model of the run (fold ensemble and final model);
    None keeps the models' own validation-chosen thresholds.
    """
    try:
        metrics = read_metrics(run_dir, required=False)
    except CacxrError:
        return None
    point = (metrics or {}).get("operating_point")
    value = point.get("threshold") if isinstance(point, dict) else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


# ---- CSV files ------------------------------------------------------------------------------------------


def read_fold_predictions(run_dir: PathLike, fold: int) -> list[dict[str, Any]]:
    """The test predictions of a finished fold (``RUN/fold_<k>/predictions.csv``).

    Returns:
        Rows with patient_id, fold, cac_score, label, score (and log_cac, probability when present).

    Raises:
        CacxrError: missing or malformed file.
    """
    path = fold_dir(run_dir, fold) / PREDICTIONS
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(read_csv_rows(fh))
        return [_prediction_row(row) for row in rows]
    except FileNotFoundError:
        raise CacxrError(f"{path}: missing (fold {fold} has not finished)") from None
    except (KeyError, ValueError) as exc:
        raise CacxrError(f"{path}: malformed ({exc})") from None


def _prediction_row(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "patient_id": row["patient_id"],
        "fold": int(row["fold"]),
        "cac_score": float(row["cac_score"]),
        "label": int(row["label"]),
        "score": float(row["score"]),
    }
    for extra in ("log_cac", "probability"):
        if row.get(extra) not in (None, ""):
            out[extra] = float(row[extra])
    return out


def read_run_predictions(run_dir: PathLike) -> list[dict[str, Any]]:
    """RUN/predictions.csv (out-of-fold, every patient once) as :func:`read_fold_predictions` rows.

    Raises:
        CacxrError: missing, unreadable or empty file.
    """
    path = Path(run_dir) / PREDICTIONS
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = [_prediction_row(row) for row in read_csv_rows(fh)]
    except FileNotFoundError:
        raise CacxrError(f"{path}: missing (the run's out-of-fold predictions list its patients)") from None
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CacxrError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    if not rows:
        raise CacxrError(f"{path}: no patients")
    return rows


def read_fold_roles(run_dir: PathLike) -> dict[int, dict[str, list[str]]]:
    """RUN/folds.csv as fold -> role (train | val | test) -> patient ids.

    Raises:
        CacxrError: missing or unreadable.
    """
    path = Path(run_dir) / FOLDS_FILE
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            table: dict[int, dict[str, list[str]]] = {}
            for row in read_csv_rows(fh):
                table.setdefault(int(row["fold"]), {}).setdefault(row["role"], []).append(row["patient_id"])
    except FileNotFoundError:
        raise CacxrError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, KeyError, ValueError) as exc:
        raise CacxrError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    return table


def csv_number(value: float | None) -> str:
    """Shortest text that reads back as the same float ("" for None/NaN), so merges reproduce metrics."""
    if value is None:
        return ""
    value = float(value)
    return "" if math.isnan(value) else repr(value)


def write_csv(path: PathLike, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Write rows (dicts keyed by ``columns``) as CSV atomically."""
    write_text(path, csv_text(columns, rows, extrasaction="ignore"))


class FoldParts(Protocol):
    """A fold's patients by role (``cacxr.training.splits.Fold``)."""

    index: int
    train: Sequence[str]
    val: Sequence[str]
    test: Sequence[str]


def folds_table(folds: Sequence[FoldParts]) -> list[dict]:
    """Rows for folds.csv: one row per patient per fold.

    Args:
        folds: the folds (``cacxr.training.splits.make_folds``).

    Returns:
        Dicts with keys ``patient_id``, ``fold`` and ``role`` (train | val | test), fold by fold.
    """
    return [
        {"patient_id": patient_id, "fold": fold.index, "role": role}
        for fold in folds
        for role in FOLD_ROLES
        for patient_id in getattr(fold, role)
    ]


def write_folds_csv(run_dir: PathLike, folds: Sequence[FoldParts]) -> None:
    """RUN/folds.csv: patient_id, fold, role (train | val | test), fold by fold."""
    write_csv(Path(run_dir) / FOLDS_FILE, ("patient_id", "fold", "role"), folds_table(folds))


def find_run_manifest(run_dir: PathLike, recorded: str | os.PathLike[str] | None = None) -> Path:
    """The manifest a run was trained on: ``recorded`` (config.json's ``manifest``), else ``RUN/ingest/manifest.csv``.

    Raises:
        CacxrError: neither file exists (the message names the first candidate).
    """
    candidates = [Path(recorded)] if recorded else []
    candidates.append(Path(run_dir) / INGEST_DIR / MANIFEST_FILE)
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise CacxrError(f"{run_dir}: the run's manifest ({candidates[0]}) is gone")
    return found
