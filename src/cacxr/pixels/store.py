"""The image store: every usable image of a manifest preprocessed once, kept as uint8 on disk.

Training reads the same images every epoch and every fold; the store decodes, windows, equalises
and resizes each of them once (in parallel over the machine's cores) and later reads are a memory
map of S x S bytes.

Layout of a store folder ``OUT`` (nothing is ever written outside it)::

    OUT/index.json             what ImageStore.open reads: format, profile (name, version), image
                               size, decode mode, and per patient id the entry file, its size in bytes and CRC32,
                               plus the failed ids with their message. Written atomically at the end
                               of every build; removed while a build that changes entries runs.
    OUT/.build.lock            an empty file locked (flock) while a build runs, so that concurrent
                               builds of one store (parallel fold jobs) take turns.
    OUT/entries/<id>-<h>.npy   one image: a NumPy .npy file holding uint8 (S, S), memory-mapped on
                               read (S * S bytes + a 128-byte header: 1.0001 MiB at S = 1024).
    OUT/entries/<id>-<h>.json  its sidecar: the build key (source path, size, mtime_ns, profile
                               name + version, image size, decode mode), CRC32 and byte size of the .npy, or the
                               failure (reason code and detail) when the image could not be read.

``<h>`` is 8 hex digits of the SHA-1 of the patient id, so ids that differ only in case or in
characters unsafe in file names get distinct files.

Resuming and updating: entries and sidecars are written atomically, the .npy before its sidecar,
so an interrupted build (Ctrl-C, kill, power loss) leaves only complete entries. The next build
keeps every entry whose sidecar key matches (same source file size and mtime, profile and size)
and whose file has the recorded size and CRC32, and rebuilds the rest: new ids, changed sources,
another profile, size or decode mode, and corrupt or truncated files.

Decode mode (``decode`` in the key and the index): ``reduced`` (the default since issue 22: JPEG 2000 and
8-bit JPEG decoded only as large as the profile needs, ``pixels.read_for_profile``) or ``full``. Entries of
stores built before the mode existed have no ``decode`` in their key and are rebuilt. ``ImageStore.get`` checks the size and
CRC32 again on every read, so a damaged entry raises an error instead of reaching a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from cacxr.core import CacxrError

__all__ = ["ImageStore", "STORE_FORMAT", "DECODE_FULL", "DECODE_REDUCED", "FORMAT_VERSION", "INDEX_FILE", "LOCK_FILE", "ENTRIES_DIR", "entry_stem", "index_entry", "open_entry", "read_index", "read_json"]

logger = logging.getLogger(__name__)

STORE_FORMAT = "cacxr-image-store"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
LOCK_FILE = ".build.lock"
ENTRIES_DIR = "entries"
DECODE_REDUCED = "reduced"
DECODE_FULL = "full"
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")


class ImageStore:
    """A built image store (see the module docstring for its layout).

    Attributes:
        root: the store folder.
        profile: the preprocessing profile's name (``seed``, ``clahe``, ``xrv``).
        profile_version: that profile's version when the store was built.
        image_size: side ``S`` of every stored image.
        decode: ``reduced`` or ``full`` (how the files were decoded; ``full`` for stores older than the
            setting).
        ids: patient ids with a stored image, sorted.
        failed: patient id -> message (file and reason) for images that could not be stored.
        summary: counts of the build that returned this object (``None`` after ``open``).
    """

    def __init__(self, root: Path, index: dict[str, Any], summary: dict[str, Any] | None = None):
        self.root = root
        self.profile: str = index["profile"]
        self.profile_version: int = int(index["profile_version"])
        self.image_size: int = int(index["image_size"])
        self.decode: str = str(index.get("decode", DECODE_FULL))
        self._entries: dict[str, dict[str, Any]] = index["entries"]
        self.ids: list[str] = sorted(self._entries)
        self.failed: dict[str, str] = dict(index["failed"])
        self.summary = summary

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> ImageStore:
        """Open a store written by ``build_store``.

        Args:
            root: the store folder.

        Returns:
            The store.

        Raises:
            CacxrError: the folder has no readable index (never built, or a build was interrupted).
        """
        root = Path(root)
        index = read_index(root)
        if index is None:
            raise CacxrError(
                f"{root}: not a complete image store (no {INDEX_FILE}; a build may have been "
                "interrupted): run `cacxr preprocess MANIFEST --out STORE` to build or resume it"
            )
        return cls(root, index)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, patient_id: object) -> bool:
        return patient_id in self._entries

    def __repr__(self) -> str:
        return (
            f"ImageStore({str(self.root)!r}, profile={self.profile!r} v{self.profile_version}, "
            f"image_size={self.image_size}, decode={self.decode}, images={len(self)}, failed={len(self.failed)})"
        )

    def entry_path(self, patient_id: str) -> Path:
        """The .npy file holding ``patient_id``'s image."""
        return self.root / self._entry(patient_id)["file"]

    def get(self, patient_id: str, verify: bool = True) -> np.ndarray:
        """One stored image, memory-mapped read-only.

        Args:
            patient_id: a patient id of ``ids``.
            verify: check the file's size and CRC32 against the index (about 1 ms per MiB).

        Returns:
            A read-only uint8 memmap of shape (S, S).

        Raises:
            CacxrError: the id is not in the store (or failed to build), or its file is damaged.
        """
        entry = self._entry(patient_id)
        path = self.root / entry["file"]
        image, problem = open_entry(path, entry["nbytes"], entry["crc32"], self.image_size, verify)
        if image is None:
            raise CacxrError(
                f"{path}: damaged image store entry for {patient_id} ({problem}); "
                "rerun `cacxr preprocess` on this store to rebuild it"
            )
        return image

    def _entry(self, patient_id: str) -> dict[str, Any]:
        try:
            return self._entries[patient_id]
        except KeyError:
            if patient_id in self.failed:
                raise CacxrError(
                    f"{self.root}: {patient_id} has no stored image: {self.failed[patient_id]}"
                ) from None
            raise CacxrError(f"{self.root}: patient {patient_id!r} is not in this image store") from None


def entry_stem(patient_id: str) -> str:
    """A file-name-safe, collision-free stem for a patient id."""
    digest = hashlib.sha1(patient_id.encode("utf-8")).hexdigest()[:8]
    readable = _SAFE_ID.sub("_", patient_id).strip("._")[:64] or "id"
    return f"{readable}-{digest}"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_index(root: Path) -> dict[str, Any] | None:
    index = read_json(root / INDEX_FILE)
    if not index or index.get("format") != STORE_FORMAT:
        return None
    if index.get("format_version") != FORMAT_VERSION:
        raise CacxrError(
            f"{root / INDEX_FILE}: image store format version {index.get('format_version')} is not "
            f"supported (expected {FORMAT_VERSION}); rebuild it with `cacxr preprocess` into a new folder"
        )
    return index


def open_entry(
    path: Path, nbytes: Any, crc32: Any, size: int, verify: bool
) -> tuple[np.ndarray | None, str]:
    """Memory-map an entry after checking it: ``(image, "")``, or ``(None, why it is unusable)``."""
    try:
        actual = path.stat().st_size
    except OSError:
        return None, "file missing"
    if actual != nbytes:
        return None, f"{actual} bytes instead of {nbytes}"
    try:
        image = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        return None, f"not a readable .npy file: {exc}"
    if image.dtype != np.uint8 or image.shape != (size, size):
        return None, f"holds {image.dtype} {image.shape} instead of uint8 ({size}, {size})"
    if verify and zlib.crc32(image) != crc32:
        return None, "checksum mismatch"
    return image, ""


def index_entry(stem: str, sidecar: dict[str, Any]) -> dict[str, Any]:
    return {
        "file": f"{ENTRIES_DIR}/{stem}.npy",
        "nbytes": sidecar["nbytes"],
        "crc32": sidecar["crc32"],
        "source": sidecar["key"]["source"],
    }


