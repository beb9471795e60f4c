"""What a reader returns: the file's metadata, the outcome with its reason, and the reasons a file is refused."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "RADIOGRAPH_MODALITIES",
    "REASONS",
    "ImageMeta",
    "ReadResult",
    "Refusal",
    "describe",
    "refusal_for",
    "sop_class_name",
]

# Projection radiography; "" because many exports leave Modality empty.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "PX", "OT", ""})
REASONS: dict[str, str] = {
    "unreadable": "not parseable as DICOM/PNG/JPEG, truncated, or pixel data that cannot be decoded",
    "no_pixel_data": "an object without pixel data (SR, RT plan/structure, presentation state, DICOMDIR...)",
    "not_radiograph": "a modality that is not projection radiography (CT, MR, US, NM, PT, ...)",
    "multi_frame": "more than one frame in one file",
    "not_regular_file": "a FIFO, socket, device or broken link, or a link to one: never opened",
    "too_large": "more pixels than the limit, declared by the header or by the compressed codestream itself",
    "too_complex": "a codestream whose decoding work is unbounded (a JPEG with more scans than the limit)",
}


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
        study_date: the radiograph's date as ISO ``YYYY-MM-DD`` from StudyDate, else AcquisitionDate, else
            ContentDate ("" when none is a valid date, and for PNG/JPEG, whose date comes from a label table).
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
    study_date: str = ""


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


class Refusal(Exception):
    """Internal: a file that cannot be used, with its reason code and what was learnt before."""

    def __init__(self, reason: str, detail: str, meta: ImageMeta | None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.meta = meta


def describe(exc: BaseException) -> str:
    """Short one-line description of an exception."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def refusal_for(meta: ImageMeta, max_pixels: int) -> tuple[str, str] | None:
    """The first refusal that applies to a parsed header (ingest order), or None."""
    if not meta.has_pixel_data:
        what = sop_class_name(meta.sop_class)
        return "no_pixel_data", f"{meta.path}: no pixel data" + (f" ({what})" if what else "")
    if meta.modality not in RADIOGRAPH_MODALITIES:
        return "not_radiograph", f"{meta.path}: Modality {meta.modality} is not a projection radiograph"
    if meta.n_frames > 1:
        return "multi_frame", f"{meta.path}: {meta.n_frames} frames in one file (one image expected)"
    if meta.rows * meta.cols * max(meta.n_frames, 1) > max_pixels:
        size = f"{meta.cols}x{meta.rows}"
        return "too_large", f"{meta.path}: image of {size} pixels is above the limit of {max_pixels:,} pixels"
    return None


def sop_class_name(uid: str) -> str:
    if not uid:
        return ""
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else f"SOP class {uid}"
