"""A DICOM file to metadata and a display image: bounded header read, codestream checks, then the decoder."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cacxr.imaging.codestream import (
    CodestreamError,
    check_codestream,
    check_deflated,
    check_dicom_pixel_data,
    first_fragment_head,
)
from cacxr.imaging.decoders import decoding_plugin
from cacxr.imaging.greylevels import to_display
from cacxr.imaging.header import (
    check_parsed,
    dicom_meta,
    ensure_transfer_syntax,
    has_pixel_value,
    pixel_data_follows,
    scrub,
)
from cacxr.imaging.meta import ImageMeta, Refusal, describe, refusal_for
from cacxr.imaging.reduced import decode_dicom_reduced, reduced_shape

__all__ = ["read_dicom"]


def read_dicom(
    path: str, patient_id: str, decode: bool, max_pixels: int, min_short_side: int = 0
) -> tuple[ImageMeta, np.ndarray | None]:
    import pydicom

    # pydicom inflates a deflated data set whole, even for a header read: bound it first.
    check_deflated(path, max_pixels * 4 + (1 << 24))
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
            ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
            has_pixels = pixel_data_follows(fp, ds)
            fragment = first_fragment_head(fp, ds.original_encoding[1] is not False) if has_pixels else b""
    check_parsed(ds)
    ensure_transfer_syntax(ds)
    meta = dicom_meta(ds, path, patient_id, has_pixels)
    refusal = refusal_for(meta, max_pixels)
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
        raise Refusal(exc.reason, scrub(f"{path}: {what}{exc}", ds), meta) from exc
    try:
        # Unused high bits are cleared by keep_stored_bits only when some value needs it (cheaper than
        # pydicom's unconditional pass, and it lets pydicom return a view instead of a copy).
        # The fastest installed decoder for the syntax (cacxr.imaging.decoders), not pydicom's first plugin.
        plugin = decoding_plugin(meta.transfer_syntax)
        ds.pixel_array_options(correct_unused_bits=False, **({"decoding_plugin": plugin} if plugin else {}))
        # A caller that only needs min_short_side px gets a smaller decode where the codestream allows it.
        reduced = decode_dicom_reduced(ds, min_short_side, max_pixels=max_pixels) if min_short_side else None
        image, voi = to_display(ds.pixel_array if reduced is None else reduced[0], ds, meta.voi, path)
    except Exception as exc:  # noqa: BLE001 - decoder errors are a property of the file
        detail = scrub(f"{path}: pixel data cannot be decoded: {describe(exc)}", ds)
        raise Refusal("unreadable", detail, meta) from exc
    if image.shape != (reduced_shape(meta.rows, meta.cols, reduced[1]) if reduced else (meta.rows, meta.cols)):
        detail = f"{path}: decoded shape {image.shape} does not match Rows x Columns"
        raise Refusal("unreadable", detail, meta)
    return replace(meta, voi=voi), image
