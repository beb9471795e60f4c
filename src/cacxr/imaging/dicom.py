"""A DICOM file to metadata and a display image: bounded header read, codestream checks, then the decoder."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from cacxr.imaging.codestream import (
    CodestreamError,
    check_codestream,
    check_deflated,
    check_dicom_pixel_data,
    check_element_lengths,
    first_fragment_head,
)
from cacxr.imaging.decoders import decoding_plugin
from cacxr.imaging.greylevels import GreyLevelError, to_display
from cacxr.imaging.header import (
    check_parsed,
    dicom_meta,
    ensure_transfer_syntax,
    has_pixel_value,
    header_int,
    pixel_data_follows,
    scrub,
)
from cacxr.imaging.meta import ImageMeta, Refusal, describe, refusal_for
from cacxr.imaging.reduced import decode_dicom_reduced, reduced_shape

__all__ = ["read_dicom", "decoded_size_refusal"]


class _OneLinePerFile(logging.Filter):
    """Drops pydicom's per-plugin "ERROR ... Traceback" when a decoder fails: cacxr reports the failure once,
    as the file's reason (``unreadable: pixel data cannot be decoded: ...``). ``--verbose`` (the pydicom
    logger at DEBUG) lets them through for debugging."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and logging.getLogger("pydicom").getEffectiveLevel() > logging.DEBUG)


_DECODER_LOG = logging.getLogger("pydicom.pixels.decoders.base")
if not any(isinstance(f, _OneLinePerFile) for f in _DECODER_LOG.filters):
    _DECODER_LOG.addFilter(_OneLinePerFile())


# Sample depths a radiograph may use; SamplesPerPixel 1 (grey) or 3 (colour).
_BITS_ALLOCATED = (1, 8, 16, 32)
_SAMPLES = (1, 3)
# Decoded bytes allowed per pixel of the pixel limit: a grey 32-bit image at the limit, or 16-bit RGB below it.
_BYTES_PER_LIMIT_PIXEL = 4


def decoded_size_refusal(ds: Any, meta: ImageMeta, max_pixels: int) -> tuple[str, str] | None:
    """Refuse, from the header, pixel data whose decoded size (not only Rows x Columns) is above the budget.

    The decoders allocate Rows x Columns x frames x SamplesPerPixel x BitsAllocated/8 bytes whatever the
    file's size: an RLE file of 9 MB can declare 7000 x 7000 x 3 samples x 32 bits (588 MB), which aborts a
    native decoder on allocation failure. Budget: ``max_pixels * 4`` bytes.
    """
    samples = header_int(ds, "SamplesPerPixel", 1)
    bits = meta.bits_allocated
    if samples not in _SAMPLES or (bits and bits not in _BITS_ALLOCATED):
        return "unreadable", f"{meta.path}: SamplesPerPixel {samples}, BitsAllocated {bits}: not a radiograph's pixels"
    decoded = meta.rows * meta.cols * max(meta.n_frames, 1) * samples * -(-max(bits, 8) // 8)
    budget = max_pixels * _BYTES_PER_LIMIT_PIXEL
    if decoded > budget:
        return "too_large", (
            f"{meta.path}: the pixel data decodes to {decoded:,} bytes ({meta.cols}x{meta.rows}, {samples} "
            f"sample(s) of {bits} bits), above the limit of {budget:,} bytes"
        )
    return None


def read_dicom(
    path: str, patient_id: str, decode: bool, max_pixels: int, min_short_side: int = 0
) -> tuple[ImageMeta, np.ndarray | None]:
    import pydicom

    # pydicom inflates a deflated data set whole, even for a header read: bound it first.
    check_deflated(path, max_pixels * 4 + (1 << 24))
    check_element_lengths(path)  # a small file declaring a huge element: one reason, whatever the memory
    if decode:
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as exc:  # noqa: BLE001 - report what the header says, then why reading failed
            meta, _ = read_dicom(path, patient_id, False, max_pixels)  # raises its own refusal first
            raise Refusal("unreadable", f"{path}: {describe(exc)}", meta) from exc
        has_pixels = has_pixel_value(ds)
        if not has_pixels:
            # pydicom drops a pixel data element the file ends inside: that is a truncated file.
            header, _ = read_dicom(path, patient_id, False, max_pixels)
            if header.has_pixel_data:
                raise Refusal("unreadable", f"{path}: truncated inside the pixel data", header)
        fragment = b""
    else:
        with open(path, "rb") as fp:
            # Values over 1 MB are not read up front (a forged length is never allocated; read on access).
            ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True, defer_size="1 MB")
            has_pixels = pixel_data_follows(fp, ds)
            fragment = first_fragment_head(fp, ds.original_encoding[1] is not False) if has_pixels else b""
    check_parsed(ds)
    ensure_transfer_syntax(ds)
    meta = dicom_meta(ds, path, patient_id, has_pixels)
    refusal = refusal_for(meta, max_pixels) or decoded_size_refusal(ds, meta, max_pixels)
    if refusal:
        raise Refusal(*refusal, meta)
    if not decode:
        try:  # a codestream declaring too many pixels is refused from the header already
            check_codestream(fragment, max_pixels, what="pixel data")
        except CodestreamError as exc:
            if exc.reason == "too_large":
                raise Refusal(exc.reason, f"{path}: {exc}", meta) from exc
        return meta, None
    try:
        check_dicom_pixel_data(ds, max_pixels)  # the codestream's own size, before a decoder allocates
    except CodestreamError as exc:
        what = "" if exc.reason == "too_large" else "pixel data cannot be decoded: "
        raise Refusal(exc.reason, f"{path}: {what}" + scrub(str(exc), ds, keep=(str(path),)), meta) from exc
    try:
        # Unused high bits are cleared by keep_stored_bits only when some value needs it (cheaper than
        # pydicom's unconditional pass, and it lets pydicom return a view instead of a copy).
        # The fastest installed decoder for the syntax (cacxr.imaging.decoders), not pydicom's first plugin.
        plugin = decoding_plugin(meta.transfer_syntax)
        ds.pixel_array_options(correct_unused_bits=False, **({"decoding_plugin": plugin} if plugin else {}))
        # A caller that only needs min_short_side px gets a smaller decode where the codestream allows it.
        reduced = decode_dicom_reduced(ds, min_short_side, max_pixels=max_pixels) if min_short_side else None
        image, voi = to_display(ds.pixel_array if reduced is None else reduced[0], ds, meta.voi, path)
    except GreyLevelError as exc:  # decoded, but nothing to score: one reason, naming the values
        raise Refusal("unreadable", f"{path}: {exc}", meta) from exc
    except MemoryError as exc:  # within the size limits, yet over this process's memory (a capped worker)
        raise Refusal("too_large", f"{path}: out of memory decoding it", meta) from exc
    except Exception as exc:  # noqa: BLE001 - decoder errors are a property of the file
        detail = f"{path}: pixel data cannot be decoded: " + scrub(describe(exc), ds, keep=(str(path),))
        raise Refusal("unreadable", detail, meta) from exc
    except BaseException as exc:  # a native decoder's panic (pyo3 PanicException) is not an Exception
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        detail = f"{path}: pixel data cannot be decoded: decoder crashed: " + scrub(describe(exc), ds, keep=(str(path),))
        raise Refusal("unreadable", detail, meta) from exc
    if image.shape != (reduced_shape(meta.rows, meta.cols, reduced[1]) if reduced else (meta.rows, meta.cols)):
        detail = f"{path}: decoded shape {image.shape} does not match Rows x Columns"
        raise Refusal("unreadable", detail, meta)
    return replace(meta, voi=voi), image
