"""Fold-level AUC, fold-stratified paired tests and Holm's correction (cacxr.stats.folds)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from cacxr.core import CacxrError
from cacxr.stats import build_metrics, delong_test, fold_level_auc, fold_paired_test, holm_adjust
from cacxr.stats.folds import stability_warning


def _folds(rng: np.random.Generator, k: int = 5, n: int = 40, d: float = 1.4, shift_sd: float = 0.0):
    """k folds of n patients (half positive), scores = d * y + noise + a fold shift of sd ``shift_sd``."""
    out = []
    for fold in range(k):
        y = rng.permutation(np.r_[np.ones(n // 2), np.zeros(n - n // 2)]).astype(int)
        out.append((fold, y, d * y + rng.normal(size=n) + rng.normal(0.0, shift_sd)))
    return out


def test_fold_level_auc_is_the_mean_of_fold_aucs_with_delong_interval() -> None:
    folds = _folds(np.random.default_rng(1))
    result = fold_level_auc(folds, pooled_auc=0.7, pooled_auc_ci=[0.6, 0.8])
    aucs = [roc_auc_score(y, s) for _, y, s in folds]
    assert result["auc_mean"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert (result["auc_min"], result["auc_max"]) == pytest.approx((min(aucs), max(aucs)))
    # Each fold's DeLong se equals the se of a paired DeLong test against a constant score (variance 0).
    for entry, (_, y, s) in zip(result["per_fold"], folds, strict=True):
        assert entry["se"] == pytest.approx(delong_test(y, s, np.zeros_like(s))["se"], rel=1e-9)
    expected_se = np.sqrt(sum(e["se"] ** 2 for e in result["per_fold"])) / len(folds)
    assert result["se"] == pytest.approx(expected_se)
    lo, hi = result["auc_ci"]
    assert lo == pytest.approx(result["auc_mean"] - 1.959964 * expected_se, abs=1e-6)
    assert hi == pytest.approx(result["auc_mean"] + 1.959964 * expected_se, abs=1e-6)
    assert "DeLong" in result["method"] and result["n_folds"] == 5
    assert result["pooled_minus_mean"] == pytest.approx(0.7 - result["auc_mean"])


def test_calibration_drift_lowers_the_pooled_auc_and_raises_a_warning() -> None:
    folds = _folds(np.random.default_rng(2), shift_sd=3.0)
    y = np.concatenate([f[1] for f in folds])
    s = np.concatenate([f[2] for f in folds])
    metrics = build_metrics(
        "classification", 0.0, [{"fold": k, "y_true": yk, "score": 1 / (1 + np.exp(-sk))} for k, yk, sk in folds],
        n_boot=50,
    )
    fold_level = metrics["fold_level"]
    assert fold_level["pooled_auc"] == pytest.approx(roc_auc_score(y, s))
    assert fold_level["auc_mean"] - fold_level["pooled_auc"] > 0.05
    assert "differs from the mean per-fold AUC" in metrics["stability_warning"]
    # Without drift the two agree and there is no warning.
    steady = fold_level_auc(folds, pooled_auc=fold_level["auc_mean"] + 0.01)
    assert stability_warning(steady) is None


def test_a_fold_with_one_class_has_no_auc_and_no_interval() -> None:
    folds = _folds(np.random.default_rng(3), k=3)
    folds.append((3, np.ones(10, dtype=int), np.arange(10.0)))
    result = fold_level_auc(folds)
    assert result["per_fold"][3]["auc"] is None
    assert result["auc_ci"] == [None, None] and result["auc_mean"] is not None


def test_fold_paired_test_matches_delong_within_one_fold() -> None:
    rng = np.random.default_rng(4)
    y = np.r_[np.ones(30), np.zeros(30)].astype(int)
    a, b = 1.5 * y + rng.normal(size=60), 0.5 * y + rng.normal(size=60)
    single = fold_paired_test([(0, y, a, b)])
    reference = delong_test(y, a, b)
    for key in ("diff", "se", "p_value"):
        assert single[key] == pytest.approx(reference[key], rel=1e-9)
    with pytest.raises(CacxrError, match="fold 7"):
        fold_paired_test([(7, np.ones(5, dtype=int), np.arange(5.0), np.arange(5.0))])


def test_holm_adjustment() -> None:
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm_adjust([]) == []


def test_simulated_image_advantage_is_found_fold_by_fold_not_pooled() -> None:
    """5 folds x 40 patients; image AUC 0.84 within folds with a fold logit shift of sd 1.5; age+sex AUC 0.72.

    The pooled DeLong test mixes the folds' scales and rarely sees the advantage; the fold-stratified test
    sees it in most replicates.
    """
    rng = np.random.default_rng(12)
    d_image, d_clinical = np.sqrt(2) * norm.ppf(0.84), np.sqrt(2) * norm.ppf(0.72)
    replicates, pooled_hits, fold_hits = 200, 0, 0
    for _ in range(replicates):
        folds = []
        for k in range(5):
            y = rng.permutation(np.r_[np.ones(20), np.zeros(20)]).astype(int)
            image = d_image * y + rng.normal(size=40) + rng.normal(0.0, 1.5)
            clinical = d_clinical * y + rng.normal(size=40)  # calibrated alike in every fold
            folds.append((k, y, image, clinical))
        stratified = fold_paired_test(folds)
        pooled = delong_test(*(np.concatenate([f[i] for f in folds]) for i in (1, 2, 3)))
        fold_hits += stratified["p_value"] < 0.05 and stratified["diff"] > 0
        pooled_hits += pooled["p_value"] < 0.05 and pooled["diff"] > 0
    assert pooled_hits / replicates < 0.25  # measured 0.09 (seed 12: see the 6 %)
    assert fold_hits / replicates > 0.55  # measured ~0.75
    assert fold_hits - pooled_hits > 0.4 * replicates
