"""Fold-level statistics: the mean per-fold AUC with its interval, and fold-stratified paired tests.

Why fold by fold: each fold's model puts its scores on its own scale. Pooling the out-of-fold scores of
five models mixes discrimination with the drift of calibration between folds, so the pooled AUC (and a
DeLong test on pooled scores) can be far below what every single model achieves. Within one fold, the
scores of one model on one test part are comparable, so cacxr leads with fold-level figures:

* **mean per-fold AUC** with a 95 % interval from the **fold-averaged DeLong variance**: the folds' test
  parts are disjoint, so given the fold models ``Var(mean AUC) = sum_k Var_k / K^2`` where ``Var_k`` is
  the DeLong variance of fold k's AUC; the interval is ``mean ± z * sqrt(Var)`` (normal approximation,
  clipped to [0, 1]). It describes the test-sampling uncertainty of the figure of these fold models,
  not the variability of retraining them;
* **fold-stratified paired test** of two scores on the same patients: the within-fold paired DeLong
  difference of each fold, averaged over folds, with the variance combined the same way, a z test and
  its two-sided p-value;
* **Holm's correction** of several p-values (step-down, controls the family-wise error rate).

DeLong's structural components are computed with midranks (Sun & Xu 2014), as ``cacxr.stats.metrics.delong_test``
does for one pair of scores; no library offers the variance of one AUC or the fold combination.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from cacxr.core import CacxrError
from cacxr.stats.intervals import ZERO_VARIANCE_NOTE, paired_permutation_test

__all__ = [
    "FOLD_CI_METHOD",
    "FOLD_TEST_METHOD",
    "STABILITY_TOLERANCE",
    "delong_components",
    "fold_level_auc",
    "fold_paired_test",
    "holm_adjust",
    "stability_warning",
]

FOLD_CI_METHOD = "fold-averaged DeLong variance (normal approximation)"
FOLD_TEST_METHOD = "fold-stratified DeLong: mean of within-fold paired AUC differences, fold variances combined"
# The pooled and the mean per-fold AUC may differ by this much before the report warns.
STABILITY_TOLERANCE = 0.05


def delong_components(y: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong structural components of one or more scores of the same cases.

    Args:
        y: 0/1 labels (n,).
        scores: (m, n) or (n,) scores.

    Returns:
        ``(aucs (m,), v01 (m, n_pos), v10 (m, n_neg))``.

    Raises:
        CacxrError: fewer than two cases of a class, or shapes that differ.
    """
    y = np.asarray(y).astype(np.int64).ravel()
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if s.shape[1] != len(y):
        raise CacxrError(f"{len(y)} labels but {s.shape[1]} scores")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos < 2 or n_neg < 2:
        raise CacxrError(f"DeLong needs at least 2 positive and 2 negative cases, got {n_pos} and {n_neg}")
    order = np.argsort(-y, kind="stable")  # positives first
    s = s[:, order]
    pos, neg = s[:, :n_pos], s[:, n_pos:]
    rank_all = stats.rankdata(s, axis=1)
    rank_pos = stats.rankdata(pos, axis=1)
    rank_neg = stats.rankdata(neg, axis=1)
    aucs = rank_all[:, :n_pos].sum(axis=1) / (n_pos * n_neg) - (n_pos + 1.0) / (2.0 * n_neg)
    v01 = (rank_all[:, :n_pos] - rank_pos) / n_neg
    v10 = 1.0 - (rank_all[:, n_pos:] - rank_neg) / n_pos
    return aucs, v01, v10


def _delong_cov(y: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    aucs, v01, v10 = delong_components(y, scores)
    cov = np.atleast_2d(np.cov(v01) / v01.shape[1] + np.cov(v10) / v10.shape[1])
    return aucs, cov


def fold_level_auc(
    folds: Sequence[tuple[Any, ArrayLike, ArrayLike]],
    pooled_auc: float | None = None,
    pooled_auc_ci: Sequence[float | None] | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The mean per-fold AUC, its interval, the per-fold range, and the pooled AUC beside it.

    Args:
        folds: ``(fold id, labels, scores)`` of each fold's test patients.
        pooled_auc: the pooled out-of-fold AUC (reported beside, labelled as such).
        pooled_auc_ci: its interval.
        alpha: 1 - confidence level.

    Returns:
        ``{"auc_mean", "auc_ci", "se", "method", "level", "n_folds", "auc_min", "auc_max",
        "per_fold": [{"fold", "auc", "se"}], "pooled_auc", "pooled_auc_ci", "pooled_label",
        "pooled_minus_mean"}``. A fold with fewer than two cases of a class has no AUC; the mean is then
        over the other folds and its interval is ``[None, None]`` (the variance of that fold is unknown); so it is
        when every fold's DeLong variance is 0 (``se`` 0: a zero-width normal interval would claim certainty).
    """
    per_fold, means, variances = [], [], []
    for fold, y, s in folds:
        try:
            aucs, cov = _delong_cov(y, s)
            auc, var = float(aucs[0]), max(float(cov[0, 0]), 0.0)
        except CacxrError:
            auc, var = None, None
        per_fold.append({"fold": fold, "auc": auc, "se": None if var is None else math.sqrt(var)})
        if auc is not None:
            means.append(auc)
            variances.append(var)
    mean = float(np.mean(means)) if means else None
    complete = len(means) == len(per_fold) and means
    se = math.sqrt(sum(variances)) / len(means) if complete else None
    z = stats.norm.ppf(1.0 - alpha / 2.0)
    ci = [max(0.0, mean - z * se), min(1.0, mean + z * se)] if se and mean is not None else [None, None]
    diff = None if pooled_auc is None or mean is None else float(pooled_auc) - mean
    return {
        "auc_mean": mean,
        "auc_ci": ci,
        "se": se,
        "method": FOLD_CI_METHOD,
        "level": 1.0 - alpha,
        "n_folds": len(per_fold),
        "auc_min": min(means) if means else None,
        "auc_max": max(means) if means else None,
        "per_fold": per_fold,
        "pooled_auc": pooled_auc,
        "pooled_auc_ci": list(pooled_auc_ci) if pooled_auc_ci is not None else [None, None],
        "pooled_label": "pooled out-of-fold AUC: all folds' scores together, so it includes the "
        "differences in calibration between the fold models",
        "pooled_minus_mean": diff,
    }


def stability_warning(fold_level: dict[str, Any], tolerance: float = STABILITY_TOLERANCE) -> str | None:
    """A warning when the pooled and the mean per-fold AUC differ by more than ``tolerance``.

    Args:
        fold_level: :func:`fold_level_auc` output.
        tolerance: the largest difference that passes without a warning.

    Returns:
        The warning sentence, or ``None``.
    """
    diff = fold_level.get("pooled_minus_mean")
    if diff is None or abs(diff) <= tolerance:
        return None
    return (
        f"The pooled out-of-fold AUC ({fold_level['pooled_auc']:.3f}) differs from the mean per-fold AUC "
        f"({fold_level['auc_mean']:.3f}) by {abs(diff):.3f} (more than {tolerance:.2f}): the fold models score "
        "on different scales (calibration drift between folds), so the pooled figure understates or "
        "overstates what each model discriminates. Read the mean per-fold AUC; calibrate the folds."
    )


def fold_paired_test(
    folds: Sequence[tuple[Any, ArrayLike, ArrayLike, ArrayLike]], alpha: float = 0.05
) -> dict[str, Any]:
    """Fold-stratified paired test of two scores (A - B) on the same patients.

    Args:
        folds: ``(fold id, labels, scores A, scores B)`` of each fold's test patients.
        alpha: 1 - confidence level of the interval of the mean difference.

    Returns:
        ``{"diff" (mean over folds of AUC_A - AUC_B), "ci", "se", "z", "p_value", "auc_a", "auc_b" (means
        over folds), "method", "n_folds", "n", "per_fold": [{"fold", "auc_a", "auc_b", "diff", "se", "n"}]}``.
        When the combined variance is 0, ``z`` is None, ``ci`` ``[None, None]``, ``p_value`` comes from a
        within-fold, within-patient permutation test (exact up to 16 patients) and ``note`` says so.

    Raises:
        CacxrError: no folds, or a fold with fewer than two cases of a class (named).
    """
    if not folds:
        raise CacxrError("fold-stratified test: no folds")
    per_fold, diffs, variances, a_aucs, b_aucs, n = [], [], [], [], [], 0
    for fold, y, a, b in folds:
        try:
            aucs, cov = _delong_cov(y, np.vstack([np.asarray(a, float), np.asarray(b, float)]))
        except CacxrError as exc:
            raise CacxrError(f"fold-stratified test, fold {fold}: {exc}") from None
        var = max(float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]), 0.0)
        diff = float(aucs[0] - aucs[1])
        per_fold.append(
            {"fold": fold, "auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "se": math.sqrt(var),
             "n": len(np.asarray(y))}
        )  # fmt: skip
        diffs.append(diff)
        variances.append(var)
        a_aucs.append(float(aucs[0]))
        b_aucs.append(float(aucs[1]))
        n += len(np.asarray(y))
    k = len(diffs)
    mean = float(np.mean(diffs))
    se = math.sqrt(sum(variances)) / k
    extra: dict[str, Any] = {}
    if se > 0:
        z: float | None = mean / se
        p_value = float(2.0 * stats.norm.sf(abs(z)))
        half = float(stats.norm.ppf(1.0 - alpha / 2.0)) * se
        ci: list[float | None] = [mean - half, mean + half]
    else:
        # Every fold's DeLong variance is 0: no normal interval; an exact (or sampled) permutation p instead.
        permutation = paired_permutation_test([(y, a, b) for _, y, a, b in folds])
        z, p_value, ci = None, permutation["p_value"], [None, None]
        extra["note"] = f"{ZERO_VARIANCE_NOTE}: {permutation['method']}, swaps within each fold"
    return {
        "diff": mean,
        "ci": ci,
        "se": se,
        "z": z,
        "p_value": p_value,
        "auc_a": float(np.mean(a_aucs)),
        "auc_b": float(np.mean(b_aucs)),
        "method": FOLD_TEST_METHOD,
        "n_folds": k,
        "n": n,
        "per_fold": per_fold,
        **extra,
    }


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error rate), in the order given.

    Args:
        p_values: raw p-values.

    Returns:
        Adjusted p-values, each ``min(1, max over the steps so far of (m - rank) * p)``.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted.tolist()
