"""`--threshold 100` is first-class: labels, stratified folds, metrics, predictions.csv and the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from _tiny_run import IMAGE_SIZE, tiny_cohort

THRESHOLD = 100.0


@pytest.fixture(scope="module")
def run_at_100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cacxr.config import TrainConfig
    from cacxr.training import train_run

    torch.set_num_threads(1)
    cohort = tiny_cohort(tmp_path_factory)
    out = tmp_path_factory.mktemp("threshold") / "run"
    train_run(
        TrainConfig(
            task="classification", data=str(cohort), out=str(out), arch="resnet18", finetune="head", epochs=2,
            kfold=2, image_size=IMAGE_SIZE, seed=1, batchsize=8, viz=False, workers=1, num_threads=1,
            progress=False, threshold=THRESHOLD, store=str(tmp_path_factory.getbasetemp() / "tiny_runs" / "store"),
        )
    )  # fmt: skip
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_labels_metrics_and_predictions_use_the_threshold(run_at_100: Path) -> None:
    rows = _csv(run_at_100 / "predictions.csv")
    cac = {row["patient_id"]: float(row["cac_score"]) for row in rows}
    above = sum(value > THRESHOLD for value in cac.values())
    # the cohort has patients with 0 < CAC <= 100: they must be negatives here
    assert any(0 < value <= THRESHOLD for value in cac.values()) and 0 < above < len(cac)
    assert all(int(row["label"]) == int(float(row["cac_score"]) > THRESHOLD) for row in rows)
    metrics = json.loads((run_at_100 / "metrics.json").read_text())
    assert metrics["threshold"] == THRESHOLD
    assert metrics["pooled"]["n"] == len(cac) and metrics["pooled"]["n_pos"] == above
    assert sum(fold["n_pos"] for fold in metrics["folds"]) == above
    config = json.loads((run_at_100 / "config.json").read_text())
    assert config["threshold"] == THRESHOLD and config["n_positive"] == above
    baseline = metrics["clinical_baseline"]
    # every patient of the cohort has age and sex and both folds hold both classes: the baseline is fitted
    assert "skipped" not in baseline, baseline.get("note")
    assert baseline["n"] == baseline["n_known"] == len(cac)
    assert baseline["pooled"]["n"] == len(cac) and baseline["pooled"]["n_pos"] == above
    assert [(f["fold"], f["n"], f["n_pos"]) for f in baseline["folds"]] == [
        (f["fold"], f["n"], f["n_pos"]) for f in metrics["folds"]
    ]


def test_folds_are_stratified_on_the_thresholded_label(run_at_100: Path) -> None:
    cac = {row["patient_id"]: float(row["cac_score"]) for row in _csv(run_at_100 / "predictions.csv")}
    test_pos: dict[int, int] = {}
    for row in _csv(run_at_100 / "folds.csv"):
        if row["role"] == "test":
            test_pos[int(row["fold"])] = test_pos.get(int(row["fold"]), 0) + (cac[row["patient_id"]] > THRESHOLD)
    above = sum(value > THRESHOLD for value in cac.values())
    assert sum(test_pos.values()) == above
    assert max(test_pos.values()) - min(test_pos.values()) <= 1  # positives spread evenly over the folds
    for k in test_pos:
        record = json.loads((run_at_100 / f"fold_{k}" / "fold.json").read_text())
        assert record["n_positive"]["test"] == test_pos[k]
        assert all(record["n_positive"][role] >= 1 for role in ("train", "val", "test"))


def test_report_states_the_threshold(run_at_100: Path) -> None:
    page = (run_at_100 / "report.html").read_text(encoding="utf-8")
    assert "Positive = CAC &gt; 100 (Agatston), i.e. CAC ≥ 101 in whole Agatston units (the guideline endpoint CAC ≥ 100 is --threshold 99)" in page
    assert "A patient is called positive (CAC &gt; 100)" in page
    assert "CAC &gt; 0" not in page


@pytest.mark.parametrize("value", ["100", "400"])
def test_threshold_flag_reaches_the_config(value: str) -> None:
    import argparse

    from cacxr.commands.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["data", "--task", "classification", "--out", "run", "--threshold", value])
    assert config_from_args(args).resolved().threshold == float(value)
