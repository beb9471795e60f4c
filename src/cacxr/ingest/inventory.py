"""`cacxr ingest`: inventory a DICOM tree and its labels into manifest.csv + excluded.csv + ingest.json.

Every file under DATA is visited once and ends in exactly one of manifest.csv (one frontal radiograph
per labelled patient) or excluded.csv (with a reason code of ``EXCLUSION_REASONS``); files with a known
non-DICOM extension are only counted. Every label row without a usable image is in excluded.csv too. The
rules and their order are those of docs/ARCHITECTURE.md ("Ingest rules"), listed in ``RULES``.

DATA is only read: DICOM files through pydicom, the SQLite label table opened immutable; results are
written atomically into the output folder, which may not lie inside DATA.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from cacxr import __version__
from cacxr.core import CacxrError, file_kind, refuse_overwrite, write_json
from cacxr.ingest.labels import LabelRow, LabelTable, load_labels
from cacxr.ingest.manifest import (
    EXCLUDED_FILE,
    EXCLUSION_REASONS,
    MANIFEST_FILE,
    SUMMARY_FILE,
    ExcludedRow,
    ManifestRow,
    write_excluded,
    write_manifest,
)

__all__ = [
    "ingest",
    "IGNORED_EXTENSIONS",
    "SITES",
    "RULES",
    "VIEW_PREFERENCE",
    "site_of",
    "FileRecord",
]

logger = logging.getLogger(__name__)

IGNORED_EXTENSIONS: tuple[str, ...] = (".db", ".sqlite", ".csv", ".json", ".txt", ".md", ".xlsx", ".log")
SITES: tuple[str, ...] = ("internal", "external", "all")
DEFAULT_LABELS = "site.db"
OUTPUTS = (MANIFEST_FILE, EXCLUDED_FILE, SUMMARY_FILE)
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


# --------------------------------------------------------------------------- workers (top level: picklable)


def _inspect_file(path: str, patient_id: str, in_ct_folder: bool) -> FileRecord:
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


def _inspect_chunk(items: list[tuple[str, str, bool]]) -> list[FileRecord]:
    return [_inspect_file(*item) for item in items]


def _decode_file(path: str, patient_id: str) -> tuple[str, tuple[str, str]]:
    """Rule 8: ``(path, (reason, detail))``; reason is ``""`` when the pixels decode.

    The reason is ``unreadable``, or ``too_large`` when the codestream declares more pixels than the limit.
    """
    from cacxr.imaging import read_image

    try:
        result = read_image(path, patient_id=patient_id)
    except Exception as exc:  # a decoder crash on one file must not stop the batch
        return path, ("unreadable", f"pixel data cannot be decoded: {type(exc).__name__}: {exc}")
    if result.reason == "too_large":
        return path, ("too_large", result.detail.removeprefix(f"{path}: "))
    if result.reason or result.image is None:
        detail = result.detail.removeprefix(f"{path}: ") or result.reason or "no image"
        if not detail.startswith("pixel data cannot be decoded"):
            detail = f"pixel data cannot be decoded: {detail}"
        return path, ("unreadable", detail)
    return path, ("", "")


def _decode_chunk(items: list[tuple[str, str]]) -> list[tuple[str, tuple[str, str]]]:
    return [_decode_file(*item) for item in items]


T = TypeVar("T")
R = TypeVar("R")


def _run_chunks(
    func: Callable[[list[T]], list[R]],
    items: list[T],
    workers: int,
    progress: bool,
    desc: str,
) -> list[R]:
    """Apply ``func`` to chunks of ``items`` (in a process pool when workers > 1), with a progress bar."""
    results: list[R] = []
    with tqdm(total=len(items), desc=desc, unit="file", disable=not progress) as bar:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                results.extend(func([item]))
                bar.update(1)
            return results
        # several chunks per worker keep all busy when files differ in size
        size = max(1, min(64, math.ceil(len(items) / (workers * 4))))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
            futures = {pool.submit(func, chunk): len(chunk) for chunk in chunks}
            for future in as_completed(futures):
                results.extend(future.result())
                bar.update(futures[future])
    return results


# --------------------------------------------------------------------------- the inventory


def _check_paths(data: Path, out: Path, overwrite: bool) -> None:
    if not data.exists():
        raise CacxrError(f"{data}: DATA folder not found")
    if not data.is_dir():
        raise CacxrError(
            f"{data}: DATA is a file, not a folder (give the folder holding the patient folders)"
        )
    data_real, out_real = data.resolve(), out.resolve()
    if out_real == data_real or data_real in out_real.parents:
        raise CacxrError(
            f"{out}: the output folder may not be inside DATA ({data}); DATA is never written to"
        )
    if out.exists() and not out.is_dir():
        raise CacxrError(f"{out}: the output path exists and is not a folder")
    for name in OUTPUTS:  # an earlier ingest's results are never replaced silently
        refuse_overwrite(out / name, overwrite)


def _walk(data: Path) -> tuple[list[tuple[str, str, bool]], int]:
    """DICOM candidates ``(path, patient_id, in_ct_folder)`` in path order, and the count of ignored files."""
    candidates: list[tuple[str, str, bool]] = []
    ignored = 0
    for root, dirs, files in os.walk(data):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            if path.suffix.lower() in IGNORED_EXTENSIONS:
                ignored += 1
                continue
            parts = path.relative_to(data).parts
            patient_id = parts[0] if len(parts) > 1 else ""
            in_ct_folder = any(part.lower() == "ct" for part in parts[:-1])
            candidates.append((str(path.absolute()), patient_id, in_ct_folder))
    candidates.sort(key=lambda c: c[0])
    return candidates, ignored


def _select(records: list[FileRecord]) -> dict[str, FileRecord]:
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


def _resolve_labels(data: Path, labels: str | os.PathLike[str] | None) -> Path:
    chosen = Path(labels) if labels is not None else data / DEFAULT_LABELS
    kind = file_kind(chosen)
    if kind not in ("", "missing"):  # a FIFO or a link to a device would block or never end
        raise CacxrError(f"{chosen}: the label table is {kind}, not a regular file; it is not opened")
    if labels is not None:
        return Path(labels)
    default = data / DEFAULT_LABELS
    if not default.is_file():
        raise CacxrError(
            f"{data}: no labels found ({DEFAULT_LABELS} is not in DATA); pass --labels FILE (site.db or CSV)"
        )
    return default


def ingest(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    site: str = "internal",
    workers: int | None = None,
    decode_check: bool = True,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Inventory and clean a DICOM tree into ``out``/manifest.csv, excluded.csv and ingest.json.

    Args:
        data: the cohort folder (``DATA/<patient>/rx/*.dcm``, usually with ``DATA/site.db``).
        out: the output folder (created; may not be inside ``data``).
        labels: the label table (site.db or CSV); default ``data/site.db``.
        site: ``internal`` (folder names containing CAC), ``external`` or ``all``.
        workers: processes reading files in parallel (default: the CPU count; 1 = no pool).
        decode_check: decode the pixels of the files that reach rule 8, so that an undecodable file
            never reaches the manifest.
        progress: show tqdm progress bars.
        overwrite: replace the outputs of an earlier ingest in ``out`` (default: refuse).

    Returns:
        The content of ingest.json: counts per reason, patients used per site, id fixes, rules, ...

    Raises:
        CacxrError: DATA missing, a file, or without DICOM files; the output inside DATA; labels missing
            or without the id / cac_score columns; an unknown ``site``.
    """
    started = time.perf_counter()
    data, out = Path(data), Path(out)
    if site not in SITES:
        raise CacxrError(f"unknown site {site!r}: choose one of {', '.join(SITES)}")
    _check_paths(data, out, overwrite)
    candidates, ignored = _walk(data)
    if not candidates:
        raise CacxrError(f"{data}: no DICOM files found ({ignored} non-DICOM files)")
    label_path = _resolve_labels(data, labels)
    table = load_labels(label_path)
    workers = max(1, int(workers or os.cpu_count() or 1))
    logger.info("%s: %d DICOM candidate files, %d workers", data, len(candidates), workers)

    # Rules 1-5 from the headers (parallel), then 6-7 from the site and the label table.
    records = _run_chunks(_inspect_chunk, candidates, workers, progress, "ingest: headers")
    records.sort(key=lambda r: r.path)
    label_of, padding_fixes = table.match({r.patient_id for r in records if r.patient_id})
    selected_sites = {"internal", "external"} if site == "all" else {site}
    for record in records:
        if record.reason:
            continue
        if not record.patient_id:
            record.reason, record.detail = "no_label", "file is not inside a patient folder"
        elif record.site not in selected_sites:
            record.reason, record.detail = "other_site", f"site {record.site}, --site {site}"
        elif record.patient_id not in label_of:
            record.reason, record.detail = "no_label", "no label row for this patient"

    # Rule 8: decode what is still a candidate.
    if decode_check:
        todo = [(r.path, r.patient_id) for r in records if not r.reason]
        problems = dict(_run_chunks(_decode_chunk, todo, workers, progress, "ingest: decoding"))
        for record in records:
            reason, detail = problems.get(record.path, ("", ""))
            if reason:
                record.reason, record.detail = reason, detail

    # Rules 9-10: one image per patient.
    kept = _select([r for r in records if not r.reason])
    manifest_rows = [_manifest_row(record, label_of[pid]) for pid, record in kept.items()]
    excluded_rows = [
        ExcludedRow(path=r.path, patient_id=r.patient_id, reason=r.reason, detail=r.detail)
        for r in records
        if r.reason
    ]
    excluded_rows += _label_exclusions(table, label_of, kept, records, site)

    out.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest_rows, out / MANIFEST_FILE)
    write_excluded(excluded_rows, out / EXCLUDED_FILE)
    summary = _summary(
        data=data,
        out=out,
        label_path=label_path,
        table=table,
        site=site,
        decode_check=decode_check,
        workers=workers,
        n_candidates=len(candidates),
        ignored=ignored,
        records=records,
        manifest_rows=manifest_rows,
        excluded_rows=excluded_rows,
        label_of=label_of,
        padding_fixes=padding_fixes,
    )
    summary["seconds"] = round(time.perf_counter() - started, 2)
    write_json(out / SUMMARY_FILE, summary)
    logger.info(
        "ingest: %d patients kept, %d rows excluded, outputs in %s",
        len(manifest_rows),
        len(excluded_rows),
        out,
    )
    return summary


def _manifest_row(record: FileRecord, label: LabelRow) -> ManifestRow:
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


def _label_exclusions(
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


def _count(values: Iterable[str]) -> dict[str, int]:
    counter = Counter(values)
    return {key: counter[key] for key in sorted(counter)}


def _summary(
    *,
    data: Path,
    out: Path,
    label_path: Path,
    table: LabelTable,
    site: str,
    decode_check: bool,
    workers: int,
    n_candidates: int,
    ignored: int,
    records: list[FileRecord],
    manifest_rows: list[ManifestRow],
    excluded_rows: list[ExcludedRow],
    label_of: dict[str, LabelRow],
    padding_fixes: list[dict[str, Any]],
) -> dict[str, Any]:
    """The content of ingest.json."""
    counts = Counter(r.reason for r in excluded_rows)
    mismatch = Counter(r.patient_id for r in records if r.header_id_matches is False)
    header_fixes = [
        {"fix": "header_patient_id_ignored", "patient_id": folder, "files": n}
        for folder, n in sorted(mismatch.items())
    ]
    folder_of = {row.raw_id: folder for folder, row in label_of.items()}
    corr_fixes = [dict(fix, patient_id=folder_of.get(fix["label_id"], "")) for fix in table.fixes]
    return {
        "cacxr_version": __version__,
        "data": str(data.absolute()),
        "out": str(out.absolute()),
        "outputs": {name: str((out / name).absolute()) for name in OUTPUTS},
        "site": site,
        "decode_check": decode_check,
        "workers": workers,
        "labels": {
            "source": str(label_path.absolute()),
            "format": table.format,
            "rows": len(table.rows),
            "usable": len(table.usable),
            "age_source": "label table" if table.has_age else "DICOM header",
        },
        "n_files": n_candidates + ignored,
        "n_dicom_candidates": n_candidates,
        "ignored_files": ignored,
        "n_manifest": len(manifest_rows),
        "n_excluded": len(excluded_rows),
        "n_patients": {
            "total": len(manifest_rows),
            **{s: sum(r.site == s for r in manifest_rows) for s in ("internal", "external")},
        },
        "counts": {reason: counts.get(reason, 0) for reason in EXCLUSION_REASONS},
        "view_assumed_frontal": sum(r.view_flag == VIEW_ASSUMED_FRONTAL for r in manifest_rows),
        "views_kept": _count(r.view or "assumed" for r in manifest_rows),
        "header_id_mismatch": sum(mismatch.values()),
        "id_fixes": corr_fixes + padding_fixes + header_fixes,
        "rules": list(RULES),
    }
