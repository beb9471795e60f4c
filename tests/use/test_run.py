"""Loading a trained run for inference: scores match training's predictions, ensemble rule, clear errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _tiny_run import IMAGE_SIZE, tiny_run
from cacxr.core import CacxrError, cac_to_target
from cacxr.pixels import ImageStore, normalise
from cacxr.use import load_run


@pytest.fixture(scope="module", params=["classification", "regression"])
def run_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory, request.param)


def store_of(run: Path) -> ImageStore:
    return ImageStore.open(json.loads((run / "config.json").read_text())["store"])


def predictions(run: Path) -> list[dict[str, str]]:
    with (run / "predictions.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def comparable(task: str, scores: np.ndarray) -> np.ndarray:
    """Probabilities as they are; predicted CAC on the log scale the models work in."""
    return cac_to_target(scores) if task == "regression" else np.asarray(scores)


@pytest.mark.parametrize("fold", [0, 1])
def test_a_fold_scores_its_test_patients_as_training_did(run_dir: Path, fold: int) -> None:
    loaded = load_run(run_dir, fold=fold)
    rows = [row for row in predictions(run_dir) if row["fold"] == str(fold)]
    store = store_of(run_dir)
    scores = loaded.score(np.stack([store.get(row["patient_id"]) for row in rows]))
    expected = np.array([float(row["score"]) for row in rows])
    # Training scored cached float16 trunk maps; load_run runs the whole network in float32.
    np.testing.assert_allclose(comparable(loaded.task, scores), comparable(loaded.task, expected), atol=2e-3)
    labels = loaded.predict_label(scores)
    # The same rule on the training scores. (predictions.csv's predicted_label applies the fold's own
    # decision threshold, while a loaded run decides at the run's operating point: the two agree only when
    # no score lies between them, which a near-flat fallback calibration map no longer guarantees.)
    assert labels.tolist() == loaded.predict_label(expected).tolist()
    if loaded.operating_threshold is None:
        assert labels.tolist() == [int(row["predicted_label"]) for row in rows]


def test_the_ensemble_averages_the_folds(run_dir: Path) -> None:
    ensemble = load_run(run_dir)
    assert [fold for fold, _ in ensemble.models] == [0, 1]
    assert all(not model.training for _, model in ensemble.models)
    images = np.stack([store_of(run_dir).get(pid) for pid in store_of(run_dir).ids[:6]])
    per_fold = [comparable(ensemble.task, load_run(run_dir, fold=k).score(images)) for k in (0, 1)]
    np.testing.assert_allclose(comparable(ensemble.task, ensemble.score(images)), np.mean(per_fold, axis=0), atol=1e-9)
    # The run's operating point (chosen on the folds' out-of-fold test predictions) decides, on the probability.
    point = json.loads((run_dir / "metrics.json").read_text())["operating_point"]
    assert ensemble.decision_threshold == point["threshold"] and ensemble.decision_on == "probability"
    scores = ensemble.scores(images)
    assert ensemble.predict_label(scores).tolist() == [int(p >= point["threshold"]) for p in scores.probability]


def test_normalised_tensors_and_single_images_are_accepted(run_dir: Path) -> None:
    loaded = load_run(run_dir, fold=0)
    assert (loaded.profile, loaded.image_size, loaded.threshold) == ("seed", IMAGE_SIZE, 0.0)
    image = store_of(run_dir).get(store_of(run_dir).ids[0])
    from_uint8 = loaded.score(image)
    from_tensor = loaded.score(normalise(np.array(image)[None, None], loaded.profile))
    assert from_uint8.shape == (1,)
    np.testing.assert_allclose(from_uint8, from_tensor, rtol=1e-6)


@pytest.mark.parametrize(
    ("damage", "fold", "message"),
    [
        (lambda run: (run / "config.json").unlink(), None, "not a trained run folder \\(no config.json\\)"),
        (lambda run: (run / "fold_1" / "model.safetensors").unlink(), None, "fold_1/model.safetensors.*--no-save"),
        (lambda run: (run / "fold_0" / "fold.json").unlink(), 0, "missing .*fold_0/fold.json"),
        (lambda run: None, 5, "fold 5 does not exist \\(the run has folds 0..1\\)"),
        (lambda run: (run / "config.json").write_text("{not json"), None, "config.json: unreadable"),
    ],
)
def test_missing_or_broken_runs_are_named(
    run_dir: Path, tmp_path: Path, damage, fold: int | None, message: str
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    damage(copy)
    with pytest.raises(CacxrError, match=message):
        load_run(copy, fold=fold)


def test_images_of_another_size_are_refused(run_dir: Path) -> None:
    loaded = load_run(run_dir, fold=0)
    with pytest.raises(CacxrError, match=f"expected uint8 images \\(N, {IMAGE_SIZE}, {IMAGE_SIZE}\\)"):
        loaded.score(np.zeros((2, 32, 32), dtype=np.uint8))
    with pytest.raises(CacxrError, match="expected normalised images"):
        loaded.score(torch.zeros((2, IMAGE_SIZE, IMAGE_SIZE)))  # no channel axis


def test_the_operating_point_threshold_decides_when_the_run_has_one(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["operating_point"] = {"rule": "sensitivity=0.90", "threshold": 0.37}
    (copy / "metrics.json").write_text(json.dumps(metrics))
    images = np.stack([store_of(run_dir).get(pid) for pid in store_of(run_dir).ids[:8]])
    for fold in (None, 0):  # the ensemble and a single fold use the run's operating point
        loaded = load_run(copy, fold=fold)
        assert loaded.decision_threshold == 0.37 and loaded.decision_on == "probability"
        scores = loaded.scores(images)
        # On the calibrated probability, for regression runs too (not on the predicted CAC).
        assert loaded.predict_label(scores).tolist() == [int(p >= 0.37) for p in scores.probability]
    # A run trained before operating points (none in metrics.json) keeps its folds' own thresholds.
    del metrics["operating_point"]
    (copy / "metrics.json").write_text(json.dumps(metrics))
    old = load_run(copy)
    thresholds = [json.loads((run_dir / f"fold_{k}" / "fold.json").read_text())["decision_threshold"] for k in (0, 1)]
    assert old.decision_threshold == pytest.approx(np.mean(thresholds))
    assert old.decision_on == ("score" if old.task == "regression" else "probability")
