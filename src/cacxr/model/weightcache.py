"""The cache of named weights (``$CACXR_HOME/weights/<name>/``): fetching, importing and verifying files.

A file enters the cache only after it has been verified: downloads go to a temporary file beside the
cache (pooch's downloader, with a progress bar), are checked for size and SHA-256 (cacxr.model.registry says
against what), then moved into place. An interrupted or corrupted download therefore never looks cached.
Where no checksum is published, the one seen at the first fetch or import is recorded in
``$CACXR_HOME/weights/recorded.json`` and enforced afterwards. ``CACXR_OFFLINE=1`` forbids downloading;
files are then copied in by hand with :func:`import_file` (``cacxr weights import NAME FILE``).
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cacxr.core import CacxrError, read_json_object, write_json
from cacxr.model.registry import WeightSource, cache_home, get_source

__all__ = [
    "RECORD_FILE",
    "weights_dir",
    "offline",
    "expected_checksum",
    "cached_file",
    "fetch",
    "import_file",
    "weights_path",
]

RECORD_FILE = "recorded.json"
_TIMEOUT_S = 30


def weights_dir() -> Path:
    """The folder holding cached weight files and the recorded checksums."""
    return cache_home() / "weights"


def offline() -> bool:
    """True when ``CACXR_OFFLINE`` asks cacxr never to download."""
    return os.environ.get("CACXR_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# ---- checksums ---------------------------------------------------------------------------------------------


def _recorded() -> dict[str, Any]:
    path = weights_dir() / RECORD_FILE
    return read_json_object(path) if path.is_file() else {}


def expected_checksum(source: WeightSource) -> tuple[str | None, int | None, str]:
    """What a file of ``source`` is verified against: ``(sha256 or prefix, size, origin)``.

    ``origin`` is ``published``, ``recorded`` (at the first fetch or import) or ``none yet``.
    """
    if source.sha256:
        return source.sha256.lower(), source.size, "published"
    seen = _recorded().get(source.name)
    if isinstance(seen, dict) and seen.get("sha256"):
        return str(seen["sha256"]), seen.get("size"), "recorded"
    return None, source.size, "none yet"


def _verify(source: WeightSource, path: Path, what: str) -> str:
    """Check the size and SHA-256 of ``path``; returns its SHA-256.

    Raises:
        CacxrError: one line naming ``what`` and the reason.
    """
    import pooch

    expected, size, origin = expected_checksum(source)
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise CacxrError(f"{what}: wrong size for weights '{source.name}': {actual_size} bytes, expected {size}")
    digest = pooch.file_hash(str(path), alg="sha256")
    if expected is not None and not digest.startswith(expected):
        raise CacxrError(
            f"{what}: checksum mismatch for weights '{source.name}': SHA-256 {digest[:16]}... does not match "
            f"the {origin} {expected[:16]}{'...' if len(expected) > 16 else ''}"
        )
    return digest


def _record(source: WeightSource, digest: str, size: int) -> None:
    """Remember the checksum seen at a first fetch or import (only where none is published)."""
    if source.sha256:
        return
    records = _recorded()
    if source.name in records:
        return
    records[source.name] = {
        "sha256": digest,
        "size": size,
        "url": source.url,
        "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(weights_dir() / RECORD_FILE, records)


# ---- the cache ---------------------------------------------------------------------------------------------


def cached_file(source: WeightSource) -> Path | None:
    """The cached file of ``source`` when present, ``weights/<name>/<file name>`` (files enter the cache only
    once verified)."""
    if source.filename is None:
        return None
    path = weights_dir() / source.name / source.filename
    return path if path.is_file() else None


def _store(source: WeightSource, fill: Any, what: str) -> Path:
    """Write a temporary file beside the cache with ``fill(tmp)``, verify it, then move it into place."""
    if source.filename is None:
        raise CacxrError(f"weights '{source.name}': nothing to fetch or import")
    folder = weights_dir() / source.name  # one folder per name: two sources never share a file
    folder.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{source.filename}.", suffix=".part")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        fill(tmp)
        digest = _verify(source, tmp, what)
        final = folder / source.filename
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _record(source, digest, final.stat().st_size)
    return final


def fetch(name: str, progress: bool = True, force: bool = False) -> Path:
    """Download the weights ``name`` into the cache (verified before they count as cached).

    Args:
        name: a registry name (``imagenet-<arch>``, ``xrv-densenet121-all`` or one of sources.toml).
        progress: show a progress bar on stderr.
        force: download again even when the file is cached.

    Returns:
        The cached file.

    Raises:
        CacxrError: unknown name, ``CACXR_OFFLINE=1``, no network, an HTTP error, an interrupted download,
            a wrong size or a checksum mismatch (each one line; nothing is left in the cache).
    """
    source = get_source(name)
    if source.url is None:
        raise CacxrError(f"weights '{name}': nothing to fetch ({source.obtain})")
    found = cached_file(source)
    if found is not None and not force:
        _verify(source, found, str(found))
        return found
    if offline():
        raise CacxrError(
            f"weights '{name}' are not in the cache ({weights_dir()}) and CACXR_OFFLINE is set, so cacxr does "
            f"not download: copy {source.filename} onto this machine (from {source.url}) and run "
            f"`cacxr weights import {name} FILE`"
        )
    return _store(source, lambda tmp: _download(source, tmp, progress), source.url)


def _download(source: WeightSource, tmp: Path, progress: bool) -> None:
    """Fetch ``source.url`` into ``tmp`` with pooch's HTTP downloader; failures become one-line errors."""
    import pooch
    import requests

    url = source.url
    assert url is not None
    try:
        pooch.HTTPDownloader(progressbar=progress, timeout=_TIMEOUT_S)(url, str(tmp), None)
    except requests.HTTPError as exc:
        response = exc.response
        code = f"HTTP {response.status_code} {response.reason}" if response is not None else "an HTTP error"
        raise CacxrError(f"{url}: download of weights '{source.name}' failed with {code}") from None
    except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError, requests.Timeout) as exc:
        got = tmp.stat().st_size if tmp.exists() else 0
        if got or isinstance(exc, requests.exceptions.ChunkedEncodingError):
            raise CacxrError(
                f"{url}: download of weights '{source.name}' was interrupted after {got} bytes; nothing was "
                "cached, run the command again"
            ) from None
        host = urlparse(url).netloc
        raise CacxrError(
            f"{url}: cannot reach {host} (no network?); on a machine without internet copy the file here "
            f"and run `cacxr weights import {source.name} FILE`"
        ) from None
    except requests.RequestException as exc:
        raise CacxrError(f"{url}: download of weights '{source.name}' failed ({type(exc).__name__})") from None


def import_file(name: str, file: str | os.PathLike[str]) -> Path:
    """Copy a file the user obtained by hand into the cache, after the same verification as a download.

    The user's file is only read. Where no checksum is published or recorded, this import records one.

    Raises:
        CacxrError: unknown name, missing file, wrong size or checksum mismatch.
    """
    source = get_source(name)
    path = Path(file).expanduser()
    if not path.is_file():
        raise CacxrError(f"{path}: no such file to import as weights '{name}'")
    return _store(source, lambda tmp: shutil.copyfile(path, tmp), str(path))


def weights_path(source: WeightSource, progress: bool = True, also: tuple[Path, ...] = ()) -> Path:
    """The verified local file of ``source``: the cache, then ``also`` (e.g. torch's hub cache), then a fetch.

    Raises:
        CacxrError: as :func:`fetch`, and a file in ``also`` that fails verification.
    """
    found = cached_file(source)
    if found is not None:
        _verify(source, found, str(found))
        return found
    for candidate in also:
        if candidate.is_file():
            _verify(source, candidate, str(candidate))
            return candidate
    return fetch(source.name, progress=progress)

