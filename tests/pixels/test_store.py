"""The image store: build, reopen, resume, rebuild what changed, detect damage, record failures."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

import cacxr.imaging
import cacxr.pixels.build
from cacxr.cli import main as cli_main
from cacxr.core import CacxrError
from cacxr.imaging import read_image
from cacxr.ingest import ManifestRow
from cacxr.ingest.manifest import write_manifest
from cacxr.pixels import PROFILES, ImageStore, build_store, preprocess_image

SIZE = 32


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2") -> Path:
    """A small 12-bit DX radiograph with a window (the header carries no identifying values)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 3000
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def pixels(seed: int, shape: tuple[int, int] = (60, 48)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    smooth = 2048 + 1200 * np.sin(x / (5 + seed)) * np.cos(y / 7)
    return np.clip(smooth + rng.normal(0, 40, shape), 0, 4095).astype(np.uint16)


@pytest.fixture
def cohort(tmp_path: Path) -> list[ManifestRow]:
    """Four patients, one DICOM each, under tmp_path/data."""
    rows = []
    for i in range(4):
        pid = f"CAC_{i:03d}"
        path = write_dicom(tmp_path / "data" / pid / "rx" / "IM-1.dcm", pixels(i))
        rows.append(ManifestRow(patient_id=pid, path=str(path), site="internal", cac_score=float(i)))
    return rows


def build(rows, out, **kwargs) -> ImageStore:
    kwargs = {"image_size": SIZE, "workers": 1, "progress": False} | kwargs
    return build_store(rows, out, **kwargs)


def counts(store: ImageStore) -> dict[str, int]:
    keys = ("reused", "built", "failed", "new", "changed", "corrupt", "retried")
    return {key: store.summary[key] for key in keys if store.summary[key]}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_build_reopen_get(cohort, tmp_path):
    store = build(cohort, tmp_path / "store")
    assert counts(store) == {"built": 4, "new": 4}
    reopened = ImageStore.open(tmp_path / "store")
    assert reopened.ids == [row.patient_id for row in cohort]
    assert (reopened.profile, reopened.profile_version, reopened.image_size) == ("seed", PROFILES["seed"].version, SIZE)
    assert reopened.failed == {}
    for row in cohort:
        image = reopened.get(row.patient_id)
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE)
        expected = preprocess_image(read_image(row.path).image, "seed", SIZE)
        np.testing.assert_array_equal(image, expected)
        # S * S bytes plus the 128-byte .npy header: 1.0001 MiB at S = 1024.
        assert reopened.entry_path(row.patient_id).stat().st_size == SIZE * SIZE + 128


def test_two_workers_build_the_same_entries(cohort, tmp_path):
    serial = build(cohort, tmp_path / "serial", workers=1)
    pooled = build(cohort, tmp_path / "pooled", workers=2)
    assert counts(pooled) == {"built": 4, "new": 4}
    for pid in serial.ids:
        np.testing.assert_array_equal(serial.get(pid), pooled.get(pid))


def test_resume_after_a_kill_builds_only_the_missing_entries(cohort, tmp_path, monkeypatch):
    # Files are read in worker processes; the interruption reaches this process as the first entry comes back.
    real_index_entry = cacxr.pixels.build.index_entry

    def interrupted(stem, sidecar):
        raise KeyboardInterrupt  # as Ctrl-C or a kill would interrupt the build

    monkeypatch.setattr(cacxr.pixels.build, "index_entry", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(cohort, tmp_path / "store")
    with pytest.raises(CacxrError, match="not a complete image store"):
        ImageStore.open(tmp_path / "store")
    monkeypatch.setattr(cacxr.pixels.build, "index_entry", real_index_entry)
    # The workers may have finished more entries before the pool stopped; the last two never started.
    for row in cohort[2:]:
        for entry in (tmp_path / "store" / "entries").glob(f"{row.patient_id}-*"):
            entry.unlink()
    # A SIGKILL in the middle of a write leaves a temporary file; the user's own files stay.
    leftover = tmp_path / "store" / "entries" / ".CAC_002-0000.npy.k1ll3d.tmp"
    leftover.write_bytes(b"half an image")
    (tmp_path / "store" / "notes.txt").write_text("mine")

    resumed = build(cohort, tmp_path / "store")
    assert counts(resumed) == {"reused": 2, "built": 2, "new": 2}
    assert resumed.ids == [row.patient_id for row in cohort]
    assert not leftover.exists()
    assert (tmp_path / "store" / "notes.txt").read_text() == "mine"


def test_half_manifest_then_full_builds_the_other_half(cohort, tmp_path):
    assert counts(build(cohort[:2], tmp_path / "store")) == {"built": 2, "new": 2}
    full = build(cohort, tmp_path / "store")
    assert counts(full) == {"reused": 2, "built": 2, "new": 2}
    assert counts(build(cohort, tmp_path / "store")) == {"reused": 4}


@pytest.mark.parametrize("change", ["new pixels", "touch"])
def test_changed_source_rebuilds_that_entry_only(cohort, tmp_path, change):
    before = build(cohort, tmp_path / "store")
    old_image = np.array(before.get("CAC_002"))
    source = Path(cohort[2].path)
    if change == "new pixels":
        write_dicom(source, pixels(9))
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    after = build(cohort, tmp_path / "store")
    assert counts(after) == {"reused": 3, "built": 1, "changed": 1}
    assert np.array_equal(after.get("CAC_002"), old_image) == (change == "touch")


@pytest.mark.parametrize(("profile", "size"), [("clahe", SIZE), ("xrv", SIZE), ("seed", 48)])
def test_changed_profile_or_size_rebuilds_everything(cohort, tmp_path, profile, size):
    build(cohort, tmp_path / "store")
    after = build(cohort, tmp_path / "store", profile=profile, image_size=size)
    assert counts(after) == {"built": 4, "changed": 4}
    reopened = ImageStore.open(tmp_path / "store")
    assert (reopened.profile, reopened.image_size) == (profile, size)
    expected = preprocess_image(read_image(cohort[0].path).image, profile, size)
    np.testing.assert_array_equal(reopened.get("CAC_000"), expected)


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10:] = bytes(255 - b for b in data[-10:])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_flip_bytes, "checksum mismatch"),
        (_truncate, "1052 bytes instead of 1152"),
        (Path.unlink, "file missing"),
    ],
)
def test_damaged_entry_is_detected_and_rebuilt(cohort, tmp_path, damage, problem):
    store = build(cohort, tmp_path / "store")
    good = np.array(store.get("CAC_001"))
    damage(store.entry_path("CAC_001"))

    reopened = ImageStore.open(tmp_path / "store")
    with pytest.raises(CacxrError, match=f"damaged image store entry for CAC_001 \\({problem}"):
        reopened.get("CAC_001")
    np.testing.assert_array_equal(reopened.get("CAC_000"), store.get("CAC_000"))

    rebuilt = build(cohort, tmp_path / "store")
    assert counts(rebuilt) == {"reused": 3, "built": 1, "corrupt": 1}
    np.testing.assert_array_equal(rebuilt.get("CAC_001"), good)


def test_lost_sidecar_rebuilds_the_entry(cohort, tmp_path):
    store = build(cohort, tmp_path / "store")
    store.entry_path("CAC_003").with_suffix(".json").write_text("{not json")
    assert counts(build(cohort, tmp_path / "store")) == {"reused": 3, "built": 1, "new": 1}


def test_unreadable_images_are_recorded_and_the_others_built(cohort, tmp_path):
    text = tmp_path / "data" / "CAC_900" / "rx" / "IM-1.dcm"
    text.parent.mkdir(parents=True)
    text.write_text("this is not a DICOM file\n")
    rows = [
        *cohort,
        ManifestRow(patient_id="CAC_900", path=str(text), site="internal", cac_score=0.0),
        ManifestRow(patient_id="CAC_901", path=str(tmp_path / "gone.dcm"), site="internal", cac_score=0.0),
    ]
    store = build(rows, tmp_path / "store")
    assert counts(store) == {"built": 4, "failed": 2, "new": 5}
    assert store.ids == [row.patient_id for row in cohort]
    assert set(store.failed) == {"CAC_900", "CAC_901"}
    assert store.failed["CAC_900"].startswith(f"{text}: unreadable")
    assert store.failed["CAC_901"].startswith(f"{tmp_path / 'gone.dcm'}: cannot read the file")
    assert store.summary["messages"][0].startswith(f"CAC_900: {text}: unreadable")
    with pytest.raises(CacxrError, match=f"CAC_900 has no stored image: {text}: unreadable"):
        ImageStore.open(tmp_path / "store").get("CAC_900")
    assert ImageStore.open(tmp_path / "store").failed == store.failed
    # A failure is retried on the next build; the images already stored are reused.
    assert counts(build(rows, tmp_path / "store")) == {"reused": 4, "failed": 2, "retried": 1}


def test_never_writes_outside_out_and_leaves_sources_alone(cohort, tmp_path):
    write_manifest(cohort, tmp_path / "manifest.csv")
    before = snapshot(tmp_path)
    build(tmp_path / "manifest.csv", tmp_path / "store", workers=2)
    after = snapshot(tmp_path)
    outside = {p: v for p, v in after.items() if not p.startswith(str(tmp_path / "store") + os.sep)}
    assert outside == before
    written = sorted(str(Path(p).relative_to(tmp_path / "store")) for p in after if p not in before)
    assert written[:3] == [".build.lock", "entries/CAC_000-83cebaea.json", "entries/CAC_000-83cebaea.npy"]
    assert written[-1] == "index.json"
    assert all(p.startswith("entries/CAC_") and p.endswith((".npy", ".json")) for p in written[1:-1])
    assert len(written) == 2 + 2 * len(cohort)


def test_concurrent_builds_of_one_store_take_turns(cohort, tmp_path):
    out = tmp_path / "store"
    out.mkdir()
    stores = []
    with open(out / ".build.lock", "a+b") as other_build:
        fcntl.flock(other_build, fcntl.LOCK_EX)
        waiting = threading.Thread(target=lambda: stores.append(build(cohort, out)))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and not list(out.glob("entries/*.npy"))
        fcntl.flock(other_build, fcntl.LOCK_UN)
    waiting.join(30)
    assert counts(stores[0]) == {"built": 4, "new": 4}


def test_index_lists_profile_size_and_checksums(cohort, tmp_path):
    build(cohort, tmp_path / "store")
    index = json.loads((tmp_path / "store" / "index.json").read_text())
    assert index["format"] == "cacxr-image-store"
    assert (index["profile"], index["profile_version"], index["image_size"]) == ("seed", PROFILES["seed"].version, SIZE)
    assert set(index["entries"]) == {row.patient_id for row in cohort}
    entry = index["entries"]["CAC_000"]
    assert entry["nbytes"] == SIZE * SIZE + 128 and isinstance(entry["crc32"], int)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("file", "exists and is not a folder"),
        ("foreign index", "is not a cacxr image store index"),
    ],
)
def test_refuses_an_out_it_does_not_own(cohort, tmp_path, setup, message):
    out = tmp_path / "out"
    if setup == "file":
        out.write_text("user data")
        victim = out
    else:
        out.mkdir()
        victim = out / "index.json"
        victim.write_text('{"mine": true}')
    content = victim.read_text()
    with pytest.raises(CacxrError, match=message):
        build(cohort, out)
    assert victim.read_text() == content


@pytest.mark.parametrize(
    ("rows", "message"),
    [([], "no manifest rows given"), ("missing.csv", "missing.csv: no such file")],
)
def test_bad_manifest_is_a_clear_error(tmp_path, rows, message):
    if isinstance(rows, str):
        rows = tmp_path / rows
    with pytest.raises(CacxrError, match=message):
        build(rows, tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_duplicate_patient_is_an_error(cohort, tmp_path):
    with pytest.raises(CacxrError, match="CAC_000 is listed twice"):
        build([*cohort, cohort[0]], tmp_path / "store")


def test_cli_builds_then_reuses(cohort, tmp_path, capsys):
    write_manifest(cohort, tmp_path / "manifest.csv")
    argv = ["preprocess", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / "store")]
    argv += ["--image-size", str(SIZE), "--workers", "1", "--no-progress", "--profile", "xrv"]
    assert cli_main(argv) == 0
    assert "4 images, profile xrv v1, 32 px, reduced decode; built 4 (4 new), reused 0, failed 0" in capsys.readouterr().out
    assert cli_main(argv) == 0
    assert "built 0, reused 4, failed 0" in capsys.readouterr().out
    assert ImageStore.open(tmp_path / "store").profile == "xrv"


def test_cli_reports_a_missing_manifest(tmp_path, capsys):
    assert cli_main(["preprocess", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "s")]) == 2
    assert "nope.csv: no such file" in capsys.readouterr().err


def test_open_a_folder_that_is_not_a_store(tmp_path):
    with pytest.raises(CacxrError, match="not a complete image store"):
        ImageStore.open(tmp_path)


def test_an_entry_over_the_workers_memory_cap_fails_alone(cohort, tmp_path, monkeypatch):
    """Every entry is read in a bounded worker (issue 21, item 21): one that exhausts it is one failed entry."""
    import hostile_files as hostile

    path = hostile.big_native(tmp_path / "big" / "rx.dcm")  # 64 MB as float32: over a 48 MiB cap
    rows = [*cohort, ManifestRow(patient_id="BIG", path=str(path), site="internal", cac_score=0.0)]
    monkeypatch.setenv("CACXR_DECODE_MEMORY_MB", "48")
    store = build(rows, tmp_path / "store", workers=2)
    assert counts(store) == {"built": 4, "new": 5, "failed": 1}
    assert store.ids == [row.patient_id for row in cohort]
    assert "too_large" in store.failed["BIG"] and "out of memory" in store.failed["BIG"]
