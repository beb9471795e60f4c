"""`cacxr evaluate`: a tiny run tested on the external patients of its synthetic cohort."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from _tiny_run import COHORT_EXTERNAL, tiny_run
from cacxr.cli import main
from cacxr.core import CacxrError
from cacxr.use import evaluate_run, load_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N_BOOT = 200


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, run_dir: Path, cohort: Path) -> tuple[Path, dict]:
    """The default evaluation of the run on the cohort folder (site defaults to external)."""
    out = tmp_path_factory.mktemp("eval") / "out"
    return out, evaluate_run(run_dir, cohort, out, n_boot=N_BOOT, workers=1, progress=False)


def _predictions(out: Path) -> list[dict[str, str]]:
    with (out / "predictions.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_metrics_have_the_training_layout_with_intervals(evaluated, run_dir: Path) -> None:
    out, metrics = evaluated
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["task"] == "classification" and metrics["threshold"] == 0.0
    assert [fold["fold"] for fold in metrics["folds"]] == ["external"]
    pooled = metrics["pooled"]
    lo, hi = pooled["auc_ci"]
    assert 0.0 <= lo <= pooled["auc"] <= hi <= 1.0
    assert (
        pooled["balanced_accuracy_ci"][0] <= pooled["balanced_accuracy"] <= pooled["balanced_accuracy_ci"][1]
    )
    assert sum(map(sum, pooled["confusion_matrix"])) == COHORT_EXTERNAL
    ev = metrics["evaluation"]
    assert ev["site"] == "external" and ev["n_patients"] == COHORT_EXTERNAL and ev["folds_used"] == [0, 1]
    # the run's validation-chosen threshold is applied unchanged
    assert ev["decision_threshold"] == pytest.approx(load_run(run_dir).decision_threshold)
    assert metrics["folds"][0]["decision_threshold"] == pytest.approx(ev["decision_threshold"])


def test_predictions_cover_every_external_patient(evaluated, run_dir: Path, cohort: Path) -> None:
    out, metrics = evaluated
    rows = _predictions(out)
    external = sorted(p.name for p in cohort.iterdir() if p.is_dir() and "CAC" not in p.name)
    assert sorted(r["patient_id"] for r in rows) == external
    cut = metrics["evaluation"]["decision_threshold"]
    for row in rows:
        assert row["site"] == "external"
        assert int(row["label"]) == int(float(row["cac_score"]) > 0)
        assert int(row["predicted_label"]) == int(float(row["score"]) >= cut)
    tn_fp_fn_tp = np.array(metrics["pooled"]["confusion_matrix"]).ravel()
    pairs = [(int(r["label"]), int(r["predicted_label"])) for r in rows]
    assert list(tn_fp_fn_tp) == [pairs.count(p) for p in ((0, 0), (0, 1), (1, 0), (1, 1))]


@pytest.mark.parametrize("name", ["roc.png", "confusion.png", "calibration.png", "error_by_band.png"])
def test_plots_are_written(evaluated, name: str) -> None:
    out, _ = evaluated
    data = (out / "plots" / name).read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 2000


def test_report_shows_auc_and_embeds_plots(evaluated) -> None:
    out, metrics = evaluated
    page = (out / "report.html").read_text()
    # The evaluation page is report.py's page: headline AUC on the evaluation data, the run's settings.
    assert f'AUC (evaluation data)</div><span class="big">{metrics["pooled"]["auc"]:.3f}' in page
    assert "applied once to these patients" in page and metrics["evaluation"]["run"] in page
    assert page.count("data:image/png;base64,") == 4
    assert "CAC &gt; 0" in page


def test_a_manifest_gives_the_same_scores_as_the_folder(evaluated, run_dir: Path, tmp_path: Path) -> None:
    out, metrics = evaluated
    again = evaluate_run(
        run_dir, out / "ingest" / "manifest.csv", tmp_path / "m", n_boot=N_BOOT, viz=False, progress=False
    )
    assert again["pooled"]["auc"] == pytest.approx(metrics["pooled"]["auc"])
    assert [r["score"] for r in _predictions(tmp_path / "m")] == [r["score"] for r in _predictions(out)]
    assert again["evaluation"]["kind"] == "manifest"


def test_an_unreadable_image_is_recorded_and_the_others_evaluated(
    evaluated, run_dir: Path, tmp_path: Path
) -> None:
    out, _ = evaluated
    lines = (out / "ingest" / "manifest.csv").read_text().splitlines()
    victim = lines[1].split(",")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 300)
    lines[1] = ",".join([victim[0], str(broken), *victim[2:]])
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    metrics = evaluate_run(
        run_dir, manifest, tmp_path / "out", n_boot=N_BOOT, viz=False, workers=1, progress=False
    )
    ev = metrics["evaluation"]
    assert (ev["n_patients"], ev["n_not_scored"]) == (COHORT_EXTERNAL - 1, 1)
    assert ev["not_scored"][0].startswith(f"{victim[0]}: {broken}")
    assert victim[0] not in {r["patient_id"] for r in _predictions(tmp_path / "out")}


def test_compare_adds_a_paired_delong_test(
    tmp_path_factory: pytest.TempPathFactory, run_dir: Path, cohort: Path, tmp_path: Path, capsys
) -> None:
    other = tiny_run(tmp_path_factory, "regression")  # same threshold; AUC of predicted CAC
    out = tmp_path / "cmp"
    argv = ["evaluate", str(run_dir), str(cohort), "--out", str(out), "--compare", str(other)]
    assert (
        main(
            [
                *argv,
                "--site",
                "external",
                "--n-boot",
                str(N_BOOT),
                "--workers",
                "1",
                "--no-viz",
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    comparison = metrics["comparison"]
    assert 0.0 <= comparison["p_value"] <= 1.0
    assert comparison["auc_a"] == pytest.approx(metrics["pooled"]["auc"])
    assert comparison["diff"] == pytest.approx(comparison["auc_a"] - comparison["auc_b"])
    assert comparison["ci"][0] <= comparison["diff"] <= comparison["ci"][1]
    assert comparison["n"] == COHORT_EXTERNAL
    assert all(r["score_compare"] for r in _predictions(out))
    assert "paired DeLong p =" in capsys.readouterr().out


def test_runs_with_different_thresholds_are_not_compared(run_dir: Path, cohort: Path, tmp_path: Path) -> None:
    other = tmp_path / "other_threshold"
    shutil.copytree(run_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["threshold"] = 100.0
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(CacxrError, match=r"CAC > 0 but .* CAC > 100"):
        evaluate_run(run_dir, cohort, tmp_path / "out", compare=other, progress=False)


def test_rerun_into_the_same_folder_with_one_fold(run_dir: Path, evaluated, tmp_path: Path) -> None:
    out, first = evaluated
    again = tmp_path / "again"
    shutil.copytree(out, again)  # an earlier evaluation folder may be reused
    metrics = evaluate_run(
        run_dir, out / "ingest" / "manifest.csv", again, fold=1, n_boot=N_BOOT, viz=False, progress=False
    )
    assert metrics["evaluation"]["folds_used"] == [1]
    assert json.loads((again / "metrics.json").read_text())["evaluation"]["fold"] == 1
    assert list((again / "plots").iterdir()) == []  # no stale plots of the ensemble evaluation
    assert "data:image/png" not in (again / "report.html").read_text()
    assert metrics["evaluation"]["decision_threshold"] == pytest.approx(
        load_run(run_dir, fold=1).decision_threshold
    )


def test_regression_run_adds_its_metrics_and_plots(
    tmp_path_factory: pytest.TempPathFactory, cohort: Path, tmp_path: Path
) -> None:
    from sklearn.metrics import mean_absolute_error

    from cacxr.core import AGATSTON_BANDS, agatston_band, cac_to_target, target_to_cac
    from cacxr.imaging import read_image
    from cacxr.ingest import read_manifest
    from cacxr.pixels import preprocess_read

    reg = tiny_run(tmp_path_factory, "regression")
    metrics = evaluate_run(reg, cohort, tmp_path / "reg", n_boot=N_BOOT, workers=1, progress=False)
    assert metrics["task"] == "regression"
    assert len(metrics["pooled"]["agatston_confusion"]) == 5
    assert {p.name for p in (tmp_path / "reg" / "plots").iterdir()} == {
        "roc.png", "confusion.png", "error_by_band.png", "scatter.png", "agatston_confusion.png",
    }  # fmt: skip
    rows = _predictions(tmp_path / "reg")
    assert len(rows) == COHORT_EXTERNAL
    # The predicted CAC of each patient, computed here from its radiograph: the run's log CAC, unclipped,
    # back on the Agatston scale (target_to_cac); its band follows.
    run = load_run(reg)
    paths = {row.patient_id: row.path for row in read_manifest(tmp_path / "reg" / "ingest" / "manifest.csv")}
    images = np.stack([preprocess_read(read_image(paths[r["patient_id"]]), run.profile, run.image_size) for r in rows])
    scores = run.scores(images)
    expected_cac = target_to_cac(scores.log_cac)
    for r, cac, log_cac, probability in zip(rows, expected_cac, scores.log_cac, scores.probability, strict=True):
        assert float(r["score"]) == pytest.approx(cac, rel=1e-5, abs=1e-5), r["patient_id"]
        assert float(r["log_cac"]) == pytest.approx(log_cac, abs=1e-5), r["patient_id"]
        assert float(r["probability"]) == pytest.approx(probability, abs=1e-5), r["patient_id"]
        assert r["predicted_band"] == AGATSTON_BANDS[int(agatston_band(float(r["score"])))]
    # metrics.json's MAE of log CAC is that of the written predictions
    true_log = cac_to_target([float(r["cac_score"]) for r in rows])
    predicted_log = cac_to_target([float(r["score"]) for r in rows])
    assert metrics["pooled"]["mae_log"] == pytest.approx(mean_absolute_error(true_log, predicted_log))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_data", "no such data folder or manifest file"),
        ("out_is_run", "is the run folder itself"),
        ("out_not_ours", "is not empty and is not a cacxr evaluation folder"),
        ("training_patients", "were used to train"),
        ("no_external_patient", "try --site all"),
        ("missing_run", "not a trained run folder"),
    ],
)
def test_bad_input_is_refused_clearly(
    run_dir: Path, cohort: Path, tmp_path: Path, case: str, message: str
) -> None:
    data, out, run, site = cohort, tmp_path / "out", run_dir, None
    if case == "missing_data":
        data = tmp_path / "nowhere"
    elif case == "out_is_run":
        out = run_dir
    elif case == "out_not_ours":
        out.mkdir()
        (out / "precious.txt").write_text("user data")
    elif case == "training_patients":
        site = "all"
    elif case == "no_external_patient":
        data = tmp_path / "internal_only"
        data.mkdir()
        shutil.copy(cohort / "site.db", data / "site.db")
        shutil.copytree(cohort / "CAC_001", data / "CAC_001")
    else:
        run = tmp_path / "no_run"
    with pytest.raises(CacxrError, match=message):
        evaluate_run(run, data, out, site=site, n_boot=N_BOOT, workers=1, progress=False)
    if case == "out_not_ours":
        assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
