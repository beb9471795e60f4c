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
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from cacxr.core import CacxrError, file_kind, one_thread_per_worker, refuse_overwrite, write_json
from cacxr.imaging import READER_MODULES, bounded_pool
from cacxr.ingest.labels import LabelTable, label_key, load_labels
from cacxr.ingest.manifest import (
    EXCLUDED_FILE,
    MANIFEST_FILE,
    OUTPUTS,
    SUMMARY_FILE,
    ExcludedRow,
    write_excluded,
    write_manifest,
)
from cacxr.ingest.rules import (
    IGNORED_EXTENSIONS,
    FileRecord,
    apply_ct_window,
    apply_gate,
    apply_table_view,
    decode_file,
    inspect_file,
    label_exclusions,
    manifest_row,
    select_images,
    set_ct_gap,
    site_of,
)
from cacxr.ingest.summary import ingest_summary

__all__ = ["ingest", "SITES", "DEFAULT_LABELS"]

logger = logging.getLogger(__name__)

SITES: tuple[str, ...] = ("internal", "external", "all")
DEFAULT_LABELS = "site.db"


# --------------------------------------------------------------------------- the bounded workers

# A worker imports these before its address space is capped: the reader, and the view gate's network.
GATE_MODULES = (*READER_MODULES, "cv2", "torch", "cacxr.imaging.viewgate")

T = TypeVar("T")
R = TypeVar("R")


def _run_bounded(
    pool: Any,
    func: Callable[..., R],
    items: list[tuple],
    failed: Callable[[tuple, Any], R],
    progress: bool,
    desc: str,
) -> list[R]:
    """``func(*item)`` for every item in the bounded pool, with a progress bar.

    One file per task: a decoder that aborts, exhausts its worker's memory cap or loops costs that file
    (``failed(item, TaskResult)`` makes its result, with the pool's reason), never the run.
    """
    results: list[R] = []
    with tqdm(total=len(items), desc=desc, unit="file", disable=not progress) as bar:
        for item, outcome in zip(items, pool.map(func, items, star=True), strict=True):
            results.append(outcome.value if outcome.ok else failed(item, outcome))
            bar.update()
    return results


def _header_failed(item: tuple[str, str, bool], outcome: Any) -> FileRecord:
    path, patient_id, _ = item
    return FileRecord(path=path, patient_id=patient_id, site="", reason=outcome.reason, detail=outcome.detail)


def _decode_failed(item: tuple[str, str, bool], outcome: Any) -> tuple[str, tuple[str, str], Any]:
    return item[0], (outcome.reason, outcome.detail), None


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


def _check_gate_loads() -> None:
    """Load the view gate before any work: without it (torch missing, or refused the address space it maps
    under ``ulimit -v``) every file would fail the same way in the workers."""
    try:
        from cacxr.imaging import gate_version

        gate_version()
    except (ImportError, OSError) as exc:
        raise CacxrError(
            f"the view gate cannot be loaded ({type(exc).__name__}: {exc}); torch must be installed and may need "
            "about 4 GB of address space (ulimit -v); --no-gate ingests without reading the view from the pixels"
        ) from None


def _listed(data: Path, table: LabelTable) -> tuple[list[tuple[str, str, bool]], list[ExcludedRow]]:
    """A path table's candidates ``(path, patient_id, False)`` and its rows that name no usable file."""
    root = data.resolve()
    candidates: list[tuple[str, str, bool]] = []
    problems: list[ExcludedRow] = []
    for image in table.images:
        where = table.where(image)
        path = data / image.path
        if not image.path or not path.resolve().is_relative_to(root):
            reason = "outside_data"
            detail = f"{where}: path {image.path!r} leads out of {data}" if image.path else f"{where}: empty path"
            problems.append(ExcludedRow(path=image.path, patient_id=image.patient_id, reason=reason, detail=detail))
        elif not path.exists() and not path.is_symlink():
            problems.append(
                ExcludedRow(
                    path=str(path.absolute()), patient_id=image.patient_id, reason="missing_file",
                    detail=f"{where}: no such file",
                )
            )  # fmt: skip
        else:
            candidates.append((str(path.absolute()), image.patient_id, False))
    return sorted(set(candidates)), problems


def _site_rule(
    table: LabelTable, patient_ids: Iterable[str], site: str
) -> tuple[str, Callable[[str], str], bool]:
    """How sites are assigned (for ingest.json), the site of a patient id, and whether ``--site`` selects.

    An archive that says nothing of its sites (no site column, no folder name with CAC) is one site: every
    patient gets the asked-for site and ``--site`` selects nobody out.
    """
    if "site" in table.columns:
        by_key = {row.key: row.site for row in table.usable}
        return "the label table's site column", lambda pid: by_key.get(label_key(pid), ""), True
    if any("CAC" in pid.upper() for pid in patient_ids):
        return "folder name: internal when it contains CAC, else external", site_of, True
    one_site = site if site in ("internal", "external") else "internal"
    described = f"one site: no site column and no folder name with CAC, every patient is {one_site}"
    return described, lambda _: one_site, False


def _refuse_empty(data: Path) -> None:
    """Raise when no file under ``data`` is an image candidate (stops at the first one)."""
    for _, _, files in os.walk(data):
        if any(Path(name).suffix.lower() not in IGNORED_EXTENSIONS for name in files):
            return
    raise CacxrError(f"{data}: no image files found (DICOM, PNG or JPEG)")


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
    max_days: int | None = None,
    gate: bool = True,
) -> dict[str, Any]:
    """Inventory and clean an archive into ``out``/manifest.csv, excluded.csv and ingest.json.

    Args:
        data: the cohort folder: patient folders of DICOM, PNG or JPEG files (``DATA/<patient>/...``,
            usually with ``DATA/site.db``), or any layout a path table lists.
        out: the output folder (created; may not be inside ``data``).
        labels: the label table (site.db or CSV); default ``data/site.db``.
        site: ``internal`` (folder names containing CAC), ``external``, ``all``, or a value of the label
            table's ``site`` column.
        workers: bounded worker processes reading files in parallel (default: the CPU count); every file
            is parsed and decoded in one of them, never in this process.
        decode_check: decode the pixels of the files that reach rule 8, so that an undecodable file
            never reaches the manifest.
        progress: show tqdm progress bars.
        overwrite: replace the outputs of an earlier ingest in ``out`` (default: refuse).
        max_days: keep only radiographs taken within this many days of the patient's ``ct_date``, the
            closest first (None: no window; dates are then only reported).
        gate: run the view gate on the pixels of every candidate (rule 8b).

    Returns:
        The content of ingest.json: counts per reason, patients used per site, id fixes, rules, ...

    Raises:
        CacxrError: DATA missing, a file, or without DICOM files; the output inside DATA; labels missing
            or without the id / cac_score columns; an unknown ``site``.
    """
    started = time.perf_counter()
    data, out = Path(data), Path(out)
    if max_days is not None and max_days < 0:
        raise CacxrError(f"--max-days must be 0 or more (got {max_days})")
    _check_paths(data, out, overwrite)
    if gate:
        _check_gate_loads()
    try:
        label_path = _resolve_labels(data, labels)
    except CacxrError:
        _refuse_empty(data)  # no images at all is the first thing to say
        raise
    table = load_labels(label_path)
    listed: list[ExcludedRow] = []
    if table.images:
        candidates, listed = _listed(data, table)
        ignored = 0
    else:
        candidates, ignored = _walk(data)
    if not candidates and not listed:
        raise CacxrError(f"{data}: no image files found ({ignored} other files)")
    table_sites = {row.site for row in table.usable if row.site} if "site" in table.columns else set()
    if site not in SITES and site not in table_sites:
        known = ", ".join([*SITES, *sorted(table_sites)])
        raise CacxrError(f"unknown site {site!r}: choose one of {known}")
    site_rule, site_of_patient, sites_select = _site_rule(table, (c[1] for c in candidates), site)
    workers = max(1, int(workers or os.cpu_count() or 1))
    logger.info("%s: %d candidate files, %d workers", data, len(candidates), workers)

    # Every file is parsed and decoded in bounded worker processes: whatever a file does to its decoder
    # (abort, exhaust the memory cap, loop) costs that file one reason, never the run.
    preload = GATE_MODULES if gate else READER_MODULES
    with bounded_pool(min(workers, max(1, len(candidates))), preload, one_thread_per_worker) as pool:
        # Rules 1-5 from the headers (parallel), then 6-7 from the site and the label table.
        records = _run_bounded(pool, inspect_file, candidates, _header_failed, progress, "ingest: headers")
        records.sort(key=lambda r: r.path)
        listing = {str((data / image.path).absolute()): image for image in table.images}
        label_of, padding_fixes = table.match({r.patient_id for r in records if r.patient_id})
        for record in records:
            record.site = site_of_patient(record.patient_id) if record.patient_id else ""
            image = listing.get(record.path)
            if image is not None:
                apply_table_view(record, image.view)
                if image.study_date is not None:
                    record.study_date = image.study_date.isoformat()
                elif image.note:
                    record.detail = image.note
            if record.reason:
                continue
            if not record.patient_id:
                record.reason, record.detail = "no_label", "file is not inside a patient folder"
            elif sites_select and site != "all" and record.site != site:
                record.reason, record.detail = "other_site", f"site {record.site}, --site {site}"
            elif record.patient_id not in label_of:
                record.reason, record.detail = "no_label", "no label row for this patient"

        # Rules 8 and 8b: decode what is still a candidate, and let the view gate read its pixels.
        if decode_check or gate:
            todo = [(r.path, r.patient_id, gate) for r in records if not r.reason]
            checked = _run_bounded(pool, decode_file, todo, _decode_failed, progress, "ingest: decoding")
            decoded = {path: (problem, verdict) for path, problem, verdict in checked}
            for record in records:
                (reason, detail), verdict = decoded.get(record.path, (("", ""), None))
                if reason:
                    record.reason, record.detail = reason, detail
                elif verdict is not None:
                    apply_gate(record, verdict)

    # Rule 8c: the CT window.
    for record in records:
        if record.reason or not record.patient_id or record.patient_id not in label_of:
            continue
        ct_date = label_of[record.patient_id].ct_date
        set_ct_gap(record, ct_date)
        if max_days is not None:
            apply_ct_window(record, ct_date is not None, max_days)

    # Rules 9-10: one image per patient.
    kept = select_images([r for r in records if not r.reason], closest_first=max_days is not None)
    manifest_rows = [manifest_row(record, label_of[pid]) for pid, record in kept.items()]
    excluded_rows = listed + [
        ExcludedRow(path=r.path, patient_id=r.patient_id, reason=r.reason, detail=r.detail)
        for r in records
        if r.reason
    ]
    excluded_rows += label_exclusions(table, label_of, kept, records, site)

    out.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest_rows, out / MANIFEST_FILE)
    write_excluded(excluded_rows, out / EXCLUDED_FILE)
    summary = ingest_summary(
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
        site_rule=site_rule,
        max_days=max_days,
        gate=gate,
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


