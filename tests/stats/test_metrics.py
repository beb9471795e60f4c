"""Tests of cacxr.stats.metrics: exact values on hand-computed cases, intervals, DeLong, regression, build_metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from cacxr.core import AGATSTON_BANDS, CacxrError, cac_to_target, target_to_cac
from cacxr.core import agatston_band as band
from cacxr.core.task import CAC_CLIP
from cacxr.stats import (
    bootstrap_ci,
    build_metrics,
    choose_threshold,
    classification_metrics,
    delong_test,
    regression_metrics,
)
from cacxr.stats.summary import pooled_summary

# ---------------------------------------------------------------------------------------------
# classification_metrics: hand-computed tables

Y4 = [0, 0, 1, 1]
S4 = [0.1, 0.4, 0.35, 0.8]  # AUC: 3 of 4 positive-negative pairs ordered -> 0.75


@pytest.mark.parametrize(
    ("threshold", "cm", "expected"),
    [
        # score >= 0.5: predictions 0 0 0 1
        (
            0.5,
            [[2, 0], [1, 1]],
            dict(accuracy=0.75, sensitivity=0.5, specificity=1.0, ppv=1.0, npv=2 / 3, f1=2 / 3),
        ),
        # score >= 0.3: predictions 0 1 1 1
        (
            0.3,
            [[1, 1], [0, 2]],
            dict(accuracy=0.75, sensitivity=1.0, specificity=0.5, ppv=2 / 3, npv=1.0, f1=0.8),
        ),
        # score >= 0.35 (a score equal to the threshold is positive): predictions 0 1 1 1
        (0.35, [[1, 1], [0, 2]], dict(sensitivity=1.0, specificity=0.5)),
        # nothing predicted positive: PPV undefined
        (
            0.9,
            [[2, 0], [2, 0]],
            dict(accuracy=0.5, sensitivity=0.0, specificity=1.0, ppv=None, npv=0.5, f1=0.0),
        ),
    ],
)
def test_classification_metrics_exact(threshold: float, cm: list, expected: dict) -> None:
    m = classification_metrics(Y4, S4, threshold)
    assert m["auc"] == pytest.approx(0.75)
    assert m["confusion_matrix"] == cm
    assert (m["n"], m["n_pos"], m["threshold"]) == (4, 2, threshold)
    assert m["balanced_accuracy"] == pytest.approx((m["sensitivity"] + m["specificity"]) / 2)
    for name, value in expected.items():
        assert m[name] == (None if value is None else pytest.approx(value)), name


def test_classification_metrics_one_class_is_none_not_a_guess() -> None:
    m = classification_metrics([0, 0, 0], [0.2, 0.7, 0.9], 0.5)
    assert m["auc"] is None
    assert m["sensitivity"] is None
    assert m["specificity"] == pytest.approx(1 / 3)
    assert m["confusion_matrix"] == [[1, 2], [0, 0]]
    json.dumps(m, allow_nan=False)  # JSON-safe: no NaN


def test_classification_metrics_per_case_thresholds() -> None:
    # the first two cases come from a fold with threshold 0.3, the last two from one with 0.5
    m = classification_metrics(Y4, S4, [0.3, 0.3, 0.5, 0.5])
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]
    assert m["threshold"] is None


@pytest.mark.parametrize(
    ("y", "score", "message"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "labels must be 0 or 1"),
        ([0, 1], [0.1, float("nan")], "NaN or infinite"),
        ([0, 1, 1], [0.1, 0.2], "3 labels but 2 scores"),
        ([], [], "no cases"),
    ],
)
def test_classification_metrics_bad_input(y, score, message) -> None:
    with pytest.raises(CacxrError, match=message):
        classification_metrics(y, score)


# ---------------------------------------------------------------------------------------------
# choose_threshold


@pytest.mark.parametrize(
    ("y", "score", "default", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.5, 0.5),  # separated: halfway between 0.2 and 0.8
        ([0, 0, 0, 1, 1], [0.1, 0.6, 0.7, 0.8, 0.9], 0.5, 0.75),
        ([0, 1, 0, 1], [0.1, 0.3, 0.8, 0.9], 0.5, 0.2),  # J ties at 0.85 and 0.2: closest to 0.5
        ([0, 1, 0, 1], [0.1, 0.3, 0.8, 0.9], 0.9, 0.85),  # ... closest to the given default
        ([1, 1, 1], [0.1, 0.3, 0.8], 0.5, 0.5),  # one class: the default
        ([0, 1, 0, 1], [0.4, 0.4, 0.4, 0.4], 0.5, 0.5),  # no threshold beats chance
    ],
)
def test_choose_threshold(y, score, default, expected) -> None:
    assert choose_threshold(y, score, default=default) == pytest.approx(expected)


def test_choose_threshold_maximises_youden_on_random_data() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    chosen = choose_threshold(y, s)
    m = classification_metrics(y, s, chosen)
    # Youden's J of every possible cut (score >= t is positive), computed directly
    cuts = np.unique(s)
    j = (s[y == 1][:, None] >= cuts).mean(axis=0) + (s[y == 0][:, None] < cuts).mean(axis=0)
    assert m["sensitivity"] + m["specificity"] == pytest.approx(j.max())


# ---------------------------------------------------------------------------------------------
# bootstrap_ci


def _scores(n: int, effect: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    return y, rng.normal(size=n) + effect * y


@pytest.mark.parametrize("stratified", [True, False])
@pytest.mark.parametrize("metric", ["auc", "balanced_accuracy", "sensitivity", "specificity"])
def test_bootstrap_ci_contains_the_estimate(metric: str, stratified: bool) -> None:
    y, s = _scores(150, 1.0, seed=1)
    point = classification_metrics(y, s, 0.5)[metric]
    lo, hi = bootstrap_ci(y, s, metric, n_boot=500, stratified=stratified, threshold=0.5)
    assert lo < point < hi
    assert lo >= 0.0 and hi <= 1.0


def test_bootstrap_ci_narrows_with_more_cases() -> None:
    widths = []
    for n in (60, 600):
        y, s = _scores(n, 1.0, seed=2)
        lo, hi = bootstrap_ci(y, s, n_boot=500)
        widths.append(hi - lo)
    assert widths[1] < 0.6 * widths[0]


def test_bootstrap_auc_matches_sklearn_on_the_same_resamples() -> None:
    # the vectorised midrank AUC must equal roc_auc_score, ties included
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 80)
    s = np.round(rng.random(80) + 0.3 * y, 1)  # many ties
    fast = bootstrap_ci(y, s, "auc", n_boot=200, seed=9)
    slow = bootstrap_ci(y, s, lambda yy, ss: roc_auc_score(yy, ss), n_boot=200, seed=9)
    assert fast == pytest.approx(slow)


def test_random_scores_give_chance_auc() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 400)
    s = rng.random(400)
    auc = classification_metrics(y, s)["auc"]
    lo, hi = bootstrap_ci(y, s, n_boot=1000)
    assert auc == pytest.approx(0.5, abs=0.07)
    assert lo < 0.5 < hi


def test_bootstrap_ci_undefined_and_bad_metric() -> None:
    assert bootstrap_ci([1, 1, 1], [0.2, 0.5, 0.7], n_boot=50) == (None, None)
    with pytest.raises(CacxrError, match="unknown metric 'kappa'"):
        bootstrap_ci([0, 1], [0.2, 0.5], "kappa")


# ---------------------------------------------------------------------------------------------
# delong_test


def _naive_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong's variance from its definition (pairwise comparisons), for checking the fast version."""

    def components(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (va10, va01), (vb10, vb01) = components(a), components(b)
    m, n = int(y.sum()), int(len(y) - y.sum())
    var = (np.var(va10 - vb10, ddof=1)) / m + (np.var(va01 - vb01, ddof=1)) / n
    return float(va10.mean() - vb10.mean()), math.sqrt(var)


def _rank_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC (quicker than roc_auc_score in a loop)."""
    n_pos = y.sum()
    return (rankdata(s)[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos))


def test_delong_matches_its_definition() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    a = np.round(rng.normal(size=40) + y, 1)
    b = np.round(rng.normal(size=40) + 0.3 * y + 0.5 * a, 1)
    result = delong_test(y, a, b)
    diff, se = _naive_delong(y, a, b)
    assert result["diff"] == pytest.approx(diff)
    assert result["se"] == pytest.approx(se)
    assert result["auc_a"] == pytest.approx(roc_auc_score(y, a))
    assert result["auc_b"] == pytest.approx(roc_auc_score(y, b))
    assert result["z"] == pytest.approx(diff / se)
    lo, hi = result["ci"]
    assert lo < diff < hi and hi - lo == pytest.approx(2 * 1.959964 * se, rel=1e-4)


def test_delong_identical_scores() -> None:
    y, s = _scores(100, 1.0, seed=5)
    result = delong_test(y, s, s.copy())
    assert result["diff"] == 0.0
    assert result["p_value"] == pytest.approx(1.0)


def test_delong_clearly_better_score_and_agreement_with_paired_bootstrap() -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 300)
    a = rng.normal(size=300) + 2.0 * y  # informative
    b = rng.normal(size=300) + 0.2 * y  # nearly useless
    result = delong_test(y, a, b)
    assert result["diff"] > 0.3
    assert result["p_value"] < 1e-6
    # paired bootstrap of the AUC difference: its SE should agree with DeLong's within ~25 %
    diffs = []
    pos, neg = np.flatnonzero(y), np.flatnonzero(1 - y)
    for _ in range(600):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        diffs.append(_rank_auc(y[idx], a[idx]) - _rank_auc(y[idx], b[idx]))
    assert np.std(diffs) == pytest.approx(result["se"], rel=0.25)


def test_delong_needs_two_of_each_class() -> None:
    with pytest.raises(CacxrError, match="at least 2 positive and 2 negative"):
        delong_test([0, 0, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


# ---------------------------------------------------------------------------------------------
# Agatston bands and the regression target


@pytest.mark.parametrize(
    ("cac", "expected"),
    [(0, 0), (1, 1), (10, 1), (11, 2), (100, 2), (101, 3), (400, 3), (401, 4), (5000, 4)]
    + [(0.4, 0), (0.5, 1), (10.4, 1), (10.5, 2), (400.49, 3), (-2, 0)],  # real values are rounded first
)
def test_agatston_band_edges(cac: float, expected: int) -> None:
    assert band(cac) == expected
    assert AGATSTON_BANDS[int(band(cac))] == AGATSTON_BANDS[expected]


def test_agatston_band_array_and_nan() -> None:
    assert band([0, 5, 50, 200, 900]).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(CacxrError, match="NaN"):
        band([1.0, float("nan")])


@pytest.mark.parametrize("cac", [0.0, 0.5, 1.0, 10.0, 123.4, 400.0, CAC_CLIP])
def test_target_round_trip(cac: float) -> None:
    assert cac_to_target(cac) == pytest.approx(math.log(cac + 0.001))
    assert target_to_cac(cac_to_target(cac)) == pytest.approx(cac, abs=1e-9)


def test_target_clips() -> None:
    assert cac_to_target(5000.0) == pytest.approx(cac_to_target(CAC_CLIP))
    assert target_to_cac(-20.0) == 0.0  # never a negative predicted CAC


# ---------------------------------------------------------------------------------------------
# regression_metrics

CAC = np.array([0, 0, 0, 3, 8, 40, 90, 150, 380, 700, 2500.0])


def test_regression_perfect_predictions() -> None:
    m = regression_metrics(CAC, CAC, threshold=0)
    assert m["mae_log"] == pytest.approx(0.0) and m["rmse_log"] == pytest.approx(0.0)
    assert m["r2_log"] == pytest.approx(1.0)
    assert m["spearman"] == pytest.approx(1.0) and m["pearson_log"] == pytest.approx(1.0)
    assert m["auc"] == pytest.approx(1.0)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0
    assert m["confusion_matrix"] == [[3, 0], [0, 8]]
    assert m["agatston_confusion"] == np.diag([3, 2, 2, 2, 2]).tolist()
    assert m["agatston_accuracy"] == 1.0 and m["agatston_kappa"] == pytest.approx(1.0)
    json.dumps(m, allow_nan=False)


def test_regression_known_values() -> None:
    true = np.array([0.0, 0.0, 50.0, 500.0])
    pred = np.array([0.4, 5.0, 50.0, 50.0])  # 0.4 rounds to 0: negative; 5 is positive
    m = regression_metrics(true, pred, threshold=0)
    errors = np.abs(np.log(pred + 0.001) - np.log(true + 0.001))
    assert m["mae_log"] == pytest.approx(errors.mean())
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["decision_threshold"] == 0.5
    # bands: true 0 0 2 4, predicted 0 1 2 2
    assert m["agatston_confusion"][0] == [1, 1, 0, 0, 0]
    assert m["agatston_confusion"][4] == [0, 0, 1, 0, 0]
    assert m["agatston_accuracy"] == 0.5


@pytest.mark.parametrize(
    ("threshold", "decision", "n_pos", "cm"),
    [
        # positive = CAC > 100; default cut: predicted CAC >= 100.5 (rounded above 100)
        (100, None, 4, [[6, 1], [0, 4]]),
        # positive = CAC > 0 with a user cut of 100 on the predicted CAC: 8, 40 and 90 are missed
        (0, 100.0, 8, [[3, 0], [3, 5]]),
    ],
)
def test_regression_thresholds(threshold, decision, n_pos, cm) -> None:
    pred = CAC.copy()
    pred[3] = 120.0  # a true 3 predicted as 120
    m = regression_metrics(CAC, pred, threshold=threshold, decision_threshold=decision)
    assert m["n_pos"] == n_pos
    assert m["confusion_matrix"] == cm
    assert m["threshold"] == threshold


def test_regression_bad_input() -> None:
    with pytest.raises(CacxrError, match="negative"):
        regression_metrics([-1.0, 2.0], [1.0, 2.0])
    with pytest.raises(CacxrError, match="cac_pred: 1 values are NaN"):
        regression_metrics([1.0, 2.0], [1.0, float("nan")])


# ---------------------------------------------------------------------------------------------
# pooled_summary and build_metrics


def test_pooled_summary() -> None:
    folds = [
        {
            "fold": 0,
            "auc": 0.8,
            "sensitivity": None,
            "n": 10,
            "confusion_matrix": [[1, 2], [3, 4]],
            "threshold": 0,
        },
        {"fold": 1, "auc": 0.6, "sensitivity": 0.5, "n": 12},
    ]
    summary = pooled_summary(folds, "classification")
    assert summary["mean"] == {"auc": pytest.approx(0.7), "sensitivity": 0.5, "n": 11.0}
    assert summary["std"]["auc"] == pytest.approx(math.sqrt(0.02))
    assert summary["std"]["sensitivity"] is None  # one value only
    with pytest.raises(CacxrError, match="unknown task 'segmentation'"):
        pooled_summary(folds, "segmentation")


def _fold_predictions(task: str, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    entries = []
    for fold in range(3):
        cac = np.where(rng.random(40) < 0.45, 0.0, np.exp(rng.normal(3, 2, 40)))
        if task == "classification":
            score = 1 / (1 + np.exp(-(rng.normal(size=40) + 1.5 * (cac > 0) - 0.7)))
            entries.append(
                {
                    "fold": fold,
                    "y_true": (cac > 0).astype(int),
                    "score": score,
                    "decision_threshold": 0.4 + 0.05 * fold,
                }
            )
        else:
            entries.append({"fold": fold, "cac_true": cac, "score": cac * np.exp(rng.normal(0, 1, 40))})
    return entries


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_build_metrics_layout_and_pooling(task: str) -> None:
    entries = _fold_predictions(task)
    m = build_metrics(task, 0.0, entries, n_boot=300)

    assert m["task"] == task and m["threshold"] == 0.0
    assert [f["fold"] for f in m["folds"]] == [0, 1, 2]
    pooled = m["pooled"]
    assert pooled["n"] == 120
    # pooled = all out-of-fold predictions together, each at its own fold's decision threshold
    assert np.sum([f["confusion_matrix"] for f in m["folds"]], axis=0).tolist() == pooled["confusion_matrix"]
    scores = np.concatenate([e["score"] for e in entries])
    labels = np.concatenate([e["y_true"] if task == "classification" else e["cac_true"] > 0 for e in entries])
    assert pooled["auc"] == pytest.approx(roc_auc_score(labels, scores))
    for values in (pooled, *m["folds"]):
        lo, hi = values["auc_ci"]
        assert lo <= values["auc"] <= hi
    lo, hi = pooled["balanced_accuracy_ci"]
    assert lo <= pooled["balanced_accuracy"] <= hi
    assert m["mean"]["auc"] == pytest.approx(np.mean([f["auc"] for f in m["folds"]]))
    assert m["std"]["auc"] == pytest.approx(np.std([f["auc"] for f in m["folds"]], ddof=1))
    for key in ("accuracy", "balanced_accuracy", "sensitivity", "specificity"):
        assert key in m["mean"] and key in pooled
    if task == "classification":
        assert pooled["decision_thresholds"] == pytest.approx([0.4, 0.45, 0.5])
    else:
        for key in ("mae_log", "spearman", "agatston_kappa"):
            assert key in pooled and key in m["mean"]
        assert (
            np.sum([f["agatston_confusion"] for f in m["folds"]], axis=0).tolist()
            == pooled["agatston_confusion"]
        )
    json.dumps(m, allow_nan=False)


def test_build_metrics_derives_labels_from_cac_and_checks_keys() -> None:
    entries = [{"fold": "external", "cac_true": [0, 0, 12, 300], "score": [0.1, 0.6, 0.7, 0.9]}]
    m = build_metrics("classification", 10.0, entries, n_boot=100)
    assert m["folds"][0]["fold"] == "external"
    assert m["pooled"]["confusion_matrix"] == [[1, 1], [0, 2]]  # labels: CAC > 10
    with pytest.raises(CacxrError, match="fold entry 0 has no cac_true"):
        build_metrics("regression", 0.0, [{"fold": 0, "score": [1.0]}])
    with pytest.raises(CacxrError, match="no fold predictions"):
        build_metrics("classification", 0.0, [])


def test_regression_auc_ranks_the_unclipped_log_cac_when_given() -> None:
    from sklearn.metrics import roc_auc_score

    from cacxr.runs import add_run_figures

    rng = np.random.default_rng(7)
    cac = np.where(rng.random(120) < 0.5, 0.0, np.exp(rng.normal(4, 1.5, 120)))
    log_cac = np.log(cac + 0.001) * 0.5 + rng.normal(0, 2.0, 120) - 4  # many predictions below log(0.001)
    pred = np.clip(np.exp(log_cac) - 0.001, 0, None)
    y = (cac > 0).astype(int)
    folds = np.arange(120) % 3
    entries = [{"fold": k, "cac_true": cac[folds == k], "score": pred[folds == k], "log_cac": log_cac[folds == k]}
               for k in range(3)]  # fmt: skip
    metrics = build_metrics("regression", 0.0, entries, n_boot=50)
    assert metrics["pooled"]["auc"] == pytest.approx(roc_auc_score(y, log_cac))
    assert metrics["pooled"]["auc_on"] == "predicted log CAC (unclipped)"
    assert metrics["folds"][0]["auc"] == pytest.approx(roc_auc_score(y[folds == 0], log_cac[folds == 0]))
    clipped = build_metrics("regression", 0.0, [{k: v for k, v in e.items() if k != "log_cac"} for e in entries], n_boot=50)
    assert clipped["pooled"]["auc"] != pytest.approx(metrics["pooled"]["auc"])  # ties at 0 cost rank information
    rows = [
        {"patient_id": f"P{i}", "fold": int(folds[i]), "cac_score": float(cac[i]), "label": int(y[i]),
         "score": float(pred[i]), "log_cac": float(log_cac[i])}
        for i in range(120)
    ]  # fmt: skip
    add_run_figures("regression", "youden", {}, rows, metrics)
    by_endpoint = {e["endpoint"]: e for e in metrics["endpoints"]}
    assert list(by_endpoint) == ["CAC > 0", "CAC ≥ 100", "CAC ≥ 400"]
    assert by_endpoint["CAC ≥ 100"]["pooled_auc"] == pytest.approx(roc_auc_score(cac >= 100, log_cac))
    assert by_endpoint["CAC ≥ 100"]["n_pos"] == int((cac >= 100).sum())
    assert "no calibration figures" in metrics["calibration"]["note"]  # no probability column
    assert metrics["operating_point"]["threshold"] is None
