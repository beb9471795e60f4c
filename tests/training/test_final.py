"""The final model: `cacxr train --final` / `cacxr fit-final`, RUN/final/, load_run's default, the report."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from _tiny_run import tiny_cohort, tiny_run
from cacxr.cli import main
from cacxr.commands import fit_final as fit_final_command
from cacxr.core import CacxrError, cac_to_target
from cacxr.model import load_saved_model
from cacxr.pixels import ImageStore
from cacxr.training import fit_final
from cacxr.training.final import FINAL_DIR, FINAL_RECORD, MODEL_FILE, choose_epochs, has_final
from cacxr.use import load_run, score_paths
from cacxr.use.loaded_run import FINAL_FOLD


def _fold_records(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run.glob("fold_*/fold.json"))]


def _store_images(run: Path, n: int = 6) -> tuple[list[str], np.ndarray]:
    store = ImageStore.open(json.loads((run / "config.json").read_text())["store"])
    ids = sorted(store.ids)[:n]
    return ids, np.stack([np.asarray(store.get(i)) for i in ids])


@pytest.fixture(scope="module")
def final_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classification run trained with `cacxr train ... --final` (32 px, every layer training).

    The shared regression run trains its head on cached trunk features: the two cover both ways of training.
    """
    root = tmp_path_factory.mktemp("final")
    out = root / "run"
    argv = [
        "train", str(tiny_cohort(tmp_path_factory)), "--task", "classification", "--out", str(out),
        "--arch", "resnet18", "--epochs", "2", "--kfold", "2", "--image-size", "32",
        "--batchsize", "8", "--seed", "3", "--finetune", "all", "--num-threads", "1", "--no-viz", "--workers", "1", "--no-progress", "--final",
        "--store", str(root / "store"),
    ]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared tiny regression run (fit-final writes into the run folder)."""
    copy = tmp_path_factory.mktemp("final_reg") / "run"
    shutil.copytree(tiny_run(tmp_path_factory, "regression"), copy)
    return copy


def test_train_final_writes_final_model_and_records_choice(final_run: Path) -> None:
    folds = _fold_records(final_run)
    final = json.loads((final_run / FINAL_DIR / FINAL_RECORD).read_text())
    config = json.loads((final_run / "config.json").read_text())
    assert (final_run / FINAL_DIR / MODEL_FILE).is_file() and has_final(final_run)
    best = [f["best_epoch"] for f in folds]
    assert final["epochs"] == choose_epochs(best) == max(1, int(statistics.median(best) + 0.5))
    assert final["fold_best_epochs"] == {str(f["fold"]): f["best_epoch"] for f in folds}
    assert len(final["history"]) == final["epochs"]
    # A stratified share of the patients is held out of training to calibrate the final model.
    held = {row["patient_id"] for row in final["calibration_patients"]}
    assert (final["n_train"], final["n_calibration"], len(held)) == (32, 8, 8)
    held_positive = sum(row["label"] for row in final["calibration_patients"])
    assert abs(held_positive / 8 - final["n_positive"] / 40) <= 1 / 8  # stratified by the label
    assert final["feature_cache"] is False and config["feature_cache_used"] is False
    # The run's operating point, chosen on the folds' calibrated test predictions (not a mean of fold cuts).
    point = json.loads((final_run / "metrics.json").read_text())["operating_point"]
    assert final["decision_threshold"] == point["threshold"] and "operating point" in final["threshold_chosen_by"]
    assert final["n_patients"] == config["n_patients"] == 40
    recorded = config["final"]
    assert recorded["epochs"] == final["epochs"]
    assert recorded["decision_threshold"] == final["decision_threshold"]
    assert recorded["n_patients"] == 40
    assert "median of the folds' validation-selected best epochs" in recorded["epochs_chosen_by"]
    assert recorded["threshold_chosen_by"] == final["threshold_chosen_by"]
    assert recorded["date"][:4].isdigit()
    # The cross-validation settings were not touched.
    assert config["epochs"] == 2 and config["kfold"] == 2
    report = (final_run / "report.html").read_text()
    assert "Final model." in report and "no held-out estimate of its own" in report
    assert f"epochs: {final['epochs']}" in report


def test_load_run_uses_final_model_by_default_ensemble_selectable(final_run: Path) -> None:
    final = json.loads((final_run / FINAL_DIR / FINAL_RECORD).read_text())
    default = load_run(final_run)
    assert [k for k, _ in default.models] == [FINAL_FOLD] and default.is_final
    assert default.decision_threshold == final["decision_threshold"]
    ensemble = load_run(final_run, fold="ensemble")
    assert [k for k, _ in ensemble.models] == [0, 1] and not ensemble.is_final
    assert [k for k, _ in load_run(final_run, fold=1).models] == [1]
    assert [k for k, _ in load_run(final_run, fold="final").models] == [FINAL_FOLD]

    ids, images = _store_images(final_run)
    model, meta = load_saved_model(final_run / FINAL_DIR / MODEL_FILE)
    assert meta["fold"] == "final" and float(meta["decision_threshold"]) == final["decision_threshold"]
    from cacxr.model import apply_calibration
    from cacxr.pixels import normalise

    with torch.inference_mode():
        out = model(normalise(images, default.profile)[:, None]).double().numpy()
    # The final model's own calibration map (fitted on its held-out calibration patients) of its log-odds.
    assert final["calibration"]["method"] == "platt" and final["n_calibration"] == 8
    expected = apply_calibration(final["calibration"], out[:, 1] - out[:, 0])
    assert default.score(images) == pytest.approx(expected, abs=1e-5)
    assert not np.allclose(default.score(images), ensemble.score(images))


def test_predict_scores_with_final_model(final_run: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    cohort = tiny_cohort(tmp_path_factory)
    files = sorted(str(p) for p in cohort.glob("CAC_00[1-3]/rx/*.dcm"))
    assert files
    by_default = score_paths(load_run(final_run), files, progress=False)
    with_final = score_paths(load_run(final_run, fold="final"), files, progress=False)
    with_folds = score_paths(load_run(final_run, fold="ensemble"), files, progress=False)
    assert all(row.ok for row in by_default)
    assert [r.probability for r in by_default] == [r.probability for r in with_final]
    assert [r.probability for r in by_default] != [r.probability for r in with_folds]


def test_fit_final_command_on_regression_run(regression_run: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    fit_final_command.add_arguments(parser)
    args = parser.parse_args([str(regression_run), "--device", "cpu", "--no-progress", "--num-threads", "1"])
    assert fit_final_command.run(args) == 0
    out = capsys.readouterr().out
    assert "final model: 40 patients" in out and "no held-out estimate" in out
    final = json.loads((regression_run / FINAL_DIR / FINAL_RECORD).read_text())
    # The regression target is standardised with the training patients' log CAC (the calibration patients
    # are held out); the threshold is the folds' rule.
    held = {row["patient_id"] for row in final["calibration_patients"]}
    with (regression_run / "predictions.csv").open() as fh:
        trained = [float(line.split(",")[2]) for line in fh.readlines()[1:] if line.split(",")[0] not in held]
    assert len(trained) == final["n_train"] == 32
    assert final["target_mean"] == pytest.approx(cac_to_target(trained).mean())
    assert final["target_std"] == pytest.approx(cac_to_target(trained).std())
    # Calibrated P(CAC > T) cut at the run's operating point, as the cross-validation chose it.
    assert final["decision_threshold"] == json.loads((regression_run / "metrics.json").read_text())["operating_point"]["threshold"]
    assert final["feature_cache"] is True  # the run's head trained on cached trunk features; so did this
    loaded = load_run(regression_run)
    assert loaded.is_final and loaded.target_stats[FINAL_FOLD] == (final["target_mean"], final["target_std"])
    _, images = _store_images(regression_run, 3)
    scores = loaded.score(images)
    assert scores.shape == (3,) and (scores >= 0).all()

    # A second call refuses to overwrite; an interrupted one (model written, config not) is completed.
    with pytest.raises(CacxrError, match="already has a final model.*--overwrite"):
        fit_final(regression_run, device="cpu", progress=False)
    config = json.loads((regression_run / "config.json").read_text())
    del config["final"]
    (regression_run / "config.json").write_text(json.dumps(config))
    weights = (regression_run / FINAL_DIR / MODEL_FILE).stat().st_mtime_ns
    assert fit_final(regression_run, device="cpu", progress=False)["date"] == final["date"]
    assert json.loads((regression_run / "config.json").read_text())["final"]["epochs"] == final["epochs"]
    assert (regression_run / FINAL_DIR / MODEL_FILE).stat().st_mtime_ns == weights
    # --overwrite trains again, with the same choices (they come from the folds).
    again = fit_final(regression_run, device="cpu", overwrite=True, progress=False, num_threads=1)
    assert (regression_run / FINAL_DIR / MODEL_FILE).stat().st_mtime_ns != weights
    assert (again["epochs"], again["decision_threshold"]) == (final["epochs"], final["decision_threshold"])


def test_final_model_with_clinical_covariates(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from cacxr.config import TrainConfig
    from cacxr.training import train_run

    run = tmp_path / "run"
    train_run(
        TrainConfig(
            task="classification", data=str(tiny_cohort(tmp_path_factory)), out=str(run), arch="resnet18",
            finetune="head", epochs=1, kfold=2, image_size=32, seed=5, batchsize=8, viz=False, workers=1,
            num_threads=1, progress=False, store=str(tmp_path / "store"), clinical=["age", "sex"],
        )
    )
    final = fit_final(run, device="cpu", progress=False, num_threads=1)
    # The encoder is fitted on every patient (the folds' only on their training patients).
    assert final["clinical_encoder"]["features"] == ["age", "sex"]
    loaded = load_run(run)
    assert loaded.is_final and loaded.models[0][1].n_clinical == 4
    assert loaded.clinical_encoder(FINAL_FOLD).to_dict() == final["clinical_encoder"]
    _, images = _store_images(run, 2)
    older, younger = loaded.score(images, [(80.0, "M")] * 2), loaded.score(images, [(30.0, "F")] * 2)
    assert not np.allclose(older, younger)


@pytest.mark.parametrize(
    ("best", "epochs"),
    [([2, 2], 2), ([1, 2], 2), ([1, 1, 4], 1), ([3, 5, 8, 9], 7), ([0], 1), ([50, 12, 31, 7, 40], 31)],
)
def test_choose_epochs_median_half_up_at_least_one(best: list[int], epochs: int) -> None:
    assert choose_epochs(best) == epochs


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("no_metrics", "cross-validation has not finished"),
        ("not_a_run", "not a trained run folder"),
        ("no_final", "no final model"),
        ("bad_fold", "fold 7 does not exist"),
    ],
)
def test_refusals(tmp_path: Path, final_run: Path, setup: str, message: str) -> None:
    run = tmp_path / "run"
    if setup == "not_a_run":
        run.mkdir()
        with pytest.raises(CacxrError, match=message):
            fit_final(run, progress=False)
        return
    shutil.copytree(final_run, run, ignore=shutil.ignore_patterns(FINAL_DIR))
    if setup == "no_metrics":
        (run / "metrics.json").unlink()
        with pytest.raises(CacxrError, match=message):
            fit_final(run, progress=False)
    else:
        with pytest.raises(CacxrError, match=message):
            load_run(run, fold="final" if setup == "no_final" else 7)
    assert not (run / FINAL_DIR).exists()


def test_final_model_and_ensemble_use_the_operating_point_chosen_on_the_test_folds(final_run: Path) -> None:
    """The run's operating point is chosen on all folds' calibrated out-of-fold test predictions, for new
    patients, and is the decision threshold of the ensemble and of the final model alike."""
    from cacxr.stats import choose_operating_threshold

    metrics = json.loads((final_run / "metrics.json").read_text())
    point = metrics["operating_point"]
    assert point["rule"] == "sensitivity=0.90"
    with (final_run / "predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    scores = np.array([float(row["score"]) for row in rows])
    labels = np.array([int(row["label"]) for row in rows])
    assert point["threshold"] == pytest.approx(choose_operating_threshold(labels, scores, point["rule"]))
    # At least 90 % of the out-of-fold positives are at or above it (the rule it was chosen by).
    assert np.mean(scores[labels == 1] >= point["threshold"]) >= 0.9
    assert point["in_sample"]["sensitivity"] >= 0.9
    for fold in (None, "ensemble"):
        assert load_run(final_run, fold=fold).decision_threshold == pytest.approx(point["threshold"])
