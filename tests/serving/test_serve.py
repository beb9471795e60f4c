"""`cacxr serve`: the HTTP API on a tiny trained run, the real radiographs and every kind of bad upload."""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import anyio
import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import cacxr
from _tiny_run import IMAGE_SIZE, tiny_run
from _torch_threads import torch_threads
from cacxr.cli import build_parser, main
from cacxr.core import CacxrError
from cacxr.imaging import read_image
from cacxr.pixels import preprocess_read
from cacxr.serving import RunModel, create_app, serve_in_background
from cacxr.use import load_run, score_paths

KB = 1024


@pytest.fixture(scope="module", autouse=True)
def _few_threads():
    with torch_threads(2):
        yield


@pytest.fixture(scope="module")
def client(run) -> TestClient:
    return TestClient(create_app(run, max_upload_bytes=4 * 2**20, explain_steps=4))


def _upload(data: bytes, name: str = "upload.dcm") -> dict:
    return {"file": (name, data, "application/octet-stream")}


# ----------------------------------------------------------------------------------- files to send


def _png_declaring(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header declares width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + chunk(b"IEND", b"")
    )


def _dicom(rows: int = 32, cols: int = 32, modality: str = "DX", pixels: bool = True, **fields) -> bytes:
    """A small part-10 DICOM (16-bit MONOCHROME2); ``rows``/``cols`` are declared, pixels may be absent."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.ViewPosition = "PA"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-55501"
    ds.PatientBirthDate = "19511231"
    for key, value in fields.items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixels:
        count = rows * cols if rows * cols <= 2**20 else 64 * 64  # a bomb carries far fewer than it declares
        ds.PixelData = (np.arange(count, dtype=np.uint16) % 4096).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, format="GIF")
    return buf.getvalue()


def _real(real_cxr_dir: Path, name: str) -> bytes:
    return (real_cxr_dir / name).read_bytes()


# (case, bytes maker, upload name, status, message fragment); the maker gets the real_cxr folder.
BAD_UPLOADS = [
    ("empty file", lambda d: b"", "empty.dcm", 400, "empty.dcm: empty file (0 bytes)"),
    (
        "text named .dcm",
        lambda d: b"PatientName: not an image, only text\n" * 20,
        "notes.dcm",
        415,
        "notes.dcm: not a DICOM, PNG or JPEG file",
    ),
    ("random bytes named .png", lambda d: np.random.default_rng(0).bytes(5000), "x.png", 415, "not a DICOM"),
    (
        "truncated DICOM (native pixels)",
        lambda d: _real(d, "panimg_cxr_CR-MONO1-10-chest.dcm")[:3000],
        "cut.dcm",
        422,
        "cut.dcm: unreadable: pixel data cannot be decoded",
    ),
    (
        "truncated DICOM (JPEG 2000)",
        lambda d: _real(d, "pydicomdata_RG1_J2KI.dcm")[:20000],
        "cut_j2k.dcm",
        422,
        "cut_j2k.dcm: ",
    ),
    ("truncated PNG", lambda d: _real(d, "txv_nih_00000001_000.png")[:5000], "cut.png", 422, "cut.png: "),
    (
        "corrupt PNG header",
        lambda d: b"\x89PNG\r\n\x1a\n" + b"\x00" * 200,
        "bad.png",
        422,
        "bad.png: corrupt PNG image",
    ),
    (
        "PNG bomb 30000 x 30000",
        lambda d: _png_declaring(30000, 30000),
        "bomb.png",
        413,
        "bomb.png: image too large to decode safely",
    ),
    (
        "PNG 9000 x 9000 above the pixel cap",
        lambda d: _png_declaring(9000, 9000),
        "big.png",
        413,
        "big.png: image of 9000x9000 pixels is above the limit of 50,000,000 pixels",
    ),
    (
        "DICOM declaring 40000 x 40000",
        lambda d: _dicom(rows=40000, cols=40000),
        "bomb.dcm",
        413,
        "bomb.dcm: image of 40000x40000 pixels is above the limit",
    ),
    ("GIF named .png", lambda d: _gif(), "scan.png", 415, "scan.png: not a DICOM, PNG or JPEG file"),
    ("DICOM without pixel data", lambda d: _dicom(pixels=False), "meta.dcm", 422, "meta.dcm: no_pixel_data"),
    (
        "multi-frame DICOM",
        lambda d: _dicom(NumberOfFrames=2),
        "cine.dcm",
        422,
        "cine.dcm: multi_frame: 2 frames in one file",
    ),
    ("CT slice", lambda d: _dicom(modality="CT"), "ct.dcm", 422, "ct.dcm: not_radiograph: Modality CT"),
]


@pytest.mark.parametrize("route", ["/predict", "/preview", "/explain"])
@pytest.mark.parametrize(
    ("case", "make", "name", "status", "message"), BAD_UPLOADS, ids=[case[0] for case in BAD_UPLOADS]
)
def test_bad_uploads_get_a_4xx_naming_the_file_and_the_reason(
    client, real_cxr_dir, route, case, make, name, status, message
) -> None:
    answer = client.post(route, files=_upload(make(real_cxr_dir), name))
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert message in detail
    assert "cacxr-upload-" not in detail  # the server's temporary path is never shown
    for identifying in ("Doe^Jane", "Doe", "MRN-55501", "19511231"):
        assert identifying not in answer.text


# --------------------------------------------------------------------------------------- /predict

# (file, format, warning fragment or "" for none)
REAL_FILES = [
    ("pydicomdata_RG1_J2KI.dcm", "dicom", ""),
    ("txv_siim_chest_pa.dcm", "dicom", ""),
    ("nhsx_nih-cxr14_google_DX.dcm", "dicom", "no ViewPosition: frontal view read from the image"),
    ("panimg_cxr_CR-MONO1-10-chest.dcm", "dicom", "small image (440x440"),
    ("highdicom_dx_image_CANINE_lateral_thorax.dcm", "dicom", "small image (169x211"),
    ("txv_nih_00000001_000.png", "png", "PNG export: frontal view read from the image"),
]


@pytest.mark.parametrize(("name", "fmt", "warning"), REAL_FILES)
def test_predict_scores_real_radiographs_as_cacxr_predict_does(
    client, run, run_dir, real_cxr_dir, name, fmt, warning
) -> None:
    answer = client.post("/predict", files=_upload(_real(real_cxr_dir, name), name))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    (row,) = score_paths(run, [real_cxr_dir / name], progress=False)
    assert body["probability"] == pytest.approx(row.probability, abs=1e-6)
    assert body["label"] == row.label
    assert body["predicted_cac"] is None and body["agatston_band"] is None
    assert (body["file"], body["format"], body["task"]) == (name, fmt, "classification")
    header = read_image(real_cxr_dir / name).meta
    assert (body["rows"], body["cols"]) == (header.rows, header.cols)
    if warning:
        assert any(warning in note for note in body["warnings"]), body["warnings"]
    else:
        assert body["warnings"] == []
    assert body["model"]["run_name"] == run_dir.name
    assert body["model"]["arch"] == "resnet18"
    assert body["gate"] == row.gate and body["gate"].split(" ")[0] in ("frontal", "lateral", "not_radiograph")


def test_predict_refuses_a_lateral_view_as_ingest_excludes_it(client) -> None:
    answer = client.post("/predict", files=_upload(_dicom(rows=600, cols=600, ViewPosition="LL")))
    assert answer.status_code == 422, answer.text
    assert "upload.dcm: lateral_view: recorded view: lateral" in answer.json()["detail"]


def test_predict_refuses_an_image_that_is_not_a_chest_radiograph(client) -> None:
    import io

    from PIL import Image, ImageDraw

    page = Image.new("L", (600, 800), 255)
    draw = ImageDraw.Draw(page)
    for row in range(40, 760, 22):
        draw.text((40, row), "Patient report - findings - impression " * 2, fill=0)
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    answer = client.post("/predict", files=_upload(buffer.getvalue(), "report.png"))
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith("report.png: not_radiograph: image: not a chest radiograph by the view gate")


def test_regression_run_answers_predicted_cac_and_agatston_band(tmp_path_factory, real_cxr_dir) -> None:
    from cacxr.core import AGATSTON_BANDS, agatston_band

    regression = load_run(tiny_run(tmp_path_factory, "regression"))
    answer = TestClient(create_app(regression)).post(
        "/predict", files=_upload(_real(real_cxr_dir, "txv_siim_chest_pa.dcm"))
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    (row,) = score_paths(regression, [real_cxr_dir / "txv_siim_chest_pa.dcm"], progress=False)
    assert body["task"] == "regression" and body["probability"] == pytest.approx(row.probability, abs=1e-6)
    assert body["predicted_cac"] == pytest.approx(row.predicted_cac, rel=1e-5)
    assert body["agatston_band"] == AGATSTON_BANDS[int(agatston_band([body["predicted_cac"]])[0])]
    assert body["model"]["task"] == "regression"


# Identifying header fields of the real files (read from the files, not typed here).
LEAKY_FILES = [
    "pydicomdata_RG1_J2KI.dcm",
    "txv_siim_chest_pa.dcm",
    "highdicom_dx_image_CANINE_lateral_thorax.dcm",
]


def _identifying_values(path: Path) -> list[str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    values = []
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "InstitutionName"):
        value = str(ds.get(keyword, "") or "")
        values += [value] + [part for part in value.split("^") if len(part) >= 3]
    return [v for v in values if len(v) >= 3]


@pytest.mark.parametrize("name", LEAKY_FILES)
def test_no_identifying_header_field_in_any_answer_or_log(client, real_cxr_dir, caplog, capfd, name) -> None:
    data = _real(real_cxr_dir, name)
    secrets = _identifying_values(real_cxr_dir / name)
    assert secrets, "the test file should carry a patient name or id"
    caplog.set_level(logging.DEBUG)
    answers = [
        client.post("/predict", files=_upload(data)),
        client.post("/predict", files=_upload(data[: len(data) // 2])),  # truncated: an error answer
        client.post("/explain?method=gradcam", files=_upload(data)),
        client.post("/preview", files=_upload(data)),
        client.get("/health"),
    ]
    assert answers[0].status_code == 200 and answers[1].status_code == 422
    seen = "\n".join(a.text if "json" in a.headers["content-type"] else str(a.headers) for a in answers)
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    for secret in secrets:
        assert secret not in seen
        assert secret not in logged


# -------------------------------------------------------------------------- /preview, /explain, /


def test_preview_is_the_preprocessed_image_the_model_sees(client, run, real_cxr_dir) -> None:
    name = "panimg_cxr_CR-MONO1-10-chest.dcm"
    answer = client.post("/preview", files=_upload(_real(real_cxr_dir, name)))
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    shown = np.asarray(Image.open(io.BytesIO(answer.content)))
    expected = preprocess_read(read_image(real_cxr_dir / name), run.profile, run.image_size)
    assert shown.shape == (IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_array_equal(shown, expected)


@pytest.mark.parametrize("method", ["integrated-gradients", "gradcam"])
def test_explain_answers_an_overlay_png_with_the_score(client, real_cxr_dir, method) -> None:
    data = _real(real_cxr_dir, "txv_siim_chest_pa.dcm")
    answer = client.post(f"/explain?method={method}&steps=4", files=_upload(data))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(answer.content))
    assert overlay.format == "PNG" and min(overlay.size) > 200
    probability = client.post("/predict", files=_upload(data)).json()["probability"]
    assert float(answer.headers["x-cacxr-score"]) == pytest.approx(probability, abs=1e-5)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [("method=saliency", "integrated-gradients"), ("steps=0", "greater than or equal to 1")],
)
def test_explain_rejects_bad_parameters(client, real_cxr_dir, query, fragment) -> None:
    answer = client.post(f"/explain?{query}", files=_upload(_real(real_cxr_dir, "txv_siim_chest_pa.dcm")))
    assert answer.status_code == 422
    assert fragment in answer.text


def test_health_describes_the_model_and_the_limits(client, run_dir) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert (body["in_progress"], body["queued"]) == (0, 0)
    assert body["max_upload_bytes"] == 4 * 2**20
    model = body["model"]
    assert (model["run_name"], model["arch"], model["task"]) == (run_dir.name, "resnet18", "classification")
    assert model["folds"] == [0, 1] and model["image_size"] == IMAGE_SIZE
    assert model["threshold"] == 0.0 and 0.0 <= model["decision_threshold"] <= 1.0
    assert model["cacxr_version"] == cacxr.__version__


def test_one_fold_is_described_as_another_model_version(client, run_dir) -> None:
    ensemble = client.get("/health").json()["model"]
    single = TestClient(create_app(load_run(run_dir, fold=1))).get("/health").json()["model"]
    assert single["folds"] == [1] and single["run_name"] == ensemble["run_name"]
    assert len(single["run_id"]) == len(ensemble["run_id"]) == 12
    assert single["run_id"] != ensemble["run_id"]
    assert (
        ensemble["run_id"]
        == TestClient(create_app(load_run(run_dir))).get("/health").json()["model"]["run_id"]
    )


def test_openapi_schema_documents_the_upload_and_the_answers(client) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/preview", "/explain", "/health"} <= set(schema["paths"])
    predict = schema["paths"]["/predict"]["post"]
    upload = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["properties"]["file"]["format"] == "binary" and upload["required"] == ["file"]
    assert {"200", "400", "413", "415", "422"} <= set(predict["responses"])
    assert "probability" in schema["components"]["schemas"]["Prediction"]["properties"]
    assert client.get("/docs").status_code == 200


def test_page_and_its_assets_are_served_without_any_outside_address(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="file"' in page.text and "/static/app.js" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        answer = client.get(asset)
        assert answer.status_code == 200 and len(answer.text) > 500
        assert "http://" not in answer.text and "https://" not in answer.text
    assert "http://" not in page.text and "https://" not in page.text


# ------------------------------------------------------------------------------- request-level gates


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"content": b"{}", "headers": {"content-type": "application/json"}}, 415, "multipart/form-data"),
        ({"files": {"image": ("a.png", b"\x89PNG", "image/png")}}, 400, "no file field named 'file'"),
        (
            {
                "content": b"--xyz\r\nnot a part",
                "headers": {"content-type": "multipart/form-data; boundary=q"},
            },
            400,
            "",
        ),
    ],
    ids=["not multipart", "no file field", "malformed multipart"],
)
def test_requests_that_are_not_an_upload_are_refused(client, kwargs, status, fragment) -> None:
    answer = client.post("/predict", **kwargs)
    assert answer.status_code == status, answer.text
    assert fragment in answer.json()["detail"]


class _Counting:
    """An ASGI receive() that yields ``chunk``-byte pieces of an endless body and counts the calls."""

    def __init__(self, chunk: int, head: bytes = b"") -> None:
        self.calls = 0
        self.chunk = chunk
        self.head = head

    async def __call__(self) -> dict:
        self.calls += 1
        if self.calls > 2000:  # a runaway reader: end the body rather than hang the test
            return {"type": "http.request", "body": b"", "more_body": False}
        body = self.head if self.calls == 1 and self.head else b"\0" * self.chunk
        return {"type": "http.request", "body": body, "more_body": True}


def _asgi_post(app, receive, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST /predict straight through the ASGI interface; returns (status, body)."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    anyio.run(app, scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_an_endless_upload_is_stopped_while_streaming(run) -> None:
    limit, chunk = 256 * KB, 64 * KB
    app = create_app(run, max_upload_bytes=limit)
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="huge.dcm"\r\n\r\n'
    receive = _Counting(chunk, head)
    status, body = _asgi_post(app, receive, {"content-type": "multipart/form-data; boundary=b"})
    assert status == 413
    assert b"huge.dcm: upload above the limit of 256 KB" in body
    # Limit + multipart slack (64 KB) is 5 chunks: the reader must stop right after, not at the end.
    assert receive.calls <= (limit + 64 * KB) // chunk + 2


def test_a_declared_oversize_length_is_refused_before_reading(run) -> None:
    app = create_app(run, max_upload_bytes=256 * KB)
    receive = _Counting(64 * KB)
    headers = {"content-type": "multipart/form-data; boundary=b", "content-length": str(10**9)}
    status, body = _asgi_post(app, receive, headers)
    assert status == 413 and b"above the limit of 256 KB (refused before reading it)" in body
    assert receive.calls == 0


def test_uploads_live_in_a_temporary_folder_removed_after_each_request(
    run, real_cxr_dir, tmp_path, monkeypatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    seen: list[list[str]] = []

    class Watching(RunModel):
        def predict(self, image, meta=None):
            seen.append([str(p.relative_to(scratch)) for p in scratch.rglob("*")])
            return super().predict(image)

    small = TestClient(create_app(Watching(run), max_upload_bytes=600 * KB))
    assert (
        small.post("/predict", files=_upload(_real(real_cxr_dir, "txv_siim_chest_pa.dcm"))).status_code == 200
    )
    assert small.post("/predict", files=_upload(b"junk" * 100)).status_code == 415
    assert (
        small.post("/predict", files=_upload(_real(real_cxr_dir, "pydicomdata_RG1_J2KI.dcm"))).status_code
        == 413
    )
    (during,) = seen
    assert len(during) == 2 and during[0].startswith("cacxr-upload-") and during[1].endswith("/upload")
    assert list(scratch.iterdir()) == []


# ----------------------------------------------------------------------- a real server (uvicorn)


class _Gated(RunModel):
    """A run whose predictions wait for a signal: a stand-in for a slow model."""

    def __init__(self, run) -> None:
        super().__init__(run)
        self.go = threading.Event()

    def predict(self, image, meta=None):
        assert self.go.wait(30), "the test never released the prediction"
        return super().predict(image)


def test_health_answers_while_slow_predictions_queue(run, real_cxr_dir) -> None:
    model = _Gated(run)
    data = _real(real_cxr_dir, "txv_siim_chest_pa.dcm")
    with serve_in_background(create_app(model, worker_threads=1)) as url:
        assert url.startswith("http://127.0.0.1:")
        answers: list[httpx.Response] = []

        def post() -> None:
            answers.append(httpx.post(f"{url}/predict", files=_upload(data), timeout=60))

        threads = [threading.Thread(target=post) for _ in range(3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        health = httpx.get(f"{url}/health").json()
        while (health["in_progress"], health["queued"]) != (1, 2) and time.monotonic() < deadline:
            time.sleep(0.05)
            health = httpx.get(f"{url}/health").json()
        assert (health["in_progress"], health["queued"]) == (1, 2)
        start = time.perf_counter()
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        assert time.perf_counter() - start < 1.0  # not stuck behind the model
        assert answers == []  # nobody was answered before the model was released
        model.go.set()
        for thread in threads:
            thread.join(60)
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert len({a.json()["probability"] for a in answers}) == 1


def test_a_real_server_refuses_an_oversize_upload(run, real_cxr_dir) -> None:
    with serve_in_background(create_app(run, max_upload_bytes=64 * KB)) as url:
        data = _real(real_cxr_dir, "txv_siim_chest_pa.dcm")  # 124 KB
        answer = httpx.post(f"{url}/predict", files=_upload(data, "siim.dcm"), timeout=30)
        assert answer.status_code == 413
        assert "above the limit of 64 KB" in answer.json()["detail"]
        assert httpx.get(f"{url}/health").status_code == 200


# ---------------------------------------------------------------------------------- command line


def test_serve_flags_and_their_defaults() -> None:
    args = build_parser("serve").parse_args(["serve", "RUN"])
    assert (args.run_dir, args.host, args.port, args.max_upload_mb) == ("RUN", "127.0.0.1", 8000, 50.0)
    assert (args.fold, args.workers_threads) == (None, 2)
    args = build_parser("serve").parse_args(
        [
            "serve",
            "R",
            "--host",
            "0.0.0.0",
            "--port",
            "9",
            "--max-upload-mb",
            "5",
            "--fold",
            "1",
            "--workers-threads",
            "3",
        ]
    )
    assert (args.host, args.port, args.max_upload_mb, args.fold, args.workers_threads) == (
        "0.0.0.0",
        9,
        5.0,
        1,
        3,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-upload-mb", "0"], "--max-upload-mb must be positive"),
        (["--workers-threads", "0"], "--workers-threads must be at least 1"),
        (["--port", "70000"], "--port must be between 0 and 65535"),
    ],
)
def test_serve_refuses_bad_options(run_dir, capsys, extra, message) -> None:
    assert main(["serve", str(run_dir), *extra]) == 2
    assert message in capsys.readouterr().err


def test_serve_refuses_a_port_in_use(run_dir, capsys) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", str(run_dir), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_serve_command_runs_until_interrupted(run_dir, real_cxr_dir) -> None:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "cacxr", "serve", str(run_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert health.json()["model"]["run_name"] == run_dir.name
        name = "txv_siim_chest_pa.dcm"
        answer = httpx.post(
            f"http://127.0.0.1:{port}/predict", files=_upload(_real(real_cxr_dir, name)), timeout=60
        )
        assert answer.status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert f"http://127.0.0.1:{port}/" in output
    for secret in _identifying_values(real_cxr_dir / name):
        assert secret not in output


def test_missing_fastapi_gives_the_install_hint(run, monkeypatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real_find_spec(name, *a)
    )
    with pytest.raises(CacxrError, match=r"pip install 'cacxr\[serve\]'"):
        create_app(run)
