"""Calibration maps (cacxr.model.calibration) and the calibrated fold records of a trained run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score as roc_auc

from cacxr.core import CacxrError
from cacxr.model import apply_calibration, fit_calibration
from cacxr.model.calibration import CalibrationModule


def _logistic_sample(n: int, slope: float, intercept: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-(slope * raw + intercept)))).astype(int)
    return raw, labels


def test_platt_recovers_a_known_logistic_map() -> None:
    raw, labels = _logistic_sample(4000, slope=0.5, intercept=-1.0)
    record = fit_calibration(raw, labels, "platt")
    assert record["method"] == "platt" and (record["n"], record["n_positive"]) == (4000, int(labels.sum()))
    assert record["slope"] == pytest.approx(0.5, abs=0.06)
    assert record["intercept"] == pytest.approx(-1.0, abs=0.1)


def test_platt_on_separable_scores_stays_finite_and_monotone() -> None:
    # Platt's smoothed targets: a perfectly separated validation split still gives a finite map.
    record = fit_calibration([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0], [0, 0, 0, 1, 1, 1], "platt")
    assert np.isfinite(record["slope"]) and record["slope"] > 0
    probs = apply_calibration(record, [-3.0, 0.0, 3.0])
    assert probs[0] < probs[1] < probs[2] and probs[0] > 0.0 and probs[2] < 1.0


def test_isotonic_is_monotone_and_matches_sklearn() -> None:
    from sklearn.isotonic import IsotonicRegression

    raw, labels = _logistic_sample(300, slope=1.0, intercept=0.0, seed=1)
    record = fit_calibration(raw, labels, "isotonic")
    grid = np.linspace(-8, 8, 201)
    probs = apply_calibration(record, grid)
    assert np.all(np.diff(probs) >= -1e-12) and probs.min() >= 0.0 and probs.max() <= 1.0
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(raw, labels).predict(grid)
    np.testing.assert_allclose(probs, reference, atol=1e-6)


def test_none_is_the_sigmoid_of_the_raw_score_minus_its_offset() -> None:
    record = fit_calibration([0.0, 1.0], [0, 1], "none", offset=2.0)
    assert record["method"] == "none"
    np.testing.assert_allclose(apply_calibration(record, [2.0, 2.0 + np.log(3.0)]), [0.5, 0.75])
    # No map at all: the softmax probability (log-odds through a sigmoid).
    np.testing.assert_allclose(apply_calibration(None, [0.0]), [0.5])


def test_one_class_validation_falls_back_to_none_and_says_so() -> None:
    record = fit_calibration([0.1, 0.5, 0.9], [1, 1, 1], "platt")
    assert record["method"] == "none" and record["requested"] == "platt" and "one class" in record["note"]


def test_calibration_keeps_the_ranking_of_an_informative_model() -> None:
    raw, labels = _logistic_sample(500, slope=1.2, intercept=0.3, seed=2)
    record = fit_calibration(raw, labels, "platt")
    assert roc_auc(labels, apply_calibration(record, raw)) == pytest.approx(roc_auc(labels, raw))


@pytest.mark.parametrize("method", ["platt", "isotonic", "none"])
def test_the_torch_module_is_the_same_map_and_differentiable(method: str) -> None:
    raw, labels = _logistic_sample(200, slope=0.8, intercept=0.2, seed=3)
    record = fit_calibration(raw, labels, method)
    x = torch.linspace(-6, 6, 50, requires_grad=True)
    out = CalibrationModule(record)(x)
    np.testing.assert_allclose(out.detach().numpy(), apply_calibration(record, x.detach().numpy()), atol=1e-6)
    out.sum().backward()
    assert x.grad is not None and torch.all(x.grad >= 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([0.1], [1], "beta"), "--calibration must be one of platt, isotonic, none"),
        (([0.1, 0.2], [1], "platt"), "2 scores but 1 labels"),
    ],
)
def test_bad_requests_are_refused(args: tuple, message: str) -> None:
    with pytest.raises(CacxrError, match=message):
        fit_calibration(*args)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_each_fold_records_its_calibration_and_calibrated_validation_scores(
    task: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from _tiny_run import tiny_run

    run = tiny_run(tmp_path_factory, task)
    for k in (0, 1):
        record = json.loads((run / f"fold_{k}" / "fold.json").read_text())
        calibration, validation = record["calibration"], record["validation"]
        assert calibration["method"] in ("platt", "none") and calibration["n"] == record["n"]["val"]
        assert len(validation) == record["n"]["val"]
        assert all(0.0 <= v["score"] <= 1.0 and v["label"] in (0, 1) for v in validation)
        labels = [v["label"] for v in validation]
        expected = roc_auc(labels, [v["score"] for v in validation]) if len(set(labels)) == 2 else None
        assert record["val_auc"] == (pytest.approx(expected) if expected is not None else None)
    header = (run / "predictions.csv").read_text().splitlines()[0].split(",")
    if task == "regression":
        assert {"log_cac", "probability"} <= set(header)  # predicted log CAC and calibrated P(CAC > T)
    else:
        assert "log_cac" not in header


def test_fold_scores_are_the_calibrated_probabilities_of_the_loaded_fold(run_dir: Path) -> None:
    """The test part's scores in predictions.csv are the loaded fold's calibrated probabilities."""
    import csv

    from cacxr.pixels import ImageStore
    from cacxr.use import load_run

    loaded = load_run(run_dir, fold=0)
    with (run_dir / "predictions.csv").open(newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row["fold"] == "0"]
    store = ImageStore.open(json.loads((run_dir / "config.json").read_text())["store"])
    scores = loaded.scores(np.stack([store.get(row["patient_id"]) for row in rows]))
    np.testing.assert_allclose(scores.probability, [float(row["score"]) for row in rows], atol=2e-3)


def test_a_fold_without_a_calibration_map_is_scored_with_the_none_map(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A run trained before calibration existed: P(CAC > T) = sigmoid(log CAC - log(T + 0.5 + 0.001))."""
    import shutil

    from _tiny_run import tiny_run
    from cacxr.model import none_offset
    from cacxr.pixels import ImageStore
    from cacxr.use import load_run

    run = tmp_path / "old"
    shutil.copytree(tiny_run(tmp_path_factory, "regression"), run)
    path = run / "fold_0" / "fold.json"
    record = json.loads(path.read_text())
    del record["calibration"]
    path.write_text(json.dumps(record))
    loaded = load_run(run, fold=0)
    store = ImageStore.open(json.loads((run / "config.json").read_text())["store"])
    scores = loaded.scores(np.stack([store.get(pid) for pid in sorted(store.ids)[:4]]))
    expected = 1.0 / (1.0 + np.exp(-(scores.log_cac - none_offset("regression", 0.0))))
    np.testing.assert_allclose(scores.probability, expected, rtol=1e-5)


def test_platt_never_reverses_the_ranking() -> None:
    # Validation scores that rank the patients backwards: the map keeps the model's order (probabilities
    # at the smoothed prevalence) instead of flipping it on a small split.
    raw = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0])
    labels = np.array([1, 1, 1, 0, 0, 0])
    record = fit_calibration(raw, labels, "platt")
    assert record["slope"] > 0 and "ranking kept" in record["note"]
    probabilities = apply_calibration(record, raw)
    assert np.all(np.diff(probabilities) >= 0)
    # Near-flat: within FALLBACK_SPREAD / 2 of the prevalence over the validation scores.
    assert probabilities == pytest.approx(0.5, abs=0.0051)


def test_the_fallback_map_keeps_float32_scores_distinct() -> None:
    # Validation worse than chance: the fallback map. Test scores go through float32 (ModelScore.from_output):
    # a slope of 1e-6 tied them (AUC 0.833 -> 0.583; 19 distinct probabilities of 200).
    record = fit_calibration([0.9, 0.1, 0.5, -0.3, 0.2, 1.4, -0.8, 0.0], [0, 1, 0, 1, 1, 0, 1, 0], "platt")
    assert "ranking kept" in record["note"]
    module = CalibrationModule(record)
    test = torch.tensor([0.0, 0.05, 0.10, 0.15, 0.20], dtype=torch.float32)
    with torch.no_grad():
        probabilities = module(test).numpy()
    assert probabilities.dtype == np.float32 and np.all(np.diff(probabilities) > 0)
    assert roc_auc([0, 1, 0, 1, 1], probabilities) == pytest.approx(roc_auc([0, 1, 0, 1, 1], test.numpy()))
    rng = np.random.default_rng(3)
    scores = rng.normal(size=200).astype(np.float32)
    labels = (rng.random(200) < 1.0 / (1.0 + np.exp(-scores))).astype(int)
    with torch.no_grad():
        probabilities = module(torch.from_numpy(scores)).numpy()
    assert len(np.unique(probabilities)) == len(np.unique(scores)) == 200
    assert roc_auc(labels, probabilities) == roc_auc(labels, scores)


def test_the_fallback_note_names_the_smoothed_prevalence() -> None:
    # 2 positives of 8: Platt's targets 3/4 and 1/8 average to 0.281, not 2/8.
    record = fit_calibration([0.9, 0.1, 0.5, -0.3, 0.2, 1.4, -0.8, 0.0], [1, 0, 0, 0, 0, 1, 0, 0][::-1], "platt")
    if "note" not in record:
        pytest.skip("this split happens to rank")
    assert "0.281" in record["note"] and "2/8" in record["note"] and "smoothed" in record["note"]
    middle = apply_calibration(record, [0.3])[0]
    assert middle == pytest.approx(0.28125, abs=1e-9)


def test_platt_is_fitted_to_convergence() -> None:
    # sklearn's default tol 1e-4 stopped short; the fitted map makes the soft-target gradient vanish.
    raw, labels = _logistic_sample(300, slope=0.8, intercept=-0.5, seed=4)
    record = fit_calibration(raw, labels, "platt")
    n_pos, n_neg = labels.sum(), len(labels) - labels.sum()
    target = np.where(labels == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    p = 1.0 / (1.0 + np.exp(-(record["slope"] * raw + record["intercept"])))
    gradient = [np.sum(p - target), np.sum((p - target) * raw)]
    assert np.abs(gradient).max() < 1e-9


def test_per_fold_calibration_removes_between_fold_drift_from_the_pooled_auc() -> None:
    """Five fold models that rank equally well but sit on shifted logit scales (SD 1.5): pooling their raw
    scores understates the AUC; calibrating each fold on its own validation patients puts the pooled AUC
    back within a few hundredths of the mean per-fold AUC (the headline's two figures then agree)."""
    rng = np.random.default_rng(11)
    gaps_raw, gaps_calibrated = [], []
    for _ in range(30):
        raw_all, calibrated_all, labels_all, per_fold = [], [], [], []
        for shift, scale in zip(rng.normal(0.0, 1.5, 5), rng.uniform(0.5, 2.0, 5), strict=True):
            val_raw, val_y = _drifted_fold(rng, 60, shift, scale)
            test_raw, test_y = _drifted_fold(rng, 60, shift, scale)
            calibrated = apply_calibration(fit_calibration(val_raw, val_y, "platt"), test_raw)
            per_fold.append(roc_auc(test_y, test_raw))
            raw_all.append(test_raw)
            calibrated_all.append(calibrated)
            labels_all.append(test_y)
        y = np.concatenate(labels_all)
        gaps_raw.append(np.mean(per_fold) - roc_auc(y, np.concatenate(raw_all)))
        gaps_calibrated.append(abs(np.mean(per_fold) - roc_auc(y, np.concatenate(calibrated_all))))
    assert np.mean(gaps_raw) > 0.05  # the drift is real and large
    assert np.mean(gaps_calibrated) < 0.03 and np.mean(gaps_calibrated) < np.mean(gaps_raw) / 2


def _drifted_fold(rng: np.random.Generator, n: int, shift: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores of one fold model: within-fold AUC ~0.84, on the fold's own shifted and scaled logit scale."""
    y = rng.integers(0, 2, n)
    return scale * (1.4 * y + rng.normal(0.0, 1.0, n)) + shift, y
