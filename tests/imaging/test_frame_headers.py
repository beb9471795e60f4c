"""Issue 21 items 3-4: what a JPEG frame header or an RLE segment table declares is checked before decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import RLELossless

import hostile_files as hostile
from cacxr.imaging import read_header, read_image
from cacxr.imaging.codestream import CodestreamError, check_codestream


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        ({"precision": 0}, "1 component(s) of 0 bits"),
        ({"precision": 40}, "of 40 bits"),
        ({"components": 0}, "0 component(s)"),
        ({"components": 3, "length": 11}, "in a 11-byte segment"),  # 3 components need 17 bytes
    ],
)
def test_an_impossible_jpeg_frame_header_is_unreadable(frame: dict, words: str) -> None:
    with pytest.raises(CodestreamError, match="not a valid frame") as caught:
        check_codestream(hostile.jpeg_frame(**frame), 50_000_000)
    assert caught.value.reason == "unreadable" and words in str(caught.value)


def test_jpeg_components_count_against_the_sample_limit() -> None:
    size = check_codestream(hostile.jpeg_frame(components=3), 50_000_000)
    assert (size.kind, size.rows, size.cols, size.components) == ("jpeg", 64, 64, 3)
    with pytest.raises(CodestreamError, match="255 components") as caught:
        check_codestream(hostile.jpeg_frame(components=255), 50_000_000)
    assert caught.value.reason == "too_large"
    with pytest.raises(CodestreamError) as caught:  # 3 x 64 x 64 samples above a 10,000-sample limit
        check_codestream(hostile.jpeg_frame(components=3), 10_000)
    assert caught.value.reason == "too_large"


def test_a_dicom_whose_jpeg_frame_lies_is_refused_by_the_reader(tmp_path: Path) -> None:
    path = hostile.jpeg_frame_dicom(tmp_path, "precision0", precision=0)
    result = read_image(path)
    assert (result.reason, result.image) == ("unreadable", None)
    assert str(path) in result.detail and "not a valid frame" in result.detail


@pytest.mark.parametrize("declared", [1, 12])
def test_an_rle_segment_count_that_disagrees_with_the_header_is_unreadable(tmp_path: Path, declared: int) -> None:
    path = hostile.rle_segment_mismatch(tmp_path, declared)
    assert read_header(path).reason == ""  # the header alone is fine
    result = read_image(path)
    assert (result.reason, result.image) == ("unreadable", None)
    assert f"declares {declared} segment(s), SamplesPerPixel x BitsAllocated needs 2" in result.detail


def test_rle_offsets_beyond_the_frame_are_unreadable(tmp_path: Path) -> None:
    path = hostile.rle_segment_mismatch(tmp_path, 2)
    data = bytearray(path.read_bytes())
    at = data.find((66).to_bytes(4, "little"), data.find(b"\x02\x00\x00\x00\x40\x00\x00\x00"))
    data[at : at + 4] = (10_000).to_bytes(4, "little")  # the second segment starts far past the frame's end
    path.write_bytes(bytes(data))
    result = read_image(path)
    assert result.reason == "unreadable" and "offsets out of order or beyond the frame" in result.detail


@pytest.mark.parametrize("bits", [8, 16])
def test_a_real_rle_file_still_decodes_exactly(tmp_path: Path, bits: int) -> None:
    ds = hostile.dataset(64, 48, bits=bits)
    pixels = (np.arange(64 * 48).reshape(64, 48) * 13 % (2**bits - 1)).astype(np.uint8 if bits == 8 else np.uint16)
    ds.compress(RLELossless, pixels, encoding_plugin="pydicom")
    path = hostile.save(ds, tmp_path / f"rle{bits}.dcm")
    result = read_image(path)
    assert result.reason == "" and result.image.shape == (64, 48)
    assert np.array_equal(np.argsort(result.image.ravel(), kind="stable"), np.argsort(pixels.ravel(), kind="stable"))
