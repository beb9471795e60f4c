"""Reduced-resolution decoding: a file decoded only to be shrunk is decoded at the smallest size still large enough.

A preprocessing profile shrinks every radiograph to a few hundred pixels (the seed profile resizes the short
side to ``round(1.21875 S)``). JPEG 2000 and baseline JPEG can decode a smaller image directly, skipping most
of the work: JPEG 2000 drops its highest resolution levels, JPEG scales its DCT. The caller (the image store,
predict, serve, evaluate) asks ``read_image(..., min_short_side=N)``; this module picks, per file and from its
codestream header, the largest power-of-two factor ``f`` whose output short side ``floor(min(rows, cols) / f)``
is still at least ``N``, and decodes at that factor. Everything else is decoded in full, as without the
argument.

Which call does the reduction (verified with Pillow 13.0 / OpenJPEG 2.5.4 / libjpeg-turbo 3,
imagecodecs 2026.3.6, pylibjpeg-openjpeg 2.6.0, pydicom 3.0.2):

- JPEG 2000 (.90/.91) and HTJ2K (.201/.202/.203): Pillow's ``Jpeg2KImageFile.reduce = r`` set before
  ``load()`` (OpenJPEG's ``cp_reduce``), capped by the smallest number of decomposition levels of every COD/COC
  segment (main and tile-part headers). ``imagecodecs.jpeg2k_decode`` and ``openjpeg.decode`` have no such
  argument; ``imagecodecs.htj2k_decode(skipres=)`` wraps values below 0 at r >= 2, so it is not used.
  Pillow sizes a reduced image ``int((w + f/2) / f)``, OpenJPEG ``ceil(x1/f) - ceil(x0/f)``: where they differ
  (2049 px at f = 4) a smaller factor is used. The low-pass band sits ``(f - 1) / 2`` full-resolution pixels
  off an area average; :func:`j2k_phase_correct` moves it back (halves the difference to a full decode).
- Baseline / extended 8-bit JPEG (.50, .51 whose frame says 8 bits, and plain .jpg files): Pillow ``draft``
  (libjpeg DCT scaling 1/2, 1/4, 1/8).
- 12-bit JPEG, JPEG-LS, JPEG lossless, RLE, uncompressed, PNG, colour, multi-frame: no reduction (no scaled
  decoder installed, or no resolution levels in the format).

Every function returns the *stored* values (pydicom ``pixel_array`` dtypes and sign rules), so the modality
LUT / VOI / MONOCHROME1 pipeline of :mod:`cacxr.imaging.greylevels` runs unchanged on the smaller array; or
None when no reduction applies or anything disagrees, and the caller's full decode then runs (and reports any
error exactly as before). ``ImageMeta`` keeps the declared Rows x Columns (and pixel spacing).

Why one module of ~450 lines: the header parsers, the two decoders and the DICOM-level rules (sign, container,
phase) are one decision, "can this codestream be decoded smaller, and how", and only make sense together.
"""

from __future__ import annotations

import io
import math
import struct
from typing import Any

import numpy as np

__all__ = [
    "decode_dicom_reduced",
    "decode_j2k_reduced",
    "decode_jpeg_scaled",
    "draft_jpeg",
    "j2k_header",
    "j2k_phase_correct",
    "jpeg_header",
    "reduced_shape",
    "reduction_for",
]

_J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})
_HTJ2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})
_JPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})
_JPEG_MAX_LEVELS = 3  # libjpeg DCT scaling: 1/2, 1/4, 1/8 (Pillow's draft offers only these)
_JP2_MAGIC = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def reduction_for(width: int, height: int, min_short_side: int, max_levels: int) -> int:
    """The largest power-of-two factor ``f <= 2**max_levels`` with ``floor(min(width, height) / f) >= min_short_side``.

    ``floor`` is the conservative size: OpenJPEG and libjpeg give ``ceil(w / f)``, never smaller.

    Args:
        width: declared width in pixels.
        height: declared height in pixels.
        min_short_side: the smallest short side the caller accepts.
        max_levels: the most halvings the decoder offers (J2K: decomposition levels; JPEG: 3).

    Returns:
        1 (no reduction), 2, 4, ...
    """
    if min_short_side < 1 or width < 1 or height < 1:
        return 1
    short = min(int(width), int(height))
    levels = 0
    while levels < max(0, int(max_levels)) and short // (1 << (levels + 1)) >= min_short_side:
        levels += 1
    return 1 << levels


def reduced_shape(rows: int, cols: int, factor: int) -> tuple[int, int]:
    """The decoded shape of a ``rows`` x ``cols`` image at ``factor``: ``(ceil(rows / f), ceil(cols / f))``."""
    return math.ceil(rows / factor), math.ceil(cols / factor)


# ----------------------------------------------------------------------------- header parsing


def _bare_codestream(data: bytes) -> bytes:
    """The J2K codestream itself (the jp2c box's content for a JP2 file)."""
    if data[:4] == b"\xff\x4f\xff\x51":
        return data
    if data[:12] == _JP2_MAGIC:
        pos = 0
        while pos + 8 <= len(data):
            length, kind = struct.unpack_from(">I4s", data, pos)
            header = 8
            if length == 1:
                (length,) = struct.unpack_from(">Q", data, pos + 8)
                header = 16
            if kind == b"jp2c":
                return data[pos + header : pos + length if length else len(data)]
            if length < header:
                break
            pos += length
    raise ValueError("not a JPEG 2000 codestream")


def j2k_header(data: bytes) -> dict[str, Any]:
    """SIZ and the decomposition levels of a J2K codestream (bare or JP2).

    ``levels`` is the smallest number of decomposition levels over every COD and COC segment of the
    main header and of every tile-part header (a tile or component may use fewer levels than the
    main COD says; OpenJPEG refuses a reduce above any of them). Tile-parts are walked with their
    SOT Psot lengths, so only headers are read.

    Returns:
        dict(width, height, x0, y0, x1, y1, components, precision, signed, levels, htj2k)
    """
    cs = _bare_codestream(bytes(data))
    if len(cs) < 4 + 2 + 38 + 3:
        raise ValueError("JPEG 2000 codestream truncated in SIZ")
    (lsiz,) = struct.unpack_from(">H", cs, 4)
    rsiz, xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">HIIII", cs, 6)
    (csiz,) = struct.unpack_from(">H", cs, 40)  # after Rsiz, X/Ysiz, X/YOsiz, X/YTsiz, X/YTOsiz
    ssiz = cs[42]
    info = {
        "x0": xosiz, "y0": yosiz, "x1": xsiz, "y1": ysiz,
        "width": xsiz - xosiz, "height": ysiz - yosiz, "components": csiz,
        "precision": (ssiz & 0x7F) + 1, "signed": bool(ssiz & 0x80),
        "htj2k": bool(rsiz & 0x4000),
    }  # fmt: skip
    levels: list[int] = []
    pos = 4 + lsiz  # SIZ marker at 2, its length field at 4 counts itself

    def header_segments(pos: int, end_markers: tuple[int, ...]) -> int:
        """Read marker segments from pos until one of end_markers; collect COD/COC levels."""
        while pos + 4 <= len(cs):
            if cs[pos] != 0xFF:
                raise ValueError(f"J2K marker expected at byte {pos}")
            marker = cs[pos + 1]
            if marker in end_markers:
                return pos
            (length,) = struct.unpack_from(">H", cs, pos + 2)
            body = pos + 4
            if marker == 0x52:  # COD: Scod, SGcod (4 bytes), SPcod[0] = decomposition levels
                levels.append(cs[body + 5])
            elif marker == 0x53:  # COC: Ccoc (1 or 2 bytes), Scoc, SPcoc[0] = levels
                levels.append(cs[body + (2 if csiz >= 257 else 1) + 1])
            elif marker == 0x50:  # CAP: Part 15 (HTJ2K) capabilities
                info["htj2k"] = True
            pos += 2 + length
        raise ValueError("J2K header truncated")

    pos = header_segments(pos, (0x90,))  # main header up to the first SOT
    while pos + 12 <= len(cs) and cs[pos : pos + 2] == b"\xff\x90":  # tile-parts
        (psot,) = struct.unpack_from(">I", cs, pos + 6)
        header_segments(pos + 12, (0x93,))  # tile-part header up to SOD
        if psot == 0:  # the last tile-part runs to EOC
            break
        pos += psot
    if not levels:
        raise ValueError("J2K codestream without a COD segment")
    info["levels"] = min(levels)
    return info


_SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7})


def jpeg_header(data: bytes) -> dict[str, int]:
    """The first frame header of a JPEG stream: dict(marker, precision, height, width, components)."""
    pos = 2
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream")
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF:
            precision, height, width, comps = struct.unpack_from(">BHHB", data, pos + 4)
            return {"marker": marker, "precision": precision, "height": height, "width": width, "components": comps}
        if marker in (0xDA, 0xD9):
            break
        pos += 2 + length
    raise ValueError("JPEG stream without a frame header")


# --------------------------------------------------------------------------------- decoders


def _pillow_grid_ok(info: dict[str, Any], reduce: int) -> bool:
    """Whether Pillow's output size for ``reduce`` equals OpenJPEG's reduced grid.

    Pillow's Jpeg2KImageFile.load() sizes the image ``int((w + f // 2) / f)``; OpenJPEG decodes
    ``ceil(x1 / f) - ceil(x0 / f)``. They differ for some sizes at reduce >= 2 (2049 px at f = 4:
    Pillow 512, OpenJPEG 513) and then Pillow fails with "broken data stream".
    """
    f = 1 << reduce
    for lo, hi in ((info["x0"], info["x1"]), (info["y0"], info["y1"])):
        if (hi - lo + (f >> 1)) // f != -(-hi // f) - (-(-lo // f)):
            return False
    return True


def decode_j2k_reduced(codestream: bytes, reduce: int) -> np.ndarray:
    """Decode a single-component J2K / HTJ2K codestream with its ``reduce`` highest levels dropped.

    Args:
        codestream: bare J2K codestream (or JP2 file).
        reduce: resolution levels to discard (OpenJPEG ``cp_reduce``): the factor is ``2**reduce``;
            must not exceed the codestream's decomposition levels (``j2k_header(...)["levels"]``).

    Returns:
        The stored values at reduced size ``ceil(x1/f) - ceil(x0/f)``: uint8/uint16 for an unsigned
        codestream, int8/int16 for a signed one (int32 / uint32 above 16 bits). Pillow's own
        conversion (it adds 2**(prec-1) to signed samples and shifts them up to 8/16 bits) is undone.
    """
    from PIL import Image

    info = j2k_header(codestream)
    if info["components"] != 1:
        raise ValueError("only single-component JPEG 2000 is decoded reduced")
    if not 0 <= reduce <= info["levels"]:
        raise ValueError(f"reduce {reduce} outside 0..{info['levels']} (COD decomposition levels)")
    if not _pillow_grid_ok(info, reduce):
        raise ValueError(f"Pillow's reduced size differs from OpenJPEG's grid at reduce {reduce}")
    prec, signed = info["precision"], info["signed"]
    with Image.open(io.BytesIO(codestream)) as im:
        im.reduce = int(reduce)  # Jpeg2KImageFile: an int attribute read by load(), not Image.reduce()
        im.load()
        arr = np.asarray(im)
        mode = im.mode
    if mode == "L":
        container = 8
    elif mode.startswith("I;16"):
        container = 16
    elif mode == "I":  # > 16 bits: Pillow keeps the values in int32 without a shift
        container = prec
    else:
        raise ValueError(f"unexpected Pillow mode {mode} for a grey JPEG 2000 image")
    shift = max(0, container - prec)
    values = arr.astype(np.int32) >> shift if shift else arr.astype(np.int32)
    if signed:
        values = values - (1 << (prec - 1))
    f = 1 << reduce
    expected = (-(-info["y1"] // f) - (-(-info["y0"] // f)), -(-info["x1"] // f) - (-(-info["x0"] // f)))
    if values.shape != expected:
        # Pillow sizes the output as int((w + f/2) / f), which is not OpenJPEG's ceil() for odd
        # offsets/sizes (e.g. 2049 px at reduce 2: Pillow 512, OpenJPEG 513).
        raise ValueError(f"reduced decode gave {values.shape}, OpenJPEG's grid is {expected}")
    if prec <= 8:
        dtype = np.int8 if signed else np.uint8
    elif prec <= 16:
        dtype = np.int16 if signed else np.uint16
    else:
        dtype = np.int32 if signed else np.uint32
    return values.astype(dtype)


def decode_jpeg_scaled(codestream: bytes, scale_denominator: int) -> np.ndarray:
    """Decode an 8-bit lossy JPEG (baseline or 8-bit extended) at 1/scale_denominator with DCT scaling.

    Args:
        codestream: the JPEG stream (SOI ... EOI).
        scale_denominator: 1, 2, 4 or 8.

    Returns:
        uint8 array of shape (ceil(h/d), ceil(w/d)) (grey) or (.., .., 3) (Pillow's RGB for colour).

    Raises:
        ValueError: 12-bit JPEG (Pillow cannot read it), lossless/JPEG-LS frames, or a scale Pillow
            did not apply.
    """
    from PIL import Image

    d = int(scale_denominator)
    if d not in (1, 2, 4, 8):
        raise ValueError("libjpeg DCT scaling through Pillow: denominator 1, 2, 4 or 8")
    head = jpeg_header(codestream)
    if head["marker"] not in (0xC0, 0xC1):
        raise ValueError(f"SOF{head['marker'] - 0xC0}: only baseline / extended Huffman JPEG is scaled")
    if head["precision"] != 8:
        raise ValueError(f"{head['precision']}-bit JPEG: Pillow reads 8-bit JPEG only")
    h, w = head["height"], head["width"]
    with Image.open(io.BytesIO(codestream)) as im:
        out = (-(-w // d), -(-h // d))  # libjpeg's scaled size: ceil
        if d > 1:
            # Pillow picks s from min(w // req_w, h // req_h): ask for floor sizes, else 700 px at 1/8
            # asks 88 and gets 700 // 88 = 7 -> scale 1/4.
            im.draft(im.mode, (max(1, w // d), max(1, h // d)))
            if im.decoderconfig[:1] != (d,) or im.size != out:
                raise ValueError(f"Pillow applied scale {im.decoderconfig} / size {im.size}, wanted 1/{d}")
        im.load()
        return np.asarray(im).copy()


# ---------------------------------------------------------------------------------- DICOM level


def _first_frame(ds: Any) -> bytes:
    from pydicom.encaps import generate_frames

    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _container_dtype(ds: Any) -> np.dtype:
    bits = int(ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if bits <= 8:
        return np.dtype(np.int8 if signed else np.uint8)
    if bits <= 16:
        return np.dtype(np.int16 if signed else np.uint16)
    return np.dtype(np.int32 if signed else np.uint32)


def j2k_phase_correct(values: np.ndarray, factor: int) -> np.ndarray:
    """Move a J2K reduced image onto the grid of a box-averaged one (bilinear, edges replicated).

    A JPEG 2000 low-pass sample k at reduce r sits at full-resolution position f*k (f = 2**r; even
    samples are the low-pass ones), whereas an area average of f x f pixels - what cacxr's INTER_AREA
    shrink and libjpeg's DCT scaling give - sits at f*k + (f - 1) / 2. Without this, the reduced image
    is shifted by (f - 1) / 2 full-resolution pixels (a quarter of a reduced pixel at f = 2), which
    is most of the difference at edges. Returns values of the same dtype (rounded).
    """
    import cv2

    if factor <= 1:
        return values
    shift = (factor - 1) / (2.0 * factor)  # in reduced pixels
    m = np.float32([[1, 0, shift], [0, 1, shift]])
    src = values.astype(np.float32)
    out = cv2.warpAffine(
        src, m, (src.shape[1], src.shape[0]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    if values.dtype.kind in "iu":
        info = np.iinfo(values.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(values.dtype)


def decode_dicom_reduced(
    ds: Any, min_short_side: int, *, max_pixels: int, phase_correct: bool = True
) -> tuple[np.ndarray, int] | None:
    """Reduced decode of a single-frame grey DICOM whose output short side is at least ``min_short_side``.

    Args:
        ds: a pydicom Dataset with its pixel data (read in full; its codestream already checked by
            ``cacxr.imaging.codestream.check_dicom_pixel_data``).
        min_short_side: the smallest short side the caller accepts.
        max_pixels: the size limit (above it, nothing is decoded here).
        phase_correct: J2K only, and only when the factor divides Rows and Columns: apply
            :func:`j2k_phase_correct` so the result matches an area-average shrink.

    Returns:
        ``(stored, factor)``: stored values (pydicom ``pixel_array`` dtype from BitsAllocated and
        PixelRepresentation, J2K sign mismatches corrected as pydicom does) of shape
        :func:`reduced_shape`, factor 2, 4, ...; or None when no reduction applies (another syntax,
        multi-frame, colour, 12-bit JPEG, factor 1, a codestream header that disagrees with the data
        set, any decode error): the caller then decodes in full, which also reports any error.
    """
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    if syntax not in _J2K_SYNTAXES | _HTJ2K_SYNTAXES | _JPEG_SYNTAXES or "PixelData" not in ds:
        return None
    if int(ds.get("NumberOfFrames", 1) or 1) != 1 or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return None
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    try:
        frame = _first_frame(ds)
        if syntax in _JPEG_SYNTAXES:
            head = jpeg_header(frame)
            if (head["height"], head["width"]) != (rows, cols) or head["components"] != 1:
                return None
            if head["precision"] != 8 or head["height"] * head["width"] > max_pixels:
                return None  # 12-bit (.51): no scaled decoder installed
            factor = reduction_for(cols, rows, min_short_side, _JPEG_MAX_LEVELS)
            if factor == 1:
                return None
            stored = decode_jpeg_scaled(frame, factor).astype(_container_dtype(ds))
        else:
            info = j2k_header(frame)
            if (info["height"], info["width"]) != (rows, cols) or info["components"] != 1:
                return None
            if info["width"] * info["height"] > max_pixels:
                return None
            factor = reduction_for(cols, rows, min_short_side, info["levels"])
            while factor > 1 and not _pillow_grid_ok(info, factor.bit_length() - 1):
                factor >>= 1  # a smaller reduction Pillow sizes right (reduce 1 always is)
            if factor == 1:
                return None
            values = decode_j2k_reduced(frame, factor.bit_length() - 1)
            stored = values.astype(_container_dtype(ds))
            # pydicom's J2K sign correction: codestream signedness differs from PixelRepresentation
            pixel_rep = int(ds.get("PixelRepresentation", 0) or 0)
            bit_shift = 8 * stored.dtype.itemsize - info["precision"]
            if bit_shift > 0 and int(info["signed"]) != pixel_rep:
                stored = values.astype(np.int64).astype(stored.dtype)  # wrap into the container
                np.left_shift(stored, bit_shift, out=stored)
                np.right_shift(stored, bit_shift, out=stored)
    except Exception:  # noqa: BLE001 - any problem: the caller's full decode decides (and reports)
        return None
    if stored.ndim != 2 or stored.shape != reduced_shape(rows, cols, factor):
        return None
    if phase_correct and syntax not in _JPEG_SYNTAXES and rows % factor == 0 and cols % factor == 0:
        # Only when f divides the size: with a partial last block (2049 px at f = 2 -> 1025 samples
        # covering 1024.5) the profile's resize stretches the reduced image by 2050/2049 and the
        # uncorrected grid is the closer one (measured: mean 0.74 vs 1.05 grey levels).
        stored = j2k_phase_correct(stored, factor)
    return stored, factor


def draft_jpeg(img: Any, min_short_side: int) -> int:
    """Ask Pillow to decode an opened, not yet loaded JPEG file with DCT scaling (``Image.draft``).

    Args:
        img: a Pillow ``JpegImageFile`` (8-bit; anything else is left alone).
        min_short_side: the smallest short side the caller accepts.

    Returns:
        The factor applied (1: none; ``img.size`` is then unchanged).
    """
    if getattr(img, "format", "") not in ("JPEG", "MPO") or min_short_side < 1:
        return 1
    if img.mode not in ("L", "RGB", "YCbCr", "CMYK"):
        return 1
    width, height = img.size
    factor = reduction_for(width, height, min_short_side, _JPEG_MAX_LEVELS)
    if factor == 1:
        return 1
    # Pillow picks the scale from min(w // req_w, h // req_h): ask for floor sizes (700 px at 1/8 asks 87,
    # not 88, else 700 // 88 = 7 gives 1/4).
    img.draft(img.mode, (max(1, width // factor), max(1, height // factor)))
    config = getattr(img, "decoderconfig", ())
    applied = int(config[0]) if config else 1
    return applied if min(img.size) >= min_short_side else 1
