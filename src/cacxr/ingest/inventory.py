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
from cacxr.ingest.rules import (
    IGNORED_EXTENSIONS,
    RULES,
    VIEW_ASSUMED_FRONTAL,
    FileRecord,
    decode_file,
    inspect_file,
    label_exclusions,
    manifest_row,
    select_images,
)

__all__ = ["ingest", "SITES", "DEFAULT_LABELS"]

logger = logging.getLogger(__name__)

SITES: tuple[str, ...] = ("internal", "external", "all")
DEFAULT_LABELS = "site.db"
OUTPUTS = (MANIFEST_FILE, EXCLUDED_FILE, SUMMARY_FILE)


# --------------------------------------------------------------------------- workers (top level: picklable)


def _inspect_chunk(items: list[tuple[str, str, bool]]) -> list[FileRecord]:
    return [inspect_file(*item) for item in items]


def _decode_chunk(items: list[tuple[str, str]]) -> list[tuple[str, tuple[str, str]]]:
    return [decode_file(*item) for item in items]


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
    kept = select_images([r for r in records if not r.reason])
    manifest_rows = [manifest_row(record, label_of[pid]) for pid, record in kept.items()]
    excluded_rows = [
        ExcludedRow(path=r.path, patient_id=r.patient_id, reason=r.reason, detail=r.detail)
        for r in records
        if r.reason
    ]
    excluded_rows += label_exclusions(table, label_of, kept, records, site)

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
