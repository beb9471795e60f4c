"""`cacxr ingest`: every file and label row ends in exactly one place, with the documented reason."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from cacxr.cli import main
from cacxr.core import CacxrError
from cacxr.ingest import ingest, read_manifest
from cacxr.ingest.manifest import EXCLUSION_REASONS, read_excluded

# Identifying values written into every test header: none may appear in any output.
PATIENT_NAME = "Rossi^Maria"
HEADER_ID = "MRN-88231-X"
BIRTH = "19440203"


def make_dicom(
    path: Path,
    *,
    view: str = "PA",
    modality: str = "DX",
    size: tuple[int, int] = (64, 64),
    frames: int = 1,
    pixels: bool = True,
    undecodable: bool = False,
    description: str = "",
    header_id: str = HEADER_ID,
) -> Path:
    """A small DICOM file with identifying header fields (Explicit VR LE, MONOCHROME2, 16 bits)."""
    rows, cols = size
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if undecodable else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = header_id
    ds.PatientBirthDate = BIRTH
    ds.PatientSex = "F"
    ds.Modality = modality
    if view is not None:
        ds.ViewPosition = view
    if description:
        ds.SeriesDescription = description
    if pixels:
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 8 if undecodable else 16
        ds.BitsStored = 8 if undecodable else 12
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if undecodable:  # a JPEG stream that is not JPEG: the header is fine, decoding fails
            ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0 this is not a jpeg stream" * 4])
        else:
            ramp = np.linspace(0, 4095, rows * cols * frames, dtype=np.uint16)
            ds.PixelData = ramp.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_db(path: Path, rows: list[tuple]) -> Path:
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE patient (id TEXT, cac_score REAL, sex TEXT, birth TEXT, rx_date TEXT, note TEXT)"
    )
    con.executemany("INSERT INTO patient (id, cac_score, sex, birth, rx_date) VALUES (?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    return path


def tree_checksum(root: Path) -> str:
    """sha256 over every path, its bytes and its mtime (and every folder), so any change shows."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        digest.update(os.path.relpath(folder, root).encode())
        for name in sorted(files):
            path = Path(folder, name)
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}|{stat.st_mtime_ns}|{stat.st_size}".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


# relative path -> (reason with --site internal, reason with --site all); "" = in manifest.csv
TREE: dict[str, tuple[str, str]] = {
    "CAC_001/rx/a_pa.dcm": ("", ""),
    "CAC_001/rx/b_lat.dcm": ("lateral_view", "lateral_view"),
    "CAC_001/rx/meta.dcm": ("no_pixel_data", "no_pixel_data"),
    "CAC_001/rx/junk.dcm": ("unreadable", "unreadable"),
    "CAC_001/rx/photo.png": ("unknown_view", "unknown_view"),  # an image export: a candidate without a view
    "CAC_001/ct/slice.dcm": ("not_radiograph", "not_radiograph"),
    "CAC_001/ct/meta.dcm": ("no_pixel_data", "no_pixel_data"),
    "CAC_002/rx/ap.dcm": ("extra_frontal", "extra_frontal"),
    "CAC_002/rx/pa.dcm": ("", ""),
    "CAC_003/rx/noview.dcm": ("", ""),  # only image, no ViewPosition: kept, flagged
    "CAC_004/rx/pa.dcm": ("no_label", "no_label"),  # its only label row is invalid
    "CAC_005/rx/pa.dcm": ("", ""),
    "CAC_005/rx/noview.dcm": ("unknown_view", "unknown_view"),
    "CAC_005/rx/truncated.dcm": ("unreadable", "unreadable"),  # header fine, pixel data cut short
    "CAC_006/rx/multi.dcm": ("multi_frame", "multi_frame"),
    "CAC_007/rx/broken_jpeg.dcm": ("unreadable", "unreadable"),
    "CAC_008/rx/pa_small.dcm": ("extra_frontal", "extra_frontal"),
    "CAC_008/rx/pa_large.dcm": ("", ""),
    "CAC_009/rx/pa.dcm": ("no_label", "no_label"),
    "CAC_010/rx/desc_lat.dcm": ("lateral_view", "lateral_view"),
    "CAC_010/rx/nn.dcm": ("", ""),
    "CAC_011/rx/mr.dcm": ("not_radiograph", "not_radiograph"),
    "XYZ_001/rx/pa.dcm": ("other_site", ""),
    "XYZ_002/rx/lat.dcm": ("lateral_view", "lateral_view"),
    "stray.dcm": ("no_label", "no_label"),
}

# label rows: (id, cac, sex, birth, rx_date)
LABELS = [
    ("CAC_1", 10, "M", "1950-01-10", "04.03.19"),  # folder CAC_001 (padding fix)
    ("CAC_002", 999, "F", "1950-01-10", "2019-03-04"),  # wrong row ...
    ("CAC_002_corr", 20, "F", "1950-01-10", "2019-03-04"),  # ... replaced
    ("CAC_003", 30, "m", "1950-01-10", "2019-03-04"),
    ("CAC_003", 31, "m", "1950-01-10", "2019-03-04"),  # duplicate
    ("CAC_004", None, "M", "1950-01-10", "2019-03-04"),  # invalid
    ("CAC_005", 50, "2", "10.01.50", "04.03.19"),
    ("CAC_006", 60, "F", "1950-01-10", "2019-03-04"),  # only a multi-frame file
    ("CAC_007", 70, "F", "1950-01-10", "2019-03-04"),  # only an undecodable file
    ("CAC_8", 80, "F", "1950-01-10", "2019-03-04"),
    ("cac_0010", 100, "", "", ""),
    ("CAC_011", 110, "F", "1950-01-10", "2019-03-04"),  # only an MR file
    ("CAC_099", 990, "F", "1950-01-10", "2019-03-04"),  # no folder at all
    ("XYZ_1", 5, "M", "1950-01-10", "2019-03-04"),
    ("XYZ_002", 6, "M", "1950-01-10", "2019-03-04"),  # only a lateral
]

# (label id, reason with --site internal, reason with --site all)
LABEL_REASONS = [
    ("CAC_002", "superseded_label", "superseded_label"),
    ("CAC_003", "duplicate_label", "duplicate_label"),
    ("CAC_004", "invalid_label", "invalid_label"),
    ("CAC_006", "label_without_image", "label_without_image"),
    ("CAC_007", "label_without_image", "label_without_image"),
    ("CAC_011", "label_without_image", "label_without_image"),
    ("CAC_099", "label_without_image", "label_without_image"),
    ("XYZ_1", "label_without_image", None),
    ("XYZ_002", "label_without_image", "label_without_image"),
]

EXPECTED_CAC = {"CAC_001": 10, "CAC_002": 20, "CAC_003": 30, "CAC_005": 50, "CAC_008": 80, "CAC_010": 100}


@pytest.fixture()
def cohort(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    special = {
        "b_lat.dcm": {"view": "LL"},
        "lat.dcm": {"view": "LATERALE"},
        "meta.dcm": {"pixels": False},
        "slice.dcm": {"modality": "CT", "view": ""},
        "ap.dcm": {"view": "AP", "size": (96, 96)},  # larger, but PA wins
        "noview.dcm": {"view": ""},
        "multi.dcm": {"frames": 3},
        "broken_jpeg.dcm": {"undecodable": True},
        "pa_small.dcm": {"size": (48, 64)},
        "pa_large.dcm": {"size": (64, 80)},
        "desc_lat.dcm": {"view": "", "description": "THORAX LAT"},
        "nn.dcm": {"view": "NN"},
        "mr.dcm": {"modality": "MR", "view": ""},
    }
    for rel in TREE:
        path = data / rel
        name = path.name
        if name == "junk.dcm":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("Patient list exported by hand, not DICOM\n" * 20)
        elif name == "truncated.dcm":
            make_dicom(path, size=(128, 128))
            path.write_bytes(path.read_bytes()[:-20000])
        elif name == "photo.png":
            from PIL import Image

            Image.fromarray(np.zeros((32, 32), np.uint8)).save(path)
        else:
            make_dicom(path, **special.get(name, {}))
    write_db(data / "site.db", LABELS)
    (data / "CAC_001" / "rx" / "notes.txt").write_text("scanner notes")
    (data / "README.md").write_text("cohort")
    return data


def _excluded_by_path(out: Path) -> dict[str, str]:
    return {row.path: row.reason for row in read_excluded(out / "excluded.csv") if row.path}


@pytest.mark.parametrize(("site", "column"), [("internal", 0), ("all", 1)])
def test_hand_built_tree(cohort: Path, tmp_path: Path, site: str, column: int) -> None:
    before = tree_checksum(cohort)
    out = tmp_path / f"out_{site}"
    summary = ingest(cohort, out, site=site, workers=1, progress=False, gate=False)
    assert tree_checksum(cohort) == before

    manifest = {row.patient_id: row for row in read_manifest(out / "manifest.csv")}
    excluded = _excluded_by_path(out)
    for rel, reasons in TREE.items():
        path = str((cohort / rel).absolute())
        expected = reasons[column]
        kept = [pid for pid, row in manifest.items() if row.path == path]
        if expected:
            assert excluded.get(path) == expected, rel
            assert not kept, rel
        else:
            assert kept and path not in excluded, rel
    # every DICOM candidate in exactly one of the two files
    listed = [row.path for row in manifest.values()] + list(excluded)
    assert sorted(listed) == sorted(str((cohort / rel).absolute()) for rel in TREE)

    label_rows = sorted((r.patient_id, r.reason) for r in read_excluded(out / "excluded.csv") if not r.path)
    assert label_rows == sorted((pid, reasons[column]) for pid, *reasons in LABEL_REASONS if reasons[column])

    expected_cac = dict(EXPECTED_CAC, **({"XYZ_001": 5} if site == "all" else {}))
    assert {pid: row.cac_score for pid, row in manifest.items()} == expected_cac
    assert manifest["CAC_003"].view_flag == "view_assumed_frontal"
    assert manifest["CAC_003"].view == ""
    assert {pid: row.view for pid, row in manifest.items() if pid != "CAC_003"} == {
        pid: ("NN" if pid == "CAC_010" else "PA") for pid in expected_cac if pid != "CAC_003"
    }
    assert (manifest["CAC_001"].sex, manifest["CAC_001"].age) == ("M", 69.0)  # label, two-digit rx_date
    assert (manifest["CAC_005"].sex, manifest["CAC_005"].age) == ("F", 69.0)  # 10.01.50 -> 1950
    assert manifest["CAC_010"].sex == "F" and math.isnan(manifest["CAC_010"].age)  # header sex fallback
    assert manifest["CAC_008"].rows * manifest["CAC_008"].cols == 64 * 80

    counts = {reason: n for reason, n in summary["counts"].items() if n}
    expected_counts: dict[str, int] = {}
    for reasons in [*TREE.values(), *(r[1:] for r in LABEL_REASONS)]:
        if reasons[column]:
            expected_counts[reasons[column]] = expected_counts.get(reasons[column], 0) + 1
    assert counts == expected_counts
    assert set(summary["counts"]) == set(EXCLUSION_REASONS)
    assert summary["ignored_files"] == 3  # site.db, notes.txt, README.md
    assert summary["n_patients"] == {
        "total": len(expected_cac),
        "internal": 6,
        "external": 1 if site == "all" else 0,
    }
    assert summary["view_assumed_frontal"] == 1
    assert summary["header_id_mismatch"] == len(TREE) - 3  # junk, png and the top-level file give none
    fixes = summary["id_fixes"]
    corr = {
        "fix": "corr",
        "label_id": "CAC_002_corr",
        "replaces": "CAC_002",
        "line": 2,
        "patient_id": "CAC_002",
    }
    assert corr in fixes
    assert {"fix": "padding", "label_id": "CAC_1", "patient_id": "CAC_001"} in fixes
    assert {"fix": "padding", "label_id": "cac_0010", "patient_id": "CAC_010"} in fixes
    assert {"fix": "padding", "label_id": "CAC_8", "patient_id": "CAC_008"} in fixes
    assert {"fix": "header_patient_id_ignored", "patient_id": "CAC_002", "files": 2} in fixes
    assert summary["labels"]["source"] == str((cohort / "site.db").absolute())
    assert summary["site"] == site and summary["rules"]
    assert summary["cacxr_version"]
    assert json.loads((out / "ingest.json").read_text()) == json.loads(json.dumps(summary))


def test_no_decode_check_keeps_undecodable_file(cohort: Path, tmp_path: Path) -> None:
    summary = ingest(cohort, tmp_path / "out", workers=1, decode_check=False, progress=False, gate=False)
    manifest = {row.patient_id: row for row in read_manifest(tmp_path / "out" / "manifest.csv")}
    assert manifest["CAC_007"].path.endswith("broken_jpeg.dcm")
    assert summary["decode_check"] is False


@pytest.mark.parametrize("name", ["broken_jpeg.dcm", "truncated.dcm"])
def test_undecodable_detail(cohort: Path, tmp_path: Path, name: str) -> None:
    ingest(cohort, tmp_path / "out", workers=1, progress=False, gate=False)
    rows = [r for r in read_excluded(tmp_path / "out" / "excluded.csv") if r.path.endswith(name)]
    assert [r.reason for r in rows] == ["unreadable"]
    assert rows[0].detail.startswith("pixel data cannot be decoded")


def test_stats_on_ingest_output(cohort: Path, tmp_path: Path) -> None:
    from cacxr.ingest import cohort_stats

    ingest(cohort, tmp_path / "out", workers=1, progress=False, gate=False)
    result = cohort_stats(tmp_path / "out", tmp_path / "stats")
    assert result["kind"] == "manifest"
    assert result["groups"]["all"]["n_patients"] == 6
    assert result["groups"]["all"]["cac_median"] == 40.0


def test_parallel_equals_serial(cohort: Path, tmp_path: Path) -> None:
    ingest(cohort, tmp_path / "serial", workers=1, progress=False, gate=False)
    ingest(cohort, tmp_path / "pool", workers=2, progress=False, gate=False)
    for name in ("manifest.csv", "excluded.csv"):
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "pool" / name).read_bytes()


def test_no_identifying_value_in_outputs(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        code = main(["-v", "ingest", str(cohort), "--out", str(out), "--workers", "1", "--no-progress", "--no-gate"])
    assert code == 0
    printed = capsys.readouterr()
    texts = [(out / name).read_text() for name in ("manifest.csv", "excluded.csv", "ingest.json")]
    texts += [printed.out, printed.err, caplog.text]
    for value in (PATIENT_NAME, "Rossi", HEADER_ID, BIRTH, "1944"):
        for text in texts:
            assert value not in text
    assert "patients kept: 6 (internal 6, external 0)" in printed.out
    assert "lateral_view 3" in printed.out
    assert "unreadable 3" in printed.out  # the PNG is an image export now (unknown_view)
    assert str(out / "manifest.csv") in printed.out


def test_labels_csv_option(cohort: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,cac_score,sex,age\nCAC_001,7,F,55\nCAC_2,0,M,60\n")
    summary = ingest(cohort, tmp_path / "out", labels=labels, workers=1, progress=False, gate=False)
    manifest = {
        r.patient_id: (r.cac_score, r.sex, r.age) for r in read_manifest(tmp_path / "out" / "manifest.csv")
    }
    assert manifest == {"CAC_001": (7.0, "F", 55.0), "CAC_002": (0.0, "M", 60.0)}
    assert summary["labels"]["format"] == "csv"
    assert summary["counts"]["label_without_image"] == 0


def _bad_data(kind: str, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    if kind == "missing":
        return data
    if kind == "bare":
        data.mkdir()
        return data
    if kind == "file":
        data.write_text("not a folder")
        return data
    data.mkdir()
    write_db(data / "site.db", [("CAC_001", 1, "M", "", "")])
    if kind == "no_dicom":
        (data / "CAC_001").mkdir()
        (data / "CAC_001" / "notes.txt").write_text("x")
    return data


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "DATA folder not found"),
        ("file", "DATA is a file, not a folder"),
        ("bare", "no image files found"),
        ("empty", "no image files found"),
        ("no_dicom", "no image files found"),
    ],
)
def test_bad_data(tmp_path: Path, kind: str, message: str) -> None:
    data = _bad_data(kind, tmp_path)
    with pytest.raises(CacxrError, match=message) as info:
        ingest(data, tmp_path / "out", workers=1, progress=False, gate=False)
    assert str(data) in str(info.value)
    assert not (tmp_path / "out" / "manifest.csv").exists()


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("none", "no labels found (site.db is not in DATA); pass --labels FILE"),
        ("missing.csv", "labels file not found"),
        ("no_score.csv", "lacks the column(s) cac_score"),
    ],
)
def test_bad_labels(tmp_path: Path, labels: str, message: str) -> None:
    data = tmp_path / "data"
    make_dicom(data / "CAC_001" / "rx" / "a.dcm")
    label_path = None if labels == "none" else tmp_path / labels
    if labels == "no_score.csv":
        label_path.write_text("patient_id,agatston\nCAC_001,3\n")
    with pytest.raises(CacxrError) as info:
        ingest(data, tmp_path / "out", labels=label_path, workers=1, progress=False, gate=False)
    assert message in str(info.value)


@pytest.mark.parametrize("inside", ["data", "data/CAC_001/out"])
def test_refuses_output_inside_data(cohort: Path, tmp_path: Path, inside: str) -> None:
    before = tree_checksum(cohort)
    with pytest.raises(CacxrError, match="may not be inside DATA"):
        ingest(cohort, tmp_path / inside, workers=1, progress=False, gate=False)
    assert tree_checksum(cohort) == before


def test_cli_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["ingest", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    assert "DATA folder not found" in capsys.readouterr().err


def test_excluded_csv_is_readable_by_csv(cohort: Path, tmp_path: Path) -> None:
    ingest(cohort, tmp_path / "out", workers=1, progress=False, gate=False)
    with (tmp_path / "out" / "excluded.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {row["reason"] for row in rows} <= set(EXCLUSION_REASONS)
    assert all(row["detail"] for row in rows)


# --------------------------------------------------------------------------- a synth cohort with every fault


@pytest.fixture(scope="module")
def synth_cohort(tmp_path_factory: pytest.TempPathFactory):
    from cacxr.synth import make_cohort

    data = tmp_path_factory.mktemp("synth") / "data"
    truth = make_cohort(data, patients=40, external=6, seed=3, size=64, progress=False)
    return data, truth


@pytest.mark.parametrize("site", ["internal", "external", "all"])
def test_synth_cohort_matches_truth(synth_cohort, tmp_path: Path, site: str) -> None:
    from cacxr.synth import FAULTS

    data, truth = synth_cohort
    assert {fault for p in truth.patient_truth for fault in p.faults} == set(FAULTS)  # every fault present
    before = tree_checksum(data)
    summary = ingest(data, tmp_path / "out", site=site, workers=2, progress=False, gate=False)
    assert tree_checksum(data) == before

    # exact counts per reason (files and label rows together)
    assert summary["counts"] == {
        reason: truth.reason_counts(site).get(reason, 0) for reason in EXCLUSION_REASONS
    }
    # each file's reason, and every file in exactly one of manifest.csv / excluded.csv
    manifest = read_manifest(tmp_path / "out" / "manifest.csv")
    excluded = read_excluded(tmp_path / "out" / "excluded.csv")
    got = {os.path.relpath(r.path, data): r.reason for r in excluded if r.path}
    got.update({os.path.relpath(r.path, data): "" for r in manifest})
    assert len(got) == len(manifest) + sum(1 for r in excluded if r.path)
    assert got == {f.path: f.expected_reason(site) for f in truth.files}
    flags = {os.path.relpath(r.path, data): r.view_flag for r in manifest}
    assert flags == {f.path: f.view_flag for f in truth.files if f.expected_reason(site) == ""}
    # each label row's reason
    label_rows = sorted((r.patient_id, r.reason) for r in excluded if not r.path)
    assert label_rows == sorted(
        (row.label_id, row.expected_reason(site)) for row in truth.labels if row.expected_reason(site)
    )
    # the right CAC (after id fixes), sex and age for every kept patient
    expected = {p.patient_id: p for p in truth.patient_truth if p.patient_id in truth.manifest(site)}
    assert {r.patient_id: r.cac_score for r in manifest} == {pid: p.cac_score for pid, p in expected.items()}
    assert {r.patient_id: (r.sex, r.age) for r in manifest} == {
        pid: (p.sex, p.age) for pid, p in expected.items()
    }
    # id fixes: every fix synth made is reported
    reported = {(f["fix"], f["label_id"], f["patient_id"]) for f in summary["id_fixes"] if "label_id" in f}
    assert {(f["fix"], f["label_id"], f["patient_id"]) for f in truth.id_fixes} <= reported
    assert summary["header_id_mismatch"] == sum(f.header_id_mismatch for f in truth.files)
    assert summary["n_patients"]["total"] == len(expected)
    assert summary["ignored_files"] == 2  # site.db, synth_truth.json
