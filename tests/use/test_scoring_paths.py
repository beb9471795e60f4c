"""One score per radiograph: predict, evaluate, explain, export and serve agree on every kind of run.

Table-driven over a plain run (fold ensemble), a run with a final model, a ``--clinical age,sex`` run with a
final model, and a regression run. For one external radiograph of the tiny cohort every path must give
the score ``cacxr predict`` gives (the calibrated probability; regression: the predicted CAC and the
calibrated probability), and none may fail.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from _tiny_run import tiny_cohort, tiny_final_run, tiny_run

# (kind, how to build it, whether the default model is the final one)
KINDS = {
    "plain": (lambda f: tiny_run(f, "classification"), False),
    "final": (lambda f: tiny_final_run(f, "classification"), True),
    "clinical+final": (lambda f: tiny_final_run(f, "clinical"), True),
    "regression": (lambda f: tiny_run(f, "regression"), False),
}
# Tolerances: float32 sums differ in the last digits with the batch an image is scored in (SAME), and on
# other backends (ONNX Runtime, TorchScript: EXPORT).
SAME_ATOL = 1e-5
EXPORT_ATOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")


@pytest.fixture(scope="module", params=list(KINDS))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The run, its loaded default model, the radiograph and what predict says about it."""
    from cacxr.use import load_run, score_paths

    build, final = KINDS[request.param]
    run_dir = build(tmp_path_factory)
    run = load_run(run_dir)
    assert run.is_final == final
    cohort = tiny_cohort(tmp_path_factory)
    image = _with_age(sorted(cohort.glob("XYZ_*/rx/*.dcm")))  # an external patient: never trained on
    (row,) = score_paths(run, [image], progress=False)
    assert row.ok, row.error
    return {"kind": request.param, "run_dir": run_dir, "run": run, "image": image, "row": row, "cohort": cohort}


def _with_age(files: list[Path]) -> Path:
    """The first file whose header has PatientAge and PatientSex.

    predict, explain and serve read age and sex from the header, evaluate from the label table; the
    synthetic archive writes the same values in both when it fills the header (as real archives do).
    """
    import pydicom

    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        if header.get("PatientAge") and header.get("PatientSex") in ("M", "F"):
            return path
    raise AssertionError("no external radiograph with PatientAge in the tiny cohort")


def _expected(case: dict) -> float:
    """predict's score: the probability (classification) or the predicted CAC (regression)."""
    row = case["row"]
    return row.predicted_cac if case["run"].task == "regression" else row.probability


def test_predict_reports_a_calibrated_probability(case: dict) -> None:
    from cacxr.core import target_to_cac
    from cacxr.imaging import read_image
    from cacxr.pixels import preprocess_read

    row, run = case["row"], case["run"]
    # The scores computed here from the file: read, preprocess, the run's scores with the header's age and sex.
    result = read_image(case["image"])
    image = preprocess_read(result, run.profile, run.image_size)
    expected = run.scores(image[None], clinical=[(result.meta.age, result.meta.sex)])
    assert row.probability == pytest.approx(float(expected.probability[0]), abs=1e-6)
    if run.task == "regression":
        assert row.predicted_cac == pytest.approx(float(target_to_cac(expected.log_cac)[0]), rel=1e-5, abs=1e-6)
    else:
        assert row.predicted_cac is None and expected.log_cac is None
    assert row.label == int(run.predict_label(run.scores(*_prepared(case)))[0])
    if case["kind"] == "clinical+final":
        assert run.scorer.takes_covariates and "age unknown" not in row.warning  # the header's age was used
        assert "calibration" in run.folds[-1] and run.folds[-1]["n_calibration"] > 0


def _prepared(case: dict) -> tuple[np.ndarray, list[tuple[float, str]]]:
    from cacxr.use.predict import clinical_values, prepare_input

    image, meta, _, _, error = prepare_input(case["run"], case["image"])
    assert not error
    values, _ = clinical_values(case["run"], meta)
    return image[None], [values]


@pytest.fixture(scope="module")
def external_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cohort's external patients, ingested once for every kind of run."""
    from cacxr.ingest import ingest

    out = tmp_path_factory.mktemp("external")
    ingest(tiny_cohort(tmp_path_factory), out, site="external", workers=1, progress=False)
    return out / "manifest.csv"


def test_evaluate_gives_the_same_score(case: dict, external_manifest: Path, tmp_path: Path) -> None:
    from cacxr.use import evaluate_run

    out = tmp_path / "eval"
    evaluate_run(case["run_dir"], external_manifest, out, n_boot=50, viz=False, progress=False, workers=1)
    with (out / "predictions.csv").open(newline="") as fh:
        rows = {row["patient_id"]: row for row in csv.DictReader(fh)}
    got = rows[case["image"].parts[-3]]
    assert float(got["score"]) == pytest.approx(_expected(case), rel=SAME_ATOL, abs=SAME_ATOL)
    assert int(got["predicted_label"]) == case["row"].label
    if case["run"].task == "regression":
        assert float(got["probability"]) == pytest.approx(case["row"].probability, abs=SAME_ATOL)
    if case["kind"] == "clinical+final":
        # Every external radiograph, with or without PatientAge in its header (then the age comes from
        # PatientBirthDate and StudyDate, as the label table's from birth and rx_date): predict == evaluate.
        import pydicom

        from cacxr.ingest import read_manifest
        from cacxr.use import score_paths

        images = {row.patient_id: row.path for row in read_manifest(external_manifest)}
        scored = score_paths(case["run"], list(images.values()), progress=False)
        headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in images.values()]
        assert any(not header.get("PatientAge") for header in headers)  # the case this checks
        assert all("age unknown" not in row.warning for row in scored), [row.warning for row in scored]
        for (patient, _), row in zip(images.items(), scored, strict=True):
            assert float(rows[patient]["score"]) == pytest.approx(row.probability, abs=SAME_ATOL), patient


def test_explain_shows_the_same_score(case: dict, tmp_path: Path) -> None:
    from cacxr.use import explain_paths

    (row,) = explain_paths(case["run"], [case["image"]], tmp_path / "x.png", steps=4, progress=False)
    assert not row.error and Path(row.output).is_file()
    assert row.score == pytest.approx(_expected(case), rel=SAME_ATOL, abs=SAME_ATOL)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_gives_the_same_score(case: dict, fmt: str, tmp_path: Path) -> None:
    from cacxr.core import target_to_cac
    from cacxr.model.scoring import sex_code
    from cacxr.pixels import normalise
    from cacxr.use import export_run, read_contract

    run = case["run"]
    path = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt")
    export_run(run, path, fmt)
    meta = read_contract(path)
    assert "folds" not in meta if run.is_final else meta["folds"] == [0, 1]
    assert meta["model"] == ("final" if run.is_final else "ensemble of folds 0, 1")
    images, values = _prepared(case)
    inputs = {"image": normalise(images[:, None], run.profile)}
    names = [entry["name"] for entry in meta["inputs"]]
    if case["kind"] == "clinical+final":
        assert names == ["image", "age", "sex"] and meta["clinical"]["final"]["features"] == ["age", "sex"]
        inputs["age"] = torch.tensor([values[0][0]], dtype=torch.float32)
        inputs["sex"] = torch.tensor([sex_code(values[0][1])], dtype=torch.long)
    else:
        assert names == ["image"]
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    else:
        result = torch.jit.load(str(path)).eval()(*inputs.values())
        outputs = [t.detach().numpy() for t in (result if isinstance(result, tuple) else (result,))]
    if run.task == "regression":
        assert float(target_to_cac(outputs[0])[0]) == pytest.approx(_expected(case), rel=1e-3, abs=1e-3)
        assert float(outputs[1][0]) == pytest.approx(case["row"].probability, abs=EXPORT_ATOL)
    else:
        assert float(outputs[0][0]) == pytest.approx(_expected(case), abs=EXPORT_ATOL)


def test_serve_gives_the_same_score(case: dict) -> None:
    from fastapi.testclient import TestClient

    from cacxr.serving import RunModel, create_app

    run = case["run"]
    client = TestClient(create_app(RunModel(run)))
    health = client.get("/health")
    assert health.status_code == 200, health.text
    assert health.json()["model"]["model"] == ("final" if run.is_final else "ensemble of folds 0, 1")
    upload = {"file": ("upload.dcm", case["image"].read_bytes(), "application/octet-stream")}
    answer = client.post("/predict", files=upload)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["probability"] == pytest.approx(case["row"].probability, abs=SAME_ATOL)
    assert body["label"] == case["row"].label
    if run.task == "regression":
        assert body["predicted_cac"] == pytest.approx(case["row"].predicted_cac, rel=SAME_ATOL, abs=SAME_ATOL)
    explained = client.post("/explain", files=upload, params={"steps": 4})
    assert explained.status_code == 200, explained.text
    assert float(explained.headers["X-Cacxr-Score"]) == pytest.approx(_expected(case), rel=SAME_ATOL, abs=SAME_ATOL)
