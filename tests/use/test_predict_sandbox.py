"""predict decodes in the bounded pool (issue 21, item 21): a file that exhausts its worker costs that file only."""

from __future__ import annotations

from pathlib import Path

import hostile_files as hostile
from cacxr.cli import main
from cacxr.imaging.sandbox import shutdown_default_pool


def test_a_file_over_the_workers_memory_cap_costs_one_row(run_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    small = [hostile.native_dicom(tmp_path / f"ok{i}.dcm") for i in range(2)]
    big = hostile.big_native(tmp_path / "big.dcm")  # 32 MB stored, 64 MB as float32: over a 48 MiB cap
    shutdown_default_pool()
    monkeypatch.setenv("CACXR_DECODE_MEMORY_MB", "48")
    monkeypatch.setenv("CACXR_DECODE_WORKERS", "1")
    try:
        out = tmp_path / "p.csv"
        code = main(["predict", str(run_dir), str(small[0]), str(big), str(small[1]), "--out", str(out), "--no-progress"])
    finally:
        shutdown_default_pool()  # the next test gets the default pool back
    assert code == 0
    lines = out.read_text().splitlines()[1:]
    assert [line.split(",")[0] for line in lines] == [str(small[0]), str(big), str(small[1])]
    assert "too_large" in lines[1] and "out of memory" in lines[1]
    assert ",," not in lines[0].split(",", 2)[1][:1] and lines[0].split(",")[1] and lines[2].split(",")[1]
    assert "Traceback" not in capsys.readouterr().err
