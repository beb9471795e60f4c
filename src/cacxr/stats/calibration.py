"""Calibration figures and decision-curve analysis of predicted probabilities.

* **Brier score**: mean squared error of the probabilities (scikit-learn's ``brier_score_loss``).
* **Calibration intercept** (calibration-in-the-large): ``a`` in ``logit P(y=1) = a + logit(p)``, a
  logistic regression with ``logit(p)`` as an offset; 0 when predicted risks are right on average,
  negative when they are too high.
* **Calibration slope**: ``b`` in ``logit P(y=1) = a + b * logit(p)``; 1 when the spread of the risks is
  right, below 1 when predictions are too extreme (overfitting).
* Both with 95 % Wald intervals from the fitted model's information matrix (the usual GLM intervals).
* **Net benefit** at a threshold probability ``t``: ``TP/n - FP/n * t / (1 - t)`` (Vickers & Elkin 2006),
  for the model, a baseline, treating everyone and treating no one (0).

The logistic fits with an offset are a few Newton steps on two parameters: scikit-learn has no offset
and statsmodels is not a dependency of cacxr.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import brier_score_loss

from cacxr.core import CacxrError

__all__ = [
    "DECISION_THRESHOLDS",
    "calibration_figures",
    "decision_curve",
    "net_benefit",
]

# Threshold probabilities of the decision curve.
DECISION_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.01, 0.96, 0.01))
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p / (1.0 - p))


def _logistic(x: np.ndarray, y: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Maximum-likelihood logistic regression with an offset (Newton-Raphson); None if it does not converge."""
    beta = np.zeros(x.shape[1])
    for _ in range(100):
        eta = offset + x @ beta
        mu = 1.0 / (1.0 + np.exp(-eta))
        weights = np.clip(mu * (1.0 - mu), 1e-12, None)
        information = x.T @ (x * weights[:, None])
        try:
            step = np.linalg.solve(information, x.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None
        beta = beta + step
        if not np.all(np.isfinite(beta)) or np.abs(beta).max() > 1e3:
            return None  # separation: the estimate runs off to infinity
        if np.abs(step).max() < 1e-10:
            try:
                return beta, np.linalg.inv(information)
            except np.linalg.LinAlgError:
                return None
    return None


def calibration_figures(y: ArrayLike, p: ArrayLike, alpha: float = 0.05) -> dict[str, Any]:
    """Brier score, calibration intercept and slope (with Wald intervals) of probabilities ``p``.

    Args:
        y: 0/1 labels.
        p: predicted probabilities in [0, 1].
        alpha: 1 - confidence level.

    Returns:
        ``{"brier", "calibration_intercept", "calibration_intercept_ci", "calibration_slope",
        "calibration_slope_ci", "mean_predicted", "observed_rate", "n", "n_pos"}``; intercept and slope are
        ``None`` with one class, or when the fit does not converge (separated data).

    Raises:
        CacxrError: probabilities outside [0, 1], non-finite values or lengths that differ.
    """
    y = np.asarray(y).astype(np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if len(y) != len(p) or len(y) == 0:
        raise CacxrError(f"calibration: {len(y)} labels but {len(p)} probabilities")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise CacxrError("calibration: the scores are not probabilities in [0, 1]")
    z = float(stats.norm.ppf(1.0 - alpha / 2.0))
    out: dict[str, Any] = {
        "brier": float(brier_score_loss(y, p)),
        "calibration_intercept": None,
        "calibration_intercept_ci": [None, None],
        "calibration_slope": None,
        "calibration_slope_ci": [None, None],
        "mean_predicted": float(p.mean()),
        "observed_rate": float(y.mean()),
        "n": len(y),
        "n_pos": int(y.sum()),
    }
    if 0 < y.sum() < len(y):
        lp = _logit(p)
        ones = np.ones((len(y), 1))
        fitted = _logistic(ones, y, lp)
        if fitted is not None:
            (a,), cov = fitted
            se = math.sqrt(cov[0, 0])
            out["calibration_intercept"] = float(a)
            out["calibration_intercept_ci"] = [float(a - z * se), float(a + z * se)]
        fitted = _logistic(np.hstack([ones, lp[:, None]]), y, np.zeros(len(y)))
        if fitted is not None:
            (_, b), cov = fitted
            se = math.sqrt(cov[1, 1])
            out["calibration_slope"] = float(b)
            out["calibration_slope_ci"] = [float(b - z * se), float(b + z * se)]
    return out


def net_benefit(y: ArrayLike, p: ArrayLike | None, thresholds: Sequence[float]) -> list[float]:
    """Net benefit of treating the patients with ``p >= t``, for each threshold probability ``t``.

    Args:
        y: 0/1 labels.
        p: predicted probabilities; ``None`` means treat everyone.
        thresholds: threshold probabilities in (0, 1).

    Returns:
        One net benefit per threshold.
    """
    y = np.asarray(y).astype(bool).ravel()
    n = len(y)
    out = []
    for t in thresholds:
        treated = np.ones(n, bool) if p is None else np.asarray(p, dtype=np.float64).ravel() >= t
        tp = np.sum(treated & y) / n
        fp = np.sum(treated & ~y) / n
        out.append(float(tp - fp * t / (1.0 - t)))
    return out


def decision_curve(
    y: ArrayLike,
    p: ArrayLike,
    baseline: ArrayLike | None = None,
    thresholds: Sequence[float] = DECISION_THRESHOLDS,
) -> dict[str, Any]:
    """Net benefit of the model, of a baseline (e.g. age + sex), of treating all and of treating none.

    Args:
        y: 0/1 labels.
        p: the model's probabilities.
        baseline: the baseline's probabilities for the same patients (optional).
        thresholds: threshold probabilities.

    Returns:
        ``{"thresholds", "model", "baseline" (or None), "treat_all", "treat_none"}`` (lists).
    """
    thresholds = [float(t) for t in thresholds]
    return {
        "thresholds": thresholds,
        "model": net_benefit(y, p, thresholds),
        "baseline": None if baseline is None else net_benefit(y, baseline, thresholds),
        "treat_all": net_benefit(y, None, thresholds),
        "treat_none": [0.0] * len(thresholds),
    }
