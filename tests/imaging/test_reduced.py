"""Reduced-resolution decoding (cacxr.imaging.reduced, read_image(min_short_side=...)): the factor rule,
exact stored values at factor 1, sizes, refusals, and what read_image returns for each format."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from openjpeg.utils import encode_array
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

from _coded_dicom import HTJ2K_LOSSLESS, radiograph_like, write_coded_dicom
from cacxr.imaging import read_image
from cacxr.imaging.reduced import (
    decode_j2k_reduced,
    decode_jpeg_scaled,
    j2k_header,
    reduced_shape,
    reduction_for,
)

BASE = radiograph_like(600, 700)


def test_the_rule() -> None:
    assert reduction_for(2048, 2048, 1248, 5) == 1  # seed at S = 1024: 1024 < 1248
    assert reduction_for(2048, 2048, 624, 5) == 2  # seed at S = 512
    assert reduction_for(2500, 3052, 1248, 5) == 2
    assert reduction_for(3000, 3000, 624, 5) == 4
    assert reduction_for(8000, 8000, 10, 0) == 1  # no levels, no reduction
    assert reduction_for(64, 64, 0, 5) == 1  # min_short_side 0: full decode
    assert reduced_shape(2049, 2047, 2) == (1025, 1024)


@pytest.mark.parametrize("bits,signed", [(12, False), (12, True), (8, False), (16, False)])
def test_j2k_stored_values_exact_at_reduce_0(bits: int, signed: bool) -> None:
    values = BASE >> (12 - bits) if bits < 12 else BASE.astype(np.uint32) << (bits - 12)
    values = values.astype(np.uint8 if bits == 8 else np.uint16)
    if signed:
        values = values.astype(np.int16) - (1 << (bits - 1))
    cs = encode_array(values, bits_stored=bits, photometric_interpretation=2, use_mct=False)
    assert j2k_header(cs)["signed"] is signed
    np.testing.assert_array_equal(decode_j2k_reduced(cs, 0), values)
    half = decode_j2k_reduced(cs, 1)
    assert half.shape == (300, 350) and half.dtype == values.dtype


def test_j2k_levels_cap_the_factor() -> None:
    cs = imagecodecs.jpeg2k_encode(BASE, level=0, codecformat="J2K", resolutions=3)
    levels = j2k_header(cs)["levels"]
    assert levels == 2
    assert reduction_for(4096, 4096, 300, levels) == 4
    with pytest.raises(ValueError):
        decode_j2k_reduced(cs, 3)


def test_jpeg_scaling_sizes_and_12_bit_refused() -> None:
    b8 = (BASE >> 4).astype(np.uint8)
    cs = imagecodecs.jpeg8_encode(b8, level=90)
    for d in (1, 2, 4, 8):
        assert decode_jpeg_scaled(cs, d).shape == (-(-600 // d), -(-700 // d))
    with pytest.raises(ValueError):
        decode_jpeg_scaled(imagecodecs.jpeg8_encode(BASE, level=90, bitspersample=12), 2)


@pytest.mark.parametrize(
    "syntax,bits",
    [(JPEG2000Lossless, 12), (HTJ2K_LOSSLESS, 12), (JPEGBaseline8Bit, 8)],
    ids=["j2k", "htj2k", "jpeg"],
)
def test_read_image_reduced_dicom(tmp_path: Path, syntax: str, bits: int) -> None:
    pixels = radiograph_like(600, 700, bits=bits)
    # a window, so that the display range does not follow the (smoother) reduced image's min and max
    window = {"WindowCenter": 1 << (bits - 1), "WindowWidth": 1 << bits}
    path = write_coded_dicom(tmp_path / "x.dcm", pixels, syntax, BitsStored=bits, **window)
    full = read_image(path)
    half = read_image(path, min_short_side=300)
    quarter = read_image(path, min_short_side=150)
    assert full.ok and half.ok and quarter.ok, (full.detail, half.detail, quarter.detail)
    assert full.image.shape == (600, 700)
    assert half.image.shape == (300, 350)
    assert quarter.image.shape == (150, 175)
    assert (half.meta.rows, half.meta.cols) == (600, 700)  # the declared size
    assert half.meta.voi == full.meta.voi
    box = full.image.reshape(300, 2, 350, 2).mean((1, 3))
    assert np.abs(half.image - box).mean() < 2 / 255
    # too small for a reduction: the full decode, identical
    np.testing.assert_array_equal(read_image(path, min_short_side=301).image, full.image)


def test_formats_without_reduction_decode_in_full(tmp_path: Path) -> None:
    pixels = radiograph_like(600, 700)
    plain = write_coded_dicom(tmp_path / "plain.dcm", pixels, ExplicitVRLittleEndian, BitsStored=12)
    np.testing.assert_array_equal(read_image(plain, min_short_side=150).image, read_image(plain).image)
    png = tmp_path / "x.png"
    Image.fromarray((pixels >> 4).astype(np.uint8)).save(png)
    np.testing.assert_array_equal(read_image(png, min_short_side=150).image, read_image(png).image)


@pytest.mark.parametrize("colour", [False, True], ids=["grey", "rgb"])
def test_jpeg_file_is_drafted(tmp_path: Path, colour: bool) -> None:
    grey = (radiograph_like(600, 700) >> 4).astype(np.uint8)
    array = np.stack([grey, grey // 2, 255 - grey], -1) if colour else grey
    path = tmp_path / "x.jpg"
    Image.fromarray(array).save(path, quality=92)
    full = read_image(path)
    half = read_image(path, min_short_side=300)
    assert half.ok and half.image.shape == (300, 350) and half.image.dtype == np.float32
    box = full.image.reshape(300, 2, 350, 2).mean((1, 3))
    assert np.abs(half.image - box).mean() < 2 / 255
