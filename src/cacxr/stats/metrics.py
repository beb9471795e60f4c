"""Evaluation metrics for CAC classification and regression, with bootstrap and DeLong statistics.

Undefined values (an AUC on one class, a PPV with no predicted positive, ...) are ``None`` so that
they survive JSON; they are never silently replaced by 0 or 0.5.

The label rules, targets and bands are the task's definitions in :mod:`cacxr.core.task`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
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

from cacxr.core.errors import CacxrError
from cacxr.core.task import AGATSTON_BANDS, TASKS, agatston_band, cac_to_target, predicted_label, true_label

__all__ = [
    "bootstrap_ci",
    "build_metrics",
    "choose_threshold",
    "classification_metrics",
    "delong_test",
    "pooled_summary",
    "regression_metrics",
]

# Metrics computed from the confusion counts (bootstrap_ci vectorises these).
_COUNT_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")


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
    y, s = _labels_and_scores(y_true, score)
    thresholds = _thresholds(threshold, len(s))
    pred = predicted_label(s, thresholds)
    (tn, fp), (fn, tp) = confusion_matrix(y, pred, labels=[0, 1]).tolist()
    result: dict[str, Any] = {"auc": _auc(y, s)}
    result.update({name: _finite_or_none(v) for name, v in _count_metrics(tn, fp, fn, tp).items()})
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
    y, s = _labels_and_scores(y_val, score_val)
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


def bootstrap_ci(
    y_true: ArrayLike,
    score: ArrayLike,
    metric: str | Callable[[np.ndarray, np.ndarray], float] = "auc",
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    stratified: bool = True,
    threshold: float | ArrayLike = 0.5,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap confidence interval of a metric.

    Args:
        y_true: 0/1 labels.
        score: scores.
        metric: ``"auc"``, a thresholded metric name (``accuracy``, ``balanced_accuracy``,
            ``sensitivity``, ``specificity``, ``ppv``, ``npv``, ``f1``) or a function
            ``f(y, score) -> float``.
        n_boot: number of resamples.
        seed: seed of the resampling.
        alpha: 1 - confidence level (0.05 gives a 95 % interval).
        stratified: resample positives and negatives separately (keeps the class counts, so the
            AUC is defined in every resample).
        threshold: decision threshold(s) for thresholded metrics (scalar or one per case).

    Returns:
        ``(lo, hi)``, or ``(None, None)`` when the metric is undefined in every resample (e.g.
        an AUC with one class).

    Raises:
        CacxrError: unknown metric name, bad inputs or ``n_boot < 1``.
    """
    y, s = _labels_and_scores(y_true, score)
    if n_boot < 1:
        raise CacxrError(f"bootstrap_ci: n_boot must be at least 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise CacxrError(f"bootstrap_ci: alpha must be between 0 and 1, got {alpha}")
    if isinstance(metric, str) and metric not in ("auc", *_COUNT_METRICS):
        raise CacxrError(f"bootstrap_ci: unknown metric {metric!r}; use auc, {', '.join(_COUNT_METRICS)}")
    pred = (s >= _thresholds(threshold, len(s))).astype(np.int8)
    rng = np.random.default_rng(seed)
    values = []
    chunk = max(1, 2_000_000 // max(len(y), 1))  # bound memory: ~2M resampled cases at a time
    for start in range(0, n_boot, chunk):
        idx = _resample_indices(y, min(chunk, n_boot - start), rng, stratified)
        if callable(metric):
            values.extend(_call_metric(metric, y[row], s[row]) for row in idx)
        elif metric == "auc":
            values.extend(_auc_rows(y[idx], s[idx]))
        else:
            yb, pb = y[idx].astype(bool), pred[idx].astype(bool)
            tp = (yb & pb).sum(1)
            fp = (~yb & pb).sum(1)
            fn = (yb & ~pb).sum(1)
            tn = (~yb & ~pb).sum(1)
            values.extend(_count_metrics(tn, fp, fn, tp)[metric])
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if len(finite) == 0:
        return None, None
    lo, hi = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def delong_test(y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike, alpha: float = 0.05) -> dict:
    """Paired DeLong test of two correlated AUCs measured on the same cases.

    Uses the fast midrank algorithm of Sun & Xu (2014).

    Args:
        y_true: 0/1 labels.
        score_a: scores of model A.
        score_b: scores of model B, same cases.
        alpha: 1 - confidence level of the interval of the difference.

    Returns:
        ``auc_a``, ``auc_b``, ``diff`` (A - B), ``se`` of the difference, ``z`` (``None`` when
        ``se`` is 0), two-sided ``p_value`` and ``ci`` ``[lo, hi]`` of the difference.

    Raises:
        CacxrError: fewer than two cases of a class, or bad inputs.
    """
    y, a = _labels_and_scores(y_true, score_a)
    _, b = _labels_and_scores(y_true, score_b)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos < 2 or n_neg < 2:
        raise CacxrError(
            f"delong_test: needs at least 2 positive and 2 negative cases, got {n_pos} and {n_neg}"
        )
    order = np.argsort(-y, kind="stable")  # positives first
    scores = np.vstack([a[order], b[order]])
    pos, neg = scores[:, :n_pos], scores[:, n_pos:]
    rank_pos = stats.rankdata(pos, axis=1)
    rank_neg = stats.rankdata(neg, axis=1)
    rank_all = stats.rankdata(scores, axis=1)
    aucs = rank_all[:, :n_pos].sum(axis=1) / (n_pos * n_neg) - (n_pos + 1.0) / (2.0 * n_neg)
    v01 = (rank_all[:, :n_pos] - rank_pos) / n_neg  # structural components of the positives
    v10 = 1.0 - (rank_all[:, n_pos:] - rank_neg) / n_pos  # ... and of the negatives
    cov = np.cov(v01) / n_pos + np.cov(v10) / n_neg
    diff = float(aucs[0] - aucs[1])
    se = math.sqrt(max(float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]), 0.0))
    if se > 0:
        z: float | None = diff / se
        p_value = float(2.0 * stats.norm.sf(abs(z)))
    else:
        z, p_value = None, 1.0 if diff == 0 else 0.0
    half = stats.norm.ppf(1.0 - alpha / 2.0) * se
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "diff": diff,
        "se": se,
        "z": z,
        "p_value": p_value,
        "ci": [float(diff - half), float(diff + half)],
    }


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
    true = _finite_1d("cac_true", cac_true)
    pred = _finite_1d("cac_pred", cac_pred)
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
        "r2_log": _finite_or_none(r2_score(t_true, t_pred)) if len(true) > 1 else None,
        "spearman": _correlation(stats.spearmanr, true, pred),
        "pearson_log": _correlation(stats.pearsonr, t_true, t_pred),
    }
    y = true_label(true, threshold)
    binary = classification_metrics(y, pred, decision_threshold)
    binary["decision_threshold"] = binary.pop("threshold")
    if log_cac is not None:
        ranking = _finite_1d("log_cac", log_cac)
        if len(ranking) != len(true):
            raise CacxrError(f"regression_metrics: {len(true)} true scores but {len(ranking)} log CAC predictions")
        binary["auc"] = _auc(y, ranking)
        binary["auc_on"] = "predicted log CAC (unclipped)"
    result.update(binary)
    band_true, band_pred = agatston_band(true), agatston_band(pred)
    bands = list(range(len(AGATSTON_BANDS)))
    result["agatston_confusion"] = confusion_matrix(band_true, band_pred, labels=bands).tolist()
    result["agatston_accuracy"] = float(np.mean(band_true == band_pred))
    with warnings.catch_warnings():  # kappa is undefined (NaN + warning) when one band only
        warnings.simplefilter("ignore", RuntimeWarning)
        kappa = cohen_kappa_score(band_true, band_pred, labels=bands, weights="linear")
    result["agatston_kappa"] = _finite_or_none(kappa)
    result["threshold"] = float(threshold)
    return result


# ----------------------------------------------------------------------------------------------
# Run-level summaries


def pooled_summary(per_fold: list[dict], task: str) -> dict:
    """Mean and standard deviation (ddof=1) over folds of each numeric metric.

    Args:
        per_fold: one metrics dict per fold.
        task: ``classification`` or ``regression``.

    Returns:
        ``{"mean": {...}, "std": {...}}``; a metric that is ``None`` in some folds is averaged over
        the others; std is ``None`` with fewer than two values. Lists (confusion matrices, CIs),
        the fold index, the task threshold and booleans are left out.

    Raises:
        CacxrError: unknown task.
    """
    _check_task(task)
    names: list[str] = []
    for fold in per_fold:
        names.extend(
            n for n, v in fold.items() if _is_number(v) and n not in ("fold", "threshold") and n not in names
        )
    mean: dict[str, float | None] = {}
    std: dict[str, float | None] = {}
    for name in names:
        values = [float(f[name]) for f in per_fold if _is_number(f.get(name)) and math.isfinite(f[name])]
        mean[name] = float(np.mean(values)) if values else None
        std[name] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return {"mean": mean, "std": std}


def build_metrics(
    task: str,
    threshold: float,
    per_fold_predictions: Sequence[dict],
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """The content of metrics.json from each fold's out-of-fold (test) predictions.

    Args:
        task: ``classification`` or ``regression``.
        threshold: positive means CAC > ``threshold``.
        per_fold_predictions: one dict per fold with ``fold``, ``score`` and
            ``decision_threshold`` (optional; classification default 0.5, regression default
            ``threshold + 0.5``), ``log_cac`` (optional, regression: unclipped predicted log CAC, then
            used for the AUCs), and ``y_true`` (0/1; classification; derived from ``cac_true`` when
            absent) or ``cac_true`` (regression). ``score`` is a probability (classification) or a
            predicted CAC (regression).
        n_boot: bootstrap resamples of each confidence interval.
        seed: bootstrap seed.
        alpha: 1 - confidence level.

    Returns:
        ``{"task", "threshold", "ci": {...}, "fold_level": {...}, "stability_warning", "folds": [...],
        "mean": {...}, "std": {...}, "pooled": {...}}``. ``fold_level`` is the headline (mean per-fold
        AUC with its interval, :func:`cacxr.stats.folds.fold_level_auc`); ``stability_warning`` a sentence
        when the pooled AUC differs from it by more than 0.05, else ``None``. Each fold has its metrics plus ``auc_ci``; ``pooled`` is computed on
        all out-of-fold predictions together (each thresholded at its own fold's decision
        threshold) and has ``auc_ci`` and ``balanced_accuracy_ci``.

    Raises:
        CacxrError: unknown task, no folds, or a fold dict without the keys it needs.
    """
    _check_task(task)
    if not per_fold_predictions:
        raise CacxrError("build_metrics: no fold predictions")
    from cacxr.stats.folds import fold_level_auc, stability_warning

    folds, labels, scores, cuts, truths, rankings = [], [], [], [], [], []
    for entry in per_fold_predictions:
        y, score, cut, truth = _fold_arrays(task, threshold, entry)
        # What the AUC ranks: the score, or a regression's unclipped predicted log CAC when given.
        ranking = score if entry.get("log_cac") is None else _finite_1d("log_cac", entry["log_cac"])
        if task == "classification":
            metrics = classification_metrics(y, score, cut)
            metrics["decision_threshold"] = metrics.pop("threshold")
        else:
            log_cac = None if ranking is score else ranking
            metrics = regression_metrics(truth, score, threshold, cut, log_cac=log_cac)
        metrics["auc_ci"] = list(bootstrap_ci(y, ranking, "auc", n_boot=n_boot, seed=seed, alpha=alpha))
        folds.append({"fold": entry["fold"], **metrics})
        labels.append(y)
        scores.append(score)
        rankings.append(ranking)
        cuts.append(np.full(len(score), cut, dtype=np.float64))
        truths.append(truth)
    y_all, s_all, cut_all = np.concatenate(labels), np.concatenate(scores), np.concatenate(cuts)
    r_all = np.concatenate(rankings)
    if task == "classification":
        pooled = classification_metrics(y_all, s_all, cut_all)
        del pooled["threshold"]
    else:
        log_all = None if all(r is s for r, s in zip(rankings, scores, strict=True)) else r_all
        pooled = regression_metrics(np.concatenate(truths), s_all, threshold, cut_all, log_cac=log_all)
        del pooled["decision_threshold"], pooled["threshold"]
    pooled["auc_ci"] = list(bootstrap_ci(y_all, r_all, "auc", n_boot=n_boot, seed=seed, alpha=alpha))
    pooled["balanced_accuracy_ci"] = list(
        bootstrap_ci(y_all, s_all, "balanced_accuracy", n_boot=n_boot, seed=seed, alpha=alpha, threshold=cut_all)
    )
    pooled["decision_thresholds"] = [f["decision_threshold"] for f in folds]
    summary = pooled_summary(folds, task)
    fold_level = fold_level_auc(
        [(f["fold"], y, r) for f, y, r in zip(folds, labels, rankings, strict=True)],
        pooled_auc=pooled["auc"],
        pooled_auc_ci=pooled["auc_ci"],
        alpha=alpha,
    )
    return {
        "task": task,
        "threshold": float(threshold),
        "ci": {"method": "percentile bootstrap, stratified by class", "n_boot": n_boot, "level": 1 - alpha},
        "fold_level": fold_level,
        "stability_warning": stability_warning(fold_level),
        "folds": folds,
        "mean": summary["mean"],
        "std": summary["std"],
        "pooled": pooled,
    }


# ----------------------------------------------------------------------------------------------
# Helpers


def _fold_arrays(task: str, threshold: float, entry: dict) -> tuple[np.ndarray, np.ndarray, float, Any]:
    """Labels, scores, decision threshold and true CAC (regression) of one fold's predictions."""
    fold = entry.get("fold", "?")
    if "fold" not in entry or "score" not in entry:
        raise CacxrError(f"build_metrics: fold entry {fold} needs 'fold' and 'score'")
    score = _finite_1d(f"score of fold {fold}", entry["score"])
    truth = None
    if task == "regression" or "y_true" not in entry:
        if "cac_true" not in entry:
            key = "cac_true" if task == "regression" else "y_true (or cac_true)"
            raise CacxrError(f"build_metrics: fold entry {fold} has no {key}")
        truth = _finite_1d(f"cac_true of fold {fold}", entry["cac_true"])
        y = true_label(truth, threshold)
    else:
        y = np.asarray(entry["y_true"])
    default_cut = 0.5 if task == "classification" else float(threshold) + 0.5
    cut = entry.get("decision_threshold")
    return y, score, float(default_cut if cut is None else cut), truth


def _labels_and_scores(y_true: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    s = _finite_1d("score", score)
    if len(y) != len(s):
        raise CacxrError(f"{len(y)} labels but {len(s)} scores")
    if len(y) == 0:
        raise CacxrError("no cases to evaluate")
    if not np.isin(y, (0, 1)).all():
        raise CacxrError(f"labels must be 0 or 1, got values {sorted(set(y.tolist()))[:5]}")
    return y.astype(np.int64), s


def _finite_1d(name: str, values: ArrayLike) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise CacxrError(f"{name}: not numbers ({exc})") from exc
    if not np.isfinite(array).all():
        raise CacxrError(f"{name}: {int((~np.isfinite(array)).sum())} values are NaN or infinite")
    return array


def _thresholds(threshold: float | ArrayLike, n: int) -> np.ndarray:
    cut = np.asarray(threshold, dtype=np.float64)
    if cut.ndim not in (0, 1) or (cut.ndim == 1 and len(cut) != n):
        raise CacxrError(f"threshold: give one value or one per case ({n}), got shape {cut.shape}")
    return np.broadcast_to(cut, (n,))


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise CacxrError(f"unknown task {task!r}; use {' or '.join(TASKS)}")


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def _auc_rows(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUC of each row (Mann-Whitney with midranks); NaN for rows with one class."""
    ranks = stats.rankdata(s, axis=1)
    n_pos = y.sum(axis=1).astype(np.float64)
    n_neg = y.shape[1] - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _resample_indices(y: np.ndarray, n: int, rng: np.random.Generator, stratified: bool) -> np.ndarray:
    if not stratified:
        return rng.integers(0, len(y), size=(n, len(y)))
    parts = [
        rng.choice(members, size=(n, len(members))) for members in (np.flatnonzero(y), np.flatnonzero(1 - y))
    ]
    return np.hstack([p for p in parts if p.shape[1]])


def _count_metrics(tn: Any, fp: Any, fn: Any, tp: Any) -> dict[str, Any]:
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


def _call_metric(metric: Callable[[np.ndarray, np.ndarray], float], y: np.ndarray, s: np.ndarray) -> float:
    value = metric(y, s)
    return math.nan if value is None else float(value)


def _correlation(test: Callable, x: np.ndarray, y: np.ndarray) -> float | None:
    """A scipy correlation, ``None`` when undefined (fewer than 2 cases or a constant input)."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return _finite_or_none(test(x, y)[0])


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
