"""Hostile inputs (issue 13): decompression bombs, overwrites, FIFOs and device links, writes under DATA.

Every hostile file is built here in tmp_path (a few KB each) and sent through the library, the command
line and the service's TestClient; peak memory is measured in a subprocess where it matters.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from cacxr.cli import main
from cacxr.core import file_kind
from cacxr.imaging import read_header, read_image
from cacxr.imaging.codestream import CodestreamError, check_codestream, declared_size
from cacxr.ingest import read_manifest
from cacxr.ingest.manifest import read_excluded
from cacxr.serving import create_app

SRC = Path(__file__).resolve().parents[1] / "src"
HUGE = (60000, 60000)  # 3.6 G pixels: tens of GB once decoded


# ------------------------------------------------------------------------------------------ builders


def _jpeg(rows: int = 64, cols: int = 64, declare: tuple[int, int] | None = None) -> bytes:
    """A real baseline JPEG; ``declare`` rewrites the size in its SOF0 frame header."""
    buf = io.BytesIO()
    Image.fromarray((np.arange(rows * cols) % 251).astype(np.uint8).reshape(rows, cols)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    if declare:
        sof = data.find(b"\xff\xc0")
        struct.pack_into(">HH", data, sof + 5, *declare)
    return bytes(data)


def _jpeg_ls(rows: int, cols: int) -> bytes:
    """The start of a JPEG-LS codestream: SOI, SOF55 (P=8, one component), then a scan header."""
    sof55 = b"\xff\xf7" + struct.pack(">HBHHB", 11, 8, rows, cols, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof55 + b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00" + bytes(64) + b"\xff\xd9"


def _j2k(rows: int, cols: int) -> bytes:
    """The start of a JPEG 2000 codestream: SOC and a SIZ segment for one 8-bit component."""
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, cols, rows, 0, 0, cols, rows, 0, 0, 1) + b"\x07\x01\x01"
    return b"\xff\x4f\xff\x51" + siz + b"\xff\x93" + bytes(64) + b"\xff\xd9"


def _png(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose IHDR declares width x height 8-bit grey pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(width + 1)))
        + chunk(b"IEND", b"")
    )


def _dataset(rows: int = 64, cols: int = 64, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition = "DX", "PA"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return ds


def _encapsulated(path: Path, syntax: str, codestream: bytes, rows: int = 64, cols: int = 64) -> Path:
    ds = _dataset(rows, cols, syntax)
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def _native(path: Path, rows: int = 64, cols: int = 64) -> Path:
    ds = _dataset(rows, cols)
    ds.PixelData = (np.arange(rows * cols) % 256).astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _bombs(folder: Path) -> dict[str, Path]:
    """Every decompression bomb of the issue, each a few KB: name -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "dicom-jpeg": _encapsulated(folder / "jpeg.dcm", JPEGBaseline8Bit, _jpeg(declare=HUGE)),
        "dicom-jpeg-ls": _encapsulated(folder / "jpegls.dcm", JPEGLSLossless, _jpeg_ls(*HUGE)),
        "dicom-jpeg2000": _encapsulated(folder / "j2k.dcm", JPEG2000Lossless, _j2k(*HUGE)),
        "png": folder / "bomb.png",
        "png-pillow-limit": folder / "huge.png",
        "jpeg": folder / "bomb.jpg",
    }
    files["png"].write_bytes(_png(8000, 8000))  # 64 M pixels: above cacxr's limit, below Pillow's
    files["png-pillow-limit"].write_bytes(_png(*HUGE))
    files["jpeg"].write_bytes(_jpeg(declare=(9000, 9000)))
    return files


# ------------------------------------------------------------------------------- 1. decompression bombs


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_jpeg(48, 80), ("jpeg", 48, 80)),
        (_jpeg_ls(300, 200), ("jpeg-ls", 300, 200)),
        (_j2k(1000, 700), ("jpeg2000", 1000, 700)),
        (_png(640, 480), ("png", 480, 640)),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + struct.pack(">I4s", 8 + len(_j2k(5, 6)), b"jp2c") + _j2k(5, 6),
         ("jpeg2000", 5, 6)),
    ],
    ids=["jpeg", "jpeg-ls", "jpeg2000", "png", "jp2"],
)  # fmt: skip
def test_declared_size_is_read_from_the_codestream(data: bytes, expected: tuple[str, int, int]) -> None:
    size = declared_size(data)
    assert (size.kind, size.rows, size.cols) == expected


def test_codestream_checks_limit_and_agreement() -> None:
    with pytest.raises(CodestreamError, match="declares 60000x60000 pixels, above the limit") as bomb:
        check_codestream(_jpeg(declare=HUGE), 50_000_000, (64, 64))
    assert bomb.value.reason == "too_large"
    with pytest.raises(CodestreamError, match="declares 64x128 pixels but the header says 64x64") as lie:
        check_codestream(_jpeg(declare=(128, 64)), 50_000_000, (64, 64))
    assert lie.value.reason == "unreadable"
    with pytest.raises(CodestreamError, match="truncated") as cut:
        check_codestream(_jpeg()[:12], 50_000_000)
    assert cut.value.reason == "unreadable"
    assert check_codestream(b"not a codestream", 10) is None


def test_bombs_are_refused_too_large_by_every_reader(tmp_path: Path) -> None:
    for name, path in _bombs(tmp_path).items():
        result = read_image(path)
        assert (result.reason, result.image) == ("too_large", None), (name, result.detail)
        assert str(path) in result.detail
        if name.startswith("dicom"):  # the header read (ingest's first pass) already sees it
            assert read_header(path).reason == "too_large", name


def test_codestream_must_agree_with_rows_and_columns(tmp_path: Path) -> None:
    path = _encapsulated(tmp_path / "lie.dcm", JPEGBaseline8Bit, _jpeg(declare=(128, 64)))
    result = read_image(path)
    assert result.reason == "unreadable"
    assert "declares 64x128 pixels but the header says 64x64" in result.detail
    honest = read_image(_encapsulated(tmp_path / "ok.dcm", JPEGBaseline8Bit, _jpeg()))
    assert honest.ok and honest.image.shape == (64, 64)


def test_deflated_zlib_bomb_is_refused(tmp_path: Path) -> None:
    ds = _dataset(syntax=DeflatedExplicitVRLittleEndian)
    ds.add_new(0x00091010, "OB", bytes(40 * 2**20))  # a private element: 40 MB of zeros, ~40 KB deflated
    ds.PixelData = bytes(64 * 64)
    ds.save_as(tmp_path / "zip.dcm", enforce_file_format=True)
    assert (tmp_path / "zip.dcm").stat().st_size < 100_000
    for reader in (read_header, read_image):
        result = reader(tmp_path / "zip.dcm", max_pixels=1_000_000)  # inflated limit: 4 MB + 16 MB
        assert result.reason == "too_large", result.detail
    del ds[0x00091010]  # the same file without the padding: an ordinary deflated image reads fine
    ds.PixelData = (np.arange(64 * 64) % 251).astype(np.uint8).tobytes()  # with contrast (a blank one is refused)
    ds.save_as(tmp_path / "small.dcm", enforce_file_format=True)
    small = read_image(tmp_path / "small.dcm", max_pixels=1_000_000)
    assert small.ok and small.image.shape == (64, 64), small.detail


def test_bomb_memory_is_bounded_in_a_subprocess(tmp_path: Path) -> None:
    """Peak resident memory of reading every bomb (header and image) stays far from a decode's GBs.

    The subprocess's address space is capped too, so that a regression fails this test (MemoryError,
    not the size check's message) instead of taking the machine's memory.
    """
    bombs = _bombs(tmp_path)
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))\n"
        "from cacxr.imaging import read_header, read_image\n"
        "for path in sys.argv[1:]:\n"
        "    for result in (read_header(path), read_image(path)):\n"
        "        print(result.reason, '|', result.detail)\n"
        # VmHWM: this process's own peak (ru_maxrss would include the forking pytest's)
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(int(hwm.split()[1]) // 1024)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, bombs.values())],
        capture_output=True, text=True, timeout=120, env=env, check=True,
    )  # fmt: skip
    *lines, peak_mb = done.stdout.strip().split("\n")
    images = lines[1::2]  # read_image's line for each bomb
    assert len(images) == len(bombs)
    for line in images:
        assert line.startswith("too_large |") and "above the limit" in line, line
    assert int(peak_mb) < 400, f"peak memory {peak_mb} MB"


def test_predict_cli_lists_bombs_as_too_large(run_dir: Path, tmp_path: Path, capsys) -> None:
    bombs = _bombs(tmp_path / "in")
    code = main(
        ["predict", str(run_dir), str(tmp_path / "in"), "--out", str(tmp_path / "p.csv"), "--no-progress"]
    )
    assert code == 2  # nothing could be scored, but every input has its row
    with open(tmp_path / "p.csv", newline="") as fp:
        errors = {Path(row["input"]).name: row["error"] for row in csv.DictReader(fp)}
    assert set(errors) == {path.name for path in bombs.values()}
    for name, error in errors.items():
        assert error.startswith("too_large:") and "above the limit" in error, (name, error)
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def client(run) -> TestClient:
    return TestClient(create_app(run, explain_steps=2))


@pytest.mark.parametrize("endpoint", ["/predict", "/preview"])
def test_service_refuses_bombs_with_413(client: TestClient, tmp_path: Path, endpoint: str) -> None:
    for name, path in _bombs(tmp_path).items():
        answer = client.post(
            endpoint, files={"file": (path.name, path.read_bytes(), "application/octet-stream")}
        )
        assert answer.status_code == 413, (name, answer.text)
        assert path.name in answer.json()["detail"]
        assert str(tmp_path) not in answer.json()["detail"]  # never the server's paths
    assert client.get("/health").status_code == 200


def test_service_refuses_a_lying_codestream_with_422(client: TestClient, tmp_path: Path) -> None:
    path = _encapsulated(tmp_path / "lie.dcm", JPEGBaseline8Bit, _jpeg(declare=(128, 64)))
    answer = client.post("/predict", files={"file": ("lie.dcm", path.read_bytes(), "application/dicom")})
    assert answer.status_code == 422
    assert "lie.dcm: unreadable" in answer.json()["detail"]


@pytest.mark.timeout(60)
def test_stalled_upload_is_answered_408_in_time(run) -> None:
    from cacxr.serving.server import serve_in_background

    with serve_in_background(create_app(run, read_timeout_s=1.0)) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.dcm"\r\n\r\nabc'
        head = (
            f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {len(body) + 5000}\r\n\r\n"
        ).encode()
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            started = time.monotonic()
            sock.sendall(head + body)  # then nothing: 5000 promised bytes never come
            answer = sock.recv(4096).decode("latin-1")
            waited = time.monotonic() - started
            while "stalled" not in answer and (more := sock.recv(4096)):  # the body may come apart
                answer += more.decode("latin-1")
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "stalled" in answer
        assert waited < 10
        import httpx

        assert httpx.get(f"{url}/health", timeout=5).status_code == 200


# ------------------------------------------------------------------------------------- 2. overwrites


def _one_line_refusal(capsys, path: Path) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and "--overwrite" in err and "Traceback" not in err
    return err


def test_predict_and_export_never_replace_files(run_dir: Path, tmp_path: Path, capsys) -> None:
    image = _native(tmp_path / "img.dcm")
    own = run_dir / "predictions.csv"
    before = own.read_bytes()
    assert main(["predict", str(run_dir), str(image), "--out", str(own), "--no-progress"]) == 2
    _one_line_refusal(capsys, own)
    assert own.read_bytes() == before
    metrics = run_dir / "metrics.json"
    before = metrics.read_bytes()
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(metrics)]) == 2
    _one_line_refusal(capsys, metrics)
    assert metrics.read_bytes() == before
    other = tmp_path / "scores.csv"
    other.write_text("mine\n")
    assert main(["predict", str(run_dir), str(image), "--out", str(other), "--no-progress"]) == 2
    assert other.read_text() == "mine\n"
    assert (
        main(["predict", str(run_dir), str(image), "--out", str(other), "--overwrite", "--no-progress"]) == 0
    )
    assert "img.dcm" in other.read_text()


def test_explain_out_existing_file_is_a_clean_refusal(run_dir: Path, tmp_path: Path, capsys) -> None:
    image = _native(tmp_path / "img.dcm")
    for existing in (tmp_path / "notes.txt", tmp_path / "overlay.png"):
        existing.write_text("mine")
        code = main(
            ["explain", str(run_dir), str(image), "--out", str(existing), "--steps", "1", "--no-progress"]
        )
        assert code == 2
        err = capsys.readouterr().err
        assert str(existing) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert existing.read_text() == "mine"


def test_ingest_never_replaces_an_earlier_ingest(cohort: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ingest"
    assert (
        main(
            ["ingest", str(cohort), "--out", str(out), "--workers", "1", "--no-progress", "--no-decode-check"]
        )
        == 0
    )
    before = (out / "manifest.csv").read_bytes()
    capsys.readouterr()
    assert main(["ingest", str(cohort), "--out", str(out), "--site", "external", "--no-progress"]) == 2
    _one_line_refusal(capsys, out / "manifest.csv")
    assert (out / "manifest.csv").read_bytes() == before


# --------------------------------------------------------------- 3. regular files only, 4. DATA untouched


def _small_cohort(folder: Path) -> Path:
    from cacxr.synth import make_cohort

    make_cohort(folder, 4, external=0, seed=3, size=64, faults=False, progress=False, workers=1)
    return folder


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.timeout(120)  # a regression would block on the FIFO forever: fail instead of hanging
def test_ingest_lists_fifos_and_device_links_without_opening_them(tmp_path: Path) -> None:
    data = _small_cohort(tmp_path / "data")
    patient = next(p for p in sorted(data.iterdir()) if p.is_dir())
    os.mkfifo(patient / "rx" / "pipe.dcm")
    (patient / "rx" / "zero.dcm").symlink_to("/dev/null" if not Path("/dev/zero").exists() else "/dev/zero")
    (patient / "rx" / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    _encapsulated(patient / "rx" / "bomb.dcm", JPEGBaseline8Bit, _jpeg(declare=HUGE))
    before = _listing(data)
    summary = main(["ingest", str(data), "--out", str(tmp_path / "out"), "--workers", "1", "--no-progress"])
    assert summary == 0
    rows = {Path(r.path).name: r for r in read_excluded(tmp_path / "out" / "excluded.csv")}
    assert rows["pipe.dcm"].reason == "not_regular_file" and "FIFO" in rows["pipe.dcm"].detail
    assert rows["zero.dcm"].reason == "not_regular_file" and "character device" in rows["zero.dcm"].detail
    assert rows["gone.dcm"].reason == "not_regular_file" and "broken" in rows["gone.dcm"].detail
    assert rows["bomb.dcm"].reason == "too_large" and "60000x60000" in rows["bomb.dcm"].detail
    assert len(read_manifest(tmp_path / "out" / "manifest.csv")) == 4
    assert _listing(data) == before
    assert file_kind(patient / "rx" / "pipe.dcm") == "a FIFO (named pipe)"


@pytest.mark.timeout(60)
def test_predict_skips_a_fifo_given_explicitly(run_dir: Path, tmp_path: Path, capsys) -> None:
    os.mkfifo(tmp_path / "pipe.dcm")
    (tmp_path / "in").mkdir()
    os.mkfifo(tmp_path / "in" / "pipe2.dcm")
    (tmp_path / "in" / "zero.dcm").symlink_to("/dev/zero")
    image = _native(tmp_path / "in" / "img.dcm")
    out_csv = tmp_path / "p.csv"
    args = ["predict", str(run_dir), str(tmp_path / "pipe.dcm"), str(tmp_path / "in"), "--out", str(out_csv)]
    assert main([*args, "--no-progress"]) == 0
    text = out_csv.read_text()
    for name in ("pipe.dcm", "pipe2.dcm", "zero.dcm"):
        line = next(row for row in text.splitlines() if f"{name}," in row)
        assert "not_regular_file" in line, line
    assert image.name in text


def test_nothing_is_written_under_data(tmp_path: Path, capsys) -> None:
    data = _small_cohort(tmp_path / "data")
    assert main(["ingest", str(data), "--out", str(tmp_path / "ing"), "--workers", "1", "--no-progress"]) == 0
    before = _listing(data)
    manifest = tmp_path / "ing" / "manifest.csv"
    capsys.readouterr()
    assert main(["preprocess", str(manifest), "--out", str(data / "store"), "--image-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "may not be inside the data folder" in err and len(err.strip().splitlines()) == 1
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--store", str(data / "cache" / "store")]
    assert (
        main([*args, "--task", "classification", "--epochs", "1", "--kfold", "2", "--image-size", "32"]) == 2
    )
    assert "may not be inside the data folder" in capsys.readouterr().err
    args = [
        "train",
        str(data),
        "--task",
        "classification",
        "--out",
        str(tmp_path / "run2"),
        "--image-size",
        "32",
    ]
    assert main([*args, "--feature-cache-dir", str(data / "features"), "--store", str(tmp_path / "s")]) == 2
    assert "the feature cache (--feature-cache-dir) may not be inside" in capsys.readouterr().err
    assert main(["stats", str(data), "--out", str(data / "stats")]) == 2
    assert "the stats folder (--out) may not be inside" in capsys.readouterr().err
    assert _listing(data) == before
    # stats never replaces an earlier description either
    assert main(["stats", str(data), "--out", str(tmp_path / "stats")]) == 0
    first = (tmp_path / "stats" / "stats.json").read_bytes()
    capsys.readouterr()
    assert main(["stats", str(manifest), "--out", str(tmp_path / "stats")]) == 2
    _one_line_refusal(capsys, tmp_path / "stats" / "stats.md")
    assert (tmp_path / "stats" / "stats.json").read_bytes() == first
    assert main(["stats", str(manifest), "--out", str(tmp_path / "stats"), "--overwrite"]) == 0


# ------------------------------------------------------------------------- 5. headerless DICOM, 6. small


def test_headerless_dataset_starting_with_a_group_length_is_dicom(tmp_path: Path, client: TestClient) -> None:
    ds = _dataset()
    ds.PixelData = (np.arange(64 * 64) % 256).astype(np.uint8).tobytes()
    del ds.file_meta
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    body = buf.getvalue()
    end = 0  # pydicom drops group lengths on write: prepend (0008,0000) UL as ACR-NEMA-style exports do
    while struct.unpack_from("<H", body, end)[0] == 0x0008:
        end += 8 + struct.unpack_from("<I", body, end + 4)[0]
    path = tmp_path / "IM0001"
    path.write_bytes(struct.pack("<HHII", 0x0008, 0x0000, 4, end) + body)
    raw = path.read_bytes()
    assert raw[:4] == b"\x08\x00\x00\x00" and raw[128:132] != b"DICM"
    for reader in (read_header, read_image):
        result = reader(path)
        assert result.ok, result.detail
        assert result.meta.modality == "DX"
    answer = client.post("/predict", files={"file": ("IM0001", raw, "application/octet-stream")})
    assert answer.status_code == 200, answer.text
    assert answer.json()["format"] == "dicom"


def test_truncated_jpeg_dicom_is_unreadable(tmp_path: Path) -> None:
    whole = _encapsulated(tmp_path / "whole.dcm", JPEGBaseline8Bit, _jpeg()).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[: len(whole) - 200])
    result = read_image(cut)
    assert result.reason == "unreadable", result.detail
    assert "truncated" in result.detail


def test_threshold_nan_names_the_real_problem(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "train",
            str(tmp_path),
            "--task",
            "classification",
            "--out",
            str(tmp_path / "run"),
            "--threshold",
            "nan",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "--threshold must be a number >= 0 (got nan" in err
    assert "negative" not in err


def test_damaged_store_entry_is_rebuilt_and_logged(tmp_path: Path, caplog) -> None:
    from cacxr.ingest import ManifestRow
    from cacxr.pixels import build_store

    rows = [
        ManifestRow(
            patient_id=f"P{i}", path=str(_native(tmp_path / f"P{i}.dcm")), site="internal", cac_score=0.0
        )
        for i in range(2)
    ]
    store = build_store(rows, tmp_path / "store", image_size=32, workers=1, progress=False)
    entry = next((tmp_path / "store" / "entries").glob("P0-*.npy"))
    data = bytearray(entry.read_bytes())
    data[-1] ^= 0xFF
    entry.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="cacxr.pixels.build"):
        store = build_store(rows, tmp_path / "store", image_size=32, workers=1, progress=False)
    assert store.summary["corrupt"] == 1
    assert any("damaged store entry of patient P0" in r.getMessage() for r in caplog.records)


def test_resume_removes_a_killed_runs_temporary_checkpoint(cohort: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from cacxr.config import TrainConfig
    from cacxr.training import train_run

    config = TrainConfig(
        task="classification", data=str(cohort), out=str(tmp_path / "run"), arch="resnet18", finetune="head",
        epochs=1, kfold=2, fold=0, image_size=32, seed=1, batchsize=8, viz=False, workers=1, num_threads=1,
        progress=False, store=str(tmp_path / "store"),
    )  # fmt: skip
    train_run(config)
    leftover = tmp_path / "run" / "fold_1" / ".checkpoint.pt.k1ll3d.tmp"  # what SIGKILL mid-save leaves
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"half a checkpoint")
    train_run(replace(config, fold=1, resume=True))
    assert not leftover.exists()
    assert (tmp_path / "run" / "fold_1").is_dir()


# ------------------------------------------------------------------------------------- 7. decoders


@pytest.mark.parametrize(
    ("syntax", "plugin", "signed"),
    [
        (JPEGLSLossless, "pyjpegls", False),
        (JPEG2000Lossless, "imagecodecs", False),
        (JPEG2000Lossless, "imagecodecs", True),
        (RLELossless, "pylibjpeg", False),
    ],
    ids=["jpeg-ls", "jpeg2000", "jpeg2000-signed", "rle"],
)
def test_fastest_decoder_is_chosen_and_decodes_exactly(
    tmp_path: Path, syntax: str, plugin: str, signed: bool
) -> None:
    from cacxr.imaging.decoders import decoding_plugin

    rng = np.random.default_rng(0)
    pixels = rng.integers(-2048 if signed else 0, 2048 if signed else 4096, size=(48, 64))
    pixels = pixels.astype(np.int16 if signed else np.uint16)
    ds = _dataset(48, 64)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, int(signed)
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "plain.dcm", enforce_file_format=True)
    ds.compress(syntax, pixels)
    ds.save_as(tmp_path / "packed.dcm", enforce_file_format=True)
    assert decoding_plugin(syntax) == plugin
    packed, plain = read_image(tmp_path / "packed.dcm"), read_image(tmp_path / "plain.dcm")
    assert packed.ok, packed.detail
    np.testing.assert_array_equal(packed.image, plain.image)
    assert decoding_plugin(ExplicitVRLittleEndian) == ""  # uncompressed: pydicom's own path


def test_read_timeout_flag_and_its_check(run) -> None:
    from cacxr.cli import build_parser
    from cacxr.core import CacxrError

    assert build_parser("serve").parse_args(["serve", "R"]).read_timeout == 30.0
    assert build_parser("serve").parse_args(["serve", "R", "--read-timeout", "5"]).read_timeout == 5.0
    with pytest.raises(CacxrError, match="read_timeout_s must be positive"):
        create_app(run, read_timeout_s=0)


@pytest.mark.timeout(60)
def test_a_label_table_that_is_a_fifo_is_refused_not_opened(cohort: Path, tmp_path: Path, capsys) -> None:
    os.mkfifo(tmp_path / "labels.csv")
    args = ["ingest", str(cohort), "--out", str(tmp_path / "out"), "--labels", str(tmp_path / "labels.csv")]
    assert main([*args, "--workers", "1", "--no-progress"]) == 2
    assert "the label table is a FIFO (named pipe), not a regular file" in capsys.readouterr().err


def test_decoder_choice_falls_back_when_a_package_is_missing(monkeypatch) -> None:
    from cacxr.imaging import decoders

    monkeypatch.setitem(decoders.PREFERENCES, JPEGLSLossless, ("not-installed", "pylibjpeg"))
    assert decoders.decoding_plugin(JPEGLSLossless) == "pylibjpeg"
    monkeypatch.setitem(decoders.PREFERENCES, JPEGLSLossless, ("not-installed",))
    assert decoders.decoding_plugin(JPEGLSLossless) == ""  # pydicom's own choice
