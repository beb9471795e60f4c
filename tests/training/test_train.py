"""Cross-validated training end to end on a tiny synthetic cohort: outputs, folds, seeds, jobs, resume.

Every run here is tiny (48 patients at 64 px, resnet18, 2 folds, 2-3 epochs) and most train only the head
on cached trunk features, so that the whole file stays well under a minute on two cores.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import cacxr.training.loop
from _torch_threads import torch_threads
from cacxr.cli import build_parser
from cacxr.cli import main as cli_main
from cacxr.commands.train import ARCH_CHOICES, PROFILE_CHOICES, config_from_args
from cacxr.config import TrainConfig
from cacxr.core import AGATSTON_BANDS, CacxrError, agatston_band, cac_to_target, target_to_cac
from cacxr.ingest import read_manifest
from cacxr.ingest.manifest import write_manifest
from cacxr.training import merge_folds, train_run

N_PATIENTS, SIZE = 48, 64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # One thread: on a shared 2-core machine, two OpenMP threads make small convolutions much slower.
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cacxr.synth import make_cohort

    out = tmp_path_factory.mktemp("train") / "cohort"
    make_cohort(out, N_PATIENTS, seed=3, size=SIZE, faults=False, progress=False)
    return out


@pytest.fixture(scope="module")
def prepared(cohort: Path) -> tuple[Path, Path]:
    """(manifest.csv, image store folder) of the cohort, built once."""
    from cacxr.ingest import ingest
    from cacxr.pixels import build_store

    root = cohort.parent
    ingest(cohort, root / "ingest", workers=1, progress=False)
    build_store(root / "ingest" / "manifest.csv", root / "store", image_size=SIZE, workers=1, progress=False)
    return root / "ingest" / "manifest.csv", root / "store"


def tiny(prepared: tuple[Path, Path], out: Path, **changes) -> TrainConfig:
    """A tiny run: head-only training on cached features of a frozen random resnet18."""
    manifest, store = prepared
    settings = dict(
        task="classification", data=str(manifest), out=str(out), arch="resnet18", epochs=3, kfold=2,
        image_size=SIZE, batchsize=8, finetune="head", lr=1e-3, viz=False, workers=1, progress=False,
        store=str(store),
    )  # fmt: skip
    settings.update(changes)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def base_run(prepared: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The reference run that reruns, fold jobs and resumed runs must reproduce."""
    out = tmp_path_factory.mktemp("base") / "run"
    return out, train_run(tiny(prepared, out))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def scores(run: Path) -> dict[str, float]:
    return {row["patient_id"]: float(row["score"]) for row in read_csv(run / "predictions.csv")}


def raw_scores(run: Path) -> dict[str, float]:
    """The models' raw log-odds behind a classification run's calibrated scores (Platt or none maps)."""
    maps = {str(k): json.loads((run / f"fold_{k}" / "fold.json").read_text())["calibration"] for k in (0, 1)}
    out = {}
    for row in read_csv(run / "predictions.csv"):
        p, cal = float(row["score"]), maps[row["fold"]]
        logit = math.log(p / (1.0 - p))
        out[row["patient_id"]] = (
            (logit - cal["intercept"]) / cal["slope"] if cal["method"] == "platt" else logit + cal["offset"]
        )
    return out


# ---- the whole pipeline, through the command line -------------------------------------------------------


def test_cli_run_from_a_data_folder_writes_every_output(
    cohort: Path, prepared: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    rc = cli_main([
        "train", str(cohort), "--task", "classification", "--out", str(run), "--arch", "resnet18",
        "--epochs", "2", "--kfold", "2", "--image-size", str(SIZE), "--batchsize", "8", "--finetune", "last",
        "--workers", "1", "--no-progress", "--store", str(prepared[1]),
    ])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "pooled AUC" in printed and "95% CI" in printed and str(run / "report.html") in printed

    manifest = run / "ingest" / "manifest.csv"  # DATA was a folder: ingested into the run
    patients = {row.patient_id: row.cac_score for row in read_manifest(manifest)}
    assert len(patients) == N_PATIENTS

    config = json.loads((run / "config.json").read_text())
    assert config["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert config["task"] == "classification" and config["epochs"] == 2 and config["lr"] == 3e-4
    assert config["milestones"] == [20, 35] and config["finetune"] == "last" and config["weights"] == "none"
    assert config["store_profile"] == "seed" and config["store_image_size"] == SIZE
    assert config["torch_version"] == torch.__version__ and config["cacxr_version"]
    assert set(config["best_epochs"]) == {"0", "1"} and config["feature_cache_used"] is True

    metrics = json.loads((run / "metrics.json").read_text())
    pooled = metrics["pooled"]
    for key in ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "confusion_matrix"):
        assert key in pooled and all(key in fold for fold in metrics["folds"])
    lo, hi = pooled["auc_ci"]
    assert 0 <= lo <= pooled["auc"] <= hi <= 1
    assert np.sum(pooled["confusion_matrix"]) == N_PATIENTS
    assert [fold["fold"] for fold in metrics["folds"]] == [0, 1]

    predictions = read_csv(run / "predictions.csv")
    assert sorted(row["patient_id"] for row in predictions) == sorted(patients)  # every patient once
    test_fold = {(row["patient_id"]): int(row["fold"]) for row in read_csv(run / "folds.csv") if row["role"] == "test"}
    cuts = {k: json.loads((run / f"fold_{k}" / "fold.json").read_text())["decision_threshold"] for k in (0, 1)}
    for row in predictions:
        assert int(row["fold"]) == test_fold[row["patient_id"]]
        assert int(row["label"]) == int(patients[row["patient_id"]] > 0)
        assert int(row["predicted_label"]) == int(float(row["score"]) >= cuts[int(row["fold"])])
    # metrics.json's AUCs and Brier scores are those of the written out-of-fold predictions
    from sklearn.metrics import brier_score_loss, roc_auc_score

    y = np.array([int(row["label"]) for row in predictions])
    p = np.array([float(row["score"]) for row in predictions])
    fold_of = np.array([int(row["fold"]) for row in predictions])
    assert pooled["auc"] == pytest.approx(roc_auc_score(y, p))
    assert [f["auc"] for f in metrics["folds"]] == pytest.approx(
        [roc_auc_score(y[fold_of == k], p[fold_of == k]) for k in (0, 1)]
    )

    for k in (0, 1):
        fold = json.loads((run / f"fold_{k}" / "fold.json").read_text())
        assert 1 <= fold["best_epoch"] <= 2 and len(fold["history"]) == 2
        assert set(fold["history"][0]) >= {"epoch", "train_loss", "val_loss", "val_metric"}
        assert sum(fold["n"].values()) == N_PATIENTS and 0 < fold["decision_threshold"] < 1
        assert config["best_epochs"][str(k)] == fold["best_epoch"]
        for name in ("model.safetensors", "predictions.csv", "roc.png", "loss.png"):
            assert (run / f"fold_{k}" / name).stat().st_size > 0
        assert not (run / f"fold_{k}" / "checkpoint.pt").exists()  # removed once the fold finished
    plots = {p.name for p in (run / "plots").glob("*.png")}
    assert plots == {
        "roc.png", "confusion.png", "loss.png", "error_by_band.png", "calibration.png", "calibration_folds.png",
        "decision_curve.png",
    }  # fmt: skip
    report = (run / "report.html").read_text()
    assert "AUC" in report and f"{pooled['auc']:.3f}" in report
    # The headline figures and the new sections.
    fold_level = metrics["fold_level"]
    assert fold_level["auc_mean"] == pytest.approx(np.mean([f["auc"] for f in metrics["folds"]]))
    assert f'<span class="big">{fold_level["auc_mean"]:.3f}</span>' in report
    assert "mean per-fold AUC" in printed
    point = metrics["operating_point"]
    assert point["rule"] == "sensitivity=0.90"
    assert point["threshold"] is not None, point.get("note")
    assert "Operating point fixed in advance" in report and "No operating point" not in report
    _check_operating_point(point, run, y, p, fold_of)
    assert point["expected"] in printed  # the target beside the expected sensitivity, also on the console
    calibration = metrics["calibration"]
    assert [f["fold"] for f in calibration["folds"]] == [0, 1]
    assert calibration["pooled"]["brier"] == pytest.approx(brier_score_loss(y, p))
    assert [f["brier"] for f in calibration["folds"]] == pytest.approx(
        [brier_score_loss(y[fold_of == k], p[fold_of == k]) for k in (0, 1)]
    )
    assert len(calibration["decision_curve"]["model"]) == len(calibration["decision_curve"]["thresholds"])


def _check_operating_point(point: dict, run: Path, y: np.ndarray, p: np.ndarray, fold_of: np.ndarray) -> None:
    """The sensitivity=0.90 point: its threshold from both folds' test predictions (for new patients), its
    figures by leave-one-fold-out (each fold decided at the cut chosen on the other fold)."""
    assert all(json.loads((run / f"fold_{k}" / "fold.json").read_text())["validation"] for k in (0, 1))

    def cut_on(mask: np.ndarray) -> float:
        """The highest cut keeping sensitivity >= 0.90 on p[mask], halfway between adjacent scores."""
        s, positives = p[mask], p[mask & (y == 1)]
        t = max(c for c in np.unique(s) if np.mean(positives >= c) >= 0.90)
        below = s[s < t]
        return float((t + below.max()) / 2) if below.size else float(t)

    assert point["threshold"] == pytest.approx(cut_on(np.ones(len(y), dtype=bool)))
    called = np.zeros(len(y), dtype=bool)
    for k in (0, 1):
        t = cut_on(fold_of != k)
        assert point["fold_thresholds"][str(k)] == pytest.approx(t)
        called[fold_of == k] = p[fold_of == k] >= t
    tp, fp = int(np.sum(called & (y == 1))), int(np.sum(called & (y == 0)))
    fn, tn = int(np.sum(~called & (y == 1))), int(np.sum(~called & (y == 0)))
    assert point["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert (point["n"], point["n_pos"]) == (len(y), int(y.sum()))
    expected = {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp), "ppv": (tp, tp + fp), "npv": (tn, tn + fn)}
    for name, (hits, total) in expected.items():
        if total:
            assert point[name] == pytest.approx(hits / total), name
            lo, hi = point[f"{name}_ci"]
            assert lo <= point[name] <= hi, name
        else:
            assert point[name] is None and point[f"{name}_ci"] == [None, None], name
    assert point["expected"].startswith("target sensitivity 0.90; expected on new patients ")


def test_no_patient_has_two_roles_in_a_fold(base_run: tuple[Path, dict]) -> None:
    rows = read_csv(base_run[0] / "folds.csv")
    roles: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        roles.setdefault((row["fold"], row["patient_id"]), set()).add(row["role"])
    assert all(len(r) == 1 for r in roles.values())
    tests = [row["patient_id"] for row in rows if row["role"] == "test"]
    assert sorted(tests) == sorted(set(tests)) and len(tests) == N_PATIENTS  # one test fold each
    assert {row["role"] for row in rows} == {"train", "val", "test"}


# ---- reproducibility: reruns, fold jobs, resume -----------------------------------------------------------


def test_same_seed_gives_identical_metrics(
    prepared: tuple[Path, Path], base_run: tuple[Path, dict], tmp_path: Path
) -> None:
    again = train_run(tiny(prepared, tmp_path / "again"))
    assert again == base_run[1]
    assert (tmp_path / "again" / "predictions.csv").read_bytes() == (base_run[0] / "predictions.csv").read_bytes()
    other_seed = scores(_run(prepared, tmp_path / "seed7", seed=7))
    assert other_seed != scores(base_run[0])


def _run(prepared: tuple[Path, Path], out: Path, **changes) -> Path:
    train_run(tiny(prepared, out, **changes))
    return out


def test_fold_jobs_then_merge_equal_the_full_run(
    prepared: tuple[Path, Path], base_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "jobs"
    partial = train_run(tiny(prepared, run, fold=1))
    assert partial["complete"] is False and partial["folds_done"] == [1] and partial["folds_missing"] == [0]
    with pytest.raises(CacxrError, match=r"fold\(s\) 0 of 2 have not finished"):
        merge_folds(run)
    first_config = json.loads((run / "config.json").read_text())
    assert (run / "folds.csv").read_bytes() == (base_run[0] / "folds.csv").read_bytes()

    merged = train_run(tiny(prepared, run, fold=0))  # a sibling job: the folder is not refused
    assert merged == base_run[1]
    config = json.loads((run / "config.json").read_text())
    assert {k: v for k, v in config.items() if k != "best_epochs"} == first_config  # same file from each job

    assert cli_main(["train", str(run), "--merge"]) == 0  # merging again gives the same files
    assert "pooled AUC" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text()) == base_run[1]


def test_resume_after_an_interruption_gives_the_same_run(
    prepared: tuple[Path, Path], base_run: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save = cacxr.training.loop.save_checkpoint

    def interrupted(path, state, *args):  # Ctrl-C right after fold 1 saved its epoch 2
        save(path, state, *args)
        if path.parent.name == "fold_1" and state.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cacxr.training.loop, "save_checkpoint", interrupted)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_run(tiny(prepared, run))
    monkeypatch.undo()
    assert (run / "fold_0" / "fold.json").is_file() and (run / "fold_1" / "checkpoint.pt").is_file()
    assert not (run / "metrics.json").exists()
    fold0 = (run / "fold_0" / "fold.json").read_bytes()

    with pytest.raises(CacxrError, match="not empty.*--resume"):
        train_run(tiny(prepared, run))
    resumed = train_run(tiny(prepared, run, resume=True))
    assert resumed == base_run[1]
    assert (run / "fold_0" / "fold.json").read_bytes() == fold0  # the finished fold was kept, not retrained
    history = json.loads((run / "fold_1" / "fold.json").read_text())["history"]
    reference = json.loads((base_run[0] / "fold_1" / "fold.json").read_text())["history"]
    assert history == reference and not (run / "fold_1" / "checkpoint.pt").exists()


# ---- paths and tasks ----------------------------------------------------------------------------------------


def test_feature_cache_and_plain_path_agree(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    # The last block trains; the cached path reads float16 trunk maps, the plain one runs the trunk.
    cached = _run(prepared, tmp_path / "cached", finetune="last", epochs=1, lr=1e-4)
    plain = _run(prepared, tmp_path / "plain", finetune="last", epochs=1, lr=1e-4, feature_cache=False)
    assert json.loads((cached / "config.json").read_text())["feature_cache_used"] is True
    assert json.loads((plain / "config.json").read_text())["feature_cache_used"] is False
    a, b = raw_scores(cached), raw_scores(plain)
    assert a.keys() == b.keys()
    # The models' raw log-odds (each run's calibration map inverted; each run fits its own map on its own
    # validation scores): float16 maps give noise, not a different model.
    assert max(abs(a[k] - b[k]) for k in a) < 4e-2
    for k in (0, 1):
        ha = json.loads((cached / f"fold_{k}" / "fold.json").read_text())["history"][0]
        hb = json.loads((plain / f"fold_{k}" / "fold.json").read_text())["history"][0]
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-3)


def test_regression_run_writes_log_cac_metrics_and_bands(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    run = tmp_path / "reg"
    metrics = train_run(tiny(prepared, run, task="regression", loss="mse", epochs=2))
    assert metrics["task"] == "regression"
    pooled = metrics["pooled"]
    for key in ("mae_log", "spearman", "auc", "auc_ci", "sensitivity", "agatston_confusion"):
        assert key in pooled
    assert np.sum(pooled["agatston_confusion"]) == N_PATIENTS
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 1e-3 and config["milestones"] == [20, 40, 60] and config["loss"] == "mse"
    rows = read_csv(run / "predictions.csv")
    assert len(rows) == N_PATIENTS
    for row in rows:
        assert row["cac_band"] == AGATSTON_BANDS[int(agatston_band(float(row["cac_score"])))]
        assert row["predicted_band"] == AGATSTON_BANDS[int(agatston_band(float(row["score"])))]
        # predicted CAC: the unclipped predicted log CAC back on the Agatston scale
        assert float(row["score"]) == pytest.approx(float(target_to_cac(float(row["log_cac"]))), rel=1e-9, abs=1e-12)
    from sklearn.metrics import mean_absolute_error

    true_log = cac_to_target([float(row["cac_score"]) for row in rows])
    assert pooled["mae_log"] == pytest.approx(
        mean_absolute_error(true_log, cac_to_target([float(row["score"]) for row in rows]))
    )
    fold = json.loads((run / "fold_0" / "fold.json").read_text())
    assert fold["target_std"] > 0 and fold["decision_threshold"] == 0.5  # rounded predicted CAC > 0
    assert fold["selection"] == "validation MAE of log CAC"


def test_shuffled_labels_score_at_chance(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, store = prepared
    rows = read_manifest(manifest)
    permuted = np.random.default_rng(0).permutation([row.cac_score for row in rows])
    shuffled = [dataclasses.replace(row, cac_score=float(c)) for row, c in zip(rows, permuted, strict=True)]
    write_manifest(shuffled, tmp_path / "shuffled.csv")
    metrics = train_run(tiny((tmp_path / "shuffled.csv", store), tmp_path / "run", epochs=5))
    lo, hi = metrics["pooled"]["auc_ci"]
    assert lo <= 0.5 <= hi


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_visible_signal_is_learned(task: str, tmp_path: Path) -> None:
    # Positive control: positives carry a bright disc (noise images as PNG files, which the store reads too).
    from PIL import Image

    from cacxr.ingest import ManifestRow
    from cacxr.pixels import build_store

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    rows = []
    for i in range(N_PATIENTS):
        image = rng.normal(0.4, 0.08, (SIZE, SIZE))
        if i % 2 == 0:
            cy, cx = rng.integers(16, SIZE - 16, 2)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] += 0.5
        path = tmp_path / f"P{i:03d}.png"
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
        rows.append(ManifestRow(f"P{i:03d}", str(path), "internal", 100.0 if i % 2 == 0 else 0.0))
    write_manifest(rows, tmp_path / "manifest.csv")
    build_store(tmp_path / "manifest.csv", tmp_path / "store", image_size=SIZE, workers=1, progress=False)
    prepared = (tmp_path / "manifest.csv", tmp_path / "store")
    metrics = train_run(tiny(prepared, tmp_path / "run", task=task, finetune="last", epochs=15))
    assert metrics["pooled"]["auc"] > 0.75 and metrics["pooled"]["auc_ci"][0] > 0.5


# ---- refusals --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": "segmentation"}, "--task must be one of classification, regression"),
        ({"arch": "vgg16"}, "--arch must be one of densenet121"),
        ({"fold": 2}, r"--fold must be in 0\.\.1"),
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"threshold": 1e6}, "both classes are needed"),
        ({"data": "/nonexistent/cohort"}, "no such data folder or manifest file"),
        ({"site": "external"}, "no patient of site 'external'"),
    ],
)
def test_invalid_runs_are_refused(
    prepared: tuple[Path, Path], tmp_path: Path, changes: dict, message: str
) -> None:
    with pytest.raises(CacxrError, match=message):
        train_run(tiny(prepared, tmp_path / "run", **changes))


def test_a_folder_holding_other_things_or_settings_is_refused(
    prepared: tuple[Path, Path], base_run: tuple[Path, dict], tmp_path: Path
) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(CacxrError, match="not empty and not a cacxr run"):
        train_run(tiny(prepared, tmp_path / "busy"))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    before = sorted(p.name for p in base_run[0].iterdir())
    with pytest.raises(CacxrError, match="holds a finished run.*--resume"):
        train_run(tiny(prepared, base_run[0]))
    with pytest.raises(CacxrError, match="other settings .*epochs: 3 there, 4 now"):
        train_run(tiny(prepared, base_run[0], resume=True, epochs=4))
    assert sorted(p.name for p in base_run[0].iterdir()) == before


# ---- configuration and flags -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"task": "classification"}, {"lr": 3e-4, "finetune": "all", "milestones": [20, 35]}),
        ({"task": "regression"}, {"lr": 1e-3, "finetune": "all", "milestones": [20, 40, 60]}),
        ({"task": "classification", "weights": "imagenet"}, {"finetune": "last"}),
        ({"task": "regression", "lr": 0.01, "finetune": "head", "milestones": [5, 2]}, {"lr": 0.01, "milestones": [2, 5]}),
    ],
)
def test_resolved_defaults_depend_on_task_and_weights(given: dict, expected: dict) -> None:
    cfg = TrainConfig(**given).resolved()
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_json_leaves_out_execution_options() -> None:
    record = TrainConfig(fold=1, resume=True, progress=False).resolved().to_dict(settings_only=True)
    assert not {"fold", "resume", "progress", "device", "workers", "num_threads"} & set(record)
    assert TrainConfig.from_dict({**record, "cacxr_version": "x"}).fold is None


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {"viz": True, "save": True, "feature_cache": True, "augment": False, "epochs": 50, "kfold": 5,
              "batchsize": 4, "wd": 1e-4, "momentum": 0.9, "seed": 42, "image_size": 1024, "threshold": 0.0,
              "weights": "none", "device": "auto", "loss": "mae", "profile": None, "lr": None}),
        (["--no-viz", "--no-save", "--no-feature-cache", "--augment", "--no-progress"],
         {"viz": False, "save": False, "feature_cache": False, "augment": True, "progress": False}),
        (["--fold", "1", "--resume", "--milestones", "5,10", "--threshold", "100", "--loss", "mse"],
         {"fold": 1, "resume": True, "milestones": [5, 10], "threshold": 100.0, "loss": "mse"}),
        (["--arch", "efficientnet-b0", "--finetune", "head", "--profile", "xrv", "--store", "S", "--lr", "0.01"],
         {"arch": "efficientnet-b0", "finetune": "head", "profile": "xrv", "store": "S", "lr": 0.01}),
    ],
)  # fmt: skip
def test_command_line_flags_map_to_the_config(flags: list[str], expected: dict) -> None:
    args = build_parser("train").parse_args(["train", "DATA", "--task", "regression", "--out", "RUN", *flags])
    cfg = config_from_args(args)
    assert (cfg.data, cfg.out, cfg.task) == ("DATA", "RUN", "regression")
    assert {k: getattr(cfg, k) for k in expected} == expected


def test_flag_choices_match_the_library() -> None:
    from cacxr.model import ARCHS
    from cacxr.pixels import PROFILES

    assert set(ARCH_CHOICES) == set(ARCHS) and set(PROFILE_CHOICES) == set(PROFILES)


def test_cli_reports_missing_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["train", "DATA", "--out", "RUN"]) == 2
    assert "missing --task" in capsys.readouterr().err
