"""cohort_stats: exact values on a small known manifest, the files it writes, label-table input."""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import statistics
from pathlib import Path

import pytest
from PIL import Image

from cacxr.cli import main
from cacxr.core import CacxrError
from cacxr.ingest import ManifestRow, cohort_stats
from cacxr.ingest.cohort import MEASURES
from cacxr.ingest.manifest import write_manifest

# patient, site, sex, age, cac
COHORT = [
    ("CAC_001", "internal", "M", 50.0, 0.0),
    ("CAC_002", "internal", "M", 60.0, 0.0),
    ("CAC_003", "internal", "F", 70.0, 5.0),
    ("CAC_004", "internal", "F", 80.0, 50.0),
    ("EXT_001", "external", "", math.nan, 300.0),
    ("EXT_002", "external", "M", 40.0, 2500.0),
]

EXPECTED = {
    "all": {
        "n_patients": 6,
        "n_male": 3,
        "n_female": 2,
        "n_sex_unknown": 1,
        "age_n": 5,
        "age_mean": 60.0,
        "age_min": 40.0,
        "age_max": 80.0,
        "cac_n": 6,
        "cac_mean": 2855 / 6,
        "cac_median": 27.5,
        "cac_std": statistics.stdev([0, 0, 5, 50, 300, 2500]),
        "cac_max": 2500.0,
        "share_cac_zero": 2 / 6,
        "band_0": 2,
        "band_1_10": 1,
        "band_11_100": 1,
        "band_101_400": 1,
        "band_gt400": 1,
    },
    "internal": {
        "n_patients": 4,
        "cac_mean": 13.75,
        "cac_median": 2.5,
        "share_cac_zero": 0.5,
        "band_gt400": 0,
    },
    "external": {
        "n_patients": 2,
        "n_sex_unknown": 1,
        "age_n": 1,
        "cac_median": 1400.0,
        "share_cac_zero": 0.0,
    },
}


def make_manifest(path: Path, cohort=COHORT) -> Path:
    rows = [
        ManifestRow(patient_id=p, path=f"/data/{p}/rx/1.dcm", site=s, cac_score=c, sex=x, age=a)
        for p, s, x, a, c in cohort
    ]
    write_manifest(rows, path)
    return path


@pytest.mark.parametrize("as_folder", [True, False])
def test_exact_values_and_files(tmp_path: Path, as_folder: bool) -> None:
    manifest = make_manifest(tmp_path / "ingest" / "manifest.csv")
    out = tmp_path / "stats"
    result = cohort_stats(manifest.parent if as_folder else manifest, out)

    assert result["kind"] == "manifest"
    assert list(result["groups"]) == ["all", "external", "internal"]
    for group, values in EXPECTED.items():
        for key, value in values.items():
            assert result["groups"][group][key] == pytest.approx(value), (group, key)

    for name in ("stats.md", "stats.csv", "stats.json", "cac_hist.png", "log_cac_hist.png", "age_hist.png"):
        assert (out / name).is_file(), name
    for name in ("cac_hist.png", "log_cac_hist.png", "age_hist.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.size == (600, 400)

    assert json.loads((out / "stats.json").read_text()) == json.loads(json.dumps(result))
    with (out / "stats.csv").open(newline="") as fh:
        table = {row["group"]: row for row in csv.DictReader(fh)}
    assert set(table) == {"all", "internal", "external"}
    assert int(table["all"]["n_patients"]) == 6
    assert float(table["internal"]["cac_mean"]) == pytest.approx(13.75)
    assert table["external"]["cac_std"] != ""

    markdown = (out / "stats.md").read_text()
    assert "| measure | all | external | internal |" in markdown
    assert "| patients | 6 | 2 | 4 |" in markdown
    assert "| CAC median | 27.5 | 1400.0 | 2.5 |" in markdown
    assert "| share CAC = 0 | 0.333 | 0.000 | 0.500 |" in markdown
    assert all(label in markdown for label in MEASURES.values())


def test_one_site_has_no_site_groups(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path / "manifest.csv", COHORT[:3])
    result = cohort_stats(manifest, tmp_path / "out")
    assert list(result["groups"]) == ["all"]
    assert result["groups"]["all"]["cac_std"] == pytest.approx(statistics.stdev([0, 0, 5]))


def test_single_patient_has_undefined_std(tmp_path: Path) -> None:
    result = cohort_stats(make_manifest(tmp_path / "manifest.csv", COHORT[4:5]), tmp_path / "out")
    values = result["groups"]["all"]
    assert values["cac_std"] is None
    assert values["age_mean"] is None and values["age_n"] == 0
    assert "| age mean (years) | — |" in (tmp_path / "out" / "stats.md").read_text()


def test_data_folder_describes_label_table(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    con = sqlite3.connect(data / "site.db")
    con.execute("CREATE TABLE patient (id TEXT, cac_score REAL, sex TEXT, birth TEXT, rx_date TEXT)")
    con.executemany(
        "INSERT INTO patient VALUES (?, ?, ?, ?, ?)",
        [
            ("CAC_1", 0, "M", "1950-01-01", "2019-01-01"),
            ("CAC_2", 120, "F", "1960-06-01", "2019-01-01"),
            ("CAC_2_corr", 20, "F", "1960-06-01", "2019-01-01"),
            ("CAC_3", -1, "F", "1960-06-01", "2019-01-01"),
        ],
    )
    con.commit()
    con.close()
    result = cohort_stats(data, tmp_path / "out")
    assert result["kind"] == "labels"
    assert "not the ingested images" in result["description"]
    values = result["groups"]["all"]
    assert (values["n_patients"], values["cac_mean"], values["age_mean"]) == (2, 10.0, 63.5)
    assert "not the ingested images" in (tmp_path / "out" / "stats.md").read_text()


def test_cli_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = make_manifest(tmp_path / "manifest.csv")
    assert main(["stats", str(manifest), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "patients: 6 (M 3, F 2)" in printed
    assert "share CAC = 0: 33.3%" in printed


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "nothing", "no such file or folder"),
        (lambda p: p, "neither an ingest output (manifest.csv) nor a DATA folder"),
    ],
)
def test_bad_sources(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(CacxrError, match=r"\(manifest\.csv\)|no such") as info:
        cohort_stats(make(tmp_path), tmp_path / "out")
    assert message in str(info.value)


def test_cli_reports_bad_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
