"""Ingest reads every file in bounded workers (issue 21, item 21): a file that exhausts its worker costs that
file one reason, never the run (the probe's `ingest --workers 2` ended in a BrokenProcessPool traceback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import hostile_files as hostile
from cacxr.ingest import ingest, read_manifest
from cacxr.ingest.manifest import read_excluded


def _big_native(path: Path, size: int = 4000) -> Path:
    ds = hostile.dataset(size, size, bits=16)
    ds.PixelData = (np.arange(size * size, dtype=np.uint32) % 4096).astype(np.uint16).tobytes()
    return hostile.save(ds, path)


def test_a_file_over_the_workers_memory_cap_is_one_excluded_row(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    for pid in ("P1", "P3"):
        hostile.native_dicom(data / pid / "rx.dcm")
    _big_native(data / "P2" / "rx.dcm")  # 32 MB stored, 64 MB as float32: over a 48 MiB cap
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,cac_score\nP1,0\nP2,10\nP3,100\n")
    monkeypatch.setenv("CACXR_DECODE_MEMORY_MB", "48")

    ingest(data, tmp_path / "out", labels=labels, workers=2, progress=False, gate=False)

    assert sorted(row.patient_id for row in read_manifest(tmp_path / "out" / "manifest.csv")) == ["P1", "P3"]
    [row] = [row for row in read_excluded(tmp_path / "out" / "excluded.csv") if row.path]
    assert (row.patient_id, row.reason) == ("P2", "too_large")
    assert "out of memory" in row.detail  # in-process (no cap) the file decodes and is kept
