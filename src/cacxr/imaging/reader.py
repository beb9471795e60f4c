"""Reading one radiograph: a DICOM, PNG or JPEG file -> float32 image in [0, 1], bone bright, + metadata.

Every reader in the package goes through :func:`read_header` (fast, no pixel decoding; used by ingest on
every file) or :func:`read_image` (header checks, then decoding). Neither raises for a bad file: a file
that cannot be used comes back with a reason code and a human-readable detail naming the file.

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

PNG and JPEG files are read with Pillow, pixel data as stored (no EXIF rotation): 8-bit grey is divided by
255 (``voi="png"``, also for JPEG), RGB/RGBA/palette become grey luminance via Pillow (alpha dropped),
16-bit grey has no display range and is scaled min-max like a DICOM without window (``voi="minmax"``).

Identifying header fields are never copied: ``ImageMeta.patient_id`` is the caller's (pseudonymous) folder
id, and the header's PatientID is only compared with it (``header_id_matches``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import re
import struct
import warnings
from collections.abc import MutableSequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cacxr.core.safepaths import file_kind
from cacxr.imaging.codestream import (
    DEFAULT_MAX_PIXELS,
    CodestreamError,
    check_codestream,
    check_deflated,
    check_dicom_pixel_data,
    first_fragment_head,
)
from cacxr.imaging.decoders import decoding_plugin
from cacxr.ingest.labels import age_in_years

__all__ = [
    "FRONTAL_VIEWS",
    "LATERAL_VIEWS",
    "RADIOGRAPH_MODALITIES",
    "REASONS",
    "ImageMeta",
    "ReadResult",
    "is_frontal",
    "is_lateral",
    "first_data_tag",
    "read_header",
    "read_image",
]

logger = logging.getLogger(__name__)

FRONTAL_VIEWS = frozenset({"PA", "AP", "NN", "FRONTAL"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LATERALE", "RLAT", "LLAT"})
# Projection radiography; "" because many exports leave Modality empty.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "PX", "OT", ""})

REASONS: dict[str, str] = {
    "unreadable": "not parseable as DICOM/PNG/JPEG, truncated, or pixel data that cannot be decoded",
    "no_pixel_data": "an object without pixel data (SR, RT plan/structure, presentation state, DICOMDIR...)",
    "not_radiograph": "a modality that is not projection radiography (CT, MR, US, NM, PT, ...)",
    "multi_frame": "more than one frame in one file",
    "not_regular_file": "a FIFO, socket, device or broken link, or a link to one: never opened",
    "too_large": "more pixels than the limit, declared by the header or by the compressed codestream itself",
}

_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
_LONG_LENGTH_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"}  # explicit VRs with a 4-byte length
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_RASTER_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
_GREY_RASTER_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
# Word tokens in SeriesDescription / ProtocolName / ViewCodeSequence meanings.
_LATERAL_WORDS = LATERAL_VIEWS | {"LATERO", "LATEROMEDIAL", "MEDIOLATERAL"}
_FRONTAL_WORDS = frozenset({"PA", "AP", "FRONTAL", "POSTERO", "ANTERO", "POSTEROANTERIOR", "ANTEROPOSTERIOR"})
# The image's own date, for an age from PatientBirthDate when PatientAge is absent (first one present).
_IMAGE_DATE_TAGS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
_AGE_UNITS_IN_YEARS = {"Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25, "": 1.0}
# Above this many possible stored values, look up through np.unique instead of a dense table.
_MAX_DENSE_TABLE = 1 << 17
_GATHER_BLOCK = 1 << 16  # pixels per block of the table look-up
_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class ImageMeta:
    """What a reader learnt about one file (no identifying header field is kept).

    Attributes:
        path: the file, as the caller gave it.
        patient_id: the caller's pseudonymous id (cohort folder name), never the header's.
        source_format: "dicom", "png" or "jpeg".
        modality: DICOM Modality, upper-case ("" when absent or not DICOM).
        view: ViewPosition upper-cased and stripped ("" when absent).
        view_hint: "lateral", "frontal" or "" from ViewCodeSequence, SeriesDescription or ProtocolName,
            only filled when ViewPosition is empty.
        photometric: PhotometricInterpretation (MONOCHROME2 or RGB for PNG/JPEG).
        bits_stored: bits per sample as stored.
        bits_allocated: bits per sample allocated.
        rows: image height in pixels.
        cols: image width in pixels.
        n_frames: number of frames (1 for a single image).
        pixel_spacing: (row, column) spacing in mm from PixelSpacing, else ImagerPixelSpacing; None when
            absent or degenerate (0, negative, not a number).
        transfer_syntax: transfer syntax UID (the assumed one for files without a part-10 header).
        sop_class: SOP Class UID ("" for PNG/JPEG).
        voi: grey-level mapping applied: "voi_lut", "window", "minmax" (fallback) or "png".
        sex: "M", "F" or "" from PatientSex.
        age: PatientAge in years ("065Y", "030M", "012W", "005D", a bare number = years); when absent, whole
            years from PatientBirthDate to StudyDate (else SeriesDate, AcquisitionDate, ContentDate); NaN if
            neither is known.
        header_id_matches: whether the header PatientID equals ``patient_id`` ignoring case and the zero
            padding of numbers; None when either is empty.
        has_pixel_data: whether the file holds pixel data.
    """

    path: str
    patient_id: str
    source_format: str
    modality: str
    view: str
    view_hint: str
    photometric: str
    bits_stored: int
    bits_allocated: int
    rows: int
    cols: int
    n_frames: int
    pixel_spacing: tuple[float, float] | None
    transfer_syntax: str
    sop_class: str
    voi: str
    sex: str
    age: float
    header_id_matches: bool | None
    has_pixel_data: bool


@dataclass(frozen=True)
class ReadResult:
    """The outcome of reading one file.

    Attributes:
        image: float32 (rows, cols) in [0, 1], bone bright; None for :func:`read_header` and refusals.
        meta: what was learnt from the file; None only when it could not be parsed at all.
        reason: "" when the file is usable, else a key of :data:`REASONS`.
        detail: human-readable reason naming the file ("" when usable).
    """

    image: np.ndarray | None
    meta: ImageMeta | None
    reason: str
    detail: str

    @property
    def ok(self) -> bool:
        """True when the file is usable (no refusal reason)."""
        return self.reason == ""


class _Refusal(Exception):
    """Internal: a file that cannot be used, with its reason code and what was learnt before."""

    def __init__(self, reason: str, detail: str, meta: ImageMeta | None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.meta = meta


def is_lateral(meta: ImageMeta) -> bool:
    """Whether the image is a lateral view: ViewPosition lateral, or empty with a lateral description.

    Args:
        meta: the file's metadata.

    Returns:
        True for LL, RL, LAT, LATERAL, LATERALE, RLAT, LLAT, or an empty ViewPosition whose
        ``view_hint`` is "lateral".
    """
    return meta.view in LATERAL_VIEWS or (meta.view == "" and meta.view_hint == "lateral")


def is_frontal(meta: ImageMeta) -> bool:
    """Whether ViewPosition names a frontal view (PA, AP, NN, FRONTAL).

    An empty ViewPosition is an unknown view even when ``view_hint`` says "frontal" (the ingest rules
    decide what to do with unknown views); callers that want the hint can read ``meta.view_hint``.

    Args:
        meta: the file's metadata.

    Returns:
        True when ``meta.view`` is in :data:`FRONTAL_VIEWS`.
    """
    return meta.view in FRONTAL_VIEWS


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
    path: str | os.PathLike[str], patient_id: str = "", max_pixels: int = DEFAULT_MAX_PIXELS
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

    Returns:
        A :class:`ReadResult`; ``image`` is a float32 (rows, cols) array when ``reason`` is "", else
        None with the reason code (unreadable with the decoder's message when decoding fails).
    """
    return _read(path, patient_id, decode=True, max_pixels=max_pixels)


def _read(path: str | os.PathLike[str], patient_id: str, decode: bool, max_pixels: int) -> ReadResult:
    """Dispatch on the file's format and turn every failure into a reason (the module's boundary)."""
    name = os.fspath(path)
    kind = file_kind(name)
    if kind not in ("", "missing", "a folder"):  # opening a FIFO or /dev/zero would block or never end
        return ReadResult(
            image=None, meta=None, reason="not_regular_file", detail=f"{name}: {kind}, not opened"
        )
    try:
        reader = _read_raster if _raster_format(name) else _read_dicom
        meta, image = reader(name, patient_id, decode, max_pixels)
        return ReadResult(image=image, meta=meta, reason="", detail="")
    except _Refusal as refusal:
        return ReadResult(image=None, meta=refusal.meta, reason=refusal.reason, detail=refusal.detail)
    except CodestreamError as exc:
        return ReadResult(image=None, meta=None, reason=exc.reason, detail=f"{name}: {exc}")
    except MemoryError:  # a last line of defence: the size checks should have refused the file first
        return ReadResult(
            image=None, meta=None, reason="too_large", detail=f"{name}: out of memory decoding it"
        )
    except Exception as exc:  # noqa: BLE001 - any failure of a parser is a property of the file
        return ReadResult(image=None, meta=None, reason="unreadable", detail=f"{name}: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    """Short one-line description of an exception."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------- formats


def _raster_format(path: str) -> str:
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


def _refusal_for(meta: ImageMeta, max_pixels: int) -> tuple[str, str] | None:
    """The first refusal that applies to a parsed header (ingest order), or None."""
    if not meta.has_pixel_data:
        what = _sop_class_name(meta.sop_class)
        return "no_pixel_data", f"{meta.path}: no pixel data" + (f" ({what})" if what else "")
    if meta.modality not in RADIOGRAPH_MODALITIES:
        return "not_radiograph", f"{meta.path}: Modality {meta.modality} is not a projection radiograph"
    if meta.n_frames > 1:
        return "multi_frame", f"{meta.path}: {meta.n_frames} frames in one file (one image expected)"
    if meta.rows * meta.cols * max(meta.n_frames, 1) > max_pixels:
        size = f"{meta.cols}x{meta.rows}"
        return "too_large", f"{meta.path}: image of {size} pixels is above the limit of {max_pixels:,} pixels"
    return None


def _sop_class_name(uid: str) -> str:
    if not uid:
        return ""
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else f"SOP class {uid}"


# --------------------------------------------------------------------------------------------- raster


def _read_raster(
    path: str, patient_id: str, decode: bool, max_pixels: int
) -> tuple[ImageMeta, np.ndarray | None]:
    from PIL import Image

    fmt = _raster_format(path)
    with open(path, "rb") as fp:
        head = fp.read(1 << 16)
    try:  # the size the PNG IHDR / JPEG SOF declares, before Pillow sees the file
        check_codestream(head, max_pixels, what=f"{fmt.upper()} image")
    except CodestreamError as exc:
        if exc.reason == "too_large":  # a malformed header is left to Pillow's own message
            raise _Refusal("too_large", f"{path}: {exc}", None) from exc
    try:
        # Pillow's lazy open reads the declared size (PNG IHDR, JPEG SOF) without decoding; the limit
        # is checked below (_refusal_for) before any pixel is decoded. Pillow's own bomb check at open
        # only fires far above it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise _Refusal("too_large", f"{path}: {_describe(exc)}", None) from exc
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
        refusal = _refusal_for(meta, max_pixels)
        if refusal:
            raise _Refusal(*refusal, meta)
        if not decode:
            return meta, None
        try:
            if wide:
                return meta, _minmax(np.asarray(img))
            if mode != "L":
                # Pillow's "L" conversion is ITU-R 601 luminance; going through RGB drops any alpha.
                img = img.convert("L") if grey else img.convert("RGB").convert("L")
            return meta, np.asarray(img).astype(np.float32) * np.float32(1.0 / 255.0)
        except Exception as exc:  # noqa: BLE001 - decoder errors are a property of the file
            raise _Refusal("unreadable", f"{path}: image cannot be decoded: {_describe(exc)}", meta) from exc


# --------------------------------------------------------------------------------------------- DICOM


def _read_dicom(
    path: str, patient_id: str, decode: bool, max_pixels: int
) -> tuple[ImageMeta, np.ndarray | None]:
    import pydicom

    # pydicom inflates a deflated data set whole, even for a header read: bound it first.
    check_deflated(path, max_pixels * 4 + (1 << 24))
    if decode:
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as exc:  # noqa: BLE001 - report what the header says, then why reading failed
            meta, _ = _read_dicom(path, patient_id, False, max_pixels)  # raises its own refusal first
            raise _Refusal("unreadable", f"{path}: {_describe(exc)}", meta) from exc
        has_pixels = _has_pixel_value(ds)
        if not has_pixels:
            # pydicom drops a pixel data element the file ends inside: that is a truncated file.
            header, _ = _read_dicom(path, patient_id, False, max_pixels)
            if header.has_pixel_data:
                raise _Refusal("unreadable", f"{path}: truncated inside the pixel data", header)
        fragment = b""
    else:
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
            has_pixels = _pixel_data_follows(fp, ds)
            fragment = first_fragment_head(fp, ds.original_encoding[1] is not False) if has_pixels else b""
    _check_parsed(ds)
    _ensure_transfer_syntax(ds)
    meta = _dicom_meta(ds, path, patient_id, has_pixels)
    refusal = _refusal_for(meta, max_pixels)
    if refusal:
        raise _Refusal(*refusal, meta)
    if not decode:
        try:  # a codestream declaring too many pixels is refused from the header already
            check_codestream(fragment, max_pixels, what="pixel data")
        except CodestreamError as exc:
            if exc.reason == "too_large":
                raise _Refusal(exc.reason, f"{path}: {exc}", meta) from exc
        return meta, None
    try:
        check_dicom_pixel_data(ds, max_pixels)  # the codestream's own size, before a decoder allocates
    except CodestreamError as exc:
        what = "" if exc.reason == "too_large" else "pixel data cannot be decoded: "
        raise _Refusal(exc.reason, _scrub(f"{path}: {what}{exc}", ds), meta) from exc
    try:
        # Unused high bits are cleared by _keep_stored_bits only when some value needs it (cheaper than
        # pydicom's unconditional pass, and it lets pydicom return a view instead of a copy).
        # The fastest installed decoder for the syntax (cacxr.imaging.decoders), not pydicom's first plugin.
        plugin = decoding_plugin(meta.transfer_syntax)
        ds.pixel_array_options(correct_unused_bits=False, **({"decoding_plugin": plugin} if plugin else {}))
        image, voi = _to_display(ds.pixel_array, ds, meta.voi, path)
    except Exception as exc:  # noqa: BLE001 - decoder errors are a property of the file
        detail = _scrub(f"{path}: pixel data cannot be decoded: {_describe(exc)}", ds)
        raise _Refusal("unreadable", detail, meta) from exc
    if image.shape != (meta.rows, meta.cols):
        detail = f"{path}: decoded shape {image.shape} does not match Rows x Columns"
        raise _Refusal("unreadable", detail, meta)
    return replace(meta, voi=voi), image


def _pixel_data_follows(fp: Any, ds: Any) -> bool:
    """After a stop_before_pixels parse, whether non-empty pixel data comes next (without reading it)."""
    if ds.file_meta.get("TransferSyntaxUID", "") == "1.2.840.10008.1.2.1.99":
        # Deflated: the parse ran on an inflated copy, so the file position says nothing; re-read lazily.
        import pydicom

        fp.seek(0)
        return _has_pixel_value(pydicom.dcmread(fp, force=True, defer_size="1 KB"))
    implicit, little = (flag is not False for flag in ds.original_encoding)
    order = "<" if little else ">"
    head = fp.read(12)
    if len(head) < 8:
        return False
    group, element = struct.unpack(order + "HH", head[:4])
    if (group << 16 | element) not in _PIXEL_TAGS:
        return False
    if implicit:
        (length,) = struct.unpack(order + "I", head[4:8])
        fp.seek(8 - len(head), 1)  # leave the file at the value, as for explicit VR
    elif head[4:6] in _LONG_LENGTH_VRS and len(head) == 12:
        (length,) = struct.unpack(order + "I", head[8:12])
    else:
        (length,) = struct.unpack(order + "H", head[6:8])
    return length != 0  # 0xFFFFFFFF (encapsulated, undefined length) counts as present


def _has_pixel_value(ds: Any) -> bool:
    """Whether a fully parsed dataset holds a non-empty pixel data element."""
    return any(tag in ds and ds[tag].value not in (None, b"") for tag in _PIXEL_TAGS)


def first_data_tag(ds: Any) -> Any:
    """The first element of a data set after any leading group lengths, or None when there is none.

    Old ACR-NEMA-style exports start each group with its group length (gggg,0000), which the data
    dictionary does not list: it says nothing about whether the bytes are DICOM, so it is skipped.

    Args:
        ds: a ``pydicom.Dataset`` (typically parsed with ``force=True``).

    Returns:
        The ``pydicom.tag.BaseTag`` of the first element that is not a group length (of an even group),
        else None.
    """
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields elements, not tags
        if tag.element == 0 and tag.group % 2 == 0:
            continue
        return tag
    return None


def _check_parsed(ds: Any) -> None:
    """Reject what force=True 'parsed' out of a non-DICOM file (text, archives, random bytes)."""
    from pydicom.datadict import dictionary_has_tag

    if getattr(ds, "preamble", None) is not None or len(getattr(ds, "file_meta", ())):
        return
    tag = first_data_tag(ds)
    if tag is None or not dictionary_has_tag(tag):
        raise ValueError("not a DICOM file (no DICM marker and no recognisable DICOM element)")


def _ensure_transfer_syntax(ds: Any) -> None:
    """Give files without a part-10 header (or without the UID) the transfer syntax they were read with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = FileMetaDataset()
    if ds.file_meta.get("TransferSyntaxUID"):
        return
    implicit, little = ds.original_encoding
    if implicit is not False:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _dicom_meta(ds: Any, path: str, patient_id: str, has_pixels: bool) -> ImageMeta:
    view = _text(ds, "ViewPosition").upper()
    with warnings.catch_warnings():
        # pydicom's value-validation warnings quote the value: keep identifying fields out of stderr.
        warnings.simplefilter("ignore")
        header_id = _text(ds, "PatientID")
        sex = _text(ds, "PatientSex").upper()
        age = _parse_age(_text(ds, "PatientAge"))
        if math.isnan(age):
            taken = next((d for d in (_text(ds, tag) for tag in _IMAGE_DATE_TAGS) if d), "")
            age = _age_from_dates(_text(ds, "PatientBirthDate"), taken)
    return ImageMeta(
        path=path,
        patient_id=patient_id,
        source_format="dicom",
        modality=_text(ds, "Modality").upper(),
        view=view,
        view_hint="" if view else _view_hint(ds),
        photometric=_text(ds, "PhotometricInterpretation").upper(),
        bits_stored=_int(ds, "BitsStored"),
        bits_allocated=_int(ds, "BitsAllocated"),
        rows=_int(ds, "Rows"),
        cols=_int(ds, "Columns"),
        n_frames=max(_int(ds, "NumberOfFrames", 1), 1),
        pixel_spacing=_spacing(ds, "PixelSpacing") or _spacing(ds, "ImagerPixelSpacing"),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        sop_class=_text(ds, "SOPClassUID") or str(ds.file_meta.get("MediaStorageSOPClassUID", "")),
        voi=_planned_voi(ds),
        sex={"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(sex, ""),
        age=age,
        header_id_matches=_ids_match(header_id, patient_id),
        has_pixel_data=has_pixels,
    )


def _text(ds: Any, keyword: str) -> str:
    """A header value as stripped text ("" when absent, empty or unparseable)."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed value counts as absent
        return ""
    if value is None:
        return ""
    if isinstance(value, MutableSequence):  # a multi-valued element
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds: Any, keyword: str, default: int = 0) -> int:
    text = _text(ds, keyword)
    try:
        return int(float(text)) if text else default
    except ValueError:
        return default


def _spacing(ds: Any, keyword: str) -> tuple[float, float] | None:
    try:
        values = [float(v) for v in ds.get(keyword) or ()]
    except Exception:  # noqa: BLE001 - a malformed spacing counts as absent
        return None
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        return None
    return values[0], values[1]


def _parse_age(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([DWMY]?)", text.upper())
    return float(match[1]) * _AGE_UNITS_IN_YEARS[match[2]] if match else math.nan


def _age_from_dates(birth: str, taken: str) -> float:
    """Whole years from PatientBirthDate to the image's date (DICOM DA, YYYYMMDD): the same age the label
    table gives from birth and rx_date, so a --clinical score does not depend on where the age came from.
    NaN when either date is missing or malformed; the birth date itself is never kept."""
    try:
        born, at = (dt.datetime.strptime(value.strip()[:8], "%Y%m%d").date() for value in (birth, taken))
    except ValueError:
        return math.nan
    years = age_in_years(born, at)
    return float(years) if years >= 0 else math.nan


def _normalise_id(text: str) -> str:
    """Upper-case, with the zero padding of every number removed (CAC_030 -> CAC_30)."""
    return re.sub(r"\d+", lambda m: str(int(m[0])), text.strip().upper())


def _ids_match(header_id: str, patient_id: str) -> bool | None:
    if not header_id.strip() or not patient_id.strip():
        return None
    return _normalise_id(header_id) == _normalise_id(patient_id)


def _view_hint(ds: Any) -> str:
    """lateral/frontal from the first of ViewCodeSequence, SeriesDescription, ProtocolName that decides."""
    texts = []
    with contextlib.suppress(Exception):  # a malformed sequence gives no hint
        texts += [_text(item, "CodeMeaning") for item in ds.get("ViewCodeSequence") or ()]
    texts += [_text(ds, "SeriesDescription"), _text(ds, "ProtocolName")]
    for text in texts:
        words = set(re.split(r"[^A-Z0-9]+", text.upper()))
        lateral, frontal = bool(words & _LATERAL_WORDS), bool(words & _FRONTAL_WORDS)
        if lateral != frontal:  # both (e.g. "PA + LAT") or neither: this field does not decide
            return "lateral" if lateral else "frontal"
    return ""


def _scrub(text: str, ds: Any) -> str:
    """Remove identifying header values from a message (decoder errors may quote header values)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = [_text(ds, k) for k in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs")]
    # Whole values first, then the parts of names and multi-values (family name alone, ...).
    parts = [part for value in values for part in re.split(r"[\^=\\]", value)]
    for value in sorted({v.strip() for v in values + parts if len(v.strip()) >= 2}, key=len, reverse=True):
        text = text.replace(value, "<removed>")
    return text


# --------------------------------------------------------------------------------------------- grey levels


def _is_colour(ds: Any) -> bool:
    photometric = _text(ds, "PhotometricInterpretation").upper()
    return _int(ds, "SamplesPerPixel", 1) > 1 or photometric == "PALETTE COLOR"


def _planned_voi(ds: Any) -> str:
    """The VOI step pydicom's apply_voi_lut(prefer_lut=True) will take: voi_lut, window or minmax."""
    if _is_colour(ds):
        return "minmax"
    sequence = ds.get("VOILUTSequence")
    if sequence and None not in (sequence[0].get("LUTDescriptor"), sequence[0].get("LUTData")):
        return "voi_lut"
    if None not in (ds.get("WindowCenter"), ds.get("WindowWidth")):
        return "window"
    return "minmax"


def _to_display(stored: np.ndarray, ds: Any, voi: str, path: str) -> tuple[np.ndarray, str]:
    """Decoded pixel array -> float32 image in [0, 1], bone bright, and the VOI step actually used."""
    from pydicom.pixels import apply_color_lut

    if _text(ds, "PhotometricInterpretation").upper() == "PALETTE COLOR":
        stored = apply_color_lut(stored, ds)
    if stored.ndim == 3:  # colour: pydicom already converted YBR to RGB
        return _minmax(stored @ _BT601), "minmax"
    if stored.dtype.kind in "iu":
        stored = _keep_stored_bits(stored, _int(ds, "BitsStored"), signed=stored.dtype.kind == "i")
    levels, indices, offset, present = _levels(stored)
    table, voi = _display_table(levels, present, ds, voi, path)
    return _gather(table, indices, offset), voi


def _keep_stored_bits(stored: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
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

    values = np.asarray(apply_modality_lut(levels, ds), dtype=np.float64)
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
        logger.warning("%s: unusable %s (%s), using min-max instead", path, voi, _describe(exc))
    if table is None:
        voi = "minmax"
        table = _minmax(values, values[present])
    if _inverted(ds):
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


def _inverted(ds: Any) -> bool:
    """MONOCHROME1 (min = white) or PresentationLUTShape INVERSE: one inversion (see module docstring)."""
    photometric = _text(ds, "PhotometricInterpretation").upper()
    return photometric == "MONOCHROME1" or _text(ds, "PresentationLUTShape").upper() == "INVERSE"


def _minmax(values: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
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
