"""Dates in label tables: ISO, ``DD.MM.YYYY``, ``DD/MM/YYYY``, ``YYYYMMDD``, and two-digit years.

A two-digit year yy is 20yy when that is not after the reference year (today), else 19yy; for a birth date
it is 19yy when 20yy would make the patient younger than 18 at the radiograph.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from cacxr.core import age_in_years

__all__ = ["ADULT_AGE", "parse_birth", "parse_date"]

ADULT_AGE = 18  # a two-digit birth year that would make the patient younger than this is 19yy
_ISO_RE = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})$")
_COMPACT_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DMY_RE = re.compile(r"^(\d{1,2})[./-](\d{1,2})[./-](\d{4}|\d{2})$")


def _resolve_two_digit(yy: int, not_after: dt.date) -> int:
    """20yy when that year is not after ``not_after``'s year, else 19yy."""
    return 2000 + yy if 2000 + yy <= not_after.year else 1900 + yy


def _split_date(value: Any) -> tuple[int, int, int, bool] | None:
    """(year, month, day, two_digit_year) of a date string, or None when it is not a date."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return value.year, value.month, value.day, False
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    # "2019-03-04 00:00:00" / "2019-03-04T10:00" from spreadsheets and databases: keep the date
    text = re.split(r"[ T]", text, maxsplit=1)[0] if text else text
    if found := _ISO_RE.match(text) or _COMPACT_RE.match(text):
        year, month, day = (int(g) for g in found.groups())
        return year, month, day, False
    if found := _DMY_RE.match(text):
        day, month, year_text = found.groups()
        return int(year_text), int(month), int(day), len(year_text) == 2
    return None


def _make_date(year: int, month: int, day: int) -> dt.date | None:
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


def parse_date(value: Any, today: dt.date | None = None) -> dt.date | None:
    """Parse a radiograph date (``rx_date``).

    Args:
        value: ISO ``2019-03-04``, ``DD.MM.YYYY``, ``DD/MM/YYYY``, ``YYYYMMDD``, or those with a two-digit
            year; a ``date`` passes through.
        today: the reference for two-digit years (default: today): yy is 20yy when that is not after
            today's year, else 19yy.

    Returns:
        The date, or None when the value is empty or not a date.
    """
    parts = _split_date(value)
    if parts is None:
        return None
    year, month, day, two_digit = parts
    if two_digit:
        year = _resolve_two_digit(year, today or dt.date.today())
    return _make_date(year, month, day)


def parse_birth(value: Any, rx_date: dt.date | None, today: dt.date | None = None) -> dt.date | None:
    """Parse a birth date; a two-digit year is 19yy when 20yy would make the patient a minor.

    Args:
        value: the birth date in one of the forms ``parse_date`` reads.
        rx_date: the radiograph date the age is computed at (today when unknown).
        today: the reference for "not after the current year" (default: today).

    Returns:
        The birth date, or None when the value is empty or not a date.
    """
    parts = _split_date(value)
    if parts is None:
        return None
    year, month, day, two_digit = parts
    if two_digit:
        today = today or dt.date.today()
        year = _resolve_two_digit(year, today)
        if year >= 2000:
            born = _make_date(year, month, day)
            if born is not None and age_in_years(born, rx_date or today) < ADULT_AGE:
                year -= 100
    return _make_date(year, month, day)
