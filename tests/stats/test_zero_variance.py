"""A zero DeLong variance: no zero-width interval and no p = 0 (issue 21, item 15), and p formatting (19)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cacxr.runs.report_sections import RETRAINING_CAVEAT, headline, p_text
from cacxr.stats import delong_test, fold_level_auc, fold_paired_test
from cacxr.stats.intervals import paired_permutation_test

Y = [0, 1, 0, 1, 0]
A = [0.1, 0.9, 0.2, 0.8, 0.3]
B = [0.0] * 5


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


def _brute_force_p(folds: list[tuple[list, list, list]]) -> float:
    """Every within-patient swap of A and B, written out independently of the library."""
    n = sum(len(y) for y, _, _ in folds)
    stats = []
    for swaps in itertools.product([False, True], repeat=n):
        total, start = 0.0, 0
        for y, a, b in folds:
            s = np.array(swaps[start : start + len(y)])
            start += len(y)
            y, a, b = np.array(y), np.array(a), np.array(b)
            total += _auc(y, np.where(s, b, a)) - _auc(y, np.where(s, a, b))
        stats.append(total / len(folds))
    return float(np.mean(np.abs(stats) >= abs(stats[0]) - 1e-12))


def test_fold_paired_test_with_zero_variance_gives_an_exact_p_and_no_interval() -> None:
    result = fold_paired_test([(0, Y, A, B), (1, Y, A, B)])
    assert result["diff"] == pytest.approx(0.5) and result["se"] == 0.0
    assert result["ci"] == [None, None] and result["z"] is None
    assert result["p_value"] == pytest.approx(_brute_force_p([(Y, A, B), (Y, A, B)]))
    assert result["p_value"] == pytest.approx(0.1797, abs=1e-4)
    assert "permutation" in result["note"] and "variance" in result["note"]


def test_delong_test_with_zero_variance_gives_an_exact_p_and_no_interval() -> None:
    result = delong_test(Y + Y, A + A, B + B)
    assert result["se"] == 0.0 and result["ci"] == [None, None]
    assert result["p_value"] == pytest.approx(_brute_force_p([(Y + Y, A + A, B + B)])) and result["p_value"] > 0.05
    assert "permutation" in result["note"]


def test_a_positive_variance_keeps_the_normal_approximation() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    a, b = y + rng.normal(0, 1, 60), y + rng.normal(0, 2, 60)
    result = delong_test(y, a, b)
    assert result["se"] > 0 and None not in result["ci"] and "note" not in result


def test_sampled_permutations_above_the_exact_limit_are_seeded() -> None:
    y = [0, 1] * 15
    a = [0.1, 0.9] * 15
    b = [0.5] * 30
    first = paired_permutation_test([(y, a, b)])
    assert first == paired_permutation_test([(y, a, b)])
    assert "random swaps" in first["method"] and 0 < first["p_value"] < 0.001


def test_fold_level_interval_with_zero_variance_is_not_zero_width() -> None:
    result = fold_level_auc([(0, Y, A), (1, Y, A)])
    assert result["auc_mean"] == 1.0 and result["se"] == 0.0 and result["auc_ci"] == [None, None]


@pytest.mark.parametrize(
    ("value", "text"), [(0.0, "p < 0.0001"), (3e-7, "p < 0.0001"), (0.01234, "p = 0.0123"), (None, "p n/a")]
)
def test_p_is_never_printed_as_zero(value: float | None, text: str) -> None:
    assert p_text(value) == text


def test_the_headline_says_the_interval_leaves_out_retraining() -> None:
    metrics = {
        "pooled": {"auc": 0.8, "auc_ci": [0.7, 0.9]},
        "fold_level": {"n_folds": 5, "auc_mean": 0.81, "auc_ci": [0.75, 0.87], "method": "m"},
    }
    html = headline("classification", metrics)
    assert "not the chance in training" in RETRAINING_CAVEAT
    assert "training the models again" in html
