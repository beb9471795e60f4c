"""An operating point fixed in advance: a rule, a threshold chosen on validation data, its test figures.

``--operating-point`` takes one of three rules:

* ``sensitivity=X`` (default ``sensitivity=0.90``, a rule-out point): the highest threshold whose
  sensitivity on the validation patients is at least X;
* ``specificity=X``: the lowest threshold whose specificity on the validation patients is at least X;
* ``youden``: the threshold maximising Youden's J (``cacxr.stats.metrics.choose_threshold``).

The threshold is chosen once, on the inner-validation predictions of **all** folds together (fold.json
``validation`` records: calibrated probabilities, so one threshold means the same in every fold), never on
a test fold. Sensitivity, specificity, PPV and NPV are then measured at that threshold on the out-of-fold
test predictions, each with a 95 % Wilson score interval (scipy's ``binomtest``). The intervals are
conditional on the threshold: the uncertainty of choosing it is not included. Thresholds lie halfway
between adjacent distinct validation scores, so that a test score equal to a validation score is not
decided by an accident of ties.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import binomtest
from sklearn.metrics import roc_curve

from cacxr.core import CacxrError

__all__ = [
    "DEFAULT_RULE",
    "choose_operating_threshold",
    "operating_point",
    "operating_point_figures",
    "parse_rule",
]

DEFAULT_RULE = "sensitivity=0.90"
_RULE = re.compile(r"^\s*(sensitivity|specificity)\s*=\s*([0-9]*\.?[0-9]+)\s*$", re.IGNORECASE)


def parse_rule(text: str) -> tuple[str, float | None]:
    """The kind and target of an ``--operating-point`` value.

    Args:
        text: ``youden``, ``sensitivity=X`` or ``specificity=X`` with 0 < X < 1.

    Returns:
        ``("youden", None)``, ``("sensitivity", X)`` or ``("specificity", X)``.

    Raises:
        CacxrError: anything else (the message gives the accepted forms).
    """
    value = str(text).strip()
    if value.lower() == "youden":
        return "youden", None
    match = _RULE.match(value)
    if match and 0.0 < float(match.group(2)) < 1.0:
        return match.group(1).lower(), float(match.group(2))
    raise CacxrError(
        f"--operating-point: {text!r} is not a rule; use youden, sensitivity=X or specificity=X with 0 < X < 1 "
        "(e.g. sensitivity=0.90)"
    )


def choose_operating_threshold(y: ArrayLike, score: ArrayLike, rule: str) -> float:
    """The threshold of ``rule`` on validation labels and scores (``score >= threshold`` is positive).

    Args:
        y: 0/1 validation labels (both classes needed).
        score: validation scores.
        rule: see :func:`parse_rule`.

    Returns:
        The threshold.

    Raises:
        CacxrError: a bad rule, or validation data with one class only.
    """
    from cacxr.stats.metrics import choose_threshold

    kind, target = parse_rule(rule)
    y = np.asarray(y).astype(int).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if len(y) != len(s) or len(y) == 0:
        raise CacxrError(f"operating point: {len(y)} validation labels but {len(s)} scores")
    if y.min() == y.max():
        raise CacxrError("operating point: the validation patients are all of one class; no threshold can be chosen")
    if kind == "youden":
        return choose_threshold(y, s)
    fpr, tpr, cuts = roc_curve(y, s, drop_intermediate=False)  # cuts descending, cuts[0] = +inf
    if kind == "sensitivity":
        index = int(np.flatnonzero(tpr >= target - 1e-12)[0])  # the highest cut reaching the target
    else:
        index = int(np.flatnonzero(fpr <= 1.0 - target + 1e-12)[-1])  # the lowest cut keeping specificity
    if not math.isfinite(cuts[index]):
        return float(np.nextafter(s.max(), np.inf))  # nobody positive
    if index + 1 < len(cuts):
        return float((cuts[index] + cuts[index + 1]) / 2.0)
    return float(cuts[index])


def _proportion(successes: int, total: int, alpha: float) -> tuple[float | None, list[float | None]]:
    if total == 0:
        return None, [None, None]
    ci = binomtest(successes, total).proportion_ci(confidence_level=1.0 - alpha, method="wilson")
    return successes / total, [float(ci.low), float(ci.high)]


def operating_point_figures(y: ArrayLike, score: ArrayLike, threshold: float, alpha: float = 0.05) -> dict[str, Any]:
    """Sensitivity, specificity, PPV and NPV at ``threshold`` with Wilson intervals.

    Args:
        y: 0/1 labels.
        score: scores on the scale of ``threshold``.
        threshold: ``score >= threshold`` is positive.
        alpha: 1 - confidence level.

    Returns:
        ``sensitivity``, ``sensitivity_ci``, ``specificity``, ..., ``npv_ci`` (``None`` where undefined),
        ``confusion_matrix`` ``[[tn, fp], [fn, tp]]``, ``n``, ``n_pos``.
    """
    y = np.asarray(y).astype(int).ravel()
    pred = np.asarray(score, dtype=np.float64).ravel() >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    out: dict[str, Any] = {}
    for name, hits, total in (
        ("sensitivity", tp, tp + fn),
        ("specificity", tn, tn + fp),
        ("ppv", tp, tp + fp),
        ("npv", tn, tn + fn),
    ):
        out[name], out[f"{name}_ci"] = _proportion(hits, total, alpha)
    out.update(confusion_matrix=[[tn, fp], [fn, tp]], n=len(y), n_pos=int(y.sum()))
    return out


def operating_point(
    rule: str,
    validation: Iterable[dict[str, Any]] | None,
    test_labels: Sequence[int],
    test_scores: Sequence[float] | None,
    n_folds: int | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """metrics.json's ``operating_point``: the rule, its threshold chosen on validation, the test figures.

    Args:
        rule: the ``--operating-point`` value.
        validation: every fold's validation records (``{"patient_id", "label", "score"}``, calibrated
            scores); ``None`` or empty when the folds recorded none (runs without calibrated folds).
        test_labels: the out-of-fold test labels.
        test_scores: their calibrated scores (same scale as the validation scores); ``None`` when the run
            has none (e.g. a regression run without calibrated probabilities).
        n_folds: number of folds the validation records come from (for the ``chosen_on`` text).
        alpha: 1 - confidence level.

    Returns:
        ``{"rule", "threshold", "chosen_on", "level", "sensitivity", "sensitivity_ci", ..., "n", "n_pos"}``;
        without validation records or test scores: ``{"rule", "threshold": None, "note"}``.
    """
    parse_rule(rule)
    records = list(validation or [])
    if not records:
        return {
            "rule": rule,
            "threshold": None,
            "note": "the folds recorded no inner-validation predictions (fold.json 'validation'), so no "
            "operating point was chosen; retrain with calibrated folds",
        }
    if test_scores is None:
        return {"rule": rule, "threshold": None, "note": "the out-of-fold predictions have no calibrated probability"}
    try:
        y_val = [int(r["label"]) for r in records]
        s_val = [float(r["score"]) for r in records]
    except (KeyError, TypeError, ValueError) as exc:
        raise CacxrError(f"operating point: a validation record lacks a label or score ({exc})") from None
    try:
        threshold = choose_operating_threshold(y_val, s_val, rule)
    except CacxrError as exc:
        return {"rule": rule, "threshold": None, "note": str(exc)}
    folds = f"all {n_folds} folds" if n_folds else "all folds"
    result: dict[str, Any] = {
        "rule": rule,
        "threshold": threshold,
        "chosen_on": f"inner-validation predictions of {folds} together ({len(y_val)} patients, {sum(y_val)} "
        "positive; calibrated scores); figures on the out-of-fold test predictions",
        "ci_method": "Wilson score interval (conditional on the threshold)",
        "level": 1.0 - alpha,
    }
    result.update(operating_point_figures(test_labels, test_scores, threshold, alpha))
    return result
