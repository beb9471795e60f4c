"""What ``cacxr ingest`` must make of a synthetic cohort, derived from the ARCHITECTURE rules.

The cohort generator records, for every file it writes, the facts the ingest rules look at (parsed
or not, pixel data, modality, ``ct`` folder, frames, view, site, decodable) and, for every label
row, its id and score. :func:`file_reasons` and :func:`label_reasons` then apply the rules of
docs/ARCHITECTURE.md ("Ingest rules") to those facts, in the same order, so the expected reason
codes follow from the rules and not from the generator's intentions.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath

from cacxr.core import CacxrError, write_json

__all__ = [
    "SITES",
    "TRUTH_FILE",
    "FileTruth",
    "LabelTruth",
    "PatientTruth",
    "SynthTruth",
    "id_key",
    "is_lateral",
    "file_reasons",
    "label_reasons",
    "read_truth",
]

SITES = ("internal", "external", "all")
TRUTH_FILE = "synth_truth.json"
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "PX", "OT", ""})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LATERALE", "RLAT", "LLAT"})
FRONTAL_RANK = {"PA": 0, "AP": 1, "NN": 2, "FRONTAL": 2}
_ASSUMED_RANK = 3
_LATERAL_WORDS = re.compile(r"\b(LAT|LATERAL)\b")
_ID = re.compile(r"^(.*?)(\d+)$")
_CORR = re.compile(r"_corr$", re.IGNORECASE)


@dataclass
class FileTruth:
    """One DICOM file written by ``synth`` and the reason ingest must give it.

    The ``expected_reason_*`` fields are ``""`` when the file must be the patient's row in
    manifest.csv, else an ``EXCLUSION_REASONS`` code, for ``--site internal|external|all``.
    """

    path: str  # relative to the cohort folder, with "/" separators
    patient_id: str  # the folder name
    site: str  # internal | external
    kind: str  # frontal | lateral | metadata | ct | multi_frame | truncated
    view: str | None  # ViewPosition as written (None: tag absent)
    description: str  # SeriesDescription
    modality: str
    parseable: bool = True
    has_pixels: bool = True
    decodable: bool = True
    frames: int = 1
    rows: int = 0
    cols: int = 0
    photometric: str = ""
    bits_stored: int = 0
    encoding: str = ""  # a key of cacxr.synth.encoding.ENCODINGS
    header_id_mismatch: bool = False  # the header's PatientID is not the folder name
    expected_reason_internal: str = ""
    expected_reason_external: str = ""
    expected_reason_all: str = ""
    view_flag: str = ""  # "view_assumed_frontal" when kept without a usable ViewPosition

    def expected_reason(self, site: str) -> str:
        """The reason code for ``--site site`` (``""``: in manifest.csv)."""
        return getattr(self, f"expected_reason_{site}")


@dataclass
class LabelTruth:
    """One row of site.db's ``patient`` table and the reason ingest must give it."""

    row: int  # 1-based position in the table (its rowid)
    label_id: str  # the id as written in site.db
    cac_score: float | None  # None: written as NULL
    sex: str
    birth: str
    rx_date: str
    patient_id: str  # the folder this row belongs to after id fixes ("" if none)
    site: str
    expected_reason_internal: str = ""
    expected_reason_external: str = ""
    expected_reason_all: str = ""

    def expected_reason(self, site: str) -> str:
        """The excluded.csv reason for ``--site site`` (``""``: the row is used)."""
        return getattr(self, f"expected_reason_{site}")


@dataclass
class PatientTruth:
    """One patient folder: the label ingest must assign and what was drawn."""

    patient_id: str
    site: str
    cac_score: float | None  # after id fixes; None when the patient has no label row
    sex: str
    age: int | None  # whole years from birth to rx_date, from the label row
    n_plaques: int = 0  # plaques drawn on the patient's main frontal image
    plaque_pixels: int = 0  # pixels they cover (0 with --no-signal or a CAC of 0)
    main_image: str = ""  # the file drawn as the patient's reference frontal exposure
    faults: list[str] = field(default_factory=list)


@dataclass
class SynthTruth:
    """Everything ``make_cohort`` wrote and the answers ingest must give (synth_truth.json)."""

    seed: int
    size: int
    patients: int
    external: int
    faults: bool
    signal: bool
    files: list[FileTruth] = field(default_factory=list)
    labels: list[LabelTruth] = field(default_factory=list)
    patient_truth: list[PatientTruth] = field(default_factory=list)
    id_fixes: list[dict[str, str]] = field(default_factory=list)

    def file(self, path: str) -> FileTruth:
        """The truth of one file, by its path relative to the cohort folder."""
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def patient(self, patient_id: str) -> PatientTruth:
        """The truth of one patient folder."""
        for entry in self.patient_truth:
            if entry.patient_id == patient_id:
                return entry
        raise KeyError(patient_id)

    def manifest(self, site: str = "internal") -> dict[str, str]:
        """Expected manifest.csv content for ``--site``: patient id -> kept file's path."""
        return {f.patient_id: f.path for f in self.files if f.expected_reason(site) == ""}

    def reason_counts(self, site: str = "internal") -> dict[str, int]:
        """Expected excluded.csv counts per reason code (files and label rows together)."""
        counts = Counter(f.expected_reason(site) for f in self.files)
        counts.update(row.expected_reason(site) for row in self.labels)
        counts.pop("", None)
        return dict(sorted(counts.items()))

    def with_fault(self, fault: str) -> list[PatientTruth]:
        """Patients that carry ``fault`` (see ``cacxr.synth.cohort.FAULTS``)."""
        return [p for p in self.patient_truth if fault in p.faults]

    def to_dict(self) -> dict:
        """A JSON-ready dict (NaN-free: missing scores are ``null``)."""
        return asdict(self)

    def write(self, out: str | os.PathLike[str]) -> Path:
        """Write ``out/synth_truth.json`` atomically and return its path."""
        path = Path(out) / TRUTH_FILE
        write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, data: dict) -> SynthTruth:
        """Inverse of :meth:`to_dict`."""
        scalars = {f.name: data[f.name] for f in fields(cls) if f.name not in _NESTED}
        return cls(
            **scalars,
            files=[FileTruth(**x) for x in data["files"]],
            labels=[LabelTruth(**x) for x in data["labels"]],
            patient_truth=[PatientTruth(**x) for x in data["patient_truth"]],
            id_fixes=list(data["id_fixes"]),
        )


_NESTED = ("files", "labels", "patient_truth", "id_fixes")


def read_truth(path: str | os.PathLike[str]) -> SynthTruth:
    """Read synth_truth.json (give the file or the cohort folder).

    Raises:
        CacxrError: the file is missing, not a truth file, or the truth of an image export.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TRUTH_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("format", "dicom") != "dicom":
            raise CacxrError(
                f"{path}: the truth of a {data['format']} image export, not of a DICOM cohort "
                "(read it with read_export_truth)"
            )
        return SynthTruth.from_dict(data)
    except FileNotFoundError as exc:
        raise CacxrError(f"{path}: no such file (was the cohort written by 'cacxr synth'?)") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise CacxrError(f"{path}: not a synth truth file ({exc})") from exc


def id_key(identifier: str) -> tuple[str, int] | None:
    """(prefix, number) of a patient id, ignoring padding, case and a ``_corr`` suffix.

    ``CAC_30``, ``CAC_030``, ``cac_0030`` and ``CAC_030_corr`` all give ``("CAC_", 30)``; an id
    without a trailing number gives None.
    """
    match = _ID.match(_CORR.sub("", identifier.strip()))
    if not match:
        return None
    return match.group(1).upper(), int(match.group(2))


def is_lateral(view: str | None, description: str) -> bool:
    """Rule 5: a lateral ViewPosition, or an empty one with a description saying LAT/LATERAL."""
    norm = (view or "").strip().upper()
    if norm in LATERAL_VIEWS:
        return True
    return norm == "" and bool(_LATERAL_WORDS.search(description.upper()))


def file_reasons(files: list[FileTruth], labelled: set[str], site: str) -> dict[str, tuple[str, str]]:
    """Apply the per-file rules 1-10 to ``files`` for ``--site site``.

    Args:
        files: the facts of every DICOM candidate.
        labelled: patient folders that have a usable label row.
        site: ``internal``, ``external`` or ``all``.

    Returns:
        path -> (reason code or "" when kept, view flag of a kept file).
    """
    result: dict[str, tuple[str, str]] = {}
    candidates: dict[str, list[FileTruth]] = {}
    for f in files:
        view = (f.view or "").strip().upper()
        in_ct = any(part.lower() == "ct" for part in PurePosixPath(f.path).parts[:-1])
        if not f.parseable:
            reason = "unreadable"
        elif not f.has_pixels:
            reason = "no_pixel_data"
        elif f.modality.upper() not in RADIOGRAPH_MODALITIES or in_ct:
            reason = "not_radiograph"
        elif f.frames > 1:
            reason = "multi_frame"
        elif is_lateral(view, f.description):
            reason = "lateral_view"
        elif site != "all" and f.site != site:
            reason = "other_site"
        elif f.patient_id not in labelled:
            reason = "no_label"
        elif not f.decodable:
            reason = "unreadable"
        else:
            candidates.setdefault(f.patient_id, []).append(f)
            continue
        result[f.path] = (reason, "")
    for group in candidates.values():
        frontal = [f for f in group if (f.view or "").strip().upper() in FRONTAL_RANK]
        unknown = [f for f in group if f not in frontal]
        if frontal:
            result.update({f.path: ("unknown_view", "") for f in unknown})
            pool = frontal
        else:
            pool = unknown

        def rank(f: FileTruth) -> tuple[int, int, str]:
            view_rank = FRONTAL_RANK.get((f.view or "").strip().upper(), _ASSUMED_RANK)
            return view_rank, -(f.rows * f.cols), f.path

        pool = sorted(pool, key=rank)
        flag = "" if frontal else "view_assumed_frontal"
        result[pool[0].path] = ("", flag)
        result.update({f.path: ("extra_frontal", "") for f in pool[1:]})
    return result


def _valid_score(value: float | None) -> bool:
    return value is not None and not math.isnan(value) and value >= 0


def label_reasons(
    labels: list[LabelTruth], kept_patients: set[str]
) -> tuple[dict[int, str], dict[str, LabelTruth]]:
    """Apply the label rules: invalid, superseded (``_corr``), duplicate, without image.

    Args:
        labels: site.db rows in table order, with ``patient_id`` set to their folder ("" if none).
        kept_patients: patient folders that have a row in manifest.csv for the site asked for.

    Returns:
        (row number -> reason code or "", patient id -> the row whose label the patient gets).
    """
    reasons: dict[int, str] = {}
    by_key: dict[tuple[str, int] | None, list[LabelTruth]] = {}
    for row in labels:
        if not _valid_score(row.cac_score):
            reasons[row.row] = "invalid_label"
        else:
            by_key.setdefault(id_key(row.label_id), []).append(row)
    winners: dict[str, LabelTruth] = {}
    for rows in by_key.values():
        corrected = [r for r in rows if _CORR.search(r.label_id.strip())]
        plain = [r for r in rows if r not in corrected]
        if corrected:
            reasons.update({r.row: "superseded_label" for r in plain})
            first, rest = corrected[0], corrected[1:]
        else:
            first, rest = plain[0], plain[1:]
        reasons.update({r.row: "duplicate_label" for r in rest})
        reasons[first.row] = "" if first.patient_id in kept_patients else "label_without_image"
        if first.patient_id:
            winners[first.patient_id] = first
    return reasons, winners
