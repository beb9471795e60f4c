"""Label tables: CT-derived CAC scores per patient, from the cohort's site.db or a CSV.

The rules (docs/ARCHITECTURE.md, "Labels") in one place:

* ids are compared by (prefix, number), ignoring zero padding and case: ``CAC_30`` = ``CAC_030`` =
  ``cac_0030``;
* a row ``<id>_corr`` replaces the row ``<id>`` (that row becomes ``superseded_label``);
* a second plain row for the same id is a ``duplicate_label`` (the first one wins);
* a row whose cac_score is missing, negative or not a number is an ``invalid_label``;
* age = whole years from ``birth`` to ``rx_date`` when the table has no ``age`` column; dates are ISO
  (``2019-03-04``), ``DD.MM.YYYY``, ``DD/MM/YYYY``, ``YYYYMMDD`` or any of those with a two-digit year;
* sex is normalised to ``M``, ``F`` or ``""`` (see ``SEX_CODES``).

Birth dates are identifying: they are used to compute the age and never kept, logged or quoted.

Why one module of ~470 lines: reading a label table is one job: the SQLite and CSV readers, id matching
(padding, _corr), the date and age rules and each row's reason all fill the one LabelTable.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cacxr.core import CacxrError, age_in_years
from cacxr.ingest.dates import parse_birth, parse_date
from cacxr.ingest.listing import ListedImage, split_listing

__all__ = [
    "LabelRow",
    "LabelTable",
    "SEX_CODES",
    "load_labels",
    "label_key",
    "normalise_sex",
]

logger = logging.getLogger(__name__)

# Accepted spellings of sex (compared upper-case); anything else becomes "" (unknown).
# 1/2 follow the common registry coding (1 = male, 2 = female); W is the German "weiblich".
SEX_CODES: dict[str, str] = {
    "M": "M",
    "MALE": "M",
    "MAN": "M",
    "1": "M",
    "F": "F",
    "FEMALE": "F",
    "WOMAN": "F",
    "W": "F",
    "2": "F",
}

CORR_SUFFIX = "_corr"

_ID_RE = re.compile(r"^(.*?)(\d+)$")


@dataclass
class LabelRow:
    """One row of the label table.

    Attributes:
        patient_id: the id as written, without its ``_corr`` suffix.
        raw_id: the id exactly as written in the source.
        cac_score: the Agatston score; NaN when the row is invalid.
        sex: ``M``, ``F`` or ``""``.
        age: years at the radiograph; NaN when unknown.
        line: where the row is in the source (CSV line number, or 1-based row order in site.db).
        corrected: True for a ``<id>_corr`` row.
        reason: ``""`` for a usable row, else ``superseded_label``, ``duplicate_label`` or ``invalid_label``.
        detail: why the row was rejected, or a note (e.g. a date that was not understood).
        site: the ``site`` column as written ("" without one).
        ct_date: the date of the CT that gave the score (``ct_date`` column), or None.
    """

    patient_id: str
    raw_id: str
    cac_score: float
    sex: str = ""
    age: float = math.nan
    line: int = 0
    corrected: bool = False
    reason: str = ""
    detail: str = ""
    site: str = ""
    ct_date: dt.date | None = None

    @property
    def key(self) -> tuple[str, int | None]:
        """The (prefix, number) key ids are matched by."""
        return label_key(self.patient_id)


@dataclass
class LabelTable:
    """All rows of a label source, the usable ones and the id fixes made while reading it.

    Iterating, ``len`` and indexing give the usable rows, one per patient, so a ``LabelTable`` can be
    used where a list of ``LabelRow`` is expected.

    Attributes:
        source: the file read.
        format: ``sqlite`` or ``csv``.
        rows: every row in source order, rejected ones included (see ``LabelRow.reason``).
        fixes: one dict per ``_corr`` replacement (``{"fix": "corr", "label_id", "replaces", "line"}``,
            ``line`` being where the replaced row is).
        has_age: whether the source had an age, directly or from birth and rx_date.
        images: the images a path table lists (:mod:`cacxr.ingest.listing`); empty for a patient table.
        columns: the source's columns (``id`` for ``patient_id``).
    """

    source: str
    format: str
    rows: list[LabelRow] = field(default_factory=list)
    fixes: list[dict[str, Any]] = field(default_factory=list)
    has_age: bool = False
    images: list[ListedImage] = field(default_factory=list)
    columns: frozenset[str] = frozenset()

    @property
    def usable(self) -> list[LabelRow]:
        """Rows that give a patient's label (one per id key)."""
        return [r for r in self.rows if not r.reason]

    @property
    def rejected(self) -> list[LabelRow]:
        """Rows left out, each with its reason."""
        return [r for r in self.rows if r.reason]

    def __iter__(self) -> Iterator[LabelRow]:
        return iter(self.usable)

    def __len__(self) -> int:
        return len(self.usable)

    def __getitem__(self, index: int) -> LabelRow:
        return self.usable[index]

    def where(self, row: LabelRow | ListedImage) -> str:
        """Where ``row`` is in the source, for messages: ``line 5 of labels.csv`` / ``row 5 of site.db``."""
        unit = "line" if self.format == "csv" else "row"
        return f"{unit} {row.line} of {Path(self.source).name}"

    def by_key(self) -> dict[tuple[str, int | None], LabelRow]:
        """Usable rows keyed by ``label_key``."""
        return {r.key: r for r in self.usable}

    def match(self, folder_ids: Iterable[str]) -> tuple[dict[str, LabelRow], list[dict[str, Any]]]:
        """Match patient folder names to label rows.

        Args:
            folder_ids: the patient folder names found on disk.

        Returns:
            ``(labels, fixes)``: the usable label row of each folder that has one, and one fix per folder
            whose name differs from the label id as written (padding or case:
            ``{"fix": "padding", "label_id", "patient_id"}``).
        """
        by_key = self.by_key()
        matched: dict[str, LabelRow] = {}
        fixes: list[dict[str, Any]] = []
        for folder in sorted(set(folder_ids)):
            row = by_key.get(label_key(folder))
            if row is None:
                continue
            matched[folder] = row
            if row.patient_id != folder:
                fixes.append({"fix": "padding", "label_id": row.patient_id, "patient_id": folder})
        return matched, fixes


def label_key(patient_id: str) -> tuple[str, int | None]:
    """The key ids are matched by: (lower-case prefix, number), ignoring zero padding.

    Args:
        patient_id: an id such as ``CAC_030``.

    Returns:
        ``("cac_", 30)`` for ``CAC_030``; ``(id.lower(), None)`` for an id that does not end in digits.
    """
    text = patient_id.strip().lower()
    found = _ID_RE.match(text)
    if not found:
        return text, None
    return found.group(1), int(found.group(2))


def normalise_sex(value: Any) -> str:
    """``M``, ``F`` or ``""`` for a sex value in any of the forms of ``SEX_CODES``."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return SEX_CODES.get(str(value).strip().upper(), "")


def _parse_score(value: Any) -> tuple[float, str]:
    """(score, problem): the CAC score, or NaN and why it is not usable."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan, "cac_score is missing"
    try:
        score = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return math.nan, f"cac_score {str(value)[:40]!r} is not a number"
    if not math.isfinite(score):
        return math.nan, f"cac_score {value!r} is not a finite number"
    if score < 0:
        return math.nan, f"cac_score {score:g} is negative"
    return score, ""


def _parse_age(value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    try:
        age = float(value)
    except (TypeError, ValueError):
        return math.nan
    return age if math.isfinite(age) and age >= 0 else math.nan


def _row_age(record: dict[str, Any], today: dt.date) -> tuple[float, str]:
    """(age, note) of one record: the age column, else birth -> rx_date."""
    age = _parse_age(record.get("age"))
    if not math.isnan(age) or record.get("birth") in (None, ""):
        return age, ""
    rx_raw = record.get("rx_date")
    rx_date = parse_date(rx_raw, today)
    if rx_date is None:
        return math.nan, "rx_date missing or not understood, age unknown" if rx_raw else ""
    birth = parse_birth(record.get("birth"), rx_date, today)
    if birth is None:  # never quote the birth value: it is identifying
        return math.nan, "birth date not understood, age unknown"
    years = age_in_years(birth, rx_date)
    if years < 0:
        return math.nan, "birth date after rx_date, age unknown"
    return float(years), ""


def _build_table(
    source: Path, fmt: str, records: list[tuple[int, dict[str, Any]]], age_known: bool, today: dt.date
) -> LabelTable:
    """Turn raw records (line, {id, cac_score, sex, age, birth, rx_date}) into a resolved LabelTable."""
    table = LabelTable(source=str(source), format=fmt, has_age=age_known)
    for line, record in records:
        raw_id = "" if record.get("id") is None else str(record["id"]).strip()
        if isinstance(record.get("id"), float) and record["id"].is_integer():
            raw_id = str(int(record["id"]))
        corrected = raw_id.lower().endswith(CORR_SUFFIX)
        patient_id = raw_id[: -len(CORR_SUFFIX)] if corrected else raw_id
        score, problem = _parse_score(record.get("cac_score"))
        age, note = _row_age(record, today)
        ct_text = "" if record.get("ct_date") is None else str(record["ct_date"]).strip()
        ct_date = parse_date(ct_text, today) if ct_text else None
        if ct_text and ct_date is None:
            note = "; ".join(filter(None, [note, f"ct_date {ct_text[:20]!r} is not a date"]))
        row = LabelRow(
            patient_id=patient_id,
            raw_id=raw_id,
            cac_score=score,
            sex=normalise_sex(record.get("sex")),
            age=age,
            line=line,
            corrected=corrected,
            detail=note,
            site=str(record.get("site") or "").strip(),
            ct_date=ct_date,
        )
        if not patient_id:
            row.reason, row.detail = "invalid_label", "patient id is empty"
        elif problem:
            row.reason, row.detail = "invalid_label", problem
        table.rows.append(row)
    _resolve_ids(table)
    return table


def _resolve_ids(table: LabelTable) -> None:
    """Apply the _corr and duplicate rules to the valid rows, in source order."""
    groups: dict[tuple[str, int | None], list[LabelRow]] = {}
    for row in table.rows:
        if not row.reason:
            groups.setdefault(row.key, []).append(row)
    for rows in groups.values():
        corrections = [r for r in rows if r.corrected]
        winner = corrections[0] if corrections else rows[0]
        for row in rows:
            if row is winner:
                continue
            if corrections and not row.corrected:
                row.reason = "superseded_label"
                row.detail = f"replaced by {winner.raw_id} (line {winner.line})"
                table.fixes.append(
                    {"fix": "corr", "label_id": winner.raw_id, "replaces": row.raw_id, "line": row.line}
                )
            else:
                row.reason = "duplicate_label"
                row.detail = f"same patient as {winner.raw_id} (line {winner.line}), which is used"


def _read_sqlite(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], set[str]]:
    # immutable=1: no lock files, no journal, nothing written beside the user's database
    uri = f"{path.resolve().as_uri()}?immutable=1"
    try:
        con = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise CacxrError(f"{path}: cannot open as SQLite ({exc})") from exc
    try:
        try:
            columns = [r[1].lower() for r in con.execute("PRAGMA table_info(patient)")]
        except sqlite3.DatabaseError as exc:
            raise CacxrError(f"{path}: not a readable SQLite database ({exc})") from exc
        if not columns:
            raise CacxrError(f"{path}: no table 'patient' (expected patient(id, cac_score, ...))")
        missing = [c for c in ("id", "cac_score") if c not in columns]
        if missing:
            raise CacxrError(f"{path}: table 'patient' lacks the column(s) {', '.join(missing)}")
        wanted = [c for c in ("id", "cac_score", "sex", "age", "birth", "rx_date", "site", "ct_date") if c in columns]
        cursor = con.execute(f"SELECT {', '.join(wanted)} FROM patient ORDER BY rowid")
        records = [(i, dict(zip(wanted, values, strict=True))) for i, values in enumerate(cursor, start=1)]
    finally:
        con.close()
    return records, set(columns)


_CSV_ALIASES = {"patient_id": "id", "id": "id"}


def _read_csv(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], set[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CacxrError(f"{path}: not a UTF-8 text CSV file ({exc.reason})") from exc
    if not text.strip():
        raise CacxrError(f"{path}: the labels file is empty")
    try:  # spreadsheets export ';' or tab separated files as often as ','
        dialect: Any = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t")
        # from one header line the sniffer cannot see quoting: keep the standard "" escape of a quote
        dialect.doublequote = True
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(text.splitlines(), dialect)
    header = [h.strip().lower() for h in next(reader)]
    names = [_CSV_ALIASES.get(h, h) for h in header]
    missing = [
        shown for shown, name in (("patient_id", "id"), ("cac_score", "cac_score")) if name not in names
    ]
    if missing:
        raise CacxrError(
            f"{path}: the labels CSV lacks the column(s) {', '.join(missing)} "
            f"(found: {', '.join(header) or 'none'}; expected patient_id, cac_score[, sex, age, birth, rx_date, "
            "site, ct_date; a path table adds path[, view, study_date]])"
        )
    records = []
    for line, values in enumerate(reader, start=2):
        if not any(v.strip() for v in values):
            continue  # blank line
        # a short row leaves its last columns empty; extra cells are ignored
        records.append((line, dict(zip(names, values, strict=False))))
    return records, set(names)


def load_labels(path: str | os.PathLike[str], today: dt.date | None = None) -> LabelTable:
    """Read a label table from the cohort's site.db or a CSV file.

    Args:
        path: ``site.db`` (SQLite, table ``patient(id, cac_score, sex, birth, rx_date, ...)``; any suffix
            other than ``.csv`` is read as SQLite) or a CSV with ``patient_id, cac_score`` and optional
            ``sex``, ``age``, ``birth``, ``rx_date``, ``site``, ``ct_date`` (``,``, ``;`` or tab separated).
            A CSV with a ``path`` column is a path table: one row per image (:mod:`cacxr.ingest.listing`).
        today: reference date for two-digit years (default: today).

    Returns:
        The LabelTable: every row with its status, the ``_corr`` fixes, usable rows by iteration.

    Raises:
        CacxrError: the file is missing, unreadable, or lacks the id / cac_score columns.
    """
    path = Path(path)
    if not path.exists():
        raise CacxrError(f"{path}: labels file not found")
    if not path.is_file():
        raise CacxrError(f"{path}: labels path is not a file")
    if path.suffix.lower() == ".csv":
        fmt = "csv"
        records, columns = _read_csv(path)
    else:
        fmt = "sqlite"
        records, columns = _read_sqlite(path)
    age_known = "age" in columns or {"birth", "rx_date"} <= columns
    images: list[ListedImage] = []
    if "path" in columns:  # a path table: one row per image
        records, images = split_listing(path, records, today)
    table = _build_table(path, fmt, records, age_known, today or dt.date.today())
    table.images, table.columns = images, frozenset(columns)
    logger.debug(
        "%s: %d label rows, %d usable, %d rejected",
        path,
        len(table.rows),
        len(table.usable),
        len(table.rejected),
    )
    return table
