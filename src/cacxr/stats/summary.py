"""A run's metrics.json figures from its folds' predictions: per fold, pooled, and the fold-level headline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cacxr.core import CacxrError, true_label
from cacxr.stats.intervals import bootstrap_ci
from cacxr.stats.metrics import check_task, classification_metrics, finite_1d, is_number, regression_metrics

__all__ = ["pooled_summary", "build_metrics"]


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
    check_task(task)
    names: list[str] = []
    for fold in per_fold:
        names.extend(
            n for n, v in fold.items() if is_number(v) and n not in ("fold", "threshold") and n not in names
        )
    mean: dict[str, float | None] = {}
    std: dict[str, float | None] = {}
    for name in names:
        values = [float(f[name]) for f in per_fold if is_number(f.get(name)) and math.isfinite(f[name])]
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
    check_task(task)
    if not per_fold_predictions:
        raise CacxrError("build_metrics: no fold predictions")
    from cacxr.stats.folds import fold_level_auc, stability_warning

    folds, labels, scores, cuts, truths, rankings = [], [], [], [], [], []
    for entry in per_fold_predictions:
        y, score, cut, truth = _fold_arrays(task, threshold, entry)
        # What the AUC ranks: the score, or a regression's unclipped predicted log CAC when given.
        ranking = score if entry.get("log_cac") is None else finite_1d("log_cac", entry["log_cac"])
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


def _fold_arrays(task: str, threshold: float, entry: dict) -> tuple[np.ndarray, np.ndarray, float, Any]:
    """Labels, scores, decision threshold and true CAC (regression) of one fold's predictions."""
    fold = entry.get("fold", "?")
    if "fold" not in entry or "score" not in entry:
        raise CacxrError(f"build_metrics: fold entry {fold} needs 'fold' and 'score'")
    score = finite_1d(f"score of fold {fold}", entry["score"])
    truth = None
    if task == "regression" or "y_true" not in entry:
        if "cac_true" not in entry:
            key = "cac_true" if task == "regression" else "y_true (or cac_true)"
            raise CacxrError(f"build_metrics: fold entry {fold} has no {key}")
        truth = finite_1d(f"cac_true of fold {fold}", entry["cac_true"])
        y = true_label(truth, threshold)
    else:
        y = np.asarray(entry["y_true"])
    default_cut = 0.5 if task == "classification" else float(threshold) + 0.5
    cut = entry.get("decision_threshold")
    return y, score, float(default_cut if cut is None else cut), truth
