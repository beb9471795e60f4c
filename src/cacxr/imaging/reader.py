"""Reading one radiograph: a DICOM, PNG or JPEG file -> float32 image in [0, 1], bone bright, + metadata.

Every reader in the package goes through :func:`read_header` (fast, no pixel decoding; used by ingest on
every file) or :func:`read_image` (header checks, then decoding). Neither raises for a bad file: a file
that cannot be used comes back with a reason code and a human-readable detail naming the file.

The formats: DICOM (:mod:`cacxr.imaging.dicom`, header in :mod:`cacxr.imaging.header`, grey levels in
:mod:`cacxr.imaging.greylevels`) and PNG/JPEG exports (:mod:`cacxr.imaging.raster`): 8-bit grey is divided
by 255 (``voi="png"``, also for JPEG), RGB/RGBA/palette become grey luminance via Pillow (alpha dropped),
16-bit grey has no display range and is scaled min-max like a DICOM without window (``voi="minmax"``).

Identifying header fields are never copied: ``ImageMeta.patient_id`` is the caller's (pseudonymous) folder
id, and the header's PatientID is only compared with it (``header_id_matches``).
"""

from __future__ import annotations

import logging
import os

from cacxr.core import file_kind
from cacxr.imaging.codestream import (
    DEFAULT_MAX_PIXELS,
    CodestreamError,
)
from cacxr.imaging.dicom import read_dicom
from cacxr.imaging.meta import ReadResult, Refusal, describe
from cacxr.imaging.raster import raster_format, read_raster

__all__ = ["read_header", "read_image"]

logger = logging.getLogger(__name__)


def read_header(
    path: str | os.PathLike[str], patient_id: str = "", max_pixels: int = DEFAULT_MAX_PIXELS
) -> ReadResult:
    """Read a file's metadata and check it is a usable radiograph, without decoding pixels.

    For DICOM the header is parsed up to the pixel data (which is detected, not read), so this is fast
    enough to run on every file of a cohort. Decoding problems are only found by :func:`read_image`.

    Args:
        path: a DICOM (part-10 or bare dataset), PNG or JPEG file.
        patient_id: the cohort's pseudonymous id for the file (its folder name).
        max_pixels: the largest accepted rows x columns (x frames); above it the reason is too_large.

    Returns:
        A :class:`ReadResult` with ``image=None``; ``reason`` is "" when the header is usable, else
        unreadable, no_pixel_data, not_radiograph, multi_frame or too_large (checked in that order).
    """
    return _read(path, patient_id, decode=False, max_pixels=max_pixels)


def read_image(
    path: str | os.PathLike[str],
    patient_id: str = "",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    min_short_side: int = 0,
) -> ReadResult:
    """Read a file's metadata and decode its image to float32 in [0, 1], bone bright.

    See the module docstring for the grey-level pipeline (modality LUT, VOI LUT or window, min-max
    fallback, MONOCHROME1 / INVERSE inversion, colour to luminance). No decoder runs before the size
    declared inside the compressed codestream (JPEG, JPEG-LS, JPEG 2000 frame headers, PNG IHDR) has
    been checked against ``max_pixels`` and against Rows x Columns (``cacxr.imaging.codestream``).

    Args:
        path: a DICOM (part-10 or bare dataset), PNG or JPEG file.
        patient_id: the cohort's pseudonymous id for the file (its folder name).
        max_pixels: the largest accepted rows x columns (x frames): too_large above it, never a
            MemoryError.
        min_short_side: 0 (default) decodes the full image. A positive value says the caller only needs
            an image whose short side is at least this many pixels (it will shrink it anyway): JPEG 2000
            and 8-bit JPEG (DICOM or plain files) are then decoded at the largest power-of-two reduction
            that keeps the short side at least this long (``cacxr.imaging.reduced``); other formats, and
            files too small for any reduction, are decoded in full. ``meta.rows`` / ``meta.cols`` stay the
            declared size.

    Returns:
        A :class:`ReadResult`; ``image`` is a float32 (rows, cols) array (smaller with ``min_short_side``)
        when ``reason`` is "", else None with the reason code (unreadable with the decoder's message when
        decoding fails).
    """
    return _read(path, patient_id, decode=True, max_pixels=max_pixels, min_short_side=min_short_side)


def _read(
    path: str | os.PathLike[str], patient_id: str, decode: bool, max_pixels: int, min_short_side: int = 0
) -> ReadResult:
    """Dispatch on the file's format and turn every failure into a reason (the module's boundary)."""
    name = os.fspath(path)
    kind = file_kind(name)
    if kind not in ("", "missing", "a folder"):  # opening a FIFO or /dev/zero would block or never end
        return ReadResult(
            image=None, meta=None, reason="not_regular_file", detail=f"{name}: {kind}, not opened"
        )
    try:
        reader = read_raster if raster_format(name) else read_dicom
        meta, image = reader(name, patient_id, decode, max_pixels, min_short_side=max(0, int(min_short_side)))
        return ReadResult(image=image, meta=meta, reason="", detail="")
    except Refusal as refusal:
        return ReadResult(image=None, meta=refusal.meta, reason=refusal.reason, detail=refusal.detail)
    except CodestreamError as exc:
        return ReadResult(image=None, meta=None, reason=exc.reason, detail=f"{name}: {exc}")
    except MemoryError:  # a last line of defence: the size checks should have refused the file first
        return ReadResult(
            image=None, meta=None, reason="too_large", detail=f"{name}: out of memory decoding it"
        )
    except Exception as exc:  # noqa: BLE001 - any failure of a parser is a property of the file
        return ReadResult(image=None, meta=None, reason="unreadable", detail=f"{name}: {describe(exc)}")
    except BaseException as exc:  # a native library's panic (pyo3 PanicException) is not an Exception
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        return ReadResult(image=None, meta=None, reason="unreadable", detail=f"{name}: crashed: {describe(exc)}")


# --------------------------------------------------------------------------------------------- formats


# --------------------------------------------------------------------------------------------- raster


# --------------------------------------------------------------------------------------------- DICOM


# --------------------------------------------------------------------------------------------- grey levels


