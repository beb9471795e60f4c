"""The figures a merged run adds to metrics.json beyond discrimination: operating point, calibration, endpoints.

``add_run_figures`` is called by ``cacxr.training.crossval.merge_folds`` once every fold has finished. It adds:

* ``operating_point``: the ``--operating-point`` rule, its threshold chosen on all folds' out-of-fold test
  predictions (for new patients only), and sensitivity/specificity/PPV/NPV with intervals estimated by
  leave-one-fold-out, each fold decided at the threshold chosen on the other folds
  (:mod:`cacxr.stats.decision_threshold`);
* ``calibration``: Brier score, calibration intercept and slope with intervals per fold and pooled, and the
  decision curve (model, age + sex baseline, treat all, treat none) (:mod:`cacxr.stats.calibration`);
* ``endpoints`` (regression runs): the AUC of the same out-of-fold predictions for the three guideline
  endpoints CAC > 0, CAC >= 100 and CAC >= 400, fold-level headline and pooled.

``run_clinical_baseline`` fits the age + sex baseline (:mod:`cacxr.stats.baseline`) on a finished
run's folds, manifest covariates and out-of-fold scores (``clinical_baseline`` in metrics.json).

Probabilities: a classification run's ``score``; a regression run's ``probability`` column (calibrated
P(CAC > T)) when its predictions have one, else no calibration figures or operating point (said in a note).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cacxr.core import CacxrError
from cacxr.ingest import read_manifest
from cacxr.model import CLINICAL_FEATURES
from cacxr.runs import folder as runfolder
from cacxr.stats import clinical_baseline, skipped_baseline

__all__ = ["ENDPOINTS", "add_run_figures", "endpoint_label", "probabilities", "run_clinical_baseline"]

# Guideline endpoints a regression run reports from the same folds: (threshold, comparison).
ENDPOINTS = ((0.0, ">"), (100.0, ">="), (400.0, ">="))


def endpoint_label(threshold: float, comparison: str = ">") -> str:
    """``CAC > 0``, ``CAC ≥ 100``: the wording of an endpoint."""
    return f"CAC {'≥' if comparison == '>=' else '>'} {threshold:g}"


def probabilities(task: str, rows: Sequence[dict[str, Any]]) -> np.ndarray | None:
    """The out-of-fold probabilities of P(positive): classification scores, or regression ``probability``."""
    if task == "classification":
        return np.array([float(row["score"]) for row in rows])
    if rows and all("probability" in row for row in rows):
        return np.array([float(row["probability"]) for row in rows])
    return None


def add_run_figures(
    task: str,
    rule: str,
    fold_records: dict[int, dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    metrics: dict[str, Any],
    baseline_scores: dict[str, float] | None = None,
) -> None:
    """Add ``operating_point``, ``calibration`` and (regression) ``endpoints`` to ``metrics``.

    Args:
        task: ``classification`` or ``regression``.
        rule: the ``--operating-point`` rule.
        fold_records: fold -> its fold.json content.
        rows: the out-of-fold predictions (``patient_id``, ``fold``, ``label``, ``cac_score``, ``score``
            [, ``probability``, ``log_cac``]).
        metrics: the metrics.json content, changed in place.
        baseline_scores: patient id -> the age + sex baseline's out-of-fold probability (decision curve).
    """
    from cacxr.stats import operating_point

    labels = np.array([int(row["label"]) for row in rows])
    probs = probabilities(task, rows)
    has_validation = bool(fold_records) and all(record.get("validation") for record in fold_records.values())
    validation = [v for record in fold_records.values() for v in record.get("validation") or []]
    metrics["operating_point"] = operating_point(
        rule, validation if has_validation else None, labels, probs, [row["fold"] for row in rows]
    )
    metrics["calibration"] = _calibration(rows, labels, probs, baseline_scores)
    if task == "regression":
        metrics["endpoints"] = _endpoints(rows)


def _calibration(
    rows: Sequence[dict[str, Any]], labels: np.ndarray, probs: np.ndarray | None, baseline: dict[str, float] | None
) -> dict[str, Any]:
    from cacxr.stats import calibration_figures, decision_curve

    if probs is None:
        return {"note": "no calibrated probabilities in the out-of-fold predictions (regression without "
                "a 'probability' column): no calibration figures"}  # fmt: skip
    folds = np.array([row["fold"] for row in rows])
    per_fold = [{"fold": int(k), **calibration_figures(labels[folds == k], probs[folds == k])} for k in sorted(set(folds))]
    ids = [row["patient_id"] for row in rows]
    base = None
    if baseline and all(pid in baseline for pid in ids):
        base = np.array([baseline[pid] for pid in ids])
    return {
        "method": "Brier score; calibration intercept (logit offset) and slope by logistic regression, 95 % Wald "
        "intervals",
        "pooled": calibration_figures(labels, probs),
        "folds": per_fold,
        "decision_curve": decision_curve(labels, probs, base),
    }


def _endpoints(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """AUC of the regression's ranking score for CAC > 0, CAC >= 100 and CAC >= 400, from the same folds."""
    from cacxr.stats import bootstrap_ci, classification_metrics, fold_level_auc

    cac = np.array([float(row["cac_score"]) for row in rows])
    ranking = np.array([float(row.get("log_cac", row["score"])) for row in rows])
    folds = np.array([row["fold"] for row in rows])
    out = []
    for threshold, comparison in ENDPOINTS:
        y = (cac >= threshold if comparison == ">=" else cac > threshold).astype(int)
        entry: dict[str, Any] = {
            "endpoint": endpoint_label(threshold, comparison),
            "threshold": threshold,
            "comparison": comparison,
            "n": len(y),
            "n_pos": int(y.sum()),
        }
        if 0 < y.sum() < len(y):
            auc = classification_metrics(y, ranking)["auc"]
            ci = list(bootstrap_ci(y, ranking, "auc"))
            level = fold_level_auc([(k, y[folds == k], ranking[folds == k]) for k in sorted(set(folds))], auc, ci)
            entry.update(
                auc_mean=level["auc_mean"], auc_mean_ci=level["auc_ci"], auc_min=level["auc_min"],
                auc_max=level["auc_max"], pooled_auc=auc, pooled_auc_ci=ci,
            )  # fmt: skip
        else:
            entry["note"] = "one class only: no AUC"
        out.append(entry)
    return out


def run_clinical_baseline(
    run_dir: str | os.PathLike[str],
    record: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    threshold: float,
    scores_out: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The baseline of a finished run: its folds.csv, its manifest's age/sex and its out-of-fold scores.

    Args:
        run_dir: the run folder (its folds.csv is read).
        record: the run's config.json content (``manifest`` gives the covariates).
        rows: the run's out-of-fold predictions (``patient_id``, ``cac_score``, ``score``).
        threshold: positive means CAC > threshold.
        scores_out: when given, filled with the baseline's out-of-fold probability of each patient.

    Returns:
        See :func:`clinical_baseline`; a skipped result with a note when the manifest or folds.csv is gone.
    """
    root = Path(run_dir)
    try:
        manifest = runfolder.find_run_manifest(root, record.get("manifest"))
    except CacxrError as exc:
        return skipped_baseline(list(CLINICAL_FEATURES), f"{exc}: no age or sex")
    try:
        covariates = {row.patient_id: (float(row.age), row.sex) for row in read_manifest(manifest)}
    except CacxrError as exc:
        return skipped_baseline(list(CLINICAL_FEATURES), str(exc))
    try:
        roles = runfolder.read_fold_roles(root)
    except CacxrError as exc:
        return skipped_baseline(list(CLINICAL_FEATURES), str(exc))
    cac = {row["patient_id"]: float(row["cac_score"]) for row in rows}
    folds = [
        (k, [*parts.get("train", []), *parts.get("val", [])], parts.get("test", []))
        for k, parts in sorted(roles.items())
    ]
    scores = {row["patient_id"]: float(row.get("log_cac", row["score"])) for row in rows}
    return clinical_baseline(folds, covariates, cac, threshold, image_scores=scores, scores_out=scores_out)
