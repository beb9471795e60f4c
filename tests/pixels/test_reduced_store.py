"""Reduced decoding in the image store: the same pixels within the stated tolerance, and the decode mode is
part of the store's key (old stores are rebuilt, modes never mixed).

The tolerance (README, "Reduced decoding"): a store entry from a reduced decode differs from full decode +
the same profile, after the profile's equalisation, by at most ``MEAN_TOL`` grey levels on average and
``MAX_TOL`` at any pixel (uint8 levels, 0..255).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

from _coded_dicom import radiograph_like, write_coded_dicom
from cacxr.ingest import ManifestRow
from cacxr.pixels import ImageStore, build_store, decode_side, preprocess_read, read_for_profile

MEAN_TOL = 1.5  # grey levels, mean absolute difference per image
MAX_TOL = 40  # grey levels, largest absolute difference at any pixel
S = 512  # seed profile: decoded short side >= 624, so a 2048 px file gets factor 2


def _row(pid: str, path: Path) -> ManifestRow:
    return ManifestRow(patient_id=pid, path=str(path), site="internal", cac_score=0.0)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, real_cxr_dir: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reduced_sources")
    window12 = {"WindowCenter": 2048, "WindowWidth": 4096}
    return {
        "real_j2k": real_cxr_dir / "pydicomdata_RG1_J2KI.dcm",  # 1955 x 1841, J2K lossy, MONOCHROME1, window
        "j2k_2048": write_coded_dicom(
            folder / "j2k.dcm", radiograph_like(2048, 2048, seed=1), JPEG2000Lossless, BitsStored=12, **window12
        ),
        "jpeg_2048": write_coded_dicom(
            folder / "jpeg.dcm", radiograph_like(2048, 2048, bits=8, seed=2), JPEGBaseline8Bit
        ),
    }


@pytest.fixture(scope="module")
def stores(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, ImageStore]:
    rows = [_row(pid, path) for pid, path in sources.items()]
    out = tmp_path_factory.mktemp("reduced_stores")
    return {
        mode: build_store(rows, out / mode, "seed", S, workers=1, progress=False, full_decode=mode == "full")
        for mode in ("full", "reduced")
    }


@pytest.mark.parametrize("pid", ["real_j2k", "j2k_2048", "jpeg_2048"])
def test_reduced_store_entry_within_tolerance(pid: str, sources, stores) -> None:
    assert stores["reduced"].decode == "reduced" and stores["full"].decode == "full"
    # the reduction did apply: half the declared size
    read = read_for_profile(sources[pid], "seed", S)
    assert read.ok and min(read.image.shape) * 2 <= min(read.meta.rows, read.meta.cols) + 1
    assert min(read.image.shape) >= decode_side("seed", S)
    full = stores["full"].get(pid).astype(np.int16)
    reduced = stores["reduced"].get(pid).astype(np.int16)
    np.testing.assert_array_equal(stores["full"].get(pid), preprocess_read(read_for_profile(
        sources[pid], "seed", S, full_decode=True), "seed", S))
    diff = np.abs(full - reduced)
    print(f"{pid}: mean {diff.mean():.3f} max {diff.max()} p99.9 {np.percentile(diff, 99.9):.1f} grey levels")
    assert diff.mean() <= MEAN_TOL
    assert diff.max() <= MAX_TOL


def test_decode_side_follows_the_profile() -> None:
    assert decode_side("seed", 1024) == 1248
    assert decode_side("seed", 512) == 624
    assert decode_side("xrv", 512) == 512


def test_small_images_are_byte_identical(tmp_path: Path) -> None:
    """No reduction applies when the file is smaller than twice the decode side: the entries are the same."""
    path = write_coded_dicom(tmp_path / "small.dcm", radiograph_like(100, 90), JPEG2000Lossless, BitsStored=12)
    rows = [_row("A", path)]
    full = build_store(rows, tmp_path / "full", "seed", 64, workers=1, progress=False, full_decode=True)
    reduced = build_store(rows, tmp_path / "reduced", "seed", 64, workers=1, progress=False)
    np.testing.assert_array_equal(full.get("A"), reduced.get("A"))


def test_decode_mode_is_in_the_key(tmp_path: Path) -> None:
    path = write_coded_dicom(tmp_path / "x.dcm", radiograph_like(300, 280), ExplicitVRLittleEndian, BitsStored=12)
    rows = [_row("A", path)]
    out = tmp_path / "store"
    first = build_store(rows, out, "seed", 64, workers=1, progress=False)
    assert first.decode == "reduced" and first.summary["built"] == 1
    # None keeps the existing store's mode
    assert build_store(rows, out, "seed", 64, workers=1, progress=False).summary["reused"] == 1
    switched = build_store(rows, out, "seed", 64, workers=1, progress=False, full_decode=True)
    assert switched.decode == "full" and switched.summary["changed"] == 1
    kept = build_store(rows, out, "seed", 64, workers=1, progress=False)
    assert kept.decode == "full" and kept.summary["reused"] == 1
    assert json.loads((out / "index.json").read_text())["decode"] == "full"


def test_store_from_before_the_decode_mode_is_rebuilt(tmp_path: Path) -> None:
    path = write_coded_dicom(tmp_path / "x.dcm", radiograph_like(300, 280), ExplicitVRLittleEndian, BitsStored=12)
    out = tmp_path / "store"
    build_store([_row("A", path)], out, "seed", 64, workers=1, progress=False)
    # what an older cacxr wrote: no "decode" in the entries' keys nor in the index
    for sidecar in (out / "entries").glob("*.json"):
        data = json.loads(sidecar.read_text())
        del data["key"]["decode"]
        sidecar.write_text(json.dumps(data))
    index = json.loads((out / "index.json").read_text())
    del index["decode"]
    (out / "index.json").write_text(json.dumps(index))
    assert ImageStore.open(out).decode == "full"
    again = build_store([_row("A", path)], out, "seed", 64, workers=1, progress=False, full_decode=False)
    assert again.summary["changed"] == 1 and again.decode == "reduced"
    shutil.rmtree(out)


def test_cli_full_decode_flag(tmp_path: Path, capsys) -> None:
    from cacxr.cli import main
    from cacxr.ingest.manifest import write_manifest

    path = write_coded_dicom(tmp_path / "x.dcm", radiograph_like(300, 280), JPEG2000Lossless, BitsStored=12)
    write_manifest([_row("A", path)], tmp_path / "manifest.csv")
    argv = ["preprocess", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / "store"), "--image-size", "64"]
    argv += ["--workers", "1", "--no-progress"]
    assert main([*argv, "--full-decode"]) == 0
    assert "full decode; built 1" in capsys.readouterr().out
    assert main(argv) == 0  # the store keeps its mode
    assert "full decode; built 0" in capsys.readouterr().out
    assert main([*argv, "--no-full-decode"]) == 0
    assert "reduced decode; built 1 (1 changed)" in capsys.readouterr().out
