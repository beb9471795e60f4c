"""Label tables: site.db and CSV, id matching, _corr, duplicates, invalid rows, dates and sex."""

from __future__ import annotations

import datetime as dt
import math
import re
import sqlite3
from pathlib import Path

import pytest

from cacxr.core import CacxrError
from cacxr.ingest import load_labels
from cacxr.ingest.dates import parse_birth, parse_date
from cacxr.ingest.labels import label_key, normalise_sex

TODAY = dt.date(2025, 6, 1)


def write_db(path: Path, rows: list[tuple], columns: str = "id, cac_score, sex, birth, rx_date") -> Path:
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE patient ({columns}, note TEXT)")
    marks = ", ".join("?" * len(columns.split(",")))
    con.executemany(f"INSERT INTO patient ({columns}) VALUES ({marks})", rows)
    con.commit()
    con.close()
    return path


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("CAC_30", "CAC_030", True),
        ("CAC_030", "cac_0030", True),
        ("CAC_30", "CAC_300", False),
        ("CAC_3", "XYZ_3", False),
        (" CAC_007 ", "CAC_7", True),
        ("patientA", "PATIENTA", True),
        ("patientA", "patientB", False),
    ],
)
def test_label_key_ignores_padding_and_case(a: str, b: str, same: bool) -> None:
    assert (label_key(a) == label_key(b)) is same


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("M", "M"),
        ("m", "M"),
        ("male", "M"),
        (" Male ", "M"),
        ("1", "M"),
        (1, "M"),
        (1.0, "M"),
        ("F", "F"),
        ("female", "F"),
        ("w", "F"),
        ("2", "F"),
        (2, "F"),
        ("", ""),
        (None, ""),
        ("O", ""),
        ("unknown", ""),
        ("3", ""),
    ],
)
def test_normalise_sex(value: object, expected: str) -> None:
    assert normalise_sex(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-03-04", dt.date(2019, 3, 4)),
        ("2019-03-04 10:22:00", dt.date(2019, 3, 4)),
        ("04.03.2019", dt.date(2019, 3, 4)),
        ("04/03/2019", dt.date(2019, 3, 4)),
        ("4.3.2019", dt.date(2019, 3, 4)),
        ("20190304", dt.date(2019, 3, 4)),
        ("04.03.19", dt.date(2019, 3, 4)),  # 2019 is not after 2025 -> 20yy
        ("04.03.25", dt.date(2025, 3, 4)),  # the current year itself -> 20yy
        ("04.03.26", dt.date(1926, 3, 4)),  # 2026 is after 2025 -> 19yy
        ("04/03/98", dt.date(1998, 3, 4)),
        ("", None),
        (None, None),
        ("yesterday", None),
        ("31.02.2019", None),
    ],
)
def test_parse_date(text: str | None, expected: dt.date | None) -> None:
    assert parse_date(text, today=TODAY) == expected


@pytest.mark.parametrize(
    ("birth", "rx_date", "expected"),
    [
        ("1950-05-06", dt.date(2019, 3, 4), dt.date(1950, 5, 6)),
        ("06.05.50", dt.date(2019, 3, 4), dt.date(1950, 5, 6)),  # 2050 is in the future -> 1950
        ("06.05.05", dt.date(2019, 3, 4), dt.date(1905, 5, 6)),  # 2005 would make a 13-year-old -> 1905
        ("06.05.00", dt.date(2019, 3, 4), dt.date(2000, 5, 6)),  # 18 at rx_date -> stays 2000
        ("06.05.01", dt.date(2019, 3, 4), dt.date(1901, 5, 6)),  # would be 17 -> 1901
        ("bad", dt.date(2019, 3, 4), None),
    ],
)
def test_parse_birth_two_digit_years(birth: str, rx_date: dt.date, expected: dt.date | None) -> None:
    assert parse_birth(birth, rx_date, today=TODAY) == expected


def _by_raw(table) -> dict:
    return {row.raw_id: row for row in table.rows}


def test_site_db_rules(tmp_path: Path) -> None:
    db = write_db(
        tmp_path / "site.db",
        [
            ("CAC_30", 12.5, "m", "1950-01-10", "2019-03-04"),  # padded differently than the folder
            ("CAC_083", 5, "F", "10.01.60", "04.03.19"),  # wrong row ...
            ("CAC_083_corr", 250, "F", "10.01.60", "04.03.19"),  # ... replaced
            ("CAC_040", 0, "2", "1945-12-31", "2019-12-30"),
            ("CAC_040", 99, "2", "1945-12-31", "2019-12-30"),  # second plain row
            ("CAC_050", None, "M", "1950-01-10", "2019-03-04"),  # missing score
            ("CAC_051", -3, "M", "1950-01-10", "2019-03-04"),  # negative
            ("CAC_052", "n/a", "M", "1950-01-10", "2019-03-04"),  # not a number
            ("CAC_060", "0", "male", "", ""),  # no dates: age unknown
        ],
    )
    table = load_labels(db, today=TODAY)
    rows = _by_raw(table)
    assert table.format == "sqlite"
    assert len(table.rows) == 9
    assert {r.raw_id for r in table} == {"CAC_30", "CAC_083_corr", "CAC_040", "CAC_060"}
    assert len(table) == 4 and table[1].raw_id == "CAC_083_corr"
    reasons = {(r.raw_id, r.line): r.reason for r in table.rows}
    assert reasons == {
        ("CAC_30", 1): "",
        ("CAC_083", 2): "superseded_label",
        ("CAC_083_corr", 3): "",
        ("CAC_040", 4): "",
        ("CAC_040", 5): "duplicate_label",
        ("CAC_050", 6): "invalid_label",
        ("CAC_051", 7): "invalid_label",
        ("CAC_052", 8): "invalid_label",
        ("CAC_060", 9): "",
    }
    usable = {r.patient_id: r for r in table}
    assert usable["CAC_083"].cac_score == 250  # the _corr row's value
    assert usable["CAC_040"].cac_score == 0  # the first plain row wins
    assert (usable["CAC_30"].sex, usable["CAC_30"].age) == ("M", 69.0)
    assert (usable["CAC_083"].sex, usable["CAC_083"].age) == ("F", 59.0)  # 10.01.60 -> 1960, rx 2019
    assert (usable["CAC_040"].sex, usable["CAC_040"].age) == ("F", 73.0)  # birthday not reached yet
    assert math.isnan(usable["CAC_060"].age)
    assert "negative" in rows["CAC_051"].detail
    assert "not a number" in rows["CAC_052"].detail
    assert "missing" in rows["CAC_050"].detail
    assert table.fixes == [{"fix": "corr", "label_id": "CAC_083_corr", "replaces": "CAC_083", "line": 2}]

    matched, fixes = table.match(["CAC_030", "CAC_083", "CAC_040", "CAC_999"])
    assert {folder: row.cac_score for folder, row in matched.items()} == {
        "CAC_030": 12.5,
        "CAC_083": 250,
        "CAC_040": 0,
    }
    assert fixes == [{"fix": "padding", "label_id": "CAC_30", "patient_id": "CAC_030"}]
    assert table.where(rows["CAC_051"]) == "row 7 of site.db"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # plain CSV with an age column
        (
            "patient_id,cac_score,sex,age\nCAC_001,0,M,61\nCAC_2,140.5,female,70.5\n",
            {"CAC_001": (0.0, "M", 61.0), "CAC_2": (140.5, "F", 70.5)},
        ),
        # semicolon separated, upper-case header, birth + rx_date with two-digit years
        (
            "PATIENT_ID;CAC_SCORE;SEX;BIRTH;RX_DATE\nCAC_001;3;1;02.02.55;01.02.19\n",
            {"CAC_001": (3.0, "M", 63.0)},
        ),
        # _corr and a duplicate in a CSV, an invalid score, a blank line
        (
            "patient_id,cac_score\nCAC_5,1\nCAC_5_corr,9\n\nCAC_6,2\ncac_006,3\nCAC_7,abc\n",
            {"CAC_5": (9.0, "", math.nan), "CAC_6": (2.0, "", math.nan)},
        ),
    ],
)
def test_csv_labels(tmp_path: Path, text: str, expected: dict) -> None:
    table = load_labels(write_csv(tmp_path / "labels.csv", text), today=TODAY)
    assert table.format == "csv"
    got = {r.patient_id: (r.cac_score, r.sex, r.age) for r in table}
    assert got.keys() == expected.keys()
    for pid, (score, sex, age) in expected.items():
        assert got[pid][:2] == (score, sex)
        assert (math.isnan(got[pid][2]) and math.isnan(age)) or got[pid][2] == age


def test_csv_rejections_are_reported(tmp_path: Path) -> None:
    table = load_labels(
        write_csv(
            tmp_path / "l.csv", "patient_id,cac_score\nCAC_5,1\nCAC_5_corr,9\nCAC_6,2\ncac_006,3\nCAC_7,\n"
        )
    )
    assert [(r.raw_id, r.line, r.reason) for r in table.rejected] == [
        ("CAC_5", 2, "superseded_label"),
        ("cac_006", 5, "duplicate_label"),
        ("CAC_7", 6, "invalid_label"),
    ]


def test_birth_date_never_quoted(tmp_path: Path) -> None:
    table = load_labels(
        write_csv(tmp_path / "l.csv", "patient_id,cac_score,birth,rx_date\nCAC_1,0,31.31.1950,2019-01-01\n")
    )
    (row,) = table.rows
    assert math.isnan(row.age)
    assert "birth date not understood" in row.detail
    assert "1950" not in row.detail


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "labels file not found"),
        ("labels.csv", "patient_id,score\nCAC_1,3\n", "lacks the column(s) cac_score"),
        ("labels.csv", "pid,cac_score\nCAC_1,3\n", "lacks the column(s) patient_id"),
        ("labels.csv", "", "the labels file is empty"),
        ("site.db", b"this is not sqlite at all, just text" * 10, "not a readable SQLite database"),
    ],
)
def test_bad_label_files(tmp_path: Path, name: str, content: str | bytes | None, message: str) -> None:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(CacxrError, match=r"labels|SQLite") as info:
        load_labels(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("create", "message"),
    [
        ("CREATE TABLE other (id TEXT)", "no table 'patient'"),
        ("CREATE TABLE patient (id TEXT, score REAL)", "lacks the column(s) cac_score"),
    ],
)
def test_bad_site_db(tmp_path: Path, create: str, message: str) -> None:
    path = tmp_path / "site.db"
    con = sqlite3.connect(path)
    con.execute(create)
    con.commit()
    con.close()
    with pytest.raises(CacxrError, match=re.escape(message)):
        load_labels(path)


def test_site_db_is_not_modified(tmp_path: Path) -> None:
    db = write_db(tmp_path / "site.db", [("CAC_1", 1, "M", "1950-01-01", "2019-01-01")])
    before = (db.read_bytes(), db.stat().st_mtime_ns, sorted(p.name for p in tmp_path.iterdir()))
    assert len(load_labels(db)) == 1
    after = (db.read_bytes(), db.stat().st_mtime_ns, sorted(p.name for p in tmp_path.iterdir()))
    assert before == after
