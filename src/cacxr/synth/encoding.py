"""Turning drawn images into DICOM files with the variety a hospital archive has.

A :class:`DicomStyle` says how one file is stored: transfer syntax (or no part-10 preamble, or no
file meta at all), bit depth, MONOCHROME1/2, rescale, and the display window (window tags, a VOI LUT
sequence, or nothing). Whatever the style, decoding the file with the modality LUT, the VOI LUT and
the MONOCHROME1 inversion gives back the drawn image (bone bright), up to quantisation and the
window's shape.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from datetime import date

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from cacxr.core import write_bytes

__all__ = [
    "ENCODINGS",
    "DicomStyle",
    "Header",
    "stable_uid",
    "to_stored",
    "radiograph_dataset",
    "ct_dataset",
    "metadata_dataset",
    "encode",
    "write_dataset",
]

# encoding -> transfer syntax written in the file meta (None: no file meta at all)
ENCODINGS: dict[str, str | None] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "no_preamble": ExplicitVRLittleEndian,  # file meta present, 128-byte preamble and "DICM" absent
    "no_meta": None,  # a bare implicit-VR data set, as old archives hold (readable with force=True)
    "rle": RLELossless,
    "j2k": JPEG2000Lossless,
}
_SOP_CLASS = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
}
_BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


@dataclass(frozen=True)
class DicomStyle:
    """How one radiograph is stored.

    Attributes:
        encoding: a key of :data:`ENCODINGS`.
        bits_stored: 10, 12, 14 or 16 (BitsAllocated is always 16, values unsigned).
        photometric: ``MONOCHROME2`` (bone bright) or ``MONOCHROME1`` (stored inverted).
        voi: ``window`` (WindowCenter/Width), ``lut`` (a VOI LUT sequence) or ``none``.
        rescale: ``(slope, intercept)`` written as RescaleSlope/Intercept, or None.
        low: stored value of image value 0, as a fraction of the stored range.
        high: stored value of image value 1, as a fraction of the stored range.
    """

    encoding: str = "explicit"
    bits_stored: int = 12
    photometric: str = "MONOCHROME2"
    voi: str = "window"
    rescale: tuple[float, float] | None = None
    low: float = 0.02
    high: float = 0.95


@dataclass(frozen=True)
class Header:
    """Patient and acquisition attributes of one file (synthetic, but shaped like real ones)."""

    patient_id: str
    patient_name: str
    birth: date
    sex: str
    study_date: date
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str = "DX"
    view: str | None = "PA"  # ViewPosition; "" is written as an empty value, None leaves it out
    description: str = "THORAX PA"
    age: int | None = None  # PatientAge, when the archive fills it
    institution: str = "Synthetic Hospital"
    instance_number: int = 1
    series_number: int = 1


def stable_uid(*parts: object) -> str:
    """A UID derived from ``parts`` only: the same cohort seed gives the same UIDs."""
    return generate_uid(entropy_srcs=["cacxr-synth", *map(str, parts)])


def to_stored(image: np.ndarray, style: DicomStyle) -> np.ndarray:
    """Map a [0, 1] bone-bright image to the stored values of ``style`` (uint16).

    Args:
        image: float image in [0, 1].
        style: the storage style.

    Returns:
        uint16 values within ``[0, 2**bits_stored - 1]``, inverted for MONOCHROME1.
    """
    top = (1 << style.bits_stored) - 1
    stored = np.rint((style.low + np.clip(image, 0, 1) * (style.high - style.low)) * top)
    stored = np.clip(stored, 0, top).astype(np.uint16)
    if style.photometric == "MONOCHROME1":
        stored = (top - stored).astype(np.uint16)
    return stored


def _base(header: Header, sop_class: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = header.sop_uid
    ds.StudyDate = header.study_date.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.Modality = header.modality
    ds.Manufacturer = "cacxr synth"
    ds.InstitutionName = header.institution
    ds.StudyDescription = "THORAX"
    ds.SeriesDescription = header.description
    ds.PatientName = header.patient_name
    ds.PatientID = header.patient_id
    ds.PatientBirthDate = header.birth.strftime("%Y%m%d")
    ds.PatientSex = header.sex
    if header.age is not None:
        ds.PatientAge = f"{header.age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = header.series_number
    ds.InstanceNumber = header.instance_number
    return ds


def _pixel_module(
    ds: Dataset, rows: int, cols: int, bits: int, photometric: str, signed: bool = False
) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0


def _voi(ds: Dataset, reference: np.ndarray, style: DicomStyle) -> None:
    """Window tags or a VOI LUT fitted to the 1-99.5 % range of the patient's stored values."""
    slope, intercept = style.rescale or (1.0, 0.0)
    lo, hi = np.percentile(reference, [1.0, 99.5])
    if style.voi == "window":
        out_lo, out_hi = lo * slope + intercept, hi * slope + intercept
        ds.WindowCenter = f"{(out_lo + out_hi) / 2:.1f}"
        ds.WindowWidth = f"{max(out_hi - out_lo, 2.0) * 1.1:.1f}"
        ds.VOILUTFunction = "LINEAR"
        ds.WindowCenterWidthExplanation = "SYNTH"
    elif style.voi == "lut":
        # a sigmoid LUT over the stored range actually used (no rescale goes with a LUT)
        first, last = int(np.floor(lo)), int(np.ceil(hi))
        x = np.arange(first, last + 1, dtype=np.float64)
        centre, width = (first + last) / 2, max(last - first, 2)
        curve = 1 / (1 + np.exp(-(x - centre) / (width / 7)))
        curve = (curve - curve[0]) / (curve[-1] - curve[0])
        item = Dataset()
        item.LUTDescriptor = [len(x), first, 16]
        item.LUTExplanation = "SIGMOID"
        # OW keeps the VR unambiguous in implicit-VR files; 16 bits per entry
        item.add_new("LUTData", "OW", np.rint(curve * 65535).astype("<u2").tobytes())
        ds.VOILUTSequence = Sequence([item])


def radiograph_dataset(
    frames: np.ndarray,
    style: DicomStyle,
    header: Header,
    reference: np.ndarray | None = None,
) -> Dataset:
    """A CR/DX data set holding ``frames`` (one image, or a stack for a multi-frame file).

    Args:
        frames: float [0, 1] bone-bright image ``(rows, cols)`` or ``(n, rows, cols)``.
        style: storage style (bit depth, photometric, rescale, VOI).
        header: patient and acquisition attributes.
        reference: the image the window is fitted to (default: ``frames``); passing the image
            drawn without plaques keeps the header identical with and without signal.

    Returns:
        The data set, uncompressed, without file meta (see :func:`encode`).
    """
    stored = to_stored(frames, style)
    ds = _base(header, _SOP_CLASS.get(header.modality, _SOP_CLASS["DX"]))
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if header.view is not None:
        ds.ViewPosition = header.view
    ds.PatientOrientation = ["L", "F"] if header.view not in ("LL", "LAT", "LATERALE") else ["A", "F"]
    spacing = f"{430.0 / stored.shape[-1]:.4f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    _pixel_module(ds, stored.shape[-2], stored.shape[-1], style.bits_stored, style.photometric)
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    if style.rescale is not None:
        ds.RescaleSlope = f"{style.rescale[0]:g}"
        ds.RescaleIntercept = f"{style.rescale[1]:g}"
        ds.RescaleType = "US"
    if style.voi != "none":
        ref = stored if reference is None else to_stored(reference, style)
        _voi(ds, ref, style)
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def ct_dataset(hu: np.ndarray, header: Header, slice_index: int) -> Dataset:
    """An axial CT slice (stored as HU + 1024 with RescaleIntercept -1024).

    Args:
        hu: int16 Hounsfield units.
        header: patient attributes (modality is forced to CT).
        slice_index: position of the slice in its series.

    Returns:
        The data set, without file meta.
    """
    ds = _base(header, CTImageStorage)
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = "3.0"
    ds.SliceLocation = f"{-3.0 * slice_index:.1f}"
    ds.ImagePositionPatient = ["-175.0", "-175.0", f"{-3.0 * slice_index:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["0.68", "0.68"]
    _pixel_module(ds, hu.shape[0], hu.shape[1], 12, "MONOCHROME2")
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.PixelData = np.clip(hu.astype(np.int32) + 1024, 0, 4095).astype("<u2").tobytes()
    return ds


def metadata_dataset(header: Header) -> Dataset:
    """A small Basic Text SR object without pixel data (what PACS exports put beside images).

    Args:
        header: patient attributes (modality is forced to SR).

    Returns:
        The data set, without file meta.
    """
    ds = _base(header, _BASIC_TEXT_SR)
    ds.Modality = "SR"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ValueType = "CONTAINER"
    concept = Dataset()
    concept.CodeValue = "121070"
    concept.CodingSchemeDesignator = "DCM"
    concept.CodeMeaning = "Findings"
    ds.ConceptNameCodeSequence = Sequence([concept])
    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    text.TextValue = "Exposure record exported with the study. No images in this object."
    ds.ContentSequence = Sequence([text])
    return ds


def encode(ds: Dataset, encoding: str = "explicit") -> bytes:
    """Serialise ``ds`` in one of :data:`ENCODINGS` (compressing its pixel data if asked).

    Args:
        ds: a data set from this module (its pixel data uncompressed, no file meta yet).
        encoding: a key of :data:`ENCODINGS`.

    Returns:
        The file's bytes.
    """
    transfer_syntax = ENCODINGS[encoding]
    buf = io.BytesIO()
    if transfer_syntax is None:
        pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
        return buf.getvalue()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = stable_uid("implementation")
    meta.ImplementationVersionName = "CACXR_SYNTH"
    ds.file_meta = meta
    if transfer_syntax in (RLELossless, JPEG2000Lossless):
        plugin = "pylibjpeg"  # fast C encoders (pylibjpeg-rle, pylibjpeg-openjpeg)
        ds.compress(transfer_syntax, encoding_plugin=plugin, generate_instance_uid=False)
    else:
        meta.TransferSyntaxUID = transfer_syntax
    if encoding == "no_preamble":
        ds.preamble = None
        pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    else:
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write_dataset(ds: Dataset, path: str | os.PathLike[str], encoding: str = "explicit") -> int:
    """Encode ``ds`` and write it atomically to ``path``.

    Args:
        ds: the data set.
        path: destination file.
        encoding: a key of :data:`ENCODINGS`.

    Returns:
        The number of bytes written.
    """
    data = encode(ds, encoding)
    write_bytes(path, data)
    return len(data)
