"""Ingest reads every file in bounded workers (issue 21, item 21): a file that exhausts its worker costs that
file one reason, never the run (the probe's `ingest --workers 2` ended in a BrokenProcessPool traceback)."""

from __future__ import annotations

from pathlib import Path

import hostile_files as hostile
from cacxr.ingest import ingest, read_manifest
from cacxr.ingest.manifest import read_excluded


def test_a_file_over_the_workers_memory_cap_is_one_excluded_row(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    for pid in ("P1", "P3"):
        hostile.native_dicom(data / pid / "rx.dcm")
    hostile.big_native(data / "P2" / "rx.dcm")  # 32 MB stored, 64 MB as float32: over a 48 MiB cap
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,cac_score\nP1,0\nP2,10\nP3,100\n")
    monkeypatch.setenv("CACXR_DECODE_MEMORY_MB", "48")

    ingest(data, tmp_path / "out", labels=labels, workers=2, progress=False, gate=False)

    assert sorted(row.patient_id for row in read_manifest(tmp_path / "out" / "manifest.csv")) == ["P1", "P3"]
    [row] = [row for row in read_excluded(tmp_path / "out" / "excluded.csv") if row.path]
    assert (row.patient_id, row.reason) == ("P2", "too_large")
    assert "out of memory" in row.detail  # in-process (no cap) the file decodes and is kept


def test_a_view_gate_that_cannot_load_is_one_line_before_any_work(tmp_path: Path) -> None:
    """torch refused (as `ulimit -v` below the ~4 GB it maps refuses it, or not installed): one line and exit 2
    before any work, not a traceback after every worker failed on it; --no-gate ingests without torch."""
    import os
    import subprocess
    import sys

    data = tmp_path / "data"
    hostile.native_dicom(data / "P1" / "rx.dcm")
    (tmp_path / "labels.csv").write_text("patient_id,cac_score\nP1,0\n")
    refusing = tmp_path / "refusing" / "torch"
    refusing.mkdir(parents=True)
    (refusing / "__init__.py").write_text('raise ImportError("libtorch_cpu.so: failed to map segment from shared object")\n')

    def ingest_cli(*extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "cacxr", "ingest", str(data), "--labels", str(tmp_path / "labels.csv"),
                   "--workers", "1", "--no-progress", *extra]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(refusing.parent), *sys.path])}
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)

    refused = ingest_cli("--out", str(tmp_path / "gated"))
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "the view gate cannot be loaded (ImportError: libtorch_cpu.so" in refused.stderr
    assert "--no-gate" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "gated").exists()

    ungated = ingest_cli("--out", str(tmp_path / "ungated"), "--no-gate")
    assert ungated.returncode == 0, ungated.stderr[-2000:]
    assert [row.patient_id for row in read_manifest(tmp_path / "ungated" / "manifest.csv")] == ["P1"]
