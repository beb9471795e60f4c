"""What an image-export cohort holds (``cacxr synth --format png|jpeg``) and which image ingest must keep.

An export cohort is laid out like MIMIC-CXR-JPG or CheXpert: ``OUT/<patient>/<name>.png|jpg`` and one
path table, ``OUT/labels.csv`` (:data:`LABEL_COLUMNS`). Its ground truth is written to the same
``synth_truth.json`` as a DICOM cohort's, with a ``"format"`` key (``"png"`` or ``"jpeg"``) that tells them
apart; :func:`read_export_truth` reads it.

The pairing rule (:func:`expected_kept`): among a patient's frontal images (``kind == "frontal"``: never a
lateral or a CT slice, whatever the labels say) whose study date lies within ``max_days`` of the CT
(``abs(gap_days) <= max_days``), keep the smallest ``abs(gap_days)``, then PA before AP before an empty
view (the view as written in labels.csv), then the most pixels, then the first path in sort order.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cacxr.core import CacxrError, write_json
from cacxr.synth.truth import TRUTH_FILE

__all__ = [
    "EXPORT_FORMATS",
    "LABELS_FILE",
    "LABEL_COLUMNS",
    "MAX_DAYS",
    "ExportImage",
    "ExportPatient",
    "ExportTruth",
    "expected_kept",
    "read_export_truth",
]

EXPORT_FORMATS = ("png", "jpeg")
LABELS_FILE = "labels.csv"
LABEL_COLUMNS = ("patient_id", "path", "cac_score", "sex", "age", "study_date", "ct_date", "view")
MAX_DAYS = 60  # the --max-days whose answer the truth records
_VIEW_RANK = {"PA": 0, "AP": 1}
_UNKNOWN_RANK = 2


@dataclass
class ExportImage:
    """One image file of an export cohort (one row of labels.csv)."""

    path: str  # relative to the cohort folder, with "/" separators
    patient_id: str
    site: str  # internal | external (from the folder name: CAC rule)
    kind: str  # frontal | lateral | ct
    view: str  # as written in labels.csv: PA | AP | LATERAL | "" (always "" for a CT slice)
    true_view: str  # what was drawn: PA | AP | LATERAL | "" (CT slice)
    study_date: str  # ISO
    gap_days: int  # study_date - ct_date, in days
    inverted: bool  # grey levels inverted (bone dark)
    rows: int
    cols: int
    mode: str  # how the file stores its pixels: "L" (8-bit grey), "I;16" (16-bit grey), "RGB"


@dataclass
class ExportPatient:
    """One patient of an export cohort: its label and the image ingest must pair with the CT."""

    patient_id: str
    site: str
    cac_score: float
    sex: str
    age: int  # whole years from birth to ct_date
    ct_date: str  # ISO
    expected_kept_within_60_days: str  # path of the image ingest keeps with --max-days 60 ("" if none)
    n_plaques: int = 0  # plaques drawn on every frontal image of the patient
    images: list[str] = field(default_factory=list)  # its paths, in labels.csv order


@dataclass
class ExportTruth:
    """Everything an export cohort holds (synth_truth.json with a ``format`` key)."""

    format: str  # png | jpeg
    seed: int
    size: int
    patients: int  # internal patients
    external: int
    signal: bool
    max_days: int = MAX_DAYS
    images: list[ExportImage] = field(default_factory=list)
    patient_truth: list[ExportPatient] = field(default_factory=list)

    def image(self, path: str) -> ExportImage:
        """The truth of one image, by its path relative to the cohort folder."""
        for entry in self.images:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def patient(self, patient_id: str) -> ExportPatient:
        """The truth of one patient."""
        for entry in self.patient_truth:
            if entry.patient_id == patient_id:
                return entry
        raise KeyError(patient_id)

    def images_of(self, patient_id: str) -> list[ExportImage]:
        """A patient's images, in labels.csv order."""
        return [img for img in self.images if img.patient_id == patient_id]

    def kept(self, max_days: int = MAX_DAYS) -> dict[str, str]:
        """Patient id -> the path ingest keeps with ``--max-days max_days`` (patients with none left out)."""
        kept = {
            p.patient_id: expected_kept(self.images_of(p.patient_id), max_days) for p in self.patient_truth
        }
        return {pid: path for pid, path in kept.items() if path}

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)

    def write(self, out: str | os.PathLike[str]) -> Path:
        """Write ``out/synth_truth.json`` atomically and return its path."""
        path = Path(out) / TRUTH_FILE
        write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, data: dict) -> ExportTruth:
        """Inverse of :meth:`to_dict`."""
        scalars = {f.name: data[f.name] for f in fields(cls) if f.name not in ("images", "patient_truth")}
        return cls(
            **scalars,
            images=[ExportImage(**x) for x in data["images"]],
            patient_truth=[ExportPatient(**x) for x in data["patient_truth"]],
        )


def expected_kept(images: list[ExportImage], max_days: int = MAX_DAYS) -> str:
    """The path of the image ingest must keep for one patient (see the module docstring), or "".

    Args:
        images: the patient's images.
        max_days: the largest accepted ``abs(gap_days)`` (inclusive).

    Returns:
        The kept path, or "" when no frontal image lies within ``max_days`` of the CT.
    """
    pool = [img for img in images if img.kind == "frontal" and abs(img.gap_days) <= max_days]
    if not pool:
        return ""

    def rank(img: ExportImage) -> tuple[int, int, int, str]:
        return abs(img.gap_days), _VIEW_RANK.get(img.view, _UNKNOWN_RANK), -(img.rows * img.cols), img.path

    return min(pool, key=rank).path


def read_export_truth(path: str | os.PathLike[str]) -> ExportTruth:
    """Read the synth_truth.json of an export cohort (give the file or the cohort folder).

    Raises:
        CacxrError: the file is missing, not a truth file, or the truth of a DICOM cohort.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TRUTH_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CacxrError(f"{path}: no such file (was the cohort written by 'cacxr synth'?)") from exc
    except ValueError as exc:
        raise CacxrError(f"{path}: not a synth truth file ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") not in EXPORT_FORMATS:
        raise CacxrError(
            f"{path}: the truth of a DICOM cohort, not of an image export (read it with read_truth)"
        )
    try:
        return ExportTruth.from_dict(data)
    except (KeyError, TypeError) as exc:
        raise CacxrError(f"{path}: not a synth truth file ({exc})") from exc
