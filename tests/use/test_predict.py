"""`cacxr predict` and cacxr.use.predict on a tiny trained run, synthetic DICOMs and the real radiographs."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from _tiny_run import IMAGE_SIZE, tiny_run
from cacxr.cli import main
from cacxr.core import AGATSTON_BANDS, agatston_band, target_to_cac
from cacxr.imaging import read_image
from cacxr.pixels import preprocess_read, read_for_profile
from cacxr.use import load_run, score_image, score_paths
from cacxr.use.inputs import load_input
from cacxr.use.predict import PREDICTION_COLUMNS, expand_inputs, write_predictions_csv

SYNTH_NAMES = {"synth_0.dcm", "synth_1.dcm", "synth_2.dcm"}


def _synth_files(cohort: Path, n: int) -> list[Path]:
    """The first ``n`` external patients' radiographs (not used for training)."""
    return sorted(p for p in cohort.rglob("*.dcm") if "CAC" not in p.relative_to(cohort).parts[0])[:n]


def _scores_of(run, path: Path):
    """The run's scores of one file, computed here: read_for_profile (read_image decoding no larger than the
    profile needs, as predict reads), preprocess_read, run.scores (image-only run)."""
    return run.scores(preprocess_read(read_for_profile(path, run.profile, run.image_size), run.profile, run.image_size)[None])


def test_full_decode_reads_as_read_image(run, real_cxr_dir: Path) -> None:
    """load_input(full_decode=True) is read_image + preprocess_read; the default decodes JPEG 2000 reduced."""
    path = real_cxr_dir / "pydicomdata_RG1_J2KI.dcm"
    full = preprocess_read(read_image(path), run.profile, run.image_size)
    image, _, error = load_input(run, path, full_decode=True)
    assert error == "" and np.array_equal(image, full)
    reduced, _, _ = load_input(run, path)
    assert np.abs(reduced.astype(np.int16) - full).mean() <= 1.5  # README: "Reduced decoding"


def _probability_of(run, path: Path) -> float:
    return float(_scores_of(run, path).probability[0])


@pytest.fixture(scope="module")
def mix(tmp_path_factory: pytest.TempPathFactory, cohort: Path) -> Path:
    """A folder mixing synthetic DICOMs, a garbage file and a text file named .dcm (no real radiograph)."""
    folder = tmp_path_factory.mktemp("mix")
    for i, path in enumerate(_synth_files(cohort, 3)):
        shutil.copy(path, folder / f"synth_{i}.dcm")
    (folder / "garbage.dcm").write_bytes(np.random.default_rng(0).bytes(4000))
    (folder / "notes.dcm").write_text("not an image, only text\n")
    return folder


@pytest.fixture(scope="module")
def mix_rows(run, mix: Path) -> dict[str, object]:
    """The rows of the mix folder alone: needs no real radiograph."""
    rows = score_paths(run, [mix], batch_size=4, progress=False)
    return {Path(row.input).name: row for row in rows}


@pytest.fixture(scope="module")
def real_rows(run, mix: Path, real_cxr_dir: Path) -> dict[str, object]:
    """The real radiographs and the mix folder in one batch run (skips without the real radiographs)."""
    rows = score_paths(run, [real_cxr_dir, mix], batch_size=4, progress=False)
    return {Path(row.input).name: row for row in rows}


# (file, expected warning substring or "" for none); every one of these must be scored.
REAL_FILES = [
    ("highdicom_dx_image_CANINE_lateral_thorax.dcm", "small image (169x211"),
    ("nhsx_nih-cxr14_google_DX.dcm", "no ViewPosition: frontal view read from the image"),
    ("panimg_cxr_CR-MONO1-10-chest.dcm", "small image (440x440"),
    ("pydicomdata_RG1_J2KI.dcm", ""),
    ("txv_nih_00000001_000.png", "PNG export: frontal view read from the image"),
    ("txv_siim_chest_pa.dcm", ""),
]


@pytest.mark.parametrize(("name", "warning"), REAL_FILES)
def test_real_radiographs_are_scored_with_their_warnings(
    run, real_rows, real_cxr_dir: Path, name: str, warning: str
) -> None:
    row = real_rows[name]
    assert row.error == ""
    expected = _probability_of(run, real_cxr_dir / name)
    assert row.probability == pytest.approx(expected, abs=1e-6)
    assert row.label == int(expected >= run.decision_threshold)
    assert row.predicted_cac is None
    if warning:
        assert warning in row.warning
    else:
        assert row.warning == ""


@pytest.mark.parametrize(
    ("name", "error"),
    [("garbage.dcm", "unreadable"), ("notes.dcm", "unreadable")],
)
def test_bad_files_get_an_error_row_and_the_batch_goes_on(mix_rows, name: str, error: str) -> None:
    row = mix_rows[name]
    assert row.error.startswith(error)
    assert row.probability is None and row.label is None
    assert {n for n, r in mix_rows.items() if r.ok} == SYNTH_NAMES  # the batch went on past the bad file


def test_every_input_gets_exactly_one_row(real_rows, real_cxr_dir: Path, mix: Path) -> None:
    real = {p.name for p in real_cxr_dir.iterdir() if p.suffix != ".md"}
    expected = real | {p.name for p in mix.iterdir()}
    assert set(real_rows) == expected  # SOURCES.md is skipped inside a folder
    assert {name for name, row in real_rows.items() if row.ok} == real | SYNTH_NAMES


def test_labels_follow_the_decision_threshold(run, mix_rows, mix: Path) -> None:
    assert {name for name, row in mix_rows.items() if row.ok} == SYNTH_NAMES
    for name in sorted(SYNTH_NAMES):
        row = mix_rows[name]
        expected = _probability_of(run, mix / name)
        assert row.probability == pytest.approx(expected, abs=1e-6)
        assert row.label == int(row.probability >= run.decision_threshold)


def test_file_score_equals_the_score_of_the_training_pipeline(run, cohort: Path) -> None:
    """read_image + preprocess + run.score on a path gives what score_image and the store path give."""
    path = _synth_files(cohort, 1)[0]
    result = read_image(path)
    expected = float(run.score(preprocess_read(result, run.profile, IMAGE_SIZE)[None])[0])
    (row,) = score_paths(run, [path], progress=False)
    assert row.probability == pytest.approx(expected, abs=1e-6)
    assert score_image(run, result.image, result.meta)["probability"] == pytest.approx(expected, abs=1e-6)


def test_ensemble_probability_is_the_mean_of_the_folds(run_dir: Path, cohort: Path) -> None:
    files = _synth_files(cohort, 2)
    ensemble = [r.probability for r in score_paths(load_run(run_dir), files, progress=False)]
    per_fold = [
        [r.probability for r in score_paths(load_run(run_dir, fold=k), files, progress=False)] for k in (0, 1)
    ]
    np.testing.assert_allclose(ensemble, np.mean(per_fold, axis=0), atol=1e-6)


def test_folders_are_searched_recursively(run, tmp_path: Path, cohort: Path) -> None:
    source = _synth_files(cohort, 1)[0]
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    shutil.copy(source, deep / "x.dcm")
    shutil.copy(source, tmp_path / "a" / "IM0001")  # extension-less DICOM: found by content
    (tmp_path / "a" / "readme.txt").write_text("ignored")
    (tmp_path / "a" / "b" / "README").write_text("extension-less but not DICOM: ignored")
    rows = score_paths(run, [tmp_path / "a"], progress=False)
    assert sorted(Path(r.input).relative_to(tmp_path).as_posix() for r in rows) == ["a/IM0001", "a/b/c/x.dcm"]
    assert all(r.ok for r in rows)
    assert rows[0].probability == pytest.approx(rows[1].probability)


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda p: p / "missing.dcm", "no such file or folder"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "folder contains no DICOM, PNG or JPEG file"),
    ],
)
def test_inputs_that_yield_nothing_are_reported(tmp_path: Path, make, error: str) -> None:
    path = make(tmp_path)
    assert expand_inputs([path]) == [(str(path), error)]


def test_cli_writes_csv_with_every_column(run, run_dir: Path, mix: Path, mix_rows, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run_dir), str(mix), "--out", str(out), "--no-progress"]) == 0
    with out.open(newline="") as fh:
        reader = csv.DictReader(fh)
        records = list(reader)
    assert tuple(reader.fieldnames) == PREDICTION_COLUMNS
    assert len(records) == 5
    by_name = {Path(r["input"]).name: r for r in records}
    assert (
        by_name["notes.dcm"]["error"].startswith("unreadable") and by_name["notes.dcm"]["probability"] == ""
    )
    for name in sorted(SYNTH_NAMES):  # the CSV holds the rows' values (6 significant digits)
        assert float(by_name[name]["probability"]) == pytest.approx(mix_rows[name].probability, abs=1e-6)
        assert int(by_name[name]["label"]) == mix_rows[name].label
        assert by_name[name]["error"] == "" and by_name[name]["predicted_cac"] == ""
    assert float(by_name["synth_0.dcm"]["probability"]) == pytest.approx(
        _probability_of(run, mix / "synth_0.dcm"), abs=1e-6
    )
    assert "scored 3 of 5 inputs, 2 failed" in capsys.readouterr().err


def test_cli_prints_a_table_without_out_and_no_identifying_header(run_dir: Path, mix: Path, capsys) -> None:
    assert main(["predict", str(run_dir), str(mix / "synth_0.dcm"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    header, line = printed.strip().splitlines()
    assert header.split()[:3] == ["input", "probability", "label"]
    assert "synth_0.dcm" in line
    ds = pydicom.dcmread(mix / "synth_0.dcm", stop_before_pixels=True)
    for keyword in ("PatientName", "PatientBirthDate"):
        value = str(ds.get(keyword, "") or "")
        assert value, f"the synthetic header has no {keyword}: nothing to check"
        assert value not in printed


def test_regression_run_gives_cac_and_band(tmp_path_factory: pytest.TempPathFactory, cohort: Path) -> None:
    reg = load_run(tiny_run(tmp_path_factory, "regression"))
    files = _synth_files(cohort, 3)
    rows = score_paths(reg, files, progress=False)
    assert len(rows) == 3
    for path, row in zip(files, rows, strict=True):
        scores = _scores_of(reg, path)
        assert row.ok and row.probability == pytest.approx(float(scores.probability[0]), abs=1e-6)  # calibrated
        expected_cac = float(target_to_cac(scores.log_cac)[0])  # exp(log CAC) - 0.001, clipped at 0
        assert row.predicted_cac == pytest.approx(expected_cac, rel=1e-5, abs=1e-6)
        assert row.agatston_band == AGATSTON_BANDS[int(agatston_band(expected_cac))]
        # The run's operating point decides on the calibrated probability, as for classification.
        assert reg.decision_on == "probability"
        assert row.label == int(row.probability >= reg.decision_threshold)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "not a trained run folder"),
        ("no_models", "model"),
    ],
)
def test_bad_run_is_refused(
    run_dir: Path, mix: Path, tmp_path: Path, capsys, setup: str, message: str
) -> None:
    bad = tmp_path / "bad_run"
    if setup == "no_models":
        bad.mkdir()
        shutil.copy(run_dir / "config.json", bad / "config.json")
    assert main(["predict", str(bad), str(mix), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and message in err.lower()


def test_nothing_scored_is_an_error(run_dir: Path, mix: Path, capsys) -> None:
    assert (
        main(["predict", str(run_dir), str(mix / "garbage.dcm"), str(mix / "notes.dcm"), "--no-progress"])
        == 2
    )
    assert "none of the 2 inputs could be scored" in capsys.readouterr().err


def test_the_view_gate_verdict_is_a_column_and_refusals_follow_ingest(run, tmp_path: Path, real_cxr_dir: Path) -> None:
    """What ingest would exclude (a document, a lateral) is refused with its reason; the verdict is a column."""
    from PIL import Image, ImageDraw

    page = Image.new("L", (600, 800), 255)
    draw = ImageDraw.Draw(page)
    for row in range(40, 760, 22):
        draw.text((40, row), "Patient report - findings - impression " * 2, fill=0)
    page.save(tmp_path / "report.png")
    lateral = tmp_path / "lateral.dcm"
    ds = pydicom.dcmread(real_cxr_dir / "txv_siim_chest_pa.dcm")
    ds.ViewPosition = "LL"
    ds.save_as(lateral)
    frontal = real_cxr_dir / "txv_nih_00000001_000.png"
    rows = {Path(r.input).name: r for r in score_paths(run, [tmp_path / "report.png", lateral, frontal], progress=False)}
    assert rows["report.png"].error.startswith("not_radiograph: ") and rows["report.png"].gate.startswith("not_radiograph")
    assert rows["lateral.dcm"].error.startswith("lateral_view: ") and "recorded view: lateral" in rows["lateral.dcm"].error
    assert rows[frontal.name].ok and rows[frontal.name].gate.startswith("frontal (p ")
    out = tmp_path / "predictions.csv"
    write_predictions_csv(list(rows.values()), out)
    with out.open(newline="") as fh:
        written = {Path(r["input"]).name: r for r in csv.DictReader(fh)}
    assert written[frontal.name]["gate"] == rows[frontal.name].gate
