"""Path tables: a label table that lists the images, one row per image (as MIMIC-CXR-JPG and CheXpert ship).

Each row names an image by ``path`` (relative to DATA) and repeats its patient's fields. Patient-level
fields must agree across a patient's rows, or the table is refused naming the rows; the image-level
columns are ``path``, ``view`` (optional) and ``study_date`` (optional, the radiograph's date).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cacxr.core import CacxrError
from cacxr.ingest.dates import parse_date

__all__ = ["IMAGE_COLUMNS", "PATIENT_COLUMNS", "ListedImage", "split_listing"]

# Columns that describe the image rather than the patient.
IMAGE_COLUMNS = ("path", "view", "study_date")
# Columns that must agree across a patient's rows (when the table has them).
PATIENT_COLUMNS = ("cac_score", "sex", "age", "birth", "rx_date", "site", "ct_date")


@dataclass(frozen=True)
class ListedImage:
    """One image row of a path table.

    Attributes:
        path: the image as written in the table, relative to DATA.
        patient_id: the row's patient id as written.
        view: the ``view`` column upper-cased ("" when absent or empty).
        study_date: the radiograph's date, or None.
        line: the table line, for messages.
        note: why a value was not used (an unreadable study_date), or "".
    """

    path: str
    patient_id: str
    view: str
    study_date: dt.date | None
    line: int
    note: str = ""


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def split_listing(
    source: str | os.PathLike[str], records: list[tuple[int, dict[str, Any]]], today: dt.date | None = None
) -> tuple[list[tuple[int, dict[str, Any]]], list[ListedImage]]:
    """One patient record per patient id (its first row) and every listed image.

    Args:
        source: the table, for messages.
        records: ``(line, {column: value})`` rows with a ``path`` column (``id`` holds the patient id).
        today: the reference for two-digit years.

    Returns:
        ``(patient records, images)``.

    Raises:
        CacxrError: a patient's rows disagree on a patient-level field (the message names the rows).
    """
    firsts: dict[str, tuple[int, dict[str, Any]]] = {}
    seen: dict[tuple[str, str], dict[str, list[int]]] = {}
    images: list[ListedImage] = []
    for line, record in records:
        pid = _text(record.get("id"))
        firsts.setdefault(pid, (line, record))
        for column in PATIENT_COLUMNS:
            if column in record:
                seen.setdefault((pid, column), {}).setdefault(_text(record[column]), []).append(line)
        date_text = _text(record.get("study_date"))
        study_date = parse_date(date_text, today) if date_text else None
        note = f"study_date {date_text[:20]!r} is not a date" if date_text and study_date is None else ""
        images.append(
            ListedImage(
                path=_text(record.get("path")), patient_id=pid, view=_text(record.get("view")).upper(),
                study_date=study_date, line=line, note=note,
            )
        )  # fmt: skip
    conflicts = [
        f"patient {pid!r} {column}: "
        + ", ".join(f"{value!r} (line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))})"
                    for value, lines in values.items())
        for (pid, column), values in seen.items()
        if len(values) > 1
    ]  # fmt: skip
    if conflicts:
        shown = "; ".join(conflicts[:8]) + (f"; and {len(conflicts) - 8} more" if len(conflicts) > 8 else "")
        raise CacxrError(
            f"{Path(source)}: the rows of a patient disagree on patient-level fields, which must be equal on "
            f"every row of the patient: {shown}"
        )
    return [firsts[pid] for pid in firsts], images
