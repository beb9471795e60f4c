"""The one CSV writer: every CSV cacxr writes for a person to open, with formula-like cells neutralised.

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-``, ``@`` (or a tab or carriage return before
one) as a formula: a file named ``=cmd|' calc'!A0.dcm`` or a patient folder ``=HYPERLINK(...)`` would
become a live formula in predictions.csv or excluded.csv. :func:`csv_text` writes such a text cell with a
leading single quote (OWASP's advice: the spreadsheet then shows the text as it is); numbers, including
negative ones, are left as they are. cacxr's own readers (:func:`read_csv_rows`) take the quote off again,
so paths and patient ids read back exactly; a text that itself starts with quotes before such a character
gets one more quote, so the round trip is exact for every string.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

__all__ = ["FORMULA_STARTS", "csv_cell", "csv_uncell", "csv_text", "read_csv_rows"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NEEDS_QUOTE = re.compile(r"^'*[=+\-@\t\r]")
_QUOTED = re.compile(r"^'+[=+\-@\t\r]")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.IGNORECASE)


def csv_cell(value: Any) -> Any:
    """A cell as written: formula-like text gets a leading ``'``; numbers and other values unchanged."""
    if not isinstance(value, str) or not _NEEDS_QUOTE.match(value) or _NUMBER.match(value):
        return value
    return "'" + value


def csv_uncell(text: str) -> str:
    """The original text of a cell written by :func:`csv_cell` (one leading ``'`` taken off)."""
    if isinstance(text, str) and _QUOTED.match(text) and not _NUMBER.match(text):
        return text[1:]
    return text


def csv_text(
    columns: Sequence[str], rows: Iterable[Mapping[str, Any]], extrasaction: str = "raise"
) -> str:
    """CSV text (header and rows, ``\\n`` line ends) with every cell through :func:`csv_cell`.

    Args:
        columns: the header, in order.
        rows: one mapping per row (missing keys: empty cells).
        extrasaction: ``"raise"`` or ``"ignore"`` keys that are not columns (``csv.DictWriter``).
    """
    names = list(columns)
    lines = [",".join(_field(name) for name in names)]
    for row in rows:
        extra = [key for key in row if key not in names]
        if extra and extrasaction == "raise":
            raise ValueError(f"dict contains fields not in fieldnames: {', '.join(map(repr, extra))}")
        lines.append(",".join(_field(csv_cell(row.get(name, ""))) for name in names))
    return "\n".join(lines) + "\n"


def _field(value: Any) -> str:
    """One field as ``csv.DictWriter`` (minimal quoting) writes it, but a carriage return is quoted too
    (the csv module leaves a lone ``\r`` unquoted when lines end with ``\n``, and then cannot read it)."""
    text = "" if value is None else str(value)
    if any(char in text for char in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def read_csv_rows(fh: IO[str]) -> Iterator[dict[str, str]]:
    """``csv.DictReader`` rows of a file written by :func:`csv_text`, each cell back to its original text."""
    reader = csv.DictReader(fh)
    for row in reader:
        yield {key: csv_uncell(value) if isinstance(value, str) else value for key, value in row.items()}
