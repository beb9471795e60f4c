"""An operating point fixed in advance: a rule, its threshold, and what it is expected to give on new patients.

``--operating-point`` takes one of three rules:

* ``sensitivity=X`` (default ``sensitivity=0.90``, a rule-out point): the highest threshold whose
  sensitivity is at least X;
* ``specificity=X``: the lowest threshold whose specificity is at least X;
* ``youden``: the threshold maximising Youden's J (``cacxr.stats.metrics.choose_threshold``).

Where the threshold is chosen (issue 21, item 18; ``benchmarks/sim_operating_point.py``): on the **out-of-fold
test predictions** of all folds together (calibrated probabilities, so one threshold means the same in every
fold). Each fold's ~24 validation patients already pick its best epoch and fit its calibration map, so its
validation scores are optimistic: a threshold chosen there gave 0.77 instead of 0.90 on new patients of a real
cohort, and about 0.84 in the simulation, while the out-of-fold threshold lands at about 0.90.

That threshold is applied only to new patients (the final model and the fold ensemble: ``load_run``). It
is never used to report the test figures of the folds it was chosen on, which would be in-sample. The
reported figures (sensitivity, specificity, PPV, NPV with 95 % Wilson score intervals, the confusion
matrix) come from leave-one-fold-out: each fold's test patients are decided at the threshold the rule
chooses on the **other** folds' test predictions (``fold_thresholds``). So each test fold is scored once,
never decides its own threshold, and the figures estimate what the rule gives on patients it has not seen.
The figures at the final threshold on the patients it was chosen on are kept under ``in_sample``, with a
note saying they are not an independent estimate. The intervals are conditional on the thresholds
(choosing them adds uncertainty). Thresholds lie halfway between adjacent distinct scores, so that a new
score equal to one of them is not decided by an accident of ties.
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
    "expected_line",
    "operating_point",
    "operating_point_figures",
    "nested_operating_figures",
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
    """The threshold of ``rule`` on labels and scores (``score >= threshold`` is positive).

    Args:
        y: 0/1 labels (both classes needed); in a run, the out-of-fold test labels.
        score: their calibrated scores.
        rule: see :func:`parse_rule`.

    Returns:
        The threshold.

    Raises:
        CacxrError: a bad rule, or data with one class only.
    """
    from cacxr.stats.metrics import choose_threshold

    kind, target = parse_rule(rule)
    y = np.asarray(y).astype(int).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if len(y) != len(s) or len(y) == 0:
        raise CacxrError(f"operating point: {len(y)} labels but {len(s)} scores")
    if y.min() == y.max():
        raise CacxrError("operating point: the patients it is chosen on are all of one class; no threshold can be chosen")
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
    return _figures(np.asarray(y).astype(int).ravel(), np.asarray(score, dtype=np.float64).ravel() >= threshold, alpha)


def nested_operating_figures(
    rule: str, y: ArrayLike, score: ArrayLike, folds: ArrayLike, alpha: float = 0.05
) -> dict[str, Any]:
    """The rule's figures on new patients, estimated by leave-one-fold-out over the out-of-fold predictions.

    Each fold's test patients are decided at the threshold the rule chooses on the **other** folds' test
    predictions, never on their own: so every figure is measured on patients the threshold did not see,
    which is what applying the rule's threshold (chosen on all folds) to new patients is.

    Args:
        rule: see :func:`parse_rule`.
        y: 0/1 out-of-fold test labels.
        score: their calibrated scores.
        folds: the fold of each patient.
        alpha: 1 - confidence level.

    Returns:
        :func:`operating_point_figures`'s keys pooled over the folds, plus ``fold_thresholds`` (fold -> the
        threshold its test patients were decided at).

    Raises:
        CacxrError: a bad rule, or fewer than two folds, or other folds of one class only.
    """
    y = np.asarray(y).astype(int).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    f = np.asarray(folds).ravel()
    if not len(y) == len(s) == len(f):
        raise CacxrError(f"operating point: {len(y)} labels, {len(s)} scores and {len(f)} folds")
    pred = np.zeros(len(y), dtype=bool)
    cuts: dict[str, float] = {}
    keys = sorted(set(f.tolist()))
    if len(keys) < 2:
        raise CacxrError("operating point: a leave-one-fold-out estimate needs at least two folds")
    for k in keys:
        mine = f == k
        cuts[str(k)] = choose_operating_threshold(y[~mine], s[~mine], rule)
        pred[mine] = s[mine] >= cuts[str(k)]
    return {**_figures(y, pred, alpha), "fold_thresholds": cuts}


def _figures(y: np.ndarray, pred: np.ndarray, alpha: float) -> dict[str, Any]:
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
    test_folds: Sequence[int] | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """metrics.json's ``operating_point``: the rule, its threshold, its expected figures on new patients.

    Args:
        rule: the ``--operating-point`` value.
        validation: every fold's validation records (fold.json ``validation``); their presence says the folds
            were calibrated, so that their test scores share one probability scale. ``None`` or empty when
            the folds recorded none (runs without calibrated folds): then no operating point is chosen.
        test_labels: the out-of-fold test labels.
        test_scores: their calibrated scores; ``None`` when the run has none (e.g. a regression run
            without calibrated probabilities).
        test_folds: the fold of each test patient (the leave-one-fold-out estimate needs them).
        alpha: 1 - confidence level.

    Returns:
        ``{"rule", "target", "threshold", "chosen_on", "expected", "estimate", "sensitivity",
        "sensitivity_ci", ..., "confusion_matrix", "n", "n_pos", "fold_thresholds", "in_sample", ...}``;
        without validation records, test scores or folds with both classes: ``{"rule", "threshold": None,
        "note"}``.
    """
    kind, target = parse_rule(rule)
    if not list(validation or []):
        return {
            "rule": rule,
            "threshold": None,
            "note": "the folds recorded no inner-validation predictions (fold.json 'validation'), so their "
            "scores are not known to be calibrated and no operating point was chosen; retrain with calibrated folds",
        }
    if test_scores is None:
        return {"rule": rule, "threshold": None, "note": "the out-of-fold predictions have no calibrated probability"}
    y = np.asarray(test_labels).astype(int).ravel()
    s = np.asarray(test_scores, dtype=np.float64).ravel()
    folds = np.zeros(len(y), dtype=int) if test_folds is None else np.asarray(test_folds).ravel()
    try:
        threshold = choose_operating_threshold(y, s, rule)
        nested = nested_operating_figures(rule, y, s, folds, alpha)
    except CacxrError as exc:
        return {"rule": rule, "threshold": None, "note": str(exc)}
    n_folds = len(nested["fold_thresholds"])
    result: dict[str, Any] = {
        "rule": rule,
        "target": target,
        "threshold": threshold,
        "chosen_on": f"the out-of-fold test predictions of all {n_folds} folds together ({len(y)} patients, "
        f"{int(y.sum())} positive; calibrated scores); the decision threshold of the final model and the fold "
        "ensemble on new patients",
        "estimate": "leave-one-fold-out: each fold's test patients decided at the threshold the rule chooses on "
        "the other folds' test predictions (fold_thresholds), never on their own",
        "ci_method": "Wilson score interval (conditional on the thresholds)",
        "level": 1.0 - alpha,
    }
    result.update(nested)
    result["expected"] = expected_line(kind, target, result, 1.0 - alpha)
    in_sample = operating_point_figures(y, s, threshold, alpha)
    result["in_sample"] = {
        "note": "at the threshold, on the patients it was chosen on: not an independent estimate",
        **{k: in_sample[k] for k in ("sensitivity", "specificity", "ppv", "npv", "confusion_matrix")},
    }
    return result


def expected_line(kind: str, target: float | None, figures: dict[str, Any], level: float = 0.95) -> str:
    """One line a reader understands: the target beside the figure expected on new patients.

    Args:
        kind: ``sensitivity``, ``specificity`` or ``youden`` (:func:`parse_rule`).
        target: the rule's target (None for youden).
        figures: ``sensitivity``, ``sensitivity_ci``, ``specificity``, ``specificity_ci``.
        level: the intervals' confidence level.

    Returns:
        e.g. ``target sensitivity 0.90; expected on new patients 0.88 (95 % CI 0.80-0.93)``.
    """

    def text(name: str) -> str:
        value, ci = figures.get(name), figures.get(f"{name}_ci") or [None, None]
        if value is None:
            return "n/a"
        interval = f" ({level:.0%} CI {ci[0]:.2f}-{ci[1]:.2f})" if None not in ci else ""
        return f"{value:.2f}{interval}"

    if kind == "youden" or target is None:
        return (
            f"Youden's J (no target); expected on new patients: sensitivity {text('sensitivity')}, "
            f"specificity {text('specificity')}"
        )
    return f"target {kind} {target:.2f}; expected on new patients {text(kind)}"
