"""The age + sex baseline a run's image model is compared with.

A logistic regression (scikit-learn) on a natural-looking cubic spline of age (``SplineTransformer``, 4
knots at quantiles), sex one-hot and an age x sex term (the covariates encoded as the model head encodes
them, :class:`cacxr.model.covariates.ClinicalEncoder`), fitted on each fold's train + val patients and
scored once on its test patients, with the run's own folds. metrics.json reports its pooled AUC with a
bootstrap CI, per-fold AUCs, and the image model against it on the same patients fold by fold
(``fold_stratified_test``: mean within-fold paired DeLong difference, its interval and p-value), with the
pooled DeLong test beside it for reference (it mixes the folds' calibrations).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cacxr.core import CacxrError, true_label
from cacxr.model import CLINICAL_FEATURES, ClinicalEncoder, sex_level

__all__ = ["MIN_KNOWN_SHARE", "clinical_baseline", "skipped_baseline"]

logger = logging.getLogger(__name__)

# The baseline is only meaningful when most patients have both covariates (the rest are imputed).
MIN_KNOWN_SHARE = 0.8


def clinical_baseline(
    folds: Sequence[tuple[int, Sequence[str], Sequence[str]]],
    covariates: dict[str, tuple[float, str]],
    cac: dict[str, float],
    threshold: float,
    image_scores: dict[str, float] | None = None,
    min_known: float = MIN_KNOWN_SHARE,
    n_boot: int = 2000,
    seed: int = 0,
    scores_out: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Age (spline) + sex + age x sex logistic regression on the run's folds, scored out of fold.

    Args:
        folds: ``(fold, fit ids (train + val), test ids)`` per fold.
        covariates: patient id -> (age or NaN, sex ``M``/``F``/"").
        cac: patient id -> true CAC (positive means CAC > ``threshold``).
        threshold: the run's threshold.
        image_scores: patient id -> the image model's out-of-fold score, for the paired tests.
        min_known: share of patients that must have both age and sex, else the baseline is skipped.
        n_boot: bootstrap resamples of the AUC CIs.
        seed: bootstrap seed.
        scores_out: when given, filled with patient id -> the baseline's out-of-fold probability.

    Returns:
        ``{"features", "n_known", "n", "pooled": {"auc", "auc_ci", "n", "n_pos"}, "folds": [...],
        "fold_stratified_test": {...}, "delong_test": {... pooled}, "imputation": ...}``; or ``{"features", "skipped": True, "note": ...}`` when
        too few patients have age and sex or a fold lacks a class.
    """
    from cacxr.stats.folds import fold_paired_test
    from cacxr.stats.intervals import bootstrap_ci, delong_test
    from cacxr.stats.metrics import classification_metrics

    features = list(CLINICAL_FEATURES)
    ids = [pid for _, _, test in folds for pid in test]
    if not ids:
        return skipped_baseline(features, "no test patients")
    has_age = sum(math.isfinite(covariates.get(pid, (math.nan, ""))[0]) for pid in ids)
    has_sex = sum(sex_level(covariates.get(pid, (math.nan, ""))[1]) != "unknown" for pid in ids)
    n_known = sum(
        math.isfinite(covariates.get(pid, (math.nan, ""))[0])
        and sex_level(covariates.get(pid, (math.nan, ""))[1]) != "unknown"
        for pid in ids
    )
    if n_known < min_known * len(ids):
        return skipped_baseline(
            features,
            f"only {n_known} of {len(ids)} patients have both age and sex (age known: {has_age}, sex known: "
            f"{has_sex}); the baseline needs at least {min_known:.0%}",
            n_known=n_known,
        )

    def values(members: Sequence[str]) -> tuple[list[float], list[str]]:
        pairs = [covariates.get(pid, (math.nan, "")) for pid in members]
        return [a for a, _ in pairs], [s for _, s in pairs]

    per_fold, labels, scores, order = [], [], [], []
    for k, fit_ids, test_ids in folds:
        y_fit = true_label([cac[pid] for pid in fit_ids], threshold)
        y_test = true_label([cac[pid] for pid in test_ids], threshold)
        if len(set(y_fit)) < 2 or len(set(y_test)) < 2:
            return skipped_baseline(features, f"fold {k} lacks a class (positive means CAC > {threshold:g})", n_known)
        model = _BaselineModel.fit(*values(fit_ids), y_fit)
        p = model.predict(*values(test_ids))
        auc = classification_metrics(y_test, p)["auc"]
        ci = list(bootstrap_ci(y_test, p, "auc", n_boot=n_boot, seed=seed))
        per_fold.append({"fold": k, "auc": auc, "auc_ci": ci, "n": len(y_test), "n_pos": int(y_test.sum())})
        labels.append(y_test)
        scores.append(p)
        order.extend(test_ids)
    y_all, p_all = np.concatenate(labels), np.concatenate(scores)
    pooled = {
        "auc": classification_metrics(y_all, p_all)["auc"],
        "auc_ci": list(bootstrap_ci(y_all, p_all, "auc", n_boot=n_boot, seed=seed)),
        "n": len(y_all),
        "n_pos": int(y_all.sum()),
    }
    result: dict[str, Any] = {
        "features": features,
        "model": "logistic regression (scikit-learn): cubic spline of age (4 knots), sex one-hot with an unknown "
        "level, age x sex",
        "imputation": "unknown ages get the median age of the fold's training part",
        "n": len(ids),
        "n_known": n_known,
        "pooled": pooled,
        "folds": per_fold,
    }
    if scores_out is not None:
        scores_out.update(zip(order, p_all.tolist(), strict=True))
    if image_scores is not None and all(pid in image_scores for pid in order):
        image = np.array([image_scores[pid] for pid in order], dtype=np.float64)
        names = {"a": "image model", "b": "clinical baseline"}
        try:
            bounds = np.cumsum([0, *(len(y) for y in labels)])
            result["fold_stratified_test"] = {
                **names,
                **fold_paired_test(
                    [
                        (f["fold"], labels[i], image[bounds[i] : bounds[i + 1]], scores[i])
                        for i, f in enumerate(per_fold)
                    ]
                ),
            }
        except CacxrError as exc:
            result["fold_stratified_test"] = {"skipped": True, "note": str(exc)}
        try:
            result["delong_test"] = {
                **names,
                "pooled": True,
                "note": "on pooled out-of-fold scores: includes the calibration differences between fold models",
                **delong_test(y_all, image, p_all),
            }
        except CacxrError as exc:
            result["delong_test"] = {"skipped": True, "note": str(exc)}
    return result


@dataclass
class _BaselineModel:
    """The baseline's design (age spline, sex one-hot, age x sex) and its logistic regression."""

    encoder: ClinicalEncoder
    spline: Any
    model: Any

    @classmethod
    def fit(cls, ages: Sequence[float], sexes: Sequence[str], y: np.ndarray) -> _BaselineModel:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import SplineTransformer

        encoder = ClinicalEncoder.fit(list(CLINICAL_FEATURES), ages, sexes)
        base = encoder.transform(ages, sexes)
        spline = SplineTransformer(n_knots=4, degree=3, knots="quantile", extrapolation="linear")
        spline.fit(base[:, :1])
        fitted = cls(encoder, spline, None)
        fitted.model = LogisticRegression(max_iter=1000).fit(fitted.design(ages, sexes), y)
        return fitted

    def design(self, ages: Sequence[float], sexes: Sequence[str]) -> np.ndarray:
        base = self.encoder.transform(ages, sexes).astype(np.float64)
        age_z, sex = base[:, :1], base[:, 1:]
        return np.hstack([self.spline.transform(age_z), sex, age_z * sex[:, :1]])  # last: age x male

    def predict(self, ages: Sequence[float], sexes: Sequence[str]) -> np.ndarray:
        return self.model.predict_proba(self.design(ages, sexes))[:, 1]


def skipped_baseline(features: list[str], note: str, n_known: int | None = None) -> dict[str, Any]:
    """The baseline's record when it cannot be fitted: ``{"features", "skipped": True, "note"[, "n_known"]}``."""
    logger.info("clinical baseline skipped: %s", note)
    out: dict[str, Any] = {"features": features, "skipped": True, "note": note}
    if n_known is not None:
        out["n_known"] = n_known
    return out
