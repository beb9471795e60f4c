"""Clinical covariates: the encoder, the age + sex baseline in metrics.json, and `--clinical age,sex`."""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _tiny_run import IMAGE_SIZE, tiny_cohort, tiny_run
from cacxr.core import CacxrError
from cacxr.model import ClinicalEncoder, parse_clinical
from cacxr.stats import clinical_baseline


@pytest.mark.parametrize(
    ("value", "expected"),
    [("age,sex", ["age", "sex"]), ("sex, AGE", ["age", "sex"]), ("age", ["age"]), ("sex", ["sex"]),
     ("", []), ("none", []), (None, []), (["sex"], ["sex"])],
)  # fmt: skip
def test_parse_clinical(value, expected) -> None:
    assert parse_clinical(value) == expected


def test_parse_clinical_refuses_unknown_names() -> None:
    with pytest.raises(CacxrError, match="unknown feature.*bmi.*use age, sex or age,sex"):
        parse_clinical("age,bmi")


def test_encoder_imputes_the_training_median_and_round_trips() -> None:
    encoder = ClinicalEncoder.fit(["age", "sex"], [40.0, 60.0, math.nan, 80.0], ["M", "F", "", "x"])
    assert encoder.age_median == 60.0 and encoder.age_mean == 60.0
    assert encoder.age_std == pytest.approx(math.sqrt(200.0))
    assert encoder.columns == ["age_z", "sex_M", "sex_F", "sex_unknown"] and encoder.width == 4
    out = encoder.transform([80.0, None], ["F", "O"])
    np.testing.assert_allclose(out, [[20 / math.sqrt(200), 0, 1, 0], [0, 0, 0, 1]], rtol=1e-6)
    again = ClinicalEncoder.from_dict(json.loads(json.dumps(encoder.to_dict())))
    assert again == encoder
    assert ClinicalEncoder.fit(["sex"], [math.nan], ["M"]).transform([1.0], ["M"]).tolist() == [[1, 0, 0]]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ClinicalEncoder.fit(["age"], [math.nan, math.nan], ["M", "F"]), "no training patient has a known age"),
        (lambda: ClinicalEncoder.fit([], [1.0], ["M"]), "no clinical feature"),
        (lambda: ClinicalEncoder.from_dict({"features": ["age"]}), "not a clinical encoder record"),
    ],
)
def test_encoder_errors(call, message) -> None:
    with pytest.raises(CacxrError, match=message):
        call()


def _toy(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    age = rng.uniform(40, 80, n)
    cac = {pid: float(a > 60) * 200.0 for pid, a in zip(ids, age, strict=True)}  # age decides the label
    covariates = {pid: (float(a), "M" if i % 2 else "F") for i, (pid, a) in enumerate(zip(ids, age, strict=True))}
    folds = [(0, ids[n // 2 :], ids[: n // 2]), (1, ids[: n // 2], ids[n // 2 :])]
    return ids, cac, covariates, folds


def test_baseline_learns_age_on_its_folds_and_is_compared_with_the_image_model() -> None:
    ids, cac, covariates, folds = _toy()
    noise = {pid: float(i % 7) for i, pid in enumerate(ids)}  # an uninformative "image model"
    result = clinical_baseline(folds, covariates, cac, 100.0, image_scores=noise, n_boot=200)
    assert result["features"] == ["age", "sex"] and result["n_known"] == len(ids)
    assert result["pooled"]["auc"] > 0.95 and result["pooled"]["n"] == len(ids)
    assert [f["fold"] for f in result["folds"]] == [0, 1] and [f["n"] for f in result["folds"]] == [30, 30]
    assert result["delong_test"]["auc_b"] == pytest.approx(result["pooled"]["auc"])
    assert result["delong_test"]["diff"] < 0 and result["delong_test"]["p_value"] < 0.05


@pytest.mark.parametrize(
    ("change", "note"),
    [
        ("ages", "only 6 of 60 patients have both age and sex"),
        ("one_class_fold", "fold 0 lacks a class"),
    ],
)
def test_baseline_is_skipped_with_a_note(change, note) -> None:
    ids, cac, covariates, folds = _toy()
    if change == "ages":
        covariates = {pid: (math.nan if i >= 6 else a, s) for i, (pid, (a, s)) in enumerate(covariates.items())}
    else:
        cac = {pid: 0.0 if pid in folds[0][2] else v for pid, v in cac.items()}
    result = clinical_baseline(folds, covariates, cac, 100.0, n_boot=50)
    assert result["skipped"] is True and note in result["note"] and "pooled" not in result


# ---- on a real tiny run ---------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_run_reports_the_baseline_beside_the_image_model(tmp_path_factory, task) -> None:
    torch.set_num_threads(1)
    run = tiny_run(tmp_path_factory, task)  # regression: the baseline predicts CAC > threshold too
    metrics = json.loads((run / "metrics.json").read_text())
    baseline = metrics["clinical_baseline"]
    assert not baseline.get("skipped"), baseline
    pooled = baseline["pooled"]
    assert 0.0 <= pooled["auc"] <= 1.0 and pooled["auc_ci"][0] <= pooled["auc"] <= pooled["auc_ci"][1]
    assert pooled["n"] == metrics["pooled"]["n"] and pooled["n_pos"] == metrics["pooled"]["n_pos"]
    # the same folds, fold by fold
    assert [(f["fold"], f["n"], f["n_pos"]) for f in baseline["folds"]] == [
        (f["fold"], f["n"], f["n_pos"]) for f in metrics["folds"]
    ]
    assert all(0.0 <= f["auc"] <= 1.0 for f in baseline["folds"])
    delong = baseline["delong_test"]
    assert delong["auc_a"] == pytest.approx(metrics["pooled"]["auc"]) and 0.0 <= delong["p_value"] <= 1.0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert f"<td>clinical baseline (age, sex)</td><td>{pooled['auc']:.3f}" in page
    assert "Image model vs clinical baseline, fold by fold (fold-stratified DeLong" in page
    stratified = baseline["fold_stratified_test"]
    assert f"difference {stratified['diff']:.3f}" in page


def test_merge_notes_a_skipped_baseline_when_ages_are_missing(tmp_path_factory, tmp_path: Path) -> None:
    from cacxr.training import merge_folds

    source = tiny_run(tmp_path_factory)
    run = tmp_path / "run"
    shutil.copytree(source, run)
    with (source / "ingest" / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "age": ""} for row in rows)
    config = json.loads((run / "config.json").read_text())
    config["manifest"] = str(manifest)
    (run / "config.json").write_text(json.dumps(config))
    metrics = merge_folds(run)
    baseline = json.loads((run / "metrics.json").read_text())["clinical_baseline"]
    assert baseline == metrics["clinical_baseline"] and baseline["skipped"] is True
    assert baseline["n_known"] == 0 and "age known: 0" in baseline["note"]
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "Clinical baseline (age + sex) not computed: only 0 of" in page
    assert "<td>clinical baseline" not in page


# ---- --clinical age,sex ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clinical_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cacxr.commands.train import add_arguments, config_from_args
    from cacxr.training import train_run

    torch.set_num_threads(1)
    cohort = tiny_cohort(tmp_path_factory)
    out = tmp_path_factory.mktemp("clinical") / "run"
    store = tmp_path_factory.getbasetemp() / "tiny_runs" / "store"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [str(cohort), "--task", "classification", "--out", str(out), "--clinical", "age,sex", "--arch", "resnet18",
         "--finetune", "head", "--epochs", "2", "--kfold", "2", "--image-size", str(IMAGE_SIZE), "--seed", "1",
         "--batchsize", "8", "--no-viz", "--workers", "1", "--num-threads", "1", "--no-progress", "--store", str(store)]
    )  # fmt: skip
    train_run(config_from_args(args))
    return out


def test_clinical_flag_refuses_unknown_features() -> None:
    from cacxr.commands.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["d", "--clinical", "age,weight"])


def test_clinical_run_trains_with_covariates_from_the_training_part(clinical_run: Path) -> None:
    config = json.loads((clinical_run / "config.json").read_text())
    assert config["clinical"] == ["age", "sex"] and config["feature_cache_used"] is True
    with (clinical_run / "ingest" / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        ages = {row["patient_id"]: float(row["age"]) for row in csv.DictReader(fh)}
    with (clinical_run / "folds.csv").open(newline="", encoding="utf-8") as fh:
        roles = list(csv.DictReader(fh))
    for k in (0, 1):
        encoder = json.loads((clinical_run / f"fold_{k}" / "fold.json").read_text())["clinical_encoder"]
        train_ages = [ages[r["patient_id"]] for r in roles if r["fold"] == str(k) and r["role"] == "train"]
        assert encoder["columns"] == ["age_z", "sex_M", "sex_F", "sex_unknown"]
        assert encoder["age_median"] == pytest.approx(float(np.median(train_ages)))
        assert encoder["age_mean"] == pytest.approx(float(np.mean(train_ages)))
    metrics = json.loads((clinical_run / "metrics.json").read_text())
    assert 0.0 <= metrics["pooled"]["auc"] <= 1.0


def test_clinical_run_loads_and_scores_with_header_values(
    clinical_run: Path, tmp_path: Path, real_cxr_dir: Path
) -> None:

    from cacxr.imaging import read_image
    from cacxr.use import load_run, score_image, score_paths
    from cacxr.use.predict import score_module

    run = load_run(clinical_run)
    assert [model.n_clinical for _, model in run.models] == [4, 4]
    images = np.random.default_rng(0).integers(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    old_man = run.score(images, clinical=[(80.0, "M"), (80.0, "M")])
    young_woman = run.score(images, clinical=[(40.0, "F"), (40.0, "F")])
    unknown = run.score(images)
    assert not np.allclose(old_man, young_woman) and np.all((unknown >= 0) & (unknown <= 1))
    with pytest.raises(CacxrError, match="1 clinical"):
        run.score(images, clinical=[(80.0, "M")])

    dicom = sorted((Path(json.loads((clinical_run / "config.json").read_text())["data"])).glob("CAC_*/rx/*.dcm"))[0]
    meta = read_image(dicom).meta
    assert meta.age is not None and meta.sex in ("M", "F")
    png = real_cxr_dir / "txv_nih_00000001_000.png"  # a real export: no age or sex in it
    rows = score_paths(run, [dicom, png], progress=False)
    assert rows[0].error == "" and "unknown" not in rows[0].warning
    assert "age unknown: the training median age was used" in rows[1].warning
    assert "sex unknown" in rows[1].warning
    # the header's values are the ones used
    decoded = read_image(dicom).image
    from_header = score_image(run, decoded, meta)
    assert from_header["probability"] == pytest.approx(rows[0].probability, rel=1e-5)
    assert from_header["warning"] == ""
    assert "age unknown" in score_image(run, decoded)["warning"]
    # explain/export's module: covariates fixed (unknown by default)
    from cacxr.pixels import normalise

    batch = normalise(images, run.profile)[:, None]
    with torch.no_grad():
        np.testing.assert_allclose(score_module(run)(batch).numpy(), unknown, rtol=1e-5)


def test_baseline_captures_a_nonlinear_age_effect_and_an_age_by_sex_interaction() -> None:
    """Risk rises with age in men only, and only past 60: a straight line on age alone cannot do this."""
    rng = np.random.default_rng(5)
    n = 400
    ids = [f"P{i:03d}" for i in range(n)]
    age = rng.uniform(35, 85, n)
    sex = np.where(rng.random(n) < 0.5, "M", "F")
    risk = (sex == "M") & (age > 60)
    cac = {pid: 300.0 * float(r) for pid, r in zip(ids, risk, strict=True)}
    covariates = {pid: (float(a), str(s)) for pid, a, s in zip(ids, age, sex, strict=True)}
    folds = [(0, ids[n // 2 :], ids[: n // 2]), (1, ids[: n // 2], ids[n // 2 :])]
    scores: dict[str, float] = {}
    result = clinical_baseline(folds, covariates, cac, 100.0, n_boot=50, scores_out=scores)
    assert "spline" in result["model"] and "age x sex" in result["model"]
    assert result["pooled"]["auc"] > 0.95
    assert set(scores) == set(ids)
    # women past 60 get a lower probability than men past 60
    women = np.mean([scores[p] for p, a, s in zip(ids, age, sex, strict=True) if s == "F" and a > 70])
    men = np.mean([scores[p] for p, a, s in zip(ids, age, sex, strict=True) if s == "M" and a > 70])
    assert men - women > 0.4


def test_image_vs_baseline_test_is_fold_stratified() -> None:
    from cacxr.stats import fold_paired_test

    ids, cac, covariates, folds = _toy()
    noise = {pid: float(i % 7) for i, pid in enumerate(ids)}
    scores: dict[str, float] = {}
    result = clinical_baseline(folds, covariates, cac, 100.0, image_scores=noise, n_boot=50, scores_out=scores)
    test = result["fold_stratified_test"]
    expected = fold_paired_test(
        [
            (k, [int(cac[p] > 100) for p in test_ids], [noise[p] for p in test_ids], [scores[p] for p in test_ids])
            for k, _, test_ids in folds
        ]
    )
    assert test["diff"] == pytest.approx(expected["diff"]) and test["p_value"] == pytest.approx(expected["p_value"])
    assert test["diff"] < 0 and test["n_folds"] == 2
    assert result["delong_test"]["pooled"] is True
