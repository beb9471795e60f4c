"""Grey levels of a decoded DICOM: stored values -> float32 [0, 1], bone bright.

DICOM grey levels follow the standard's pipeline, using pydicom's own implementations:

1. stored values, with the bits above ``BitsStored`` (overlays, junk) cleared, or sign-extended for
   signed data, whenever any value lies outside the stored range;
2. modality LUT (``RescaleSlope`` / ``RescaleIntercept`` or a Modality LUT Sequence,
   :func:`pydicom.pixels.apply_modality_lut`);
3. VOI LUT (:func:`pydicom.pixels.apply_voi_lut`): the first VOI LUT Sequence item when there is one
   (``voi="voi_lut"``, its output scaled by the LUT's own min and max), else the first window
   ``WindowCenter`` / ``WindowWidth`` with ``VOILUTFunction`` LINEAR, LINEAR_EXACT or SIGMOID as pydicom
   computes them (``voi="window"``, below the window -> 0.0, above -> 1.0). Documented fallback when
   neither exists (or the window is unusable, e.g. width 0): min-max of the modality-LUT output of the
   stored values present in the image (``voi="minmax"``);
4. inversion to bone bright, done once when ``PhotometricInterpretation`` is MONOCHROME1 (minimum = white)
   or ``PresentationLUTShape`` is INVERSE (the VOI output is inverted). MONOCHROME1 together with INVERSE
   is inverted once, not twice: the DX Image module (PS3.3 C.8.11.3) requires INVERSE exactly when the
   photometric interpretation is MONOCHROME1, so both attributes describe the same single inversion.

A Presentation LUT Sequence (rare in image objects) is not applied. These steps only depend on the stored value, so they are evaluated once per distinct stored value (a table
of at most 2**16 entries for 16-bit data) and the image is one table look-up: no float64 copy of the full
image is made. Colour DICOM (RGB, YBR, palette) is converted to luminance (ITU-R BT.601 weights) and
scaled min-max (``voi="minmax"``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from cacxr.imaging.header import header_int, header_text
from cacxr.imaging.meta import describe

__all__ = ["to_display", "keep_stored_bits", "inverted", "minmax", "GreyLevelError", "MIN_CONTRAST", "check_contrast"]

logger = logging.getLogger(__name__)
# Above this many possible stored values, look up through np.unique instead of a dense table.
_MAX_DENSE_TABLE = 1 << 17
_GATHER_BLOCK = 1 << 16  # pixels per block of the table look-up
_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# The least spread (0.1st to 99.9th percentile, on the [0, 1] display scale) of a usable image: two grey
# levels of the uint8 store. Below it the image is blank (constant, or crushed by its LUTs) and never scored.
MIN_CONTRAST = 2.0 / 255.0
_CONTRAST_SAMPLES = 1 << 16  # pixels sampled (evenly strided) for the percentiles


class GreyLevelError(ValueError):
    """The grey levels of a decoded image are not usable: non-finite, or no contrast (the file is unreadable)."""


def check_contrast(image: np.ndarray, what: str = "the image") -> None:
    """Refuse a displayed image that is not finite or has no contrast (see :data:`MIN_CONTRAST`).

    Raises:
        GreyLevelError: naming what is wrong.
    """
    flat = image.reshape(-1)
    if flat.size == 0:
        raise GreyLevelError(f"{what} has no pixels")
    if not (np.isfinite(flat.min()) and np.isfinite(flat.max())):  # NaN propagates; no copy of the image
        raise GreyLevelError(f"{what} has non-finite grey levels")
    sample = flat[:: max(1, -(-flat.size // _CONTRAST_SAMPLES))]
    low, high = np.quantile(sample, [0.001, 0.999])
    if float(high - low) < MIN_CONTRAST:
        raise GreyLevelError(
            f"blank: {what} has no contrast (99.8 % of the pixels within {float(high - low):.4f} of the display "
            "range): a constant image, or one its modality/VOI LUT crushes to one grey level"
        )


def to_display(stored: np.ndarray, ds: Any, voi: str, path: str) -> tuple[np.ndarray, str]:
    """Decoded pixel array -> float32 image in [0, 1], bone bright, and the VOI step actually used."""
    from pydicom.pixels import apply_color_lut

    if header_text(ds, "PhotometricInterpretation").upper() == "PALETTE COLOR":
        stored = apply_color_lut(stored, ds)
    if stored.ndim == 3:  # colour: pydicom already converted YBR to RGB
        image = minmax(stored @ _BT601)
        check_contrast(image)
        return image, "minmax"
    if stored.dtype.kind in "iu":
        stored = keep_stored_bits(stored, header_int(ds, "BitsStored"), signed=stored.dtype.kind == "i")
    levels, indices, offset, present = _levels(stored)
    table, voi = _display_table(levels, present, ds, voi, path)
    image = _gather(table, indices, offset)
    check_contrast(image, f"the image (VOI {voi})")
    return image, voi


def keep_stored_bits(stored: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Clear (unsigned) or sign-extend (signed) the bits above BitsStored when any value needs it.

    A value lies inside the stored range exactly when its unused high bits are already right, so the
    range check (two reductions) decides whether the image needs the full masking pass.
    """
    bits = stored.dtype.itemsize * 8
    if not 0 < bits_stored < bits:
        return stored
    low, high = (
        (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    )
    if low <= int(stored.min()) and int(stored.max()) <= high:
        return stored
    if not signed:
        return stored & stored.dtype.type(high)
    shift = bits - bits_stored  # sign-extend from the stored high bit
    return (stored << shift) >> shift


def _levels(stored: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, slice]:
    """The stored levels to tabulate, each pixel's index into them (minus an offset), the levels present.

    Integer data gets a dense table (at most 2**16 entries for 16-bit data); unsigned data indexes it
    directly (the table starts at level 0). Floats and very wide ranges go through np.unique.
    """
    if stored.dtype.kind in "iu":
        low, high = int(stored.min()), int(stored.max())
        start = 0 if stored.dtype.kind == "u" else low
        if high - start < _MAX_DENSE_TABLE:
            levels = np.arange(start, high + 1, dtype=np.int64)
            return levels, stored, start, slice(low - start, high - start + 1)
    levels, inverse = np.unique(stored, return_inverse=True)
    return levels, inverse.reshape(stored.shape), 0, slice(None)


def _gather(table: np.ndarray, indices: np.ndarray, offset: int) -> np.ndarray:
    """table[indices - offset] as float32, a block of rows at a time.

    numpy converts index arrays to 64-bit before a take; doing it per block keeps that buffer small and
    in cache (about twice as fast as one take over the image, and no 8-byte-per-pixel copy).
    """
    image = np.empty(indices.shape, dtype=np.float32)
    rows = max(1, _GATHER_BLOCK // max(indices.shape[-1], 1))
    for start in range(0, indices.shape[0], rows):
        block = indices[start : start + rows]
        if offset:
            block = block.astype(np.int64) - offset
        np.take(table, block, out=image[start : start + rows], mode="clip")  # indices are in range
    return image


def _display_table(
    levels: np.ndarray, present: slice, ds: Any, voi: str, path: str
) -> tuple[np.ndarray, str]:
    """Map each stored level through modality LUT, VOI and inversion to float32 in [0, 1].

    ``present`` is the part of ``levels`` between the image's smallest and largest stored value: the
    range the min-max fallback stretches.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    with np.errstate(over="ignore", invalid="ignore"):  # checked just below, named in the refusal
        values = np.asarray(apply_modality_lut(levels, ds), dtype=np.float64)
    if not np.isfinite(values[present]).all():
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        raise GreyLevelError(
            f"the modality LUT gives non-finite grey levels (RescaleSlope {slope}, RescaleIntercept {intercept})"
        )
    table: np.ndarray | None = None
    try:
        if voi == "voi_lut":
            table = _scale_voi_lut(values, ds)
        elif voi == "window":
            out = apply_voi_lut(values, ds, index=0)
            # The window's output range: what lies below it (black) and above it (white).
            black, white = apply_voi_lut(np.array([-np.inf, np.inf]), ds, index=0)
            if not (math.isfinite(black) and math.isfinite(white) and white != black):
                raise ValueError(f"window output range {black}..{white} is empty")
            table = (out - black) / (white - black)
    except Exception as exc:  # noqa: BLE001 - any unusable VOI description falls back to min-max
        logger.warning("%s: unusable %s (%s), using min-max instead", path, voi, describe(exc))
    if table is None:
        voi = "minmax"
        table = minmax(values, values[present])
    if inverted(ds):
        table = 1.0 - table
    return np.clip(table, 0.0, 1.0).astype(np.float32), voi


def _scale_voi_lut(values: np.ndarray, ds: Any) -> np.ndarray:
    """Apply the first VOI LUT Sequence item and scale by the LUT's own output range."""
    from pydicom.pixels import apply_voi_lut

    # The LUT is indexed by integers; modality output that is not integral is rounded to the nearest.
    out = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0).astype(np.float64)
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries, first = int(descriptor[0]) or 1 << 16, int(descriptor[1])
    lut = apply_voi_lut(np.arange(first, first + entries, dtype=np.int64), ds, index=0)
    low, high = float(lut.min()), float(lut.max())
    return (out - low) / (high - low) if high > low else np.zeros_like(out)


def inverted(ds: Any) -> bool:
    """MONOCHROME1 (min = white) or PresentationLUTShape INVERSE: one inversion (see module docstring)."""
    photometric = header_text(ds, "PhotometricInterpretation").upper()
    return photometric == "MONOCHROME1" or header_text(ds, "PresentationLUTShape").upper() == "INVERSE"


def minmax(values: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Scale to float32 [0, 1] by the min and max of ``reference`` (default: ``values`` itself).

    A constant reference gives all zeros.
    """
    reference = values if reference is None else reference
    low, high = float(reference.min()), float(reference.max())
    if not high > low:
        return np.zeros(values.shape, dtype=np.float32)
    scaled = np.subtract(values, low, dtype=np.float32)  # one float32 pass from any input type
    scaled *= np.float32(1.0 / (high - low))
    return scaled
