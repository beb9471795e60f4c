"""The operating point fixed in advance (cacxr.stats.decision_threshold) and the --operating-point option."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from cacxr.config import TrainConfig
from cacxr.core import CacxrError
from cacxr.stats import operating_point, parse_rule
from cacxr.stats.decision_threshold import choose_operating_threshold, operating_point_figures


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


def test_operating_point_chosen_on_validation_measured_on_test() -> None:
    rng = np.random.default_rng(0)
    records = []
    for k in range(5):
        y = rng.integers(0, 2, 60)
        p = 1 / (1 + np.exp(-(2.0 * y - 1.0 + rng.normal(size=60))))
        records += [{"patient_id": f"{k}-{i}", "label": int(a), "score": float(b)} for i, (a, b) in enumerate(zip(y, p, strict=True))]
    y_test = rng.integers(0, 2, 2000)
    p_test = 1 / (1 + np.exp(-(2.0 * y_test - 1.0 + rng.normal(size=2000))))
    result = operating_point("sensitivity=0.90", records, y_test, p_test, n_folds=5)
    assert "all 5 folds" in result["chosen_on"] and "300 patients" in result["chosen_on"]
    assert result["threshold"] == pytest.approx(
        choose_operating_threshold([r["label"] for r in records], [r["score"] for r in records], "sensitivity=0.90")
    )
    # the same score distribution on test: sensitivity lands near the target
    assert abs(result["sensitivity"] - 0.90) < 0.05
    assert result["sensitivity_ci"][0] < result["sensitivity"] < result["sensitivity_ci"][1]


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
    expected = choose_operating_threshold([r["label"] for r in records], [r["score"] for r in records], "sensitivity=0.90")
    assert point["threshold"] == pytest.approx(expected)
    with (run / "predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([int(r["label"]) for r in rows])
    s = np.array([float(r["score"]) for r in rows])
    assert point["sensitivity"] == pytest.approx(np.mean(s[y == 1] >= expected))
    assert point["specificity"] == pytest.approx(np.mean(s[y == 0] < expected))
    assert json.loads((run / "metrics.json").read_text())["operating_point"] == point
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "Operating point fixed in advance (sensitivity=0.90)" in page
    assert f'<span data-key="operating_point.threshold">{expected:.4f}</span>' in page


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
