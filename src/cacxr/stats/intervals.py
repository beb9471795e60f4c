"""Uncertainty of the figures: bootstrap confidence intervals and DeLong's test of two correlated AUCs."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from cacxr.core import CacxrError
from cacxr.stats.metrics import (
    COUNT_METRICS,
    call_metric,
    count_metrics,
    labels_and_scores,
    per_case_thresholds,
)

__all__ = ["bootstrap_ci", "delong_test", "paired_permutation_test", "EXACT_LIMIT", "ZERO_VARIANCE_NOTE"]

# Up to this many patients a permutation test enumerates every swap (2^n); above it, a seeded sample of swaps.
EXACT_LIMIT = 16
_PERMUTATIONS = 9999
ZERO_VARIANCE_NOTE = (
    "DeLong variance of the difference is 0 (the scores separate or tie every pair the same way): the normal "
    "approximation has nothing to stand on, so no interval, and p from a permutation test"
)


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
    y, s = labels_and_scores(y_true, score)
    if n_boot < 1:
        raise CacxrError(f"bootstrap_ci: n_boot must be at least 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise CacxrError(f"bootstrap_ci: alpha must be between 0 and 1, got {alpha}")
    if isinstance(metric, str) and metric not in ("auc", *COUNT_METRICS):
        raise CacxrError(f"bootstrap_ci: unknown metric {metric!r}; use auc, {', '.join(COUNT_METRICS)}")
    pred = (s >= per_case_thresholds(threshold, len(s))).astype(np.int8)
    rng = np.random.default_rng(seed)
    values = []
    chunk = max(1, 2_000_000 // max(len(y), 1))  # bound memory: ~2M resampled cases at a time
    for start in range(0, n_boot, chunk):
        idx = _resample_indices(y, min(chunk, n_boot - start), rng, stratified)
        if callable(metric):
            values.extend(call_metric(metric, y[row], s[row]) for row in idx)
        elif metric == "auc":
            values.extend(_auc_rows(y[idx], s[idx]))
        else:
            yb, pb = y[idx].astype(bool), pred[idx].astype(bool)
            tp = (yb & pb).sum(1)
            fp = (~yb & pb).sum(1)
            fn = (yb & ~pb).sum(1)
            tn = (~yb & ~pb).sum(1)
            values.extend(count_metrics(tn, fp, fn, tp)[metric])
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
        ``auc_a``, ``auc_b``, ``diff`` (A - B), ``se`` of the difference, ``z``, two-sided ``p_value`` and
        ``ci`` ``[lo, hi]`` of the difference. When ``se`` is 0 the normal approximation says nothing: ``z``
        is ``None``, ``ci`` is ``[None, None]``, ``p_value`` comes from :func:`paired_permutation_test` and
        ``note`` says so.

    Raises:
        CacxrError: fewer than two cases of a class, or bad inputs.
    """
    y, a = labels_and_scores(y_true, score_a)
    _, b = labels_and_scores(y_true, score_b)
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
        z = diff / se
        half = stats.norm.ppf(1.0 - alpha / 2.0) * se
        return {
            "auc_a": float(aucs[0]),
            "auc_b": float(aucs[1]),
            "diff": diff,
            "se": se,
            "z": z,
            "p_value": float(2.0 * stats.norm.sf(abs(z))),
            "ci": [float(diff - half), float(diff + half)],
        }
    permutation = paired_permutation_test([(y, a, b)])
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "diff": diff,
        "se": se,
        "z": None,
        "p_value": permutation["p_value"],
        "ci": [None, None],
        "note": f"{ZERO_VARIANCE_NOTE}: {permutation['method']}",
    }


def paired_permutation_test(
    folds: list[tuple[ArrayLike, ArrayLike, ArrayLike]], exact_limit: int = EXACT_LIMIT,
    n_permutations: int = _PERMUTATIONS, seed: int = 0,
) -> dict:
    """Within-patient permutation test of the mean over folds of AUC(A) - AUC(B).

    Under the null hypothesis the two scores of a patient are exchangeable, so every patient's pair may be
    swapped. With at most ``exact_limit`` patients in all, every one of the 2^n swaps is enumerated (an exact
    test); above it, ``n_permutations`` random swaps (seeded) give ``p = (1 + #{|T*| >= |T|}) / (1 + B)``.
    For the cases where DeLong's variance is 0 and its normal approximation gives no answer.

    Args:
        folds: ``(labels, scores A, scores B)`` of each fold (one element: a plain paired test).
        exact_limit: the most patients enumerated exactly.
        n_permutations: random swaps above it.
        seed: seed of the random swaps.

    Returns:
        ``{"diff", "p_value", "method", "n_permutations"}``.
    """
    parts = []
    for y_raw, a_raw, b_raw in folds:
        y, a = labels_and_scores(y_raw, a_raw)
        _, b = labels_and_scores(y_raw, b_raw)
        parts.append((y, a, b))
    n = sum(len(y) for y, _, _ in parts)
    if n <= exact_limit:
        codes = np.arange(2**n, dtype=np.int64)[:, None]
        swaps = ((codes >> np.arange(n)) & 1).astype(bool)
        method = f"exact within-patient permutation test ({2**n} swaps)"
    else:
        rng = np.random.default_rng(seed)
        swaps = np.vstack([np.zeros((1, n), bool), rng.random((n_permutations, n)) < 0.5])
        method = f"within-patient permutation test ({n_permutations} random swaps, seed {seed})"
    total = np.zeros(len(swaps))
    start = 0
    for y, a, b in parts:
        swap = swaps[:, start : start + len(y)]
        start += len(y)
        rows = np.broadcast_to(y, swap.shape)
        total += _auc_rows(rows, np.where(swap, b, a)) - _auc_rows(rows, np.where(swap, a, b))
    stat = total / len(parts)
    observed = abs(stat[0])
    # Row 0 is the observed assignment (no swap): exact, #/2^n; sampled, (1 + #) / (1 + B).
    p_value = int(np.sum(np.abs(stat) >= observed - 1e-12)) / len(stat)
    return {"diff": float(stat[0]), "p_value": float(p_value), "method": method, "n_permutations": len(stat)}


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
