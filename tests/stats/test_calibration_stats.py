"""Brier score, calibration intercept and slope, net benefit (cacxr.stats.calibration)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from cacxr.core import CacxrError
from cacxr.stats import calibration_figures, decision_curve
from cacxr.stats.calibration import net_benefit


def _cohort(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    logit = rng.normal(-0.3, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return y, logit


def test_well_calibrated_probabilities_have_intercept_0_and_slope_1() -> None:
    y, logit = _cohort(20000)
    fig = calibration_figures(y, 1 / (1 + np.exp(-logit)))
    assert abs(fig["calibration_intercept"]) < 0.05 and abs(fig["calibration_slope"] - 1) < 0.05
    lo, hi = fig["calibration_slope_ci"]
    assert lo < 1 < hi
    assert fig["brier"] == pytest.approx(np.mean((1 / (1 + np.exp(-logit)) - y) ** 2))


def test_overconfident_and_shifted_probabilities_are_detected() -> None:
    y, logit = _cohort(20000, seed=1)
    over = calibration_figures(y, 1 / (1 + np.exp(-2 * logit)))  # twice too extreme
    assert over["calibration_slope"] == pytest.approx(0.5, abs=0.03)
    high = calibration_figures(y, 1 / (1 + np.exp(-(logit + 1.0))))  # risks too high
    assert high["calibration_intercept"] == pytest.approx(-1.0, abs=0.06)
    assert high["calibration_intercept_ci"][1] < 0


def test_slope_equals_an_unpenalised_logistic_regression() -> None:
    y, logit = _cohort(500, seed=2)
    p = 1 / (1 + np.exp(-(0.7 * logit + 0.2)))
    fig = calibration_figures(y, p)
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(np.log(p / (1 - p))[:, None], y)
    assert fig["calibration_slope"] == pytest.approx(reference.coef_[0, 0], rel=1e-4)


def test_undefined_cases_and_errors() -> None:
    one_class = calibration_figures([1, 1, 1], [0.2, 0.5, 0.9])
    assert one_class["calibration_slope"] is None and one_class["brier"] == pytest.approx((0.64 + 0.25 + 0.01) / 3)
    separated = calibration_figures([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert separated["calibration_slope"] is None  # the fit runs off to infinity: no figure
    with pytest.raises(CacxrError, match="not probabilities"):
        calibration_figures([0, 1], [0.5, 3.0])


def test_net_benefit_by_hand() -> None:
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.6, 0.1, 0.2])
    # threshold 0.5: treated = {0.9 (TP), 0.6 (FP)} -> 1/5 - 1/5 * 1 = 0
    assert net_benefit(y, p, [0.5]) == pytest.approx([0.0])
    # threshold 0.3: treated = 0.9, 0.4 (TP), 0.6 (FP) -> 2/5 - 1/5 * 3/7
    assert net_benefit(y, p, [0.3]) == pytest.approx([0.4 - 0.2 * 3 / 7])
    curve = decision_curve(y, p, baseline=np.full(5, 0.4), thresholds=[0.2, 0.5])
    assert curve["treat_all"] == pytest.approx([0.4 - 0.6 * 0.25, 0.4 - 0.6])
    assert curve["treat_none"] == [0.0, 0.0] and curve["baseline"] == pytest.approx([0.4 - 0.6 * 0.25, 0.0])
