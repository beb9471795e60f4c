"""The ingest rules: what one file is (its reason, or a candidate), which candidate a patient keeps, and
why a label row is left out. Their order is the one docs/ARCHITECTURE.md ("Ingest rules") states, listed
in ``RULES``; :mod:`cacxr.ingest.inventory` applies them to a whole archive.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cacxr.imaging import HEADER_CONTRADICTS_IMAGE, VIEW_FROM_IMAGE, GateVerdict, decide
from cacxr.ingest.labels import LabelRow, LabelTable
from cacxr.ingest.manifest import ExcludedRow, ManifestRow

__all__ = [
    "IGNORED_EXTENSIONS",
    "VIEW_PREFERENCE",
    "ASSUMED_FRONTAL_RANK",
    "IMAGE_FRONTAL_RANK",
    "VIEW_FROM_IMAGE",
    "HEADER_CONTRADICTS_IMAGE",
    "INVERTED_CORRECTED",
    "TABLE_FRONTAL_VIEWS",
    "apply_table_view",
    "apply_gate",
    "apply_ct_window",
    "set_ct_gap",
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
IMAGE_FRONTAL_RANK = 3  # a frontal the gate read from the pixels comes after every recorded one
ASSUMED_FRONTAL_RANK = 4
VIEW_ASSUMED_FRONTAL = "view_assumed_frontal"
INVERTED_CORRECTED = "inverted_corrected"  # an export with bone dark: inverted back before preprocessing
# Views a path table's ``view`` column may give (upper-cased), beside the DICOM ViewPosition values.
TABLE_FRONTAL_VIEWS = frozenset({"PA", "AP", "NN", "FRONTAL", "POSTEROANTERIOR", "ANTEROPOSTERIOR"})
RULES: tuple[str, ...] = (
    f"files with extension {', '.join(IGNORED_EXTENSIONS)} are not image candidates (counted in ignored_files)",
    "a path table (a labels CSV with a path column) lists the candidates instead: a path leading out of DATA "
    "-> outside_data, a listed file that does not exist -> missing_file",
    "patient id = first folder under DATA (path table: its patient_id); site = the table's site column; without "
    "one, internal when the folder name contains CAC, else external; an archive with neither is one site",
    "a header PatientID that differs from the folder name never wins (counted in header_id_mismatch)",
    "0 not a regular file (FIFO, socket, device, broken link or a link to one) -> not_regular_file, never opened",
    "1 not parseable as DICOM, PNG or JPEG -> unreadable",
    "2 no PixelData -> no_pixel_data",
    "3 Modality not in CR, DX, DR, RG, PX, OT, '' or a ct folder on the path -> not_radiograph",
    "4 NumberOfFrames > 1 -> multi_frame; more pixels than the limit (header or codestream) -> too_large",
    "5 lateral ViewPosition (or empty ViewPosition and a description saying LAT), or a lateral view in the path "
    "table -> lateral_view",
    "6 patient of a site not selected by --site -> other_site",
    "7 no label row for the patient -> no_label",
    "8 pixel data cannot be decoded -> unreadable, or too_large from the codestream (with --decode-check or the "
    "gate)",
    "8b the view gate on the pixels (with --gate): not a chest radiograph -> not_radiograph (the pixels decide the "
    "content); lateral -> lateral_view when neither header nor table gives a view (a recorded view wins and a "
    "contradiction is flagged); an export whose grey scale is inverted is corrected and flagged",
    "8c with --max-days N: no radiograph date or no ct_date -> no_date; more than N days from the CT -> "
    "outside_ct_window",
    "9 unknown-view candidates -> unknown_view when the patient has a frontal candidate (recorded or from the "
    "gate), else kept as frontal and flagged view_assumed_frontal",
    "10 one image per patient: with --max-days the closest to the CT first; then PA > AP > NN/FRONTAL > frontal "
    "from the gate > assumed frontal, then most pixels, then path order; the others -> extra_frontal",
    "labels: ids matched ignoring zero padding and case; <id>_corr replaces <id> (superseded_label); "
    "a second row for an id -> duplicate_label (first wins); cac_score missing, negative or not a "
    "number -> invalid_label; a usable row whose patient has no kept image -> label_without_image",
)


@dataclass
class FileRecord:
    """What ingest learned about one image candidate file (no identifying header values)."""

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
    source_format: str = ""
    study_date: str = ""  # ISO; the path table's study_date wins over the header's
    gap_days: int | None = None  # study_date - ct_date
    gate: str = ""  # the gate's verdict, described
    inverted: bool = False  # an export the gate found inverted: preprocessing inverts it back

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
    if meta is not None:
        record.source_format = meta.source_format
        record.study_date = meta.study_date
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
        record.detail = f"header: ViewPosition {meta.view!r}" if meta.view else "header: description says lateral"
    return record


def apply_table_view(record: FileRecord, view: str) -> None:
    """A path table's ``view`` for an image whose header gives none (an export never has one)."""
    if not view or record.reason or record.view:
        return
    record.view = view
    if view in TABLE_FRONTAL_VIEWS:
        record.frontal = True
    else:
        from cacxr.imaging import LATERAL_VIEWS

        if view in LATERAL_VIEWS:
            record.lateral = True
            record.reason, record.detail = "lateral_view", f"path table: view {view!r}"


def apply_gate(record: FileRecord, verdict: GateVerdict) -> None:
    """Rule 8b: the view gate's verdict on the record's pixels, through the one rule of ``cacxr.imaging.decide``."""
    recorded = "frontal" if record.frontal else ("lateral" if record.lateral else "")
    decision = decide(verdict, recorded, record.source_format, record.modality)
    record.gate = verdict.describe()
    if decision.reason:
        record.reason, record.detail = decision.reason, decision.detail
        return
    record.frontal, record.inverted = decision.frontal, decision.invert
    record.view_flag = decision.flag or record.view_flag


def set_ct_gap(record: FileRecord, ct_date: dt.date | None) -> None:
    """The radiograph's distance to its patient's CT in days (reported with or without a window)."""
    if ct_date is not None and record.study_date:
        record.gap_days = (dt.date.fromisoformat(record.study_date) - ct_date).days


def apply_ct_window(record: FileRecord, has_ct_date: bool, max_days: int) -> None:
    """Rule 8c: keep radiographs within ``max_days`` of the patient's CT (after :func:`set_ct_gap`)."""
    if record.gap_days is None:
        record.reason = "no_date"
        date_problem = record.detail or "no radiograph date (header or table)"  # e.g. an unreadable study_date
        record.detail = date_problem if has_ct_date else "the patient has no ct_date"
        return
    if abs(record.gap_days) > max_days:
        record.reason = "outside_ct_window"
        record.detail = f"taken {record.gap_days:+d} days from the CT (--max-days {max_days})"


def decode_file(path: str, patient_id: str, gate: bool = False) -> tuple[str, tuple[str, str], Any]:
    """Rules 8 and 8b's input: ``(path, (reason, detail), verdict)``; reason is ``""`` when the pixels decode.

    The reason is ``unreadable``, ``too_large`` when the codestream declares more pixels than the limit, or
    ``too_complex`` when decoding it would take too much work.
    ``verdict`` is the view gate's on the decoded image (with ``gate``), else None.
    """
    from cacxr.imaging import read_image

    try:
        result = read_image(path, patient_id=patient_id)
    except Exception as exc:  # a decoder crash on one file must not stop the batch
        return path, ("unreadable", f"pixel data cannot be decoded: {type(exc).__name__}: {exc}"), None
    if result.reason in ("too_large", "too_complex"):
        return path, (result.reason, result.detail.removeprefix(f"{path}: ")), None
    if result.reason or result.image is None:
        detail = result.detail.removeprefix(f"{path}: ") or result.reason or "no image"
        if not detail.startswith("pixel data cannot be decoded"):
            detail = f"pixel data cannot be decoded: {detail}"
        return path, ("unreadable", detail), None
    if not gate:
        return path, ("", ""), None
    from cacxr.imaging import classify

    return path, ("", ""), classify(result.image)


def select_images(records: list[FileRecord], closest_first: bool = False) -> dict[str, FileRecord]:
    """Rules 9-10 on the remaining candidates: the kept image of each patient; the others get a reason.

    ``closest_first`` (under ``--max-days``) ranks by the distance to the CT before the view.
    """
    by_patient: dict[str, list[FileRecord]] = {}
    for record in records:
        by_patient.setdefault(record.patient_id, []).append(record)
    kept: dict[str, FileRecord] = {}
    for patient_id, files in by_patient.items():
        # a frontal recorded in the header or the path table (not one the gate read from the pixels)
        has_frontal = any(f.frontal and f.view_flag != VIEW_FROM_IMAGE for f in files)
        pool = []
        for f in files:
            if f.frontal and (f.view_flag != VIEW_FROM_IMAGE or not has_frontal):
                pool.append(f)
            elif has_frontal:
                f.reason = "unknown_view"
                f.detail = f"ViewPosition {f.view!r} not recognised" if f.view else "no ViewPosition"
                f.detail += "; the patient has a frontal image"
            else:
                f.view_flag = VIEW_ASSUMED_FRONTAL
                pool.append(f)

        def rank(f: FileRecord) -> tuple[int, int, int, str]:
            gap = abs(f.gap_days) if closest_first and f.gap_days is not None else 0
            if not f.frontal:
                view_rank = ASSUMED_FRONTAL_RANK
            elif f.view_flag == VIEW_FROM_IMAGE:
                view_rank = IMAGE_FRONTAL_RANK
            else:
                view_rank = VIEW_PREFERENCE.get(f.view, 2)
            return gap, view_rank, -f.pixels, f.path

        pool.sort(key=rank)
        kept[patient_id] = pool[0]
        for f in pool[1:]:
            f.reason = "extra_frontal"
            winner = pool[0]
            view = winner.view or ("from the image" if winner.frontal else "assumed frontal")
            gap = "" if winner.gap_days is None else f", {winner.gap_days:+d} days from the CT"
            f.detail = f"{Path(winner.path).name} kept (view {view}{gap})"
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
        view_flag=";".join(filter(None, [record.view_flag, INVERTED_CORRECTED if record.inverted else ""])),
        modality=record.modality,
        photometric=record.photometric,
        rows=record.rows,
        cols=record.cols,
        source_format=record.source_format,
        study_date=record.study_date,
        ct_gap_days=math.nan if record.gap_days is None else float(record.gap_days),
        gate=record.gate,
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
    site_of_folder = {record.patient_id: record.site for record in records}
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
            if site != "all" and site_of_folder.get(folder, site) != site:
                detail += f" (site {site_of_folder[folder]} not selected)"
        rows.append(
            ExcludedRow(
                path="",
                patient_id=label.raw_id,
                reason="label_without_image",
                detail=f"{table.where(label)}: {detail}",
            )
        )
    return rows
