"""Evaluation metrics for CAC classification and regression (intervals: :mod:`cacxr.stats.intervals`).

Undefined values (an AUC on one class, a PPV with no predicted positive, ...) are ``None`` so that
they survive JSON; they are never silently replaced by 0 or 0.5.

The label rules, targets and bands are the task's definitions in :mod:`cacxr.core.task`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import (
    cohen_kappa_score,
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
    roc_curve,
)

from cacxr.core import (
    AGATSTON_BANDS,
    TASKS,
    CacxrError,
    agatston_band,
    cac_to_target,
    predicted_label,
    true_label,
)

__all__ = [
    "COUNT_METRICS",
    "auc_or_none",
    "call_metric",
    "check_task",
    "choose_threshold",
    "classification_metrics",
    "count_metrics",
    "finite_1d",
    "is_number",
    "labels_and_scores",
    "per_case_thresholds",
    "regression_metrics",
]

# Metrics computed from the confusion counts (bootstrap_ci vectorises these).
COUNT_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")


# ----------------------------------------------------------------------------------------------
# Classification


def classification_metrics(y_true: ArrayLike, score: ArrayLike, threshold: float | ArrayLike = 0.5) -> dict:
    """Binary metrics of scores thresholded at ``threshold`` (``score >= threshold`` is positive).

    Args:
        y_true: 0/1 labels.
        score: a score per case (probability, logit or predicted CAC).
        threshold: the decision threshold, or one per case (pooled out-of-fold predictions use the
            threshold of their own fold).

    Returns:
        ``auc``, ``accuracy``, ``balanced_accuracy``, ``sensitivity``, ``specificity``, ``ppv``,
        ``npv``, ``f1`` (``None`` where undefined), ``confusion_matrix`` ``[[tn, fp], [fn, tp]]``,
        ``n``, ``n_pos`` and ``threshold`` (``None`` when given per case).

    Raises:
        CacxrError: labels not 0/1, non-finite scores or lengths that differ.
    """
    y, s = labels_and_scores(y_true, score)
    thresholds = per_case_thresholds(threshold, len(s))
    pred = predicted_label(s, thresholds)
    (tn, fp), (fn, tp) = confusion_matrix(y, pred, labels=[0, 1]).tolist()
    result: dict[str, Any] = {"auc": auc_or_none(y, s)}
    result.update({name: finite_or_none(v) for name, v in count_metrics(tn, fp, fn, tp).items()})
    result.update(
        confusion_matrix=[[tn, fp], [fn, tp]],
        n=len(y),
        n_pos=int(y.sum()),
        threshold=float(threshold) if np.ndim(threshold) == 0 else None,
    )
    return result


def choose_threshold(y_val: ArrayLike, score_val: ArrayLike, default: float = 0.5) -> float:
    """Decision threshold maximising Youden's J (sensitivity + specificity - 1) on validation data.

    Thresholds are taken halfway between adjacent distinct validation scores, so that a test score
    equal to a validation score is not decided by an accident of ties. Among equally good
    thresholds the one closest to ``default`` wins.

    Args:
        y_val: validation labels (0/1).
        score_val: validation scores.
        default: returned when the validation data have one class or no threshold beats chance;
            also the tie-break target.

    Returns:
        The threshold (``score >= threshold`` is positive).
    """
    y, s = labels_and_scores(y_val, score_val)
    if y.min() == y.max():
        return float(default)
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    # roc_curve's thresholds are the distinct scores, descending, after a leading +inf; the J of
    # threshold u_i holds on (u_{i+1}, u_i], whose midpoint is the candidate.
    distinct = thresholds[1:]
    j = (tpr - fpr)[1:-1]
    candidates = (distinct[:-1] + distinct[1:]) / 2.0
    if len(j) == 0 or j.max() <= 0:
        return float(default)
    best = np.flatnonzero(np.isclose(j, j.max(), rtol=0.0, atol=1e-12))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - default))]])


# ----------------------------------------------------------------------------------------------
# Regression


def regression_metrics(
    cac_true: ArrayLike,
    cac_pred: ArrayLike,
    threshold: float = 0.0,
    decision_threshold: float | ArrayLike | None = None,
    log_cac: ArrayLike | None = None,
) -> dict:
    """Metrics of predicted Agatston scores against the true ones.

    Args:
        cac_true: true Agatston scores (>= 0).
        cac_pred: predicted Agatston scores (e.g. :func:`target_to_cac` of the model output).
        threshold: positive means CAC > ``threshold``.
        decision_threshold: a prediction is positive when ``cac_pred >= decision_threshold``
            (scalar or one per case); default ``threshold + 0.5``, i.e. the predicted score rounded
            to an integer Agatston score is above ``threshold`` (consistent with the bands).
        log_cac: the model's predicted log CAC before clipping (optional). When given, the AUC (and its
            ranking) uses it: clipping predicted CAC at 0 makes ties among the lowest predictions.

    Returns:
        ``mae_log``, ``rmse_log``, ``r2_log``, ``pearson_log`` (on :func:`cac_to_target`),
        ``spearman``; the classification metrics of the predicted score for CAC > ``threshold``
        (``auc``, ``sensitivity``, ... as in :func:`classification_metrics`, with the cut stored as
        ``decision_threshold``); ``agatston_confusion`` (5x5, rows true band, columns predicted
        band), ``agatston_accuracy`` and ``agatston_kappa`` (linear-weighted Cohen kappa);
        ``threshold``.

    Raises:
        CacxrError: non-finite or negative true scores, non-finite predictions, lengths that differ.
    """
    true = finite_1d("cac_true", cac_true)
    pred = finite_1d("cac_pred", cac_pred)
    if len(true) != len(pred):
        raise CacxrError(f"regression_metrics: {len(true)} true scores but {len(pred)} predictions")
    if len(true) == 0:
        raise CacxrError("regression_metrics: no cases")
    if (true < 0).any():
        raise CacxrError("regression_metrics: a true CAC score is negative")
    if decision_threshold is None:
        decision_threshold = float(threshold) + 0.5
    t_true, t_pred = cac_to_target(true), cac_to_target(pred)
    result: dict[str, Any] = {
        "mae_log": float(mean_absolute_error(t_true, t_pred)),
        "rmse_log": float(np.sqrt(mean_squared_error(t_true, t_pred))),
        "r2_log": finite_or_none(r2_score(t_true, t_pred)) if len(true) > 1 else None,
        "spearman": correlation(stats.spearmanr, true, pred),
        "pearson_log": correlation(stats.pearsonr, t_true, t_pred),
    }
    y = true_label(true, threshold)
    binary = classification_metrics(y, pred, decision_threshold)
    binary["decision_threshold"] = binary.pop("threshold")
    if log_cac is not None:
        ranking = finite_1d("log_cac", log_cac)
        if len(ranking) != len(true):
            raise CacxrError(f"regression_metrics: {len(true)} true scores but {len(ranking)} log CAC predictions")
        binary["auc"] = auc_or_none(y, ranking)
        binary["auc_on"] = "predicted log CAC (unclipped)"
    result.update(binary)
    band_true, band_pred = agatston_band(true), agatston_band(pred)
    bands = list(range(len(AGATSTON_BANDS)))
    result["agatston_confusion"] = confusion_matrix(band_true, band_pred, labels=bands).tolist()
    result["agatston_accuracy"] = float(np.mean(band_true == band_pred))
    with warnings.catch_warnings():  # kappa is undefined (NaN + warning) when one band only
        warnings.simplefilter("ignore", RuntimeWarning)
        kappa = cohen_kappa_score(band_true, band_pred, labels=bands, weights="linear")
    result["agatston_kappa"] = finite_or_none(kappa)
    result["threshold"] = float(threshold)
    return result


# ----------------------------------------------------------------------------------------------
# Run-level summaries


# ----------------------------------------------------------------------------------------------
# Helpers


def labels_and_scores(y_true: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    s = finite_1d("score", score)
    if len(y) != len(s):
        raise CacxrError(f"{len(y)} labels but {len(s)} scores")
    if len(y) == 0:
        raise CacxrError("no cases to evaluate")
    if not np.isin(y, (0, 1)).all():
        raise CacxrError(f"labels must be 0 or 1, got values {sorted(set(y.tolist()))[:5]}")
    return y.astype(np.int64), s


def finite_1d(name: str, values: ArrayLike) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise CacxrError(f"{name}: not numbers ({exc})") from exc
    if not np.isfinite(array).all():
        raise CacxrError(f"{name}: {int((~np.isfinite(array)).sum())} values are NaN or infinite")
    return array


def per_case_thresholds(threshold: float | ArrayLike, n: int) -> np.ndarray:
    cut = np.asarray(threshold, dtype=np.float64)
    if cut.ndim not in (0, 1) or (cut.ndim == 1 and len(cut) != n):
        raise CacxrError(f"threshold: give one value or one per case ({n}), got shape {cut.shape}")
    return np.broadcast_to(cut, (n,))


def check_task(task: str) -> None:
    if task not in TASKS:
        raise CacxrError(f"unknown task {task!r}; use {' or '.join(TASKS)}")


def auc_or_none(y: np.ndarray, s: np.ndarray) -> float | None:
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def count_metrics(tn: Any, fp: Any, fn: Any, tp: Any) -> dict[str, Any]:
    """Confusion-count metrics (scalars or arrays); NaN where a denominator is 0."""
    tn, fp, fn, tp = (np.asarray(v, dtype=np.float64) for v in (tn, fp, fn, tp))
    with np.errstate(divide="ignore", invalid="ignore"):
        sensitivity = tp / (tp + fn)
        specificity = tn / (tn + fp)
        return {
            "accuracy": (tp + tn) / (tp + tn + fp + fn),
            "balanced_accuracy": (sensitivity + specificity) / 2.0,
            "sensitivity": sensitivity,
            "specificity": specificity,
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "f1": 2.0 * tp / (2.0 * tp + fp + fn),
        }


def call_metric(metric: Callable[[np.ndarray, np.ndarray], float], y: np.ndarray, s: np.ndarray) -> float:
    value = metric(y, s)
    return math.nan if value is None else float(value)


def correlation(test: Callable, x: np.ndarray, y: np.ndarray) -> float | None:
    """A scipy correlation, ``None`` when undefined (fewer than 2 cases or a constant input)."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return finite_or_none(test(x, y)[0])


def finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
