"""A DICOM header: parsing checks, value helpers, and the :class:`ImageMeta` it gives (no identifying field kept)."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import re
import struct
import warnings
from collections.abc import MutableSequence
from typing import Any

from cacxr.core import age_in_years
from cacxr.imaging.meta import ImageMeta
from cacxr.imaging.views import FRONTAL_WORDS, LATERAL_WORDS

__all__ = [
    "PIXEL_TAGS",
    "pixel_data_follows",
    "has_pixel_value",
    "first_data_tag",
    "check_parsed",
    "ensure_transfer_syntax",
    "dicom_meta",
    "header_text",
    "header_int",
    "scrub",
    "is_colour",
    "planned_voi",
    "view_hint",
]

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
_LONG_LENGTH_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"}  # explicit VRs with a 4-byte length
# The image's own date, for an age from PatientBirthDate when PatientAge is absent (first one present).
_IMAGE_DATE_TAGS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
_AGE_UNITS_IN_YEARS = {"Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25, "": 1.0}


def pixel_data_follows(fp: Any, ds: Any) -> bool:
    """After a stop_before_pixels parse, whether non-empty pixel data comes next (without reading it)."""
    if ds.file_meta.get("TransferSyntaxUID", "") == "1.2.840.10008.1.2.1.99":
        # Deflated: the parse ran on an inflated copy, so the file position says nothing; re-read lazily.
        import pydicom

        fp.seek(0)
        return has_pixel_value(pydicom.dcmread(fp, force=True, defer_size="1 KB"))
    implicit, little = (flag is not False for flag in ds.original_encoding)
    order = "<" if little else ">"
    head = fp.read(12)
    if len(head) < 8:
        return False
    group, element = struct.unpack(order + "HH", head[:4])
    if (group << 16 | element) not in PIXEL_TAGS:
        return False
    if implicit:
        (length,) = struct.unpack(order + "I", head[4:8])
        fp.seek(8 - len(head), 1)  # leave the file at the value, as for explicit VR
    elif head[4:6] in _LONG_LENGTH_VRS and len(head) == 12:
        (length,) = struct.unpack(order + "I", head[8:12])
    else:
        (length,) = struct.unpack(order + "H", head[6:8])
    return length != 0  # 0xFFFFFFFF (encapsulated, undefined length) counts as present


def has_pixel_value(ds: Any) -> bool:
    """Whether a fully parsed dataset holds a non-empty pixel data element."""
    return any(tag in ds and ds[tag].value not in (None, b"") for tag in PIXEL_TAGS)


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


def check_parsed(ds: Any) -> None:
    """Reject what force=True 'parsed' out of a non-DICOM file (text, archives, random bytes)."""
    from pydicom.datadict import dictionary_has_tag

    if getattr(ds, "preamble", None) is not None or len(getattr(ds, "file_meta", ())):
        return
    tag = first_data_tag(ds)
    if tag is None or not dictionary_has_tag(tag):
        raise ValueError("not a DICOM file (no DICM marker and no recognisable DICOM element)")


def ensure_transfer_syntax(ds: Any) -> None:
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


def dicom_meta(ds: Any, path: str, patient_id: str, has_pixels: bool) -> ImageMeta:
    view = header_text(ds, "ViewPosition").upper()
    with warnings.catch_warnings():
        # pydicom's value-validation warnings quote the value: keep identifying fields out of stderr.
        warnings.simplefilter("ignore")
        header_id = header_text(ds, "PatientID")
        sex = header_text(ds, "PatientSex").upper()
        age = _parse_age(header_text(ds, "PatientAge"))
        if math.isnan(age):
            taken = next((d for d in (header_text(ds, tag) for tag in _IMAGE_DATE_TAGS) if d), "")
            age = _age_from_dates(header_text(ds, "PatientBirthDate"), taken)
    return ImageMeta(
        path=path,
        patient_id=patient_id,
        source_format="dicom",
        modality=header_text(ds, "Modality").upper(),
        view=view,
        view_hint="" if view else view_hint(ds),
        photometric=header_text(ds, "PhotometricInterpretation").upper(),
        bits_stored=header_int(ds, "BitsStored"),
        bits_allocated=header_int(ds, "BitsAllocated"),
        rows=header_int(ds, "Rows"),
        cols=header_int(ds, "Columns"),
        n_frames=max(header_int(ds, "NumberOfFrames", 1), 1),
        pixel_spacing=_spacing(ds, "PixelSpacing") or _spacing(ds, "ImagerPixelSpacing"),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        sop_class=header_text(ds, "SOPClassUID") or str(ds.file_meta.get("MediaStorageSOPClassUID", "")),
        voi=planned_voi(ds),
        sex={"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(sex, ""),
        age=age,
        header_id_matches=_ids_match(header_id, patient_id),
        has_pixel_data=has_pixels,
        study_date=radiograph_date(ds),
    )


def header_text(ds: Any, keyword: str) -> str:
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


def header_int(ds: Any, keyword: str, default: int = 0) -> int:
    text = header_text(ds, keyword)
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


def scrub(text: str, ds: Any, keep: tuple[str, ...] = ()) -> str:
    """Remove identifying header values from a message (decoder errors may quote header values).

    ``keep``: texts left as they are wherever they occur, e.g. the file's own path: the caller chose it (a
    pseudonymous folder name may well equal the header's PatientID), and a mangled path no longer names
    the file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = [header_text(ds, k) for k in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs")]
    kept = [k for k in sorted(set(keep), key=len, reverse=True) if k]
    pieces = re.split("(" + "|".join(map(re.escape, kept)) + ")", text) if kept else [text]
    # Whole values first, then the parts of names and multi-values (family name alone, ...).
    parts = [part for value in values for part in re.split(r"[\^=\\]", value)]
    removed = sorted({v.strip() for v in values + parts if len(v.strip()) >= 2}, key=len, reverse=True)
    out = []
    for index, piece in enumerate(pieces):
        if index % 2 == 0:  # between kept texts
            for value in removed:
                piece = piece.replace(value, "<removed>")
        out.append(piece)
    return "".join(out)


def is_colour(ds: Any) -> bool:
    photometric = header_text(ds, "PhotometricInterpretation").upper()
    return header_int(ds, "SamplesPerPixel", 1) > 1 or photometric == "PALETTE COLOR"


def planned_voi(ds: Any) -> str:
    """The VOI step pydicom's apply_voi_lut(prefer_lut=True) will take: voi_lut, window or minmax."""
    if is_colour(ds):
        return "minmax"
    sequence = ds.get("VOILUTSequence")
    if sequence and None not in (sequence[0].get("LUTDescriptor"), sequence[0].get("LUTData")):
        return "voi_lut"
    if None not in (ds.get("WindowCenter"), ds.get("WindowWidth")):
        return "window"
    return "minmax"


def view_hint(ds: Any) -> str:
    """lateral/frontal from the first of ViewCodeSequence, SeriesDescription, ProtocolName that decides."""
    texts = []
    with contextlib.suppress(Exception):  # a malformed sequence gives no hint
        texts += [header_text(item, "CodeMeaning") for item in ds.get("ViewCodeSequence") or ()]
    texts += [header_text(ds, "SeriesDescription"), header_text(ds, "ProtocolName")]
    for text in texts:
        words = set(re.split(r"[^A-Z0-9]+", text.upper()))
        lateral, frontal = bool(words & LATERAL_WORDS), bool(words & FRONTAL_WORDS)
        if lateral != frontal:  # both (e.g. "PA + LAT") or neither: this field does not decide
            return "lateral" if lateral else "frontal"
    return ""


# The radiograph's own date for pairing it with the CT (first valid one), in the order the DICOM model ranks them.
RADIOGRAPH_DATE_TAGS = ("StudyDate", "AcquisitionDate", "ContentDate")


def radiograph_date(ds: Any) -> str:
    """The first valid date of :data:`RADIOGRAPH_DATE_TAGS` as ISO ``YYYY-MM-DD``, else ""."""
    for keyword in RADIOGRAPH_DATE_TAGS:
        text = header_text(ds, keyword)[:8]
        try:
            return dt.datetime.strptime(text, "%Y%m%d").date().isoformat()
        except ValueError:
            continue
    return ""
