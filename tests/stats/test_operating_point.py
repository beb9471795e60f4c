"""The operating point fixed in advance (cacxr.stats.decision_threshold) and the --operating-point option."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from cacxr.config import TrainConfig
from cacxr.core import CacxrError
from cacxr.stats import choose_operating_threshold, nested_operating_figures, operating_point, parse_rule
from cacxr.stats.decision_threshold import operating_point_figures


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("youden", ("youden", None)),
        ("sensitivity=0.90", ("sensitivity", 0.9)),
        ("Specificity = 0.95", ("specificity", 0.95)),
    ],
)
def test_parse_rule(text: str, expected) -> None:
    assert parse_rule(text) == expected


@pytest.mark.parametrize("text", ["sensitivity=1.2", "sensitivity=0", "ppv=0.9", "", "youden=1"])
def test_bad_rules_are_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(CacxrError, match="use youden, sensitivity=X or specificity=X"):
        parse_rule(text)
    with pytest.raises(CacxrError, match="--operating-point"):
        TrainConfig(operating_point=text).resolved()


def test_config_default_is_a_rule_out_point() -> None:
    assert TrainConfig().resolved().operating_point == "sensitivity=0.90"


def test_sensitivity_rule_picks_the_highest_threshold_reaching_the_target() -> None:
    # 10 positives with scores 0.1..1.0 and 10 negatives with scores 0.05..0.5.
    y = np.r_[np.ones(10), np.zeros(10)].astype(int)
    s = np.r_[np.linspace(0.1, 1.0, 10), np.linspace(0.05, 0.5, 10)]
    t = choose_operating_threshold(y, s, "sensitivity=0.90")
    assert np.mean(s[y == 1] >= t) >= 0.9
    # halfway between the 9th highest positive (0.2) and the next lower validation score
    lower = s[s < 0.2 - 1e-12].max()
    assert t == pytest.approx((0.2 + lower) / 2)
    t_spec = choose_operating_threshold(y, s, "specificity=0.90")
    assert np.mean(s[y == 0] < t_spec) >= 0.9
    assert np.mean(s[y == 0] < t_spec - 0.03) < 0.9  # the lowest such threshold (next lower cut fails)
    with pytest.raises(CacxrError, match="one class"):
        choose_operating_threshold(np.ones(5), np.arange(5.0), "youden")


def test_figures_have_wilson_intervals() -> None:
    y = np.r_[np.ones(40), np.zeros(60)].astype(int)
    s = np.r_[np.full(36, 0.9), np.full(4, 0.1), np.full(15, 0.9), np.full(45, 0.1)]
    fig = operating_point_figures(y, s, 0.5)
    assert fig["confusion_matrix"] == [[45, 15], [4, 36]]
    assert (fig["sensitivity"], fig["specificity"]) == (0.9, 0.75)
    assert fig["ppv"] == pytest.approx(36 / 51) and fig["npv"] == pytest.approx(45 / 49)
    wilson = binomtest(36, 40).proportion_ci(method="wilson")
    assert fig["sensitivity_ci"] == pytest.approx([wilson.low, wilson.high])


# Two folds of five hand-made out-of-fold test predictions (calibrated probabilities).
HAND_Y = np.array([1, 1, 1, 0, 0, 1, 1, 1, 0, 0])
HAND_S = np.array([0.9, 0.8, 0.3, 0.36, 0.1, 0.7, 0.6, 0.2, 0.65, 0.35])
HAND_FOLD = np.array([0] * 5 + [1] * 5)
HAND_VALIDATION = [{"patient_id": f"v{i}", "label": i % 2, "score": 0.1 * i} for i in range(8)]


def test_leave_one_fold_out_decides_each_fold_at_the_other_folds_threshold() -> None:
    result = nested_operating_figures("sensitivity=0.60", HAND_Y, HAND_S, HAND_FOLD)
    # fold 0 at the cut chosen on fold 1 (2 of its 3 positives at or above 0.6; next lower score 0.35),
    # fold 1 at the cut chosen on fold 0 (2 of 3 positives at or above 0.8; next lower score 0.36)
    assert result["fold_thresholds"] == {"0": pytest.approx(0.475), "1": pytest.approx(0.58)}
    # fold 0 at 0.475: TP 0.9, 0.8; FN 0.3; TN 0.36, 0.1. Fold 1 at 0.58: TP 0.7, 0.6; FN 0.2; FP 0.65; TN 0.35.
    assert result["confusion_matrix"] == [[3, 1], [2, 4]]
    assert (result["sensitivity"], result["specificity"], result["ppv"], result["npv"]) == pytest.approx(
        (4 / 6, 3 / 4, 4 / 5, 3 / 5)
    )
    wilson = binomtest(4, 6).proportion_ci(method="wilson")
    assert result["sensitivity_ci"] == pytest.approx([wilson.low, wilson.high])
    # a fold's own scores never move its own threshold
    moved = HAND_S.copy()
    moved[HAND_FOLD == 0] = [0.99, 0.98, 0.01, 0.97, 0.02]
    assert nested_operating_figures("sensitivity=0.60", HAND_Y, moved, HAND_FOLD)["fold_thresholds"]["0"] == (
        pytest.approx(0.475)
    )
    with pytest.raises(CacxrError, match="two folds"):
        nested_operating_figures("youden", HAND_Y, HAND_S, np.zeros(10))


def test_operating_point_threshold_from_out_of_fold_predictions_figures_from_leave_one_fold_out() -> None:
    result = operating_point("sensitivity=0.60", HAND_VALIDATION, HAND_Y, HAND_S, HAND_FOLD)
    # all ten together: 4 of 6 positives at or above 0.6, the next lower score 0.36 (validation records ignored)
    assert result["threshold"] == pytest.approx(0.48)
    assert result["target"] == 0.6
    assert "out-of-fold test predictions of all 2 folds together (10 patients, 6 positive" in result["chosen_on"]
    assert result["sensitivity"] == pytest.approx(4 / 6) and result["confusion_matrix"] == [[3, 1], [2, 4]]
    wilson = binomtest(4, 6).proportion_ci(method="wilson")
    assert result["expected"] == (
        f"target sensitivity 0.60; expected on new patients 0.67 (95% CI {wilson.low:.2f}-{wilson.high:.2f})"
    )
    # the figures at 0.48 on the same ten patients are kept apart, labelled in-sample
    inside = result["in_sample"]
    assert "not an independent estimate" in inside["note"]
    assert (inside["sensitivity"], inside["specificity"]) == pytest.approx((4 / 6, 3 / 4))
    assert inside["confusion_matrix"] == [[3, 1], [2, 4]]


def test_specificity_and_youden_rules_show_their_expected_figures() -> None:
    spec = operating_point("specificity=0.70", HAND_VALIDATION, HAND_Y, HAND_S, HAND_FOLD)
    assert spec["expected"].startswith("target specificity 0.70; expected on new patients ")
    assert f"{spec['specificity']:.2f} (95% CI" in spec["expected"]
    youden = operating_point("youden", HAND_VALIDATION, HAND_Y, HAND_S, HAND_FOLD)
    assert youden["target"] is None
    assert youden["expected"].startswith("Youden's J (no target); expected on new patients: sensitivity ")
    assert youden["threshold"] == pytest.approx(choose_operating_threshold(HAND_Y, HAND_S, "youden"))


def test_on_similar_new_patients_the_out_of_fold_threshold_lands_near_the_target() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    p = 1 / (1 + np.exp(-(2.0 * y - 1.0 + rng.normal(size=1000))))
    result = operating_point("sensitivity=0.90", HAND_VALIDATION, y, p, np.arange(1000) % 5)
    y_new = rng.integers(0, 2, 20000)
    p_new = 1 / (1 + np.exp(-(2.0 * y_new - 1.0 + rng.normal(size=20000))))
    realised = float(np.mean(p_new[y_new == 1] >= result["threshold"]))
    assert abs(realised - 0.90) < 0.03
    assert result["sensitivity_ci"][0] < realised < result["sensitivity_ci"][1]


def test_without_validation_records_no_operating_point_is_guessed() -> None:
    result = operating_point("youden", None, [0, 1], [0.2, 0.8])
    assert result["threshold"] is None and "no inner-validation predictions" in result["note"]


def test_merge_chooses_the_operating_point_on_the_folds_validation_records(run_dir, tmp_path) -> None:
    """A tiny run whose fold.json files hold validation records (as calibrated folds write them)."""
    import csv
    import json
    import shutil

    from cacxr.training import merge_folds

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    with (run / "predictions.csv").open(newline="") as fh:
        cac = {row["patient_id"]: float(row["cac_score"]) for row in csv.DictReader(fh)}
    with (run / "folds.csv").open(newline="") as fh:
        roles = list(csv.DictReader(fh))
    rng = np.random.default_rng(0)
    records = []
    for k in (0, 1):
        path = run / f"fold_{k}" / "fold.json"
        fold = json.loads(path.read_text())
        val = [r["patient_id"] for r in roles if r["fold"] == str(k) and r["role"] == "val"]
        fold["validation"] = [
            {"patient_id": pid, "label": int(cac[pid] > 0), "score": float(np.clip(0.3 + 0.4 * (cac[pid] > 0)
             + rng.normal(0, 0.2), 0, 1))}
            for pid in val
        ]  # fmt: skip
        records += fold["validation"]
        path.write_text(json.dumps(fold))
    metrics = merge_folds(run)
    point = metrics["operating_point"]
    with (run / "predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([int(r["label"]) for r in rows])
    s = np.array([float(r["score"]) for r in rows])
    fold = np.array([int(r["fold"]) for r in rows])
    # the threshold for new patients: chosen on both folds' test predictions, not on the validation records
    expected = choose_operating_threshold(y, s, "sensitivity=0.90")
    assert point["threshold"] == pytest.approx(expected)
    assert point["threshold"] != pytest.approx(
        choose_operating_threshold([r["label"] for r in records], [r["score"] for r in records], "sensitivity=0.90")
    )
    # the figures: each fold decided at the cut chosen on the other fold's test predictions
    called = np.zeros(len(y), dtype=bool)
    for k in (0, 1):
        cut = choose_operating_threshold(y[fold != k], s[fold != k], "sensitivity=0.90")
        assert point["fold_thresholds"][str(k)] == pytest.approx(cut)
        called[fold == k] = s[fold == k] >= cut
    assert point["sensitivity"] == pytest.approx(np.mean(called[y == 1]))
    assert point["specificity"] == pytest.approx(np.mean(~called[y == 0]))
    assert point["in_sample"]["sensitivity"] == pytest.approx(np.mean(s[y == 1] >= expected))
    assert point["expected"].startswith(f"target sensitivity 0.90; expected on new patients {point['sensitivity']:.2f} (")
    assert json.loads((run / "metrics.json").read_text())["operating_point"] == point
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "Operating point fixed in advance (sensitivity=0.90)" in page
    assert f'<span data-key="operating_point.threshold">{expected:.4f}</span>' in page
    # the target and the sensitivity expected on new patients, side by side on one line
    assert (
        '<b>Target sensitivity <span data-key="operating_point.target">0.90</span>; expected on new patients '
        f'<span data-key="operating_point.sensitivity">{point["sensitivity"]:.3f}</span>'
    ) in page
    assert "not an independent estimate" in page


@pytest.mark.parametrize("value", ["youden", "specificity=0.95"])
def test_operating_point_flag_reaches_the_config(value: str) -> None:
    import argparse

    from cacxr.commands.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["data", "--task", "classification", "--out", "run", "--operating-point", value])
    assert config_from_args(args).resolved().operating_point == value
    default = parser.parse_args(["data", "--task", "classification", "--out", "run"])
    assert config_from_args(default).operating_point == "sensitivity=0.90"
