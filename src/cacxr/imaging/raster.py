"""PNG and JPEG files: Pillow, pixel data as stored (no EXIF rotation), after the declared size is checked."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from cacxr.imaging.codestream import (
    CodestreamError,
    check_codestream,
    check_jpeg_scans,
)
from cacxr.imaging.greylevels import minmax
from cacxr.imaging.meta import ImageMeta, Refusal, describe, refusal_for
from cacxr.imaging.reduced import draft_jpeg

__all__ = ["raster_format", "read_raster"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_RASTER_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
_GREY_RASTER_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def raster_format(path: str) -> str:
    """Return "png" or "jpeg" when the file is (or claims by its suffix to be) a raster image, else ""."""
    with open(path, "rb") as fp:
        head = fp.read(132)
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head[128:132] == b"DICM":
        return ""
    return _RASTER_SUFFIXES.get(Path(path).suffix.lower(), "")


def read_raster(
    path: str, patient_id: str, decode: bool, max_pixels: int, min_short_side: int = 0
) -> tuple[ImageMeta, np.ndarray | None]:
    from PIL import Image

    fmt = raster_format(path)
    with open(path, "rb") as fp:
        head = fp.read(1 << 16)
        whole = head + fp.read() if decode and head.startswith(b"\xff\xd8") else head
    try:  # the size the PNG IHDR / JPEG SOF declares, before Pillow sees the file
        check_codestream(head, max_pixels, what=f"{fmt.upper()} image")
        if decode:  # whatever the name says: a JPEG's scans are counted before Pillow decodes it
            check_jpeg_scans(whole, f"{fmt.upper()} image")
    except CodestreamError as exc:
        if exc.reason in ("too_large", "too_complex"):  # a malformed header is left to Pillow's own message
            raise Refusal(exc.reason, f"{path}: {exc}", None) from exc
    try:
        # Pillow's lazy open reads the declared size (PNG IHDR, JPEG SOF) without decoding; the limit
        # is checked below (refusal_for) before any pixel is decoded. Pillow's own bomb check at open
        # only fires far above it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise Refusal("too_large", f"{path}: {describe(exc)}", None) from exc
    with img:
        if img.format not in ("PNG", "JPEG", "MPO"):
            raise ValueError(f"expected a {fmt.upper()} file, Pillow found {img.format}")
        mode = img.mode
        grey = mode in _GREY_RASTER_MODES
        wide = mode.startswith("I") or mode == "F"  # 16/32-bit grey: no display range in the file
        bits = {"1": 1, "I": 32, "F": 32}.get(mode, 16 if mode.startswith("I;16") else 8)
        meta = ImageMeta(
            path=path, patient_id=patient_id, source_format=fmt, modality="", view="", view_hint="",
            photometric="MONOCHROME2" if grey else "RGB", bits_stored=bits, bits_allocated=bits,
            rows=img.height, cols=img.width, n_frames=int(getattr(img, "n_frames", 1)),
            pixel_spacing=None, transfer_syntax="", sop_class="", voi="minmax" if wide else "png",
            sex="", age=math.nan, header_id_matches=None, has_pixel_data=True,
        )  # fmt: skip
        refusal = refusal_for(meta, max_pixels)
        if refusal:
            raise Refusal(*refusal, meta)
        if not decode:
            return meta, None
        try:
            if min_short_side:  # JPEG: DCT scaling to the smallest size still >= min_short_side
                draft_jpeg(img, min_short_side)
            if wide:
                return meta, minmax(np.asarray(img))
            if mode != "L":
                # Pillow's "L" conversion is ITU-R 601 luminance; going through RGB drops any alpha.
                img = img.convert("L") if grey else img.convert("RGB").convert("L")
            return meta, np.asarray(img).astype(np.float32) * np.float32(1.0 / 255.0)
        except Exception as exc:  # noqa: BLE001 - decoder errors are a property of the file
            raise Refusal("unreadable", f"{path}: image cannot be decoded: {describe(exc)}", meta) from exc
