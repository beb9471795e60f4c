"""The task's definitions, shared by every stage: targets, Agatston bands, the label rules and age.

Conventions (each written once, here):
    * a patient is positive when CAC > ``threshold`` (:func:`true_label`; the task's threshold, default 0);
    * a score is predicted positive when ``score >= decision threshold`` (:func:`predicted_label`);
    * the regression target is ``log(clip(CAC, 0, 2000) + 0.001)`` (the original study's target);
    * an age is the whole years from the birth date to the image's date (:func:`age_in_years`).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from numpy.typing import ArrayLike

from cacxr.core.errors import CacxrError

__all__ = [
    "AGATSTON_BANDS",
    "CAC_CLIP",
    "LOG_CAC_EPS",
    "TASKS",
    "age_in_years",
    "agatston_band",
    "cac_to_target",
    "predicted_label",
    "target_to_cac",
    "true_label",
]

TASKS = ("classification", "regression")
AGATSTON_BANDS = ("0", "1-10", "11-100", "101-400", ">400")
# Upper edge of each band but the last, on the integer Agatston scale.
BAND_UPPER_EDGES = (0, 10, 100, 400)
LOG_CAC_EPS = 0.001
CAC_CLIP = 2000.0


def true_label(cac: ArrayLike, threshold: float) -> np.ndarray:
    """The ground-truth label: 1 where CAC > ``threshold`` (strictly), else 0.

    Args:
        cac: Agatston scores (any shape).
        threshold: the task's threshold (``--threshold``).

    Returns:
        int64 array of 0/1, same shape.
    """
    return (np.asarray(cac, dtype=np.float64) > threshold).astype(np.int64)


def predicted_label(score: ArrayLike, decision_threshold: float | ArrayLike) -> np.ndarray:
    """The predicted label: 1 where ``score >= decision_threshold``, else 0.

    Args:
        score: probabilities, raw scores or predicted CAC (any shape).
        decision_threshold: one threshold, or one per score.

    Returns:
        int64 array of 0/1, same shape as ``score``.
    """
    return (np.asarray(score, dtype=np.float64) >= np.asarray(decision_threshold, dtype=np.float64)).astype(np.int64)


def cac_to_target(cac: ArrayLike) -> np.ndarray:
    """The regression target: ``log(clip(CAC, 0, 2000) + 0.001)``.

    Args:
        cac: Agatston scores.

    Returns:
        float64 array of the same shape.
    """
    return np.log(np.clip(np.asarray(cac, dtype=np.float64), 0.0, CAC_CLIP) + LOG_CAC_EPS)


def target_to_cac(t: ArrayLike) -> np.ndarray:
    """Inverse of :func:`cac_to_target`: predicted CAC from a predicted target (never below 0).

    Args:
        t: regression outputs on the log scale.

    Returns:
        float64 array of predicted Agatston scores, clipped at 0.
    """
    return np.clip(np.exp(np.asarray(t, dtype=np.float64)) - LOG_CAC_EPS, 0.0, None)


def agatston_band(cac: ArrayLike) -> np.ndarray:
    """Agatston band index of each score: 0 -> "0", 1 -> "1-10", 2 -> "11-100", 3 -> "101-400", 4 -> ">400".

    Agatston scores are integers, so a real-valued (predicted) score is first rounded to the nearest
    integer (halves up): 0.4 is band "0", 10.5 is band "11-100". Negative values count as 0.

    Args:
        cac: Agatston scores (any shape).

    Returns:
        int64 array of band indices, same shape.

    Raises:
        CacxrError: a score is NaN.
    """
    values = np.asarray(cac, dtype=np.float64)
    if np.isnan(values).any():
        raise CacxrError("agatston_band: a CAC score is NaN")
    rounded = np.floor(values + 0.5)
    edges = np.asarray(BAND_UPPER_EDGES, dtype=np.float64)
    return np.searchsorted(edges, rounded, side="left").astype(np.int64)


def age_in_years(birth: dt.date, at: dt.date) -> int:
    """Whole years from ``birth`` to ``at``."""
    return at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))
