"""Clinical covariates (age, sex): their encoding for the model head and the age + sex baseline.

Encoding (:class:`ClinicalEncoder`), fitted on a fold's training patients only:

- ``age`` -> one column, standardised with the training mean and standard deviation; an unknown age
  (NaN) is replaced by the training median first (documented imputation, so that every patient can be
  scored; the baseline reports how many ages were known);
- ``sex`` -> three one-hot columns ``M``, ``F``, ``unknown`` (an empty or unrecognised sex is its own
  level rather than a guess).

``--clinical age,sex`` therefore gives the head 4 covariates beside the image features; the encoder's
statistics are stored in each fold's fold.json (``clinical_encoder``) so that inference applies the same
transform to the values read from a DICOM header.

Baseline (:func:`clinical_baseline`): a logistic regression (scikit-learn) on a natural-looking cubic
spline of age (``SplineTransformer``, 4 knots at quantiles), sex one-hot and an age x sex term, fitted on
each fold's train + val patients and scored once on its test patients, with the run's own folds. metrics.json
reports its pooled AUC with a bootstrap CI, per-fold AUCs, and the image model against it on the same
patients fold by fold (``fold_stratified_test``: mean within-fold paired DeLong difference, its interval
and p-value), with the pooled DeLong test beside it for reference (it mixes the folds' calibrations).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cacxr.core.errors import CacxrError
from cacxr.runs import folder as runfolder

__all__ = [
    "CLINICAL_FEATURES",
    "SEX_LEVELS",
    "MIN_KNOWN_SHARE",
    "ClinicalEncoder",
    "parse_clinical",
    "clinical_width",
    "clinical_baseline",
    "run_clinical_baseline",
]

logger = logging.getLogger(__name__)

CLINICAL_FEATURES = ("age", "sex")
SEX_LEVELS = ("M", "F", "unknown")
# The baseline is only meaningful when most patients have both covariates (the rest are imputed).
MIN_KNOWN_SHARE = 0.8


def parse_clinical(value: str | Sequence[str] | None) -> list[str]:
    """The clinical features of a ``--clinical`` value, in canonical order.

    Args:
        value: ``"age,sex"``, ``"age"``, ``"sex"``, a list of those names, or ``""``/``"none"``/None for none.

    Returns:
        A sub-list of ``["age", "sex"]``.

    Raises:
        CacxrError: an unknown feature name.
    """
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = {str(p).strip().lower() for p in parts} - {"", "none"}
    unknown = sorted(names - set(CLINICAL_FEATURES))
    if unknown:
        raise CacxrError(f"--clinical: unknown feature(s) {', '.join(unknown)}; use age, sex or age,sex")
    return [name for name in CLINICAL_FEATURES if name in names]


def clinical_width(features: Sequence[str]) -> int:
    """Number of encoded columns of ``features`` (age: 1, sex: 3)."""
    return ("age" in features) * 1 + ("sex" in features) * len(SEX_LEVELS)


def _ages(values: Sequence[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _sex_level(value: str | None) -> str:
    text = (value or "").strip().upper()
    return text if text in ("M", "F") else "unknown"


@dataclass(frozen=True)
class ClinicalEncoder:
    """Age standardisation and sex one-hot encoding, with statistics of one training part.

    Attributes:
        features: the encoded features, a sub-list of ``("age", "sex")``.
        age_median: imputed for unknown ages (training median; NaN when no training age was known).
        age_mean: mean of the training ages after imputation.
        age_std: their standard deviation (1 when it is 0).
    """

    features: tuple[str, ...]
    age_median: float = math.nan
    age_mean: float = 0.0
    age_std: float = 1.0

    @classmethod
    def fit(
        cls, features: Sequence[str], ages: Sequence[float | None], sexes: Sequence[str | None]
    ) -> ClinicalEncoder:
        """Statistics of the training patients' covariates.

        Args:
            features: features to encode (see :func:`parse_clinical`).
            ages: ages in years, NaN/None when unknown.
            sexes: ``M``, ``F`` or anything else for unknown (``sexes`` is only used for its length).

        Returns:
            The fitted encoder.

        Raises:
            CacxrError: no features, or age asked for while no training patient has a known age.
        """
        features = tuple(parse_clinical(list(features)))
        if not features:
            raise CacxrError("ClinicalEncoder: no clinical feature to encode")
        if len(ages) != len(sexes):
            raise CacxrError(f"ClinicalEncoder: {len(ages)} ages but {len(sexes)} sexes")
        if "age" not in features:
            return cls(features)
        known = _ages(ages)
        known = known[np.isfinite(known)]
        if len(known) == 0:
            raise CacxrError("--clinical age: no training patient has a known age (labels or DICOM PatientAge)")
        median = float(np.median(known))
        imputed = np.where(np.isfinite(_ages(ages)), _ages(ages), median)
        return cls(features, median, float(imputed.mean()), float(imputed.std()) or 1.0)

    @property
    def columns(self) -> list[str]:
        """Names of the encoded columns, e.g. ``["age_z", "sex_M", "sex_F", "sex_unknown"]``."""
        names = ["age_z"] if "age" in self.features else []
        return names + ([f"sex_{level}" for level in SEX_LEVELS] if "sex" in self.features else [])

    @property
    def width(self) -> int:
        """Number of encoded columns (the model's ``n_clinical``)."""
        return clinical_width(self.features)

    def transform(self, ages: Sequence[float | None], sexes: Sequence[str | None]) -> np.ndarray:
        """Encode covariates; unknown ages get the training median, unknown sexes the ``unknown`` level.

        Args:
            ages: ages in years (NaN/None when unknown).
            sexes: ``M``, ``F``, or anything else for unknown.

        Returns:
            float32 array (n, :attr:`width`).
        """
        if len(ages) != len(sexes):
            raise CacxrError(f"ClinicalEncoder: {len(ages)} ages but {len(sexes)} sexes")
        blocks = []
        if "age" in self.features:
            age = _ages(ages)
            age = np.where(np.isfinite(age), age, self.age_median)
            blocks.append(((age - self.age_mean) / self.age_std)[:, None])
        if "sex" in self.features:
            levels = [_sex_level(s) for s in sexes]
            blocks.append(np.array([[lvl == ref for ref in SEX_LEVELS] for lvl in levels], dtype=np.float64))
        return np.hstack(blocks).astype(np.float32) if blocks else np.zeros((len(ages), 0), np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready statistics (stored in fold.json as ``clinical_encoder``)."""
        median = None if math.isnan(self.age_median) else self.age_median
        return {
            "features": list(self.features),
            "columns": self.columns,
            "age_median": median,
            "age_mean": self.age_mean,
            "age_std": self.age_std,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClinicalEncoder:
        """The encoder of :meth:`to_dict` output.

        Raises:
            CacxrError: a record without the needed keys.
        """
        try:
            median = values.get("age_median")
            return cls(
                tuple(parse_clinical(values["features"])),
                math.nan if median is None else float(median),
                float(values["age_mean"]),
                float(values["age_std"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CacxrError(f"not a clinical encoder record ({type(exc).__name__}: {exc})") from None


# ---- the age + sex baseline --------------------------------------------------------------------------------


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
    from cacxr.stats.metrics import bootstrap_ci, classification_metrics, delong_test

    features = list(CLINICAL_FEATURES)
    ids = [pid for _, _, test in folds for pid in test]
    if not ids:
        return _skipped(features, "no test patients")
    has_age = sum(math.isfinite(covariates.get(pid, (math.nan, ""))[0]) for pid in ids)
    has_sex = sum(_sex_level(covariates.get(pid, (math.nan, ""))[1]) != "unknown" for pid in ids)
    n_known = sum(
        math.isfinite(covariates.get(pid, (math.nan, ""))[0])
        and _sex_level(covariates.get(pid, (math.nan, ""))[1]) != "unknown"
        for pid in ids
    )
    if n_known < min_known * len(ids):
        return _skipped(
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
        y_fit = np.array([cac[pid] > threshold for pid in fit_ids], dtype=int)
        y_test = np.array([cac[pid] > threshold for pid in test_ids], dtype=int)
        if len(set(y_fit)) < 2 or len(set(y_test)) < 2:
            return _skipped(features, f"fold {k} lacks a class (positive means CAC > {threshold:g})", n_known)
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


def _skipped(features: list[str], note: str, n_known: int | None = None) -> dict[str, Any]:
    logger.info("clinical baseline skipped: %s", note)
    out: dict[str, Any] = {"features": features, "skipped": True, "note": note}
    if n_known is not None:
        out["n_known"] = n_known
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
    from cacxr.ingest.manifest import read_manifest

    root = Path(run_dir)
    candidates = [Path(record["manifest"])] if record.get("manifest") else []
    candidates.append(root / runfolder.INGEST_DIR / "manifest.csv")
    manifest = next((p for p in candidates if p.is_file()), None)
    if manifest is None:
        return _skipped(list(CLINICAL_FEATURES), f"the run's manifest ({candidates[0]}) is gone: no age or sex")
    try:
        covariates = {row.patient_id: (float(row.age), row.sex) for row in read_manifest(manifest)}
    except CacxrError as exc:
        return _skipped(list(CLINICAL_FEATURES), str(exc))
    try:
        roles = runfolder.read_fold_roles(root)
    except CacxrError as exc:
        return _skipped(list(CLINICAL_FEATURES), str(exc))
    cac = {row["patient_id"]: float(row["cac_score"]) for row in rows}
    folds = [
        (k, [*parts.get("train", []), *parts.get("val", [])], parts.get("test", []))
        for k, parts in sorted(roles.items())
    ]
    scores = {row["patient_id"]: float(row.get("log_cac", row["score"])) for row in rows}
    return clinical_baseline(folds, covariates, cac, threshold, image_scores=scores, scores_out=scores_out)
