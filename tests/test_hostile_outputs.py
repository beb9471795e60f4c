"""Hostile outputs (issue 21, items 9-11): unwritable --out, non-regular files, CSV injection.

Every refusal is one line naming the path, exit code 2, before any work is done; nothing that is not a
regular file is ever replaced; every CSV a person may open has its formula-like cells neutralised.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cacxr.cli import main
from cacxr.core import CacxrError, refuse_overwrite, require_writable


def _one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ------------------------------------------------------------------------------ 9. unwritable --out


def test_require_writable_names_why(tmp_path: Path) -> None:
    regular = tmp_path / "plain.txt"
    regular.write_text("mine")
    with pytest.raises(CacxrError, match="plain.txt is a file, not a folder"):
        require_writable(regular / "p.csv")
    with pytest.raises(CacxrError, match="not a folder"):
        require_writable(regular / "deeper" / "out", folder=True)
    with pytest.raises(CacxrError, match="cannot write"):
        require_writable("/proc/x.csv")
    require_writable(tmp_path / "new" / "p.csv")  # missing folders are fine (made later), none is made here
    require_writable(tmp_path / "new", folder=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt"]


@pytest.mark.parametrize("where", ["proc", "under-a-file"])
def test_predict_refuses_an_unwritable_out_before_any_work(tmp_path: Path, capsys, where: str) -> None:
    regular = tmp_path / "plain.txt"
    regular.write_text("mine")
    out = "/proc/x.csv" if where == "proc" else str(regular / "p.csv")
    # The run does not even exist: the --out check comes first, so the refusal names --out, not the run.
    code = main(["predict", str(tmp_path / "no-run"), str(regular), "--out", out, "--no-progress"])
    assert code == 2
    _one_line(capsys, out, "cannot write")
    assert regular.read_text() == "mine"


def test_ingest_into_proc_is_refused_before_the_inventory(tmp_path: Path, capsys) -> None:
    data = tmp_path / "DATA"
    data.mkdir()
    assert main(["ingest", str(data), "--out", "/proc/cacxr-ingest", "--no-progress"]) == 2
    _one_line(capsys, "/proc/cacxr-ingest", "cannot write")


def test_an_oserror_escaping_a_command_is_one_line(monkeypatch, capsys) -> None:
    import cacxr.commands.export as export_command

    def broken(args):
        raise PermissionError(13, "Permission denied", "/somewhere/model.onnx")

    monkeypatch.setattr(export_command, "run", broken)
    assert main(["export", "RUN", "--format", "onnx", "--out", "x.onnx"]) == 2
    _one_line(capsys, "/somewhere/model.onnx: Permission denied")


# ------------------------------------------------------------------- 10. --overwrite: regular files only


def test_overwrite_never_replaces_a_fifo_or_a_device(tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "out.csv"
    os.mkfifo(fifo)
    device = tmp_path / "null.csv"
    device.symlink_to("/dev/null")
    for target, kind in ((fifo, "FIFO"), (device, "character device")):
        with pytest.raises(CacxrError, match=kind):
            refuse_overwrite(target, overwrite=True)
        code = main(["predict", str(tmp_path / "no-run"), str(tmp_path), "--out", str(target), "--overwrite"])
        assert code == 2
        _one_line(capsys, str(target), kind, "not a regular file")
    assert file_kind_of(fifo) == "a FIFO (named pipe)" and os.readlink(device) == "/dev/null"
    regular = tmp_path / "old.csv"
    regular.write_text("old")
    refuse_overwrite(regular, overwrite=True)  # a regular file may be replaced when asked
    with pytest.raises(CacxrError, match="--overwrite"):
        refuse_overwrite(regular, overwrite=False)


def file_kind_of(path: Path) -> str:
    from cacxr.core import file_kind

    return file_kind(path)


# ---------------------------------------------------------------------------------- 11. CSV injection

FORMULAS = ["=cmd|' calc'!A0", "+SUM(1,1)", "-2+3", "@SUM(1)", "\t=1+1", "\r=1+1", "'=already quoted", "''+x"]


@pytest.mark.parametrize("text", FORMULAS)
def test_formula_cells_are_neutralised_and_read_back_exactly(text: str) -> None:
    import csv
    import io

    from cacxr.core import csv_cell, csv_text, csv_uncell, read_csv_rows

    written = csv_cell(text)
    assert written.startswith("'") and written[1:] == text
    assert csv_uncell(written) == text
    table = csv_text(["name", "value"], [{"name": text, "value": -1.5}, {"name": "-1.5", "value": "plain"}])
    rows = list(read_csv_rows(io.StringIO(table, newline="")))
    assert [row["name"] for row in rows] == [text, "-1.5"]
    raw = list(csv.reader(io.StringIO(table, newline="")))
    assert raw[1][0][:1] == "'" and raw[1][1] == "-1.5" and raw[2][0] == "-1.5"  # numbers stay numbers


def test_ingest_csvs_neutralise_a_formula_patient_folder(tmp_path: Path, capsys) -> None:
    from cacxr.ingest.manifest import read_excluded
    from cacxr.synth import make_cohort

    data = tmp_path / "DATA"
    make_cohort(data, 4, external=0, seed=3, size=64, faults=False, progress=False, workers=1)
    hostile = '=HYPERLINK("x","y")CAC_002'
    (data / "CAC_002").rename(data / hostile)
    assert main(["ingest", str(data), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    text = (tmp_path / "out" / "excluded.csv").read_text()
    cells = [cell for line in text.splitlines() for cell in line.split(",")]
    assert not any(cell.lstrip('"').startswith("=") for cell in cells), text
    assert "'=HYPERLINK" in text
    excluded = read_excluded(tmp_path / "out" / "excluded.csv")
    assert hostile in [row.patient_id for row in excluded]  # cacxr reads the original back


def test_predict_csv_neutralises_formula_file_names(run_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import csv

    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    monkeypatch.chdir(tmp_path)
    names = ["=cmd|' calc'!A0.dcm", "+SUM(1,1).dcm", "@x.dcm"]
    for name in names:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, generate_uid()
        ds.Modality, ds.ViewPosition = "DX", "PA"
        ds.Rows = ds.Columns = 64
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = (np.arange(64 * 64) % 256).astype(np.uint8).tobytes()
        pydicom.dcmwrite(name, ds, enforce_file_format=True)
    Path("=broken.png").write_bytes(b"not a png")
    assert main(["predict", str(run_dir), *names, "=broken.png", "--out", "p.csv", "--no-progress"]) == 0
    with open("p.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    for row in rows[1:]:
        for cell in row:
            assert cell[:1] not in ("=", "+", "@", "\t", "\r"), row
    assert [row[0] for row in rows[1:]] == ["'" + name for name in [*names, "=broken.png"]]
