"""Building (or updating) an image store: every image of a manifest decoded and preprocessed once, in parallel.

The layout and the rules for keeping and rebuilding entries are :mod:`cacxr.pixels.store`'s. Entries and
sidecars are written atomically, the .npy before its sidecar, so an interrupted build leaves only complete
entries; concurrent builds of one store take turns through the lock file.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cacxr.core import CacxrError, atomic_path, data_roots, one_thread_per_worker, refuse_inside, write_json
from cacxr.ingest import ManifestRow, read_manifest
from cacxr.pixels.profiles import (
    DEFAULT_PROFILE,
    Profile,
    check_image_size,
    get_profile,
    preprocess_read,
    read_for_profile,
)
from cacxr.pixels.store import (
    DECODE_FULL,
    DECODE_REDUCED,
    ENTRIES_DIR,
    FORMAT_VERSION,
    INDEX_FILE,
    LOCK_FILE,
    STORE_FORMAT,
    ImageStore,
    entry_stem,
    index_entry,
    open_entry,
    read_index,
    read_json,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Task:
    """One image to (re)build, sent to a worker process (small: paths and settings only)."""

    patient_id: str
    source: str
    entry: str  # file stem inside OUT/entries
    entries_dir: str
    profile: Profile
    image_size: int
    key: dict[str, Any]
    full_decode: bool = False


def default_workers() -> int:
    """The number of CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def build_store(
    rows: list[ManifestRow] | str | os.PathLike[str],
    out: str | os.PathLike[str],
    profile: str | Profile = DEFAULT_PROFILE,
    image_size: int = 1024,
    workers: int | None = None,
    progress: bool = True,
    full_decode: bool | None = None,
) -> ImageStore:
    """Build or update the image store of a manifest.

    Args:
        rows: manifest rows, or the path of a manifest.csv (relative image paths are then taken
            relative to its folder).
        out: the store folder (created if needed); nothing is written outside it.
        profile: preprocessing profile name or ``Profile``.
        image_size: side ``S`` of the stored images.
        workers: bounded worker processes (``cacxr.imaging.bounded_pool``); ``None`` uses every available
            core. Files are never decoded in this process.
        progress: show a progress bar.
        full_decode: True decodes every file in full; False decodes JPEG 2000 and 8-bit JPEG files only as
            large as the profile needs (``pixels.read_for_profile``); None (default) keeps the decode mode
            of an existing store at ``out`` (so a store built with ``cacxr preprocess --full-decode`` stays
            so when training reuses it) and is False for a new one. The mode is part of every entry's key:
            entries built in another mode (or before reduced decoding existed) are rebuilt, never mixed.

    Returns:
        The store; its ``summary`` counts ``rows``, ``reused``, ``built``, ``failed`` and why
        entries were built (``new``, ``changed``, ``corrupt``, ``retried``), with ``messages``
        (one per failed image: id, file and reason) and ``seconds``.

    Raises:
        CacxrError: the manifest cannot be read or lists a patient twice, the settings are
            invalid, or ``out`` is a file or holds an index.json that is not an image store's.
    """
    started = time.perf_counter()
    spec = get_profile(profile)
    check_image_size(image_size)
    rows, base = _load_rows(rows)
    root = Path(out)
    # Nothing is ever written under a data folder, whatever --store / --out says.
    refuse_inside(root, data_roots((_resolve(r.path, base), r.patient_id) for r in rows), "the image store")
    if root.exists() and not root.is_dir():
        raise CacxrError(f"{root}: exists and is not a folder; choose a folder for the image store")
    if (root / INDEX_FILE).exists() and read_index(root) is None:
        raise CacxrError(
            f"{root / INDEX_FILE}: exists but is not a cacxr image store index; choose another --out"
        )
    if full_decode is None:
        previous = read_index(root) if (root / INDEX_FILE).exists() else None
        full_decode = (previous or {}).get("decode") == DECODE_FULL
    decode = DECODE_FULL if full_decode else DECODE_REDUCED
    entries_dir = root / ENTRIES_DIR
    entries_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = dict.fromkeys(("reused", "built", "new", "changed", "corrupt", "retried"), 0)
    failed: dict[str, str] = {}
    with _exclusive_build(root):
        _remove_stale_temporaries(root)
        entries: dict[str, dict[str, Any]] = {}
        tasks: list[_Task] = []
        for row in tqdm(rows, desc="checking store", unit="image", disable=not progress, leave=False):
            source = _resolve(row.path, base)
            try:
                stat = os.stat(source)
            except OSError as exc:
                failed[row.patient_id] = f"{source}: cannot read the file ({exc.strerror or exc})"
                continue
            key = {
                "source": str(source),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "profile": spec.name,
                "profile_version": spec.version,
                "image_size": image_size,
                "decode": decode,
            }
            stem = entry_stem(row.patient_id)
            sidecar = read_json(entries_dir / f"{stem}.json")
            cause = _rebuild_cause(sidecar, key, entries_dir / f"{stem}.npy", image_size)
            if cause == "corrupt":
                logger.warning(
                    "%s: damaged store entry of patient %s (size or CRC32 differs); rebuilding it",
                    entries_dir / f"{stem}.npy",
                    row.patient_id,
                )
            if cause is None:
                entries[row.patient_id] = index_entry(stem, sidecar)
            else:
                tasks.append(
                    _Task(row.patient_id, str(source), stem, str(entries_dir), spec, image_size, key, full_decode)
                )
            summary[cause or "reused"] += 1

        if tasks:
            # The old index would describe entries about to change: a store is complete or says so.
            (root / INDEX_FILE).unlink(missing_ok=True)
        for task, result in _run_tasks(tasks, workers, progress, gate=any(map(_is_export, rows))):
            if result["status"] == "ok":
                entries[task.patient_id] = index_entry(task.entry, result)
                summary["built"] += 1
            else:
                detail = f" ({result['detail']})" if result.get("detail") else ""
                failed[task.patient_id] = f"{task.source}: {result['reason']}{detail}"
        index = {
            "format": STORE_FORMAT,
            "format_version": FORMAT_VERSION,
            "profile": spec.name,
            "profile_version": spec.version,
            "image_size": image_size,
            "decode": decode,
            "entries": dict(sorted(entries.items())),
            "failed": dict(sorted(failed.items())),
        }
        write_json(root / INDEX_FILE, index)

    summary.update(rows=len(rows), failed=len(failed), seconds=round(time.perf_counter() - started, 3))
    summary["messages"] = [f"{pid}: {message}" for pid, message in index["failed"].items()]
    for message in summary["messages"]:
        logger.warning("not stored: %s", message)
    return ImageStore(root, index, summary)


@contextmanager
def _exclusive_build(root: Path) -> Iterator[None]:
    """Hold ``root/.build.lock`` so that two builds of one store (e.g. parallel fold jobs) take turns."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; builds are still atomic per entry
        yield
        return
    with open(root / LOCK_FILE, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("%s: waiting for another build of this image store to finish", root)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_rows(rows: list[ManifestRow] | str | os.PathLike[str]) -> tuple[list[ManifestRow], Path]:
    """The manifest rows and the folder relative image paths are resolved against."""
    if isinstance(rows, (str, os.PathLike)):
        manifest = Path(rows)
        listed = read_manifest(manifest)
        if not listed:
            raise CacxrError(f"{manifest}: the manifest lists no images (nothing to preprocess)")
        return listed, manifest.resolve().parent
    rows = list(rows)
    if not rows:
        raise CacxrError("no manifest rows given (nothing to preprocess)")
    seen: set[str] = set()
    for row in rows:
        if row.patient_id in seen:
            raise CacxrError(f"patient {row.patient_id} is listed twice (one image per patient)")
        seen.add(row.patient_id)
    return rows, Path.cwd()


def _resolve(path: str, base: Path) -> Path:
    source = Path(path).expanduser()
    return source if source.is_absolute() else (base / source)


def _rebuild_cause(sidecar: dict[str, Any] | None, key: dict[str, Any], npy: Path, size: int) -> str | None:
    """Why an entry must be built: ``new``, ``changed``, ``corrupt``, ``retried``; None to reuse it."""
    if sidecar is None:
        return "new"
    if sidecar.get("key") != key:
        return "changed"
    if sidecar.get("status") != "ok":
        return "retried"  # a failure is retried: it is cheap and the reader may have been fixed
    image, _ = open_entry(npy, sidecar.get("nbytes"), sidecar.get("crc32"), size, verify=True)
    return "corrupt" if image is None else None


def _remove_stale_temporaries(root: Path) -> None:
    """Delete the temporary files a killed build left (only cacxr.core.atomic's ``.<name>.*.tmp`` files)."""
    for leftover in [*root.glob(f".{INDEX_FILE}.*.tmp"), *(root / ENTRIES_DIR).glob(".*.tmp")]:
        leftover.unlink(missing_ok=True)


def _is_export(row: ManifestRow) -> bool:
    """An image export (PNG/JPEG): its preprocessing asks the view gate whether its grey scale is inverted."""
    fmt = row.source_format or Path(row.path).suffix.lower().lstrip(".")
    return fmt in ("png", "jpeg", "jpg")


def store_worker_modules() -> tuple[str, ...]:
    """What every store worker imports before it reads a DICOM (the gate's network only for exports)."""
    from cacxr.imaging import READER_MODULES

    return (*READER_MODULES, "cv2", "cacxr.pixels.build")


def _run_tasks(tasks: list[_Task], workers: int | None, progress: bool, gate: bool) -> Iterator[tuple[_Task, dict]]:
    """Yield ``(task, result)`` as entries finish, every file read in a bounded worker process.

    ``cacxr.imaging.bounded_pool``: a decoder that aborts, exhausts its worker's memory cap or loops costs
    that entry (recorded as failed with the pool's reason, retried by the next build), never the build.
    ``gate``: the workers load the view gate's network too (torch: seconds per worker, so only for exports).
    """
    from cacxr.imaging import bounded_pool

    if not tasks:
        return
    workers = default_workers() if workers is None else max(1, int(workers))
    preload = (*store_worker_modules(), *(("torch", "cacxr.imaging.viewgate") if gate else ()))
    with (
        tqdm(total=len(tasks), desc="preprocessing", unit="image", disable=not progress) as bar,
        # On Ctrl-C (or an error) the pool stops; finished entries are complete on disk.
        bounded_pool(min(workers, len(tasks)), preload, one_thread_per_worker) as pool,
    ):
        for task, outcome in zip(tasks, pool.map(_build_entry, tasks), strict=True):
            result = outcome.value if outcome.ok else _failed_entry(task, outcome.reason, outcome.detail)
            bar.update()
            yield task, result


def _failed_entry(task: _Task, reason: str, detail: str) -> dict[str, Any]:
    """The sidecar of an entry whose worker could not finish it (it died or went over a limit)."""
    sidecar = {"patient_id": task.patient_id, "key": task.key, "status": "failed", "reason": reason, "detail": detail}
    write_json(Path(task.entries_dir) / f"{task.entry}.json", sidecar)
    return sidecar


def _build_entry(task: _Task) -> dict[str, Any]:
    """Read, preprocess and write one entry (in a worker process); returns its sidecar content."""
    entries_dir = Path(task.entries_dir)
    sidecar: dict[str, Any] = {"patient_id": task.patient_id, "key": task.key}
    try:
        result = read_for_profile(
            task.source, task.profile, task.image_size, patient_id=task.patient_id, full_decode=task.full_decode
        )
        if result.image is None:
            sidecar.update(status="failed", reason=result.reason or "unreadable", detail=result.detail)
        else:
            image = preprocess_read(result, task.profile, task.image_size)
            npy = entries_dir / f"{task.entry}.npy"
            with atomic_path(npy) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, image, allow_pickle=False)
                nbytes = tmp.stat().st_size
            sidecar.update(status="ok", nbytes=nbytes, crc32=zlib.crc32(image))
    except Exception as exc:  # any per-file problem is recorded; the batch goes on
        sidecar.update(status="failed", reason="error", detail=f"{type(exc).__name__}: {exc}")
    write_json(entries_dir / f"{task.entry}.json", sidecar)
    return sidecar
