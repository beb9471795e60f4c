"""The ingest rules: what one file is (its reason, or a candidate), which candidate a patient keeps, and
why a label row is left out. Their order is the one docs/ARCHITECTURE.md ("Ingest rules") states, listed
in ``RULES``; :mod:`cacxr.ingest.inventory` applies them to a whole archive.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cacxr.ingest.labels import LabelRow, LabelTable
from cacxr.ingest.manifest import ExcludedRow, ManifestRow

__all__ = [
    "IGNORED_EXTENSIONS",
    "VIEW_PREFERENCE",
    "ASSUMED_FRONTAL_RANK",
    "VIEW_ASSUMED_FRONTAL",
    "RULES",
    "FileRecord",
    "site_of",
    "inspect_file",
    "decode_file",
    "select_images",
    "manifest_row",
    "label_exclusions",
]

# Files with these extensions are never image candidates: counted in ingest.json, not listed in excluded.csv.
IGNORED_EXTENSIONS: tuple[str, ...] = (".db", ".sqlite", ".csv", ".json", ".txt", ".md", ".xlsx", ".log")
# Rank of a kept candidate's view: lower wins (then more pixels, then the path in sort order).
VIEW_PREFERENCE: dict[str, int] = {"PA": 0, "AP": 1, "NN": 2, "FRONTAL": 2}
ASSUMED_FRONTAL_RANK = 3
VIEW_ASSUMED_FRONTAL = "view_assumed_frontal"
RULES: tuple[str, ...] = (
    f"files with extension {', '.join(IGNORED_EXTENSIONS)} are not DICOM candidates (counted in ignored_files)",
    "patient id = first folder under DATA; site = internal when that name contains CAC, else external",
    "a header PatientID that differs from the folder name never wins (counted in header_id_mismatch)",
    "0 not a regular file (FIFO, socket, device, broken link or a link to one) -> not_regular_file, never opened",
    "1 not parseable as DICOM -> unreadable",
    "2 no PixelData -> no_pixel_data",
    "3 Modality not in CR, DX, DR, RG, PX, OT, '' or a ct folder on the path -> not_radiograph",
    "4 NumberOfFrames > 1 -> multi_frame; more pixels than the limit (header or codestream) -> too_large",
    "5 lateral ViewPosition (or empty ViewPosition and a description saying LAT) -> lateral_view",
    "6 patient of a site not selected by --site -> other_site",
    "7 no label row for the patient -> no_label",
    "8 pixel data cannot be decoded -> unreadable, or too_large from the codestream (only with --decode-check)",
    "9 unknown-view candidates -> unknown_view when the patient has a frontal candidate, "
    "else kept as frontal and flagged view_assumed_frontal",
    "10 one image per patient: PA > AP > NN/FRONTAL > assumed frontal, then most pixels, "
    "then path order; the others -> extra_frontal",
    "labels: ids matched ignoring zero padding and case; <id>_corr replaces <id> (superseded_label); "
    "a second row for an id -> duplicate_label (first wins); cac_score missing, negative or not a "
    "number -> invalid_label; a usable row whose patient has no kept image -> label_without_image",
)


@dataclass
class FileRecord:
    """What ingest learned about one DICOM candidate file (no identifying header values)."""

    path: str
    patient_id: str
    site: str
    reason: str = ""
    detail: str = ""
    modality: str = ""
    view: str = ""
    frontal: bool = False
    lateral: bool = False
    photometric: str = ""
    rows: int = 0
    cols: int = 0
    sex: str = ""
    age: float = math.nan
    header_id_matches: bool | None = None
    view_flag: str = ""

    @property
    def pixels(self) -> int:
        return self.rows * self.cols


def site_of(patient_id: str) -> str:
    """``internal`` when the patient folder name contains ``CAC`` (any case), else ``external``."""
    return "internal" if "CAC" in patient_id.upper() else "external"


def inspect_file(path: str, patient_id: str, in_ct_folder: bool) -> FileRecord:
    """Rules 1-5 for one file, from its header only."""
    from cacxr.imaging import is_frontal, is_lateral, read_header

    record = FileRecord(path=path, patient_id=patient_id, site=site_of(patient_id) if patient_id else "")
    try:
        result = read_header(path, patient_id=patient_id)
    except Exception as exc:  # a reader crash on one file must not stop the batch
        record.reason, record.detail = "unreadable", f"{type(exc).__name__}: {exc}"
        return record
    meta = result.meta
    if meta is not None and meta.source_format != "dicom":  # the reader also opens PNG/JPEG: rule 1
        record.reason, record.detail = "unreadable", f"not a DICOM file (a {meta.source_format} image)"
        return record
    if meta is not None:
        record.modality = meta.modality or ""
        record.view = (meta.view or "").upper()
        record.photometric = meta.photometric or ""
        record.rows, record.cols = int(meta.rows or 0), int(meta.cols or 0)
        record.sex = meta.sex or ""
        record.age = float(meta.age) if meta.age is not None else math.nan
        record.header_id_matches = meta.header_id_matches
    # the excluded row has its own path column: keep the detail short
    record.reason, record.detail = result.reason, result.detail.removeprefix(f"{path}: ")
    if in_ct_folder and record.reason in ("", "multi_frame"):
        record.reason, record.detail = "not_radiograph", "inside a ct folder"
    if not record.reason and meta is None:
        record.reason, record.detail = "unreadable", "no header could be read"
    if record.reason:
        return record
    record.lateral = bool(is_lateral(meta))
    record.frontal = bool(is_frontal(meta)) and not record.lateral
    if record.lateral:
        record.reason = "lateral_view"
        record.detail = f"ViewPosition {meta.view!r}" if meta.view else "description says lateral"
    return record


def decode_file(path: str, patient_id: str) -> tuple[str, tuple[str, str]]:
    """Rule 8: ``(path, (reason, detail))``; reason is ``""`` when the pixels decode.

    The reason is ``unreadable``, or ``too_large`` when the codestream declares more pixels than the limit.
    """
    from cacxr.imaging import read_image

    try:
        result = read_image(path, patient_id=patient_id)
    except Exception as exc:  # a decoder crash on one file must not stop the batch
        return path, ("unreadable", f"pixel data cannot be decoded: {type(exc).__name__}: {exc}")
    if result.reason in ("too_large", "too_complex"):
        return path, (result.reason, result.detail.removeprefix(f"{path}: "))
    if result.reason or result.image is None:
        detail = result.detail.removeprefix(f"{path}: ") or result.reason or "no image"
        if not detail.startswith("pixel data cannot be decoded"):
            detail = f"pixel data cannot be decoded: {detail}"
        return path, ("unreadable", detail)
    return path, ("", "")


def select_images(records: list[FileRecord]) -> dict[str, FileRecord]:
    """Rules 9-10 on the remaining candidates: the kept image of each patient; the others get a reason."""
    by_patient: dict[str, list[FileRecord]] = {}
    for record in records:
        by_patient.setdefault(record.patient_id, []).append(record)
    kept: dict[str, FileRecord] = {}
    for patient_id, files in by_patient.items():
        has_frontal = any(f.frontal for f in files)
        pool = []
        for f in files:
            if f.frontal:
                pool.append(f)
            elif has_frontal:
                f.reason = "unknown_view"
                f.detail = f"ViewPosition {f.view!r} not recognised" if f.view else "no ViewPosition"
                f.detail += "; the patient has a frontal image"
            else:
                f.view_flag = VIEW_ASSUMED_FRONTAL
                pool.append(f)

        def rank(f: FileRecord) -> tuple[int, int, str]:
            view_rank = VIEW_PREFERENCE.get(f.view, 2) if f.frontal else ASSUMED_FRONTAL_RANK
            return view_rank, -f.pixels, f.path

        pool.sort(key=rank)
        kept[patient_id] = pool[0]
        for f in pool[1:]:
            f.reason = "extra_frontal"
            f.detail = f"{Path(pool[0].path).name} kept (view {pool[0].view or 'assumed frontal'})"
            f.view_flag = ""
    return kept


def manifest_row(record: FileRecord, label: LabelRow) -> ManifestRow:
    # the label table describes the patient; the header is the fallback
    return ManifestRow(
        patient_id=record.patient_id,
        path=record.path,
        site=record.site,
        cac_score=label.cac_score,
        sex=label.sex or record.sex,
        age=label.age if not math.isnan(label.age) else record.age,
        view=record.view if record.frontal else "",
        view_flag=record.view_flag,
        modality=record.modality,
        photometric=record.photometric,
        rows=record.rows,
        cols=record.cols,
    )


def label_exclusions(
    table: LabelTable,
    label_of: dict[str, LabelRow],
    kept: dict[str, FileRecord],
    records: list[FileRecord],
    site: str,
) -> list[ExcludedRow]:
    """Excluded rows for label rows: rejected ones, and usable ones without a kept image."""
    rows = [
        ExcludedRow(path="", patient_id=r.raw_id, reason=r.reason, detail=f"{table.where(r)}: {r.detail}")
        for r in table.rejected
    ]
    folder_of = {id(row): folder for folder, row in label_of.items()}
    reasons_of: dict[str, Counter[str]] = {}
    for record in records:
        reasons_of.setdefault(record.patient_id, Counter())[record.reason or "kept"] += 1
    for label in table.usable:
        folder = folder_of.get(id(label))
        if folder in kept:
            continue
        if folder is None:
            detail = "no patient folder with this id"
        else:
            found = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons_of[folder].items()))
            detail = f"folder {folder}: {found}"
            if site != "all" and site_of(folder) != site:
                detail += f" (site {site_of(folder)} not selected)"
        rows.append(
            ExcludedRow(
                path="",
                patient_id=label.raw_id,
                reason="label_without_image",
                detail=f"{table.where(label)}: {detail}",
            )
        )
    return rows
