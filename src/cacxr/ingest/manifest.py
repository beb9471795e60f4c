"""manifest.csv and excluded.csv: the contract between ingest and everything after it.

A manifest lists the images used, one row per patient (one frontal radiograph each). Paths are
absolute so that a manifest can be moved between folders; the store keys entries by patient id and
the source file's size and modification time.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cacxr.core import CacxrError, csv_text, csv_uncell, write_text

__all__ = [
    "MANIFEST_FILE",
    "EXCLUDED_FILE",
    "SUMMARY_FILE",
    "OUTPUTS",
    "ManifestRow",
    "ExcludedRow",
    "read_manifest",
    "write_manifest",
    "read_excluded",
    "write_excluded",
    "manifest_hash",
    "labelled_rows",
    "EXCLUSION_REASONS",
]

# The files an ingest writes into its output folder.
MANIFEST_FILE = "manifest.csv"
EXCLUDED_FILE = "excluded.csv"
SUMMARY_FILE = "ingest.json"
OUTPUTS = (MANIFEST_FILE, EXCLUDED_FILE, SUMMARY_FILE)
# Fixed reason codes for excluded.csv (documented in the README; tests check exact counts).
EXCLUSION_REASONS: dict[str, str] = {
    "unreadable": "not a DICOM, PNG or JPEG file cacxr can parse, or its pixels cannot be decoded",
    "no_pixel_data": "a DICOM object without pixel data (metadata/DICOMDIR/SR files)",
    "not_radiograph": "not a chest radiograph: a CT/MR/... modality, a ct/ folder, or the view gate reading the pixels",
    "multi_frame": "more than one frame in one file",
    "too_large": "more pixels than the limit (declared by the header or by the compressed codestream)",
    "too_complex": "a codestream whose decoding work is unbounded (a JPEG with more scans than the limit)",
    "not_regular_file": "a FIFO, socket, device or broken link, or a link to one: never opened",
    "lateral_view": "lateral: ViewPosition (LL, RL, LAT, ...), the path table's view, or the view gate on the pixels",
    "unknown_view": "no usable ViewPosition and the rule for unknown views did not keep it",
    "extra_frontal": "the patient already has a frontal image that was kept (see ingest.json for the rule)",
    "no_label": "an image of a patient without a label row",
    "other_site": "a patient of the site not asked for with --site",
    "label_without_image": "a label row whose patient has no usable image",
    "superseded_label": "a label row replaced by its _corr row",
    "duplicate_label": "a second label row for the same patient id",
    "invalid_label": "a label row whose CAC score is missing or not a number >= 0",
    "outside_ct_window": "a radiograph taken more than --max-days from its patient's CT",
    "no_date": "a radiograph without a date (header or study_date), or whose patient has no ct_date, under --max-days",
    "missing_file": "a path table lists a file that does not exist",
    "outside_data": "a path table lists a path that leads out of DATA (never opened)",
}


@dataclass
class ManifestRow:
    """One image used for training or evaluation."""

    patient_id: str
    path: str
    site: str  # internal | external
    cac_score: float  # NaN when unknown (prediction-only manifests)
    sex: str = ""  # M | F | ""
    age: float = math.nan  # years at the radiograph; NaN when unknown
    view: str = ""  # PA | AP | NN | "" (unknown)
    view_flag: str = ""  # e.g. "view_assumed_frontal" when the header did not give the view
    modality: str = ""
    photometric: str = ""
    rows: int = 0
    cols: int = 0
    source_format: str = ""  # dicom | png | jpeg
    study_date: str = ""  # the radiograph's date (ISO), from the header or the table's study_date
    ct_gap_days: float = math.nan  # study_date - the patient's ct_date, in days (NaN when either is unknown)
    gate: str = ""  # the view gate's verdict on the pixels, e.g. "frontal (p 0.97)" ("" when it did not run)


@dataclass
class ExcludedRow:
    """One file or label row left out, with its reason code."""

    path: str  # "" for label rows
    patient_id: str
    reason: str  # a key of EXCLUSION_REASONS
    detail: str = ""


def _write_rows(path: str | os.PathLike[str], cls: type, rows: list) -> None:
    records = []
    for row in rows:
        record = asdict(row)
        for key, value in record.items():
            if isinstance(value, float) and math.isnan(value):
                record[key] = ""
        records.append(record)
    write_text(path, csv_text([f.name for f in fields(cls)], records))


def _read_rows(path: str | os.PathLike[str], cls: type) -> list:
    path = Path(path)
    if not path.is_file():
        raise CacxrError(f"{path}: no such file")
    types = {f.name: f.type for f in fields(cls)}
    out = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [n for n in types if n not in (reader.fieldnames or [])]
        required = [n for n in missing if n in ("patient_id", "path")]
        if required:
            kind = "manifest.csv" if cls is ManifestRow else "excluded.csv"
            raise CacxrError(f"{path}: not a {kind} file (missing columns: {', '.join(required)})")
        for line, record in enumerate(reader, start=2):
            kwargs = {}
            for name, typ in types.items():
                raw = csv_uncell(record.get(name) or "")
                try:
                    if typ in ("float", float):
                        kwargs[name] = float(raw) if raw != "" else math.nan
                    elif typ in ("int", int):
                        kwargs[name] = int(float(raw)) if raw != "" else 0
                    else:
                        kwargs[name] = raw
                except ValueError as exc:
                    raise CacxrError(f"{path}:{line}: bad value {raw!r} in column {name}") from exc
            out.append(cls(**kwargs))
    return out


def write_manifest(rows: list[ManifestRow], path: str | os.PathLike[str]) -> None:
    """Write ``rows`` to ``path`` (atomically), sorted by patient id."""
    _write_rows(path, ManifestRow, sorted(rows, key=lambda r: r.patient_id))


def read_manifest(path: str | os.PathLike[str]) -> list[ManifestRow]:
    """Read a manifest.csv written by ``cacxr ingest``.

    Raises:
        CacxrError: the file is missing, lacks the ``patient_id``/``path`` columns, has a bad value,
            or lists a patient twice.
    """
    rows = _read_rows(path, ManifestRow)
    seen: set[str] = set()
    for row in rows:
        if row.patient_id in seen:
            raise CacxrError(f"{path}: patient {row.patient_id} is listed twice (one image per patient)")
        seen.add(row.patient_id)
    return rows


def write_excluded(rows: list[ExcludedRow], path: str | os.PathLike[str]) -> None:
    """Write excluded.csv atomically, sorted by reason then path."""
    _write_rows(path, ExcludedRow, sorted(rows, key=lambda r: (r.reason, r.path, r.patient_id)))


def read_excluded(path: str | os.PathLike[str]) -> list[ExcludedRow]:
    """Read excluded.csv."""
    return _read_rows(path, ExcludedRow)


def manifest_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the manifest file's bytes (recorded in a run's config.json)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def labelled_rows(manifest: str | os.PathLike[str], site: str, purpose: str) -> tuple[list[ManifestRow], int]:
    """The rows of a manifest that train or evaluate use: those of ``site`` that have a CAC score.

    The one data selection of ``cacxr train`` and ``cacxr evaluate``.

    Args:
        manifest: a manifest.csv.
        site: ``internal``, ``external`` or ``all``.
        purpose: what the rows are for, in the messages (``trained`` or ``evaluated``).

    Returns:
        ``(rows with a CAC score, number of rows of the site without one)``.

    Raises:
        CacxrError: no row of ``site``, or none with a CAC score.
    """
    rows = read_manifest(manifest)
    if site != "all":
        rows = [row for row in rows if row.site == site]
        if not rows:
            raise CacxrError(f"{manifest}: no patient of site {site!r} (choose --site internal, external or all)")
    labelled = [row for row in rows if not math.isnan(row.cac_score)]
    if not labelled:
        raise CacxrError(f"{manifest}: no patient has a CAC score, so nothing can be {purpose}")
    return labelled, len(rows) - len(labelled)
