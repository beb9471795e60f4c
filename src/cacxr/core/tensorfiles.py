"""Reading a safetensors file: tensors and metadata, never code (the one safetensors reader of the package)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from cacxr.core.errors import CacxrError

__all__ = ["is_safetensors", "read_safetensors"]


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then a JSON header."""
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n <= path.stat().st_size - 8


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, tensors as torch tensors on the CPU.

    Raises:
        CacxrError: the file is missing or not a readable safetensors file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CacxrError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            return {k: fh.get_tensor(k) for k in fh.keys()}, metadata  # noqa: SIM118 (not a dict)
    except SafetensorError as exc:
        raise CacxrError(f"{path}: not a readable safetensors file ({exc})") from None
