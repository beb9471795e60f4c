"""Tests for cacxr.imaging: grey-level pipeline, refusals, metadata, real radiographs, pydicom's test files."""

from __future__ import annotations

import logging
import math
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from cacxr.imaging import (
    FRONTAL_VIEWS,
    LATERAL_VIEWS,
    ImageMeta,
    ReadResult,
    is_frontal,
    is_lateral,
    read_header,
    read_image,
)
from cacxr.imaging.greylevels import keep_stored_bits
from cacxr.imaging.header import scrub

# Identifying values written into test files: none may come back in a result, a message or a log.
SECRET_NAME = "Doe^Jane"
SECRET_ID = "MRN-4711-SECRET"
SECRET_BIRTH = "19500101"
SECRETS = ("Doe", "Jane", SECRET_ID, SECRET_BIRTH)


def make_dataset(pixels: np.ndarray, **attrs: Any) -> Dataset:
    """A minimal single-frame CR dataset holding ``pixels`` (grey (r, c) or RGB (r, c, 3))."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    ds.PatientBirthDate = SECRET_BIRTH
    ds.Rows, ds.Columns = pixels.shape[:2]
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    if pixels.ndim == 3:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = pixels.tobytes()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    if "BitsStored" in attrs:
        ds.HighBit = attrs["BitsStored"] - 1
    return ds


def write_dicom(path: Path, pixels: np.ndarray, **attrs: Any) -> Path:
    make_dataset(pixels, **attrs).save_as(path, enforce_file_format=True)
    return path


def levels_image(values: list[int], dtype: type = np.uint16) -> np.ndarray:
    """A 4 x len(values) image whose columns hold the given stored values."""
    return np.tile(np.asarray(values, dtype=dtype), (4, 1))


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


# ------------------------------------------------------------------------------------------ grey levels

STORED = [0, 50, 100, 150, 200, 300]


def linear(x: float, centre: float, width: float) -> float:
    """DICOM LINEAR window (PS3.3 C.11.2.1.2.1) on [0, 1]."""
    if x <= centre - 0.5 - (width - 1) / 2:
        return 0.0
    if x > centre - 0.5 + (width - 1) / 2:
        return 1.0
    return (x - (centre - 0.5)) / (width - 1) + 0.5


GREY_CASES = [
    # id, extra attributes, expected value per STORED level, expected voi
    ("window", {"WindowCenter": 100, "WindowWidth": 200}, [linear(x, 100, 200) for x in STORED], "window"),
    (
        "first-of-several-windows",
        {"WindowCenter": [100, 5000], "WindowWidth": [200, 10]},
        [linear(x, 100, 200) for x in STORED],
        "window",
    ),
    (
        "rescale-then-window",  # modality value = 2 * stored - 100
        {"RescaleSlope": 2, "RescaleIntercept": -100, "WindowCenter": 100, "WindowWidth": 200},
        [linear(2 * x - 100, 100, 200) for x in STORED],
        "window",
    ),
    (
        "linear-exact",
        {"WindowCenter": 100, "WindowWidth": 200, "VOILUTFunction": "LINEAR_EXACT"},
        [min(max((x - 100) / 200 + 0.5, 0.0), 1.0) for x in STORED],
        "window",
    ),
    (
        "sigmoid",
        {"WindowCenter": 100, "WindowWidth": 200, "VOILUTFunction": "SIGMOID"},
        [1.0 / (1.0 + math.exp(-4.0 * (x - 100) / 200)) for x in STORED],
        "window",
    ),
    ("minmax-fallback", {}, [x / 300 for x in STORED], "minmax"),
    (
        "rescale-minmax",  # negative slope: min-max of the modality values, so stored 0 is the brightest
        {"RescaleSlope": -1, "RescaleIntercept": 1000},
        [1.0 - x / 300 for x in STORED],
        "minmax",
    ),
    (
        "unusable-window-falls-back",
        {"WindowCenter": 100, "WindowWidth": 0},
        [x / 300 for x in STORED],
        "minmax",
    ),
    (
        "monochrome1-window",
        {"PhotometricInterpretation": "MONOCHROME1", "WindowCenter": 100, "WindowWidth": 200},
        [1.0 - linear(x, 100, 200) for x in STORED],
        "window",
    ),
    (
        "monochrome1-minmax",
        {"PhotometricInterpretation": "MONOCHROME1"},
        [1 - x / 300 for x in STORED],
        "minmax",
    ),
    ("inverse-shape", {"PresentationLUTShape": "INVERSE"}, [1 - x / 300 for x in STORED], "minmax"),
    ("identity-shape", {"PresentationLUTShape": "IDENTITY"}, [x / 300 for x in STORED], "minmax"),
    (
        "monochrome1-and-inverse-invert-once",
        {"PhotometricInterpretation": "MONOCHROME1", "PresentationLUTShape": "INVERSE"},
        [1 - x / 300 for x in STORED],
        "minmax",
    ),
]


@pytest.mark.parametrize(
    ("attrs", "expected", "voi"), [c[1:] for c in GREY_CASES], ids=[c[0] for c in GREY_CASES]
)
def test_grey_level_pipeline(tmp_path: Path, attrs: dict, expected: list[float], voi: str) -> None:
    path = write_dicom(tmp_path / "im.dcm", levels_image(STORED), **attrs)
    result = read_image(path, "CAC_001")
    assert result.ok, result.detail
    assert result.image.dtype == np.float32
    assert result.image.shape == (4, len(STORED))
    np.testing.assert_allclose(result.image[0], expected, atol=1e-6)
    np.testing.assert_array_equal(result.image, np.tile(result.image[0], (4, 1)))
    assert result.meta.voi == voi


def test_window_exact_values(tmp_path: Path) -> None:
    """Centre 100 / width 200: stored 0 -> 0.0 and 200 -> 1.0 (pydicom's LINEAR convention)."""
    path = write_dicom(tmp_path / "w.dcm", levels_image([0, 100, 200]), WindowCenter=100, WindowWidth=200)
    image = read_image(path).image
    assert image[0, 0] == 0.0
    assert image[0, 2] == 1.0
    assert image[0, 1] == pytest.approx(0.5 / 199 + 0.5, abs=1e-6)


def voi_lut_item(first: int, data: list[int], bits: int = 16) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [len(data), first, bits])  # LUTDescriptor
    item.add_new(0x00283006, "US", data)  # LUTData
    return item


def test_voi_lut_sequence_is_preferred_to_window(tmp_path: Path) -> None:
    # LUT over stored 10..13; below the first entry -> first value, above the last -> last value.
    attrs = {
        "WindowCenter": 100,
        "WindowWidth": 200,
        "VOILUTSequence": Sequence([voi_lut_item(10, [0, 1000, 3000, 4000])]),
    }
    path = write_dicom(tmp_path / "lut.dcm", levels_image([9, 10, 11, 12, 13, 20]), **attrs)
    result = read_image(path)
    assert result.meta.voi == "voi_lut"
    np.testing.assert_allclose(result.image[0], [0.0, 0.0, 0.25, 0.75, 1.0, 1.0], atol=1e-6)


def test_voi_lut_with_monochrome1_is_inverted(tmp_path: Path) -> None:
    attrs = {
        "PhotometricInterpretation": "MONOCHROME1",
        "VOILUTSequence": Sequence([voi_lut_item(0, [0, 100, 400])]),
    }
    path = write_dicom(tmp_path / "lut1.dcm", levels_image([0, 1, 2]), **attrs)
    np.testing.assert_allclose(read_image(path).image[0], [1.0, 0.75, 0.0], atol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "representation", "clean", "junk_mask"),
    [
        (np.uint16, 0, [0, 1, 2048, 4095], 0xF000),  # 12 bits stored in 16, junk in all four high bits
        (np.uint16, 0, [0, 7, 100, 4000], 0x2000),  # an overlay bit (bit 13)
        (np.int16, 1, [-2048, -1, 0, 2047], 0x5000),  # signed: junk must not change the sign
    ],
)
def test_bits_above_bits_stored_do_not_leak(
    tmp_path: Path, dtype: type, representation: int, clean: list[int], junk_mask: int
) -> None:
    raw = np.asarray(clean, dtype=dtype).view(np.uint16) & 0x0FFF
    junk = (raw | junk_mask).view(dtype)
    attrs = {"BitsStored": 12, "PixelRepresentation": representation}
    expected = read_image(write_dicom(tmp_path / "clean.dcm", levels_image(clean, dtype), **attrs)).image
    result = read_image(write_dicom(tmp_path / "junk.dcm", np.tile(junk, (4, 1)), **attrs))
    assert result.ok, result.detail
    np.testing.assert_array_equal(result.image, expected)
    np.testing.assert_allclose(
        expected[0], (np.asarray(clean) - min(clean)) / (max(clean) - min(clean)), atol=1e-6
    )


@pytest.mark.parametrize(
    ("values", "bits_stored", "signed", "expected"),
    [
        ([0x1005, 0xF0FF], 12, False, [0x005, 0x0FF]),
        ([5, 4095], 12, False, [5, 4095]),  # already in range: unchanged
        ([0x0FFF, 0x7800], 12, True, [-1, -2048]),  # sign-extended from bit 11
    ],
)
def testkeep_stored_bits(values: list[int], bits_stored: int, signed: bool, expected: list[int]) -> None:
    """Clearing / sign-extending the unused high bits, and leaving clean data alone."""
    stored = np.asarray(values, dtype=np.uint16)
    stored = stored.view(np.int16) if signed else stored
    np.testing.assert_array_equal(keep_stored_bits(stored, bits_stored, signed), expected)


@pytest.mark.parametrize(
    ("implicit", "syntax"), [(True, ImplicitVRLittleEndian), (False, ExplicitVRLittleEndian)]
)
def test_file_without_part10_header(tmp_path: Path, implicit: bool, syntax: str) -> None:
    ds = make_dataset(levels_image([10, 20, 30]))
    del ds.file_meta
    path = tmp_path / "bare.dcm"
    pydicom.dcmwrite(path, ds, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    for result in (read_header(path), read_image(path)):
        assert result.ok, result.detail
        assert result.meta.transfer_syntax == syntax
        assert result.meta.modality == "CR"
    np.testing.assert_allclose(read_image(path).image[0], [0.0, 0.5, 1.0], atol=1e-6)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000-lossless"])
def test_compressed_transfer_syntaxes(tmp_path: Path, syntax: str) -> None:
    pixels = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 3) % 4096
    ds = make_dataset(pixels, BitsStored=12, PhotometricInterpretation="MONOCHROME1")
    expected = read_image(
        write_dicom(tmp_path / "plain.dcm", pixels, BitsStored=12, PhotometricInterpretation="MONOCHROME1")
    ).image
    ds.compress(syntax, pixels)
    ds.save_as(tmp_path / "packed.dcm", enforce_file_format=True)
    result = read_image(tmp_path / "packed.dcm")
    assert result.ok, result.detail
    assert result.meta.transfer_syntax == syntax
    np.testing.assert_array_equal(result.image, expected)
    assert result.image[0, 0] == 1.0  # MONOCHROME1: the lowest stored value is white


def test_colour_dicom_becomes_luminance(tmp_path: Path) -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, Modality="OT")
    result = read_image(path)
    assert result.ok, result.detail
    luma = np.array([0.299, 0.587, 0.114, 1.0]) * 255
    np.testing.assert_allclose(result.image[0], (luma - luma.min()) / (luma.max() - luma.min()), atol=1e-6)
    assert result.meta.photometric == "RGB"
    assert result.meta.voi == "minmax"


# ------------------------------------------------------------------------------------------ refusals


def write_multi_frame(path: Path) -> Path:
    frames = np.stack([levels_image([0, 1]), levels_image([2, 3])])
    ds = make_dataset(frames[0])
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_sr(path: Path) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = BasicTextSRStorage
    ds.Modality = "SR"
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    ds.save_as(path, enforce_file_format=True)
    return path


def write_empty_pixel_data(path: Path) -> Path:
    ds = make_dataset(np.zeros((4, 4), dtype=np.uint16))
    ds.PixelData = b""
    ds.save_as(path, enforce_file_format=True)
    return path


def write_truncated(path: Path) -> Path:
    write_dicom(path, np.zeros((64, 64), dtype=np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4000])
    return path


def write_bad_jpeg_pixels(path: Path) -> Path:
    ds = make_dataset(np.zeros((16, 16), dtype=np.uint8))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8 this is not a JPEG codestream \xff\xd9"])
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ct(path: Path) -> Path:
    return write_dicom(path, levels_image([0, 1]), Modality="CT", SOPClassUID=CTImageStorage)


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


REFUSAL_CASES = [
    # id, writer, file name, reason from read_header, reason from read_image, text in detail, meta kept
    ("multi-frame", write_multi_frame, "mf.dcm", "multi_frame", "multi_frame", "2 frames", True),
    (
        "ct",
        write_ct,
        "ct.dcm",
        "not_radiograph",
        "not_radiograph",
        "Modality CT is not a projection radiograph",
        True,
    ),
    (
        "sr-without-pixels",
        write_sr,
        "sr.dcm",
        "no_pixel_data",
        "no_pixel_data",
        "Basic Text SR Storage",
        True,
    ),
    (
        "empty-pixel-data",
        write_empty_pixel_data,
        "empty_px.dcm",
        "no_pixel_data",
        "no_pixel_data",
        "no pixel data (Computed Radiography Image Storage)",
        True,
    ),
    ("truncated", write_truncated, "cut.dcm", "", "unreadable", "cut.dcm", True),
    (
        "undecodable-jpeg",
        write_bad_jpeg_pixels,
        "bad.dcm",
        "",
        "unreadable",
        "pixel data cannot be decoded",
        True,
    ),
    (
        "text-named-dcm",
        lambda p: write_text(p, "name,id\nsomeone,1\n"),
        "notes.dcm",
        "unreadable",
        "unreadable",
        "not a DICOM file",
        False,
    ),
    ("empty-file", lambda p: write_text(p, ""), "empty.dcm", "unreadable", "unreadable", "empty.dcm", False),
    (
        "garbage-png",
        lambda p: write_text(p, "not an image"),
        "fake.png",
        "unreadable",
        "unreadable",
        "fake.png",
        False,
    ),
    ("missing-file", lambda p: p, "absent.dcm", "unreadable", "unreadable", "absent.dcm", False),
    ("directory", lambda p: p.mkdir() or p, "folder.dcm", "unreadable", "unreadable", "folder.dcm", False),
]


@pytest.mark.parametrize(
    ("writer", "name", "header_reason", "image_reason", "detail", "has_meta"),
    [c[1:] for c in REFUSAL_CASES],
    ids=[c[0] for c in REFUSAL_CASES],
)
def test_refusals_never_raise(
    tmp_path: Path, writer, name: str, header_reason: str, image_reason: str, detail: str, has_meta: bool
) -> None:
    path = writer(tmp_path / name)
    header, full = read_header(path, "CAC_001"), read_image(path, "CAC_001")
    assert header.reason == header_reason, header.detail
    assert header.image is None
    assert full.reason == image_reason
    assert not full.ok
    assert full.image is None
    assert detail in full.detail
    assert full.detail.startswith(f"{path}: ")  # every message starts with the file, as given
    assert (full.meta is not None) == has_meta
    if has_meta:
        assert full.meta.patient_id == "CAC_001"
    assert_no_secrets(repr(header), repr(full), full.detail)


def test_path_is_echoed_as_given(tmp_path: Path) -> None:
    """Callers strip "<path>: " from details and key rows by path: the string they passed comes back."""
    write_ct(tmp_path / "ct.dcm")
    given = f"{tmp_path}/./ct.dcm"
    for result in (read_header(given), read_image(given)):
        assert result.meta.path == given
        assert result.detail == f"{given}: Modality CT is not a projection radiograph"


@pytest.mark.parametrize(
    ("modality", "reason"),
    [("CR", ""), ("DX", ""), ("DR", ""), ("RG", ""), ("PX", ""), ("OT", ""), ("", "")]
    + [(m, "not_radiograph") for m in ("CT", "MR", "US", "NM", "PT", "MG", "XA", "RTDOSE")],
)
def test_modality_filter(tmp_path: Path, modality: str, reason: str) -> None:
    path = write_dicom(tmp_path / "m.dcm", levels_image([0, 1]), Modality=modality)
    assert read_header(path).reason == reason
    assert read_image(path).reason == reason


def test_read_header_does_not_decode(tmp_path: Path) -> None:
    """Undecodable pixel data passes the header check (ingest decides later) and fails only on decode."""
    path = write_bad_jpeg_pixels(tmp_path / "bad.dcm")
    header = read_header(path)
    assert header.ok and header.meta.has_pixel_data
    assert header.meta.transfer_syntax == JPEGBaseline8Bit
    assert read_image(path).reason == "unreadable"


# ------------------------------------------------------------------------------------------ PNG / JPEG


def save_raster(path: Path, array: np.ndarray, format: str = "") -> Path:
    jpeg = (format or path.suffix.lstrip(".")).upper() in ("JPG", "JPEG")
    Image.fromarray(array).save(path, format="JPEG" if jpeg else "PNG", **({"quality": 95} if jpeg else {}))
    return path


RASTER_CASES = [
    # id, file name, pixels, expected first row, photometric, bits, voi, tolerance
    (
        "png-grey",
        "g.png",
        np.array([[0, 128, 255]], np.uint8),
        [0, 128 / 255, 1.0],
        "MONOCHROME2",
        8,
        "png",
        0,
    ),
    (
        "png-rgb",  # Pillow's ITU-R 601 luma: red 255 -> 76
        "c.png",
        np.array([[[255, 0, 0], [0, 0, 0], [255, 255, 255]]], np.uint8),
        [76 / 255, 0.0, 1.0],
        "RGB",
        8,
        "png",
        0,
    ),
    (
        "png-rgba-alpha-dropped",
        "a.png",
        np.array([[[255, 0, 0, 0], [0, 0, 0, 10], [255, 255, 255, 255]]], np.uint8),
        [76 / 255, 0.0, 1.0],
        "RGB",
        8,
        "png",
        0,
    ),
    (
        "png-16-bit",
        "w.png",
        np.array([[1000, 3000, 5000]], np.uint16),
        [0.0, 0.5, 1.0],
        "MONOCHROME2",
        16,
        "minmax",
        0,
    ),
    (
        "jpeg-grey",  # two flat 8 x 8 blocks: lossy, but flat blocks survive within a few grey levels
        "j.jpg",
        np.repeat(np.array([[0] * 8 + [255] * 8], np.uint8), 8, axis=0),
        [0.0] * 8 + [1.0] * 8,
        "MONOCHROME2",
        8,
        "png",
        3 / 255,
    ),
]


@pytest.mark.parametrize(
    ("name", "pixels", "expected", "photometric", "bits", "voi", "tolerance"),
    [c[1:] for c in RASTER_CASES],
    ids=[c[0] for c in RASTER_CASES],
)
def test_png_and_jpeg(
    tmp_path: Path,
    name: str,
    pixels: np.ndarray,
    expected: list[float],
    photometric: str,
    bits: int,
    voi: str,
    tolerance: float,
) -> None:
    path = save_raster(tmp_path / name, pixels)
    header, result = read_header(path, "CAC_002"), read_image(path, "CAC_002")
    assert header.ok and result.ok, result.detail
    assert result.image.dtype == np.float32
    assert result.image.shape == pixels.shape[:2]
    np.testing.assert_allclose(result.image[0], expected, atol=tolerance + 1e-6)
    meta = result.meta
    assert (meta.source_format, meta.photometric, meta.bits_stored, meta.voi) == (
        "jpeg" if name.endswith(".jpg") else "png",
        photometric,
        bits,
        voi,
    )
    assert (meta.rows, meta.cols, meta.n_frames, meta.patient_id) == (*pixels.shape[:2], 1, "CAC_002")
    assert header.meta == meta


def test_format_is_sniffed_not_taken_from_the_name(tmp_path: Path) -> None:
    png = save_raster(tmp_path / "really_a_png.dcm", np.array([[0, 255]], np.uint8), format="png")
    dicom = write_dicom(tmp_path / "really_a_dicom.png", levels_image([0, 1]))
    assert read_image(png).meta.source_format == "png"
    assert read_image(dicom).meta.source_format == "dicom"


# ------------------------------------------------------------------------------------------ metadata


@pytest.mark.parametrize(
    ("attrs", "field", "expected"),
    [
        ({"PatientAge": "065Y"}, "age", 65.0),
        ({"PatientAge": "030M"}, "age", 2.5),
        ({"PatientAge": "012W"}, "age", 12 * 7 / 365.25),
        ({"PatientAge": "005D"}, "age", 5 / 365.25),
        ({"PatientAge": "81"}, "age", 81.0),
        ({"PatientSex": "F"}, "sex", "F"),
        ({"PatientSex": "m "}, "sex", "M"),
        ({"PatientSex": "O"}, "sex", ""),
        ({}, "sex", ""),
        ({"PixelSpacing": [0.143, 0.15]}, "pixel_spacing", (0.143, 0.15)),
        ({"PixelSpacing": [0.0, 0.0]}, "pixel_spacing", None),
        ({"ImagerPixelSpacing": [0.2, 0.2]}, "pixel_spacing", (0.2, 0.2)),
        ({}, "pixel_spacing", None),
        ({"ViewPosition": " ll "}, "view", "LL"),
        ({"ViewPosition": "pa"}, "view", "PA"),
        ({"SeriesDescription": "Thorax lateral"}, "view_hint", "lateral"),
        ({"SeriesDescription": "view: PA"}, "view_hint", "frontal"),
        ({"SeriesDescription": "PA + LAT"}, "view_hint", ""),  # ambiguous: no hint
        ({"SeriesDescription": "CHEST", "ProtocolName": "Thorax LATERALE"}, "view_hint", "lateral"),
        ({"ViewPosition": "PA", "SeriesDescription": "lateral"}, "view_hint", ""),  # ViewPosition wins
        ({"NumberOfFrames": "1"}, "n_frames", 1),
        ({"Modality": "dx"}, "modality", "DX"),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # odd values on purpose
def test_header_fields(tmp_path: Path, attrs: dict, field: str, expected: Any) -> None:
    path = write_dicom(tmp_path / "h.dcm", levels_image([0, 1]), **attrs)
    expected = pytest.approx(expected) if isinstance(expected, float) else expected
    assert getattr(read_header(path).meta, field) == expected
    assert getattr(read_image(path).meta, field) == expected


def test_absent_age_is_nan(tmp_path: Path) -> None:
    assert math.isnan(read_header(write_dicom(tmp_path / "a.dcm", levels_image([0, 1]))).meta.age)


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"StudyDate": "20150618"}, 65.0),  # born 1950-01-01 (SECRET_BIRTH): whole years, as the label table
        ({"StudyDate": "19991231"}, 49.0),  # the day before the 50th birthday
        ({"AcquisitionDate": "20000101"}, 50.0),  # no StudyDate: the next date of the image
        ({"StudyDate": "20150618", "PatientAge": "070Y"}, 70.0),  # PatientAge wins when present
        ({"StudyDate": "19400101"}, math.nan),  # image before birth: unknown, not negative
        ({"StudyDate": "not a date"}, math.nan),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # odd values on purpose
def test_age_from_birth_and_image_date_when_patient_age_is_absent(tmp_path: Path, attrs: dict, expected: float) -> None:
    meta = read_header(write_dicom(tmp_path / "a.dcm", levels_image([0, 1]), **attrs)).meta
    assert meta.age == pytest.approx(expected, nan_ok=True)
    assert SECRET_BIRTH not in repr(meta)  # the birth date is used, never kept


def test_view_code_sequence_meaning_gives_hint(tmp_path: Path) -> None:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "R-10236", "SRT", "left lateral"
    path = write_dicom(tmp_path / "v.dcm", levels_image([0, 1]), ViewCodeSequence=Sequence([code]))
    meta = read_header(path).meta
    assert (meta.view, meta.view_hint) == ("", "lateral")
    assert is_lateral(meta)


def meta_with(view: str, hint: str = "") -> ImageMeta:
    return ImageMeta(
        path="x", patient_id="", source_format="dicom", modality="CR", view=view, view_hint=hint,
        photometric="MONOCHROME2", bits_stored=8, bits_allocated=8, rows=1, cols=1, n_frames=1,
        pixel_spacing=None, transfer_syntax="", sop_class="", voi="minmax", sex="", age=math.nan,
        header_id_matches=None, has_pixel_data=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("view", "hint", "lateral", "frontal"),
    [(v, "", True, False) for v in sorted(LATERAL_VIEWS)]
    + [(v, "", False, True) for v in sorted(FRONTAL_VIEWS)]
    + [
        ("", "lateral", True, False),
        ("", "frontal", False, False),
        ("", "", False, False),
        ("XYZ", "lateral", False, False),
    ],
)
def test_is_lateral_and_is_frontal(view: str, hint: str, lateral: bool, frontal: bool) -> None:
    meta = meta_with(view, hint)
    assert (is_lateral(meta), is_frontal(meta)) == (lateral, frontal)


@pytest.mark.parametrize(
    ("header_id", "folder_id", "expected"),
    [
        ("CAC_030", "CAC_030", True),
        ("CAC_30", "cac_0030", True),
        ("cac_030 ", "CAC_30", True),
        ("CAC_031", "CAC_030", False),
        ("XYZ_123", "CAC_123", False),
        ("", "CAC_030", None),
        ("CAC_030", "", None),
    ],
)
def test_header_id_comparison_keeps_no_id(
    tmp_path: Path, header_id: str, folder_id: str, expected: bool | None
) -> None:
    path = write_dicom(tmp_path / "id.dcm", levels_image([0, 1]), PatientID=header_id)
    result = read_image(path, folder_id)
    assert result.meta.header_id_matches is expected
    assert result.meta.patient_id == folder_id
    if header_id.strip() and header_id.strip() != folder_id:
        assert header_id.strip() not in repr(result)


def test_no_identifying_value_in_results_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = write_dicom(tmp_path / "good.dcm", levels_image([0, 1]), PatientAge="065Y")
    odd_window = write_dicom(tmp_path / "w0.dcm", levels_image([0, 1]), WindowCenter=1, WindowWidth=0)
    ct = write_ct(tmp_path / "ct.dcm")
    cut = write_truncated(tmp_path / "cut.dcm")
    for path in (good, odd_window, ct, cut):
        for result in (read_header(path, "CAC_001"), read_image(path, "CAC_001")):
            assert_no_secrets(repr(result), repr(result.meta), result.detail)
    assert "using min-max" in caplog.text  # the unusable window was logged ...
    assert_no_secrets(caplog.text)  # ... without identifying values


def test_decoder_messages_are_scrubbed_of_identifying_values() -> None:
    """Decoder messages can quote header values; the detail text never carries the identifying ones."""
    ds = make_dataset(levels_image([0, 1]))
    message = f"bad value {SECRET_ID!r} near {SECRET_NAME} born {SECRET_BIRTH}: length 7 != 8"
    scrubbed = scrub(message, ds)
    assert_no_secrets(scrubbed)
    assert scrubbed.endswith("length 7 != 8")


# ------------------------------------------------------------------------------------------ speed


def test_no_float64_copy_of_the_image(tmp_path: Path) -> None:
    """Peak memory stays near the float32 output: no float64 (8 bytes/pixel) intermediate."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, (512, 512), dtype=np.uint16)
    path = write_dicom(
        tmp_path / "big.dcm",
        pixels,
        BitsStored=12,
        RescaleSlope=1,
        RescaleIntercept=-5,
        WindowCenter=2000,
        WindowWidth=3000,
        PhotometricInterpretation="MONOCHROME1",
    )
    read_image(path)  # warm up imports and plugin discovery
    tracemalloc.start()
    result = read_image(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.ok
    # file bytes (2) + stored pixels (2) + float32 image (4) + look-up index blocks (about 2 at this
    # size) = 10 bytes per pixel; one float64 copy of the image alone would add 8.
    assert peak / pixels.size < 12


# ------------------------------------------------------------------------------------------ real radiographs

# file: (rows, cols), photometric, source format, view, voi, pixel spacing, mean of the image
REAL_CXR_GOLDEN = {
    "highdicom_dx_image_CANINE_lateral_thorax.dcm": (
        (169, 211),
        "MONOCHROME1",
        "dicom",
        "",
        "window",
        (1.2, 1.201199999999),
        0.3497,
    ),
    "nhsx_nih-cxr14_google_DX.dcm": ((1024, 1024), "MONOCHROME2", "dicom", "", "minmax", None, 0.7145),
    "panimg_cxr_CR-MONO1-10-chest.dcm": (
        (440, 440),
        "MONOCHROME1",
        "dicom",
        "PA",
        "window",
        (0.1, 0.1),
        0.5466,
    ),
    "pydicomdata_RG1_J2KI.dcm": ((1955, 1841), "MONOCHROME1", "dicom", "PA", "window", None, 0.7536),
    "txv_nih_00000001_000.png": ((512, 512), "MONOCHROME2", "png", "", "png", None, 0.5025),
    "txv_siim_chest_pa.dcm": ((1024, 1024), "MONOCHROME2", "dicom", "PA", "minmax", (0.168, 0.168), 0.6291),
}
NOT_A_HUMAN_CHEST = {"highdicom_dx_image_CANINE_lateral_thorax.dcm"}


def test_golden_table_covers_every_real_file(real_cxr_dir: Path) -> None:
    on_disk = {p.name for p in real_cxr_dir.iterdir() if p.name != "SOURCES.md"}
    assert on_disk == set(REAL_CXR_GOLDEN)


@pytest.mark.parametrize("name", sorted(REAL_CXR_GOLDEN))
def test_real_radiographs(real_cxr_dir: Path, name: str) -> None:
    shape, photometric, source_format, view, voi, spacing, mean = REAL_CXR_GOLDEN[name]
    result = read_image(real_cxr_dir / name, "CAC_001")
    assert result.ok, result.detail
    image, meta = result.image, result.meta
    assert image.dtype == np.float32 and image.shape == shape
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert (meta.photometric, meta.source_format, meta.view, meta.voi) == (
        photometric,
        source_format,
        view,
        voi,
    )
    assert meta.pixel_spacing == spacing
    assert float(image.mean()) == pytest.approx(mean, abs=0.01)
    assert read_header(real_cxr_dir / name, "CAC_001").meta == meta
    if name in NOT_A_HUMAN_CHEST:
        return
    # Bone bright: the spine/mediastinum strip is brighter than both lung fields beside it.
    rows, cols = shape
    band = image[rows // 4 : 3 * rows // 4]
    centre = band[:, int(0.45 * cols) : int(0.55 * cols)].mean()
    left = band[:, int(0.20 * cols) : int(0.35 * cols)].mean()
    right = band[:, int(0.65 * cols) : int(0.80 * cols)].mean()
    assert centre > left + 0.1 and centre > right + 0.1


# ------------------------------------------------------------------------------------------ pydicom's files

PYDICOM_TEST_DIR = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
PYDICOM_FILES = sorted(
    str(Path(p).relative_to(PYDICOM_TEST_DIR)) for p in pydicom.data.get_testdata_files() if Path(p).is_file()
)
PYDICOM_EXPECTED = {
    # not projection radiographs (CT, MR, NM, US, RT dose, segmentation), whatever their encoding
    "CT_small.dcm": "not_radiograph",
    "MR_small.dcm": "not_radiograph",
    "MR_small_RLE.dcm": "not_radiograph",
    "MR_small_jpeg_ls_lossless.dcm": "not_radiograph",
    "JPEG2000.dcm": "not_radiograph",
    "examples_palette.dcm": "not_radiograph",
    "rtdose.dcm": "not_radiograph",  # also multi-frame: the modality is checked first
    "liver_1frame.dcm": "not_radiograph",
    # multi-frame secondary captures
    "SC_rgb_rle_2frame.dcm": "multi_frame",
    "SC_rgb_rle_16bit_2frame.dcm": "multi_frame",
    # objects without pixel data
    "rtplan.dcm": "no_pixel_data",
    "rtstruct.dcm": "no_pixel_data",
    "test-SR.dcm": "no_pixel_data",
    "reportsi.dcm": "no_pixel_data",
    "waveform_ecg.dcm": "no_pixel_data",
    "dicomdirtests/DICOMDIR": "no_pixel_data",
    # not DICOM at all, or pixel data without the attributes needed to decode it
    "README.txt": "unreadable",
    "zipMR.gz": "unreadable",
    "crayons.icc": "unreadable",
    "no_meta.dcm": "unreadable",
    "meta_missing_tsyntax.dcm": "unreadable",
    # projection / secondary-capture images in every encoding: decoded
    "JPEGLSNearLossless_08.dcm": "",  # JPEG-LS
    "JPEGLSNearLossless_16.dcm": "",
    "SC_rgb_jls_lossy_line.dcm": "",
    "SC_rgb_rle.dcm": "",  # RLE
    "SC_rgb_rle_16bit.dcm": "",
    "SC_rgb_jpeg_dcmtk.dcm": "",  # JPEG baseline, YBR
    "SC_rgb_jpeg_gdcm.dcm": "",  # JPEG lossless
    "SC_rgb_gdcm_KY.dcm": "",  # JPEG 2000
    "GDCMJ2K_TextGBR.dcm": "",
    "SC_ybr_full_422_uncompressed.dcm": "",
    "SC_rgb_small_odd_big_endian.dcm": "",
    "image_dfl.dcm": "",  # deflated
    "dicomdirtests/77654033/CR1/6154": "",  # CR, MONOCHROME1
}


def test_pydicom_expectations_name_real_files() -> None:
    assert set(PYDICOM_EXPECTED) <= set(PYDICOM_FILES)
    assert len(PYDICOM_FILES) > 150


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's own notes on its deliberately odd files
@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_every_pydicom_test_file(name: str) -> None:
    path = PYDICOM_TEST_DIR / name
    header, result = read_header(path), read_image(path)
    assert isinstance(result, ReadResult) and isinstance(header, ReadResult)
    assert result.reason in ("", "unreadable", "no_pixel_data", "not_radiograph", "multi_frame")
    # read_header agrees, except that it cannot see undecodable pixel data
    assert header.reason == result.reason or (header.ok and result.reason == "unreadable")
    if name in PYDICOM_EXPECTED:
        assert result.reason == PYDICOM_EXPECTED[name], result.detail
    if result.ok:
        assert result.image.dtype == np.float32
        assert result.image.shape == (result.meta.rows, result.meta.cols)
        assert 0.0 <= result.image.min() <= result.image.max() <= 1.0
    else:
        assert result.image is None and result.detail
