"""Hostile files of issue 21 through the reader: grey levels (7), decoder tracebacks (12), scrubbed paths (13)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import hostile_files as hostile
from cacxr.imaging import read_header, read_image


@pytest.mark.parametrize("slope", ["1e308", "NaN", "inf"])
def test_a_rescale_slope_that_gives_non_finite_levels_is_unreadable(tmp_path: Path, slope: str) -> None:
    path = hostile.slope(tmp_path, slope)
    result = read_image(path)
    assert result.reason == "unreadable" and result.image is None
    assert str(path) in result.detail and "non-finite" in result.detail and slope in result.detail


def test_a_zero_slope_or_a_crushing_voi_lut_is_blank_not_scored(tmp_path: Path) -> None:
    for path in (
        hostile.values_dicom(tmp_path / "zero.dcm", RescaleSlope="0", RescaleIntercept="0"),
        hostile.voi_lut_huge_first(tmp_path),
    ):
        result = read_image(path)
        assert result.reason == "unreadable" and result.image is None, path
        assert "blank" in result.detail and "no contrast" in result.detail and str(path) in result.detail


def test_an_ordinary_image_keeps_its_contrast(tmp_path: Path) -> None:
    result = read_image(hostile.native_dicom(tmp_path / "ok.dcm"))
    assert result.reason == "" and np.isfinite(result.image).all() and result.image.std() > 0.1


@pytest.mark.parametrize("build", [hostile.corrupt_j2k, hostile.corrupt_jpeg_ls, hostile.corrupt_rle])
def test_a_corrupt_codestream_is_one_reason_without_pydicom_tracebacks(tmp_path: Path, build, caplog) -> None:
    caplog.set_level(logging.INFO)
    path = build(tmp_path)
    result = read_image(path)
    assert result.reason == "unreadable" and "pixel data cannot be decoded" in result.detail
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_verbose_still_shows_pydicom_tracebacks(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("pydicom").setLevel(logging.DEBUG)
    try:
        read_image(hostile.corrupt_j2k(tmp_path))
    finally:
        logging.getLogger("pydicom").setLevel(logging.NOTSET)
    assert [r for r in caplog.records if r.exc_info and r.name.startswith("pydicom")]


def test_a_patient_id_equal_to_the_folder_never_mangles_the_path(tmp_path: Path) -> None:
    from cacxr.ingest.rules import decode_file

    path = hostile.corrupt_j2k(tmp_path / "CAC_002" / "rx", patient_id="CAC_002")
    result = read_image(path, patient_id="CAC_002")
    assert result.reason == "unreadable" and result.detail.startswith(f"{path}: ")
    assert "<removed>" not in result.detail
    _, (reason, detail), _ = decode_file(str(path), "CAC_002")
    assert reason == "unreadable" and "<removed>" not in detail and str(path) not in detail
    assert detail.count("pixel data cannot be decoded") == 1


def test_a_header_value_quoted_by_a_message_is_still_removed() -> None:
    from pydicom.dataset import Dataset

    from cacxr.imaging.header import scrub

    ds = Dataset()
    ds.PatientName, ds.PatientID = "Doe^Jane", "CAC_002"
    text = scrub("/data/CAC_002/rx/a.dcm: bad value for Doe^Jane (CAC_002)", ds, keep=("/data/CAC_002/rx/a.dcm",))
    assert text == "/data/CAC_002/rx/a.dcm: bad value for <removed> (<removed>)"


def test_the_header_reader_agrees(tmp_path: Path) -> None:
    # The header alone cannot see the values' effect; the decode does (ingest's decode check).
    assert read_header(hostile.slope(tmp_path, "NaN")).reason == ""


def test_a_small_file_declaring_a_2_gb_element_has_one_reason_whatever_the_memory(tmp_path: Path) -> None:
    path = hostile.declares_2gb(tmp_path)
    assert path.stat().st_size < 2048
    for result in (read_header(path), read_image(path)):
        assert result.reason == "unreadable", result
        assert "(0009,1010) declares 2,147,483,632 bytes" in result.detail and str(path) in result.detail


def test_the_element_walk_passes_ordinary_files(tmp_path: Path, real_cxr_dir: Path) -> None:
    from cacxr.imaging.codestream import check_element_lengths

    check_element_lengths(str(hostile.native_dicom(tmp_path / "ok.dcm")))
    for path in sorted(real_cxr_dir.rglob("*.dcm"))[:6]:
        check_element_lengths(str(path))


def test_rle_output_is_bounded_from_the_header(tmp_path: Path) -> None:
    # 7000 x 7000 x 3 samples x 32 bits = 588 MB of output from a tiny RLE file: refused before any decoder.
    path = hostile.rle_bomb_header(tmp_path)
    assert path.stat().st_size < 4096
    for result in (read_header(path), read_image(path)):
        assert result.reason == "too_large" and "588,000,000 bytes" in result.detail, result.detail


def test_a_decoder_panic_costs_one_file(tmp_path: Path, monkeypatch) -> None:
    import cacxr.imaging.dicom as dicom

    class PanicException(BaseException):  # what pyo3 raises when a Rust decoder panics
        pass

    def panic(*args, **kwargs):
        raise PanicException("memory allocation of 588000000 bytes failed")

    monkeypatch.setattr(dicom, "to_display", panic)
    path = hostile.native_dicom(tmp_path / "ok.dcm")
    result = read_image(path)
    assert result.reason == "unreadable" and "decoder crashed: PanicException" in result.detail


# Reader cap at max_pixels=1_000_000: 4 MB + 16 MB inflated; the bombs inflate to 40 MB.
BOMB = 40 * 2**20


@pytest.mark.parametrize(("preamble", "padding"), [(True, 5000), (False, 0)], ids=["uid-beyond-4k", "no-preamble"])
def test_deflate_bombs_past_the_old_window_are_refused(tmp_path: Path, preamble: bool, padding: int) -> None:
    path = hostile.deflate_bomb(tmp_path / "bomb.dcm", BOMB, preamble=preamble, meta_padding=padding)
    assert path.stat().st_size < 100_000
    for reader in (read_header, read_image):
        result = reader(path, max_pixels=1_000_000)
        assert result.reason == "too_large" and "inflates to more than" in result.detail, result.detail
    small = hostile.deflate_bomb(tmp_path / "small.dcm", 16, preamble=preamble, meta_padding=padding)
    assert read_image(small, max_pixels=1_000_000).ok  # an ordinary deflated file still reads


def test_sniffers_never_inflate_a_deflated_file(tmp_path: Path) -> None:
    import tracemalloc

    from cacxr.serving.uploads import sniff_format
    from cacxr.use.inputs import expand_inputs

    hostile.deflate_bomb(tmp_path / "in" / "IM0001", BOMB, preamble=False)  # no suffix, no preamble
    tracemalloc.start()
    listed = expand_inputs([tmp_path / "in"])
    fmt = sniff_format(tmp_path / "in" / "IM0001", "IM0001")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [Path(p).name for p, *_ in listed] == ["IM0001"] and fmt == "dicom"
    assert peak < 4 * 2**20, peak  # pydicom inflated all 40 MB to sniff it


def test_j2k_components_and_tiles_count_toward_the_limit(tmp_path: Path) -> None:
    path = hostile.j2k_components_bomb(tmp_path)
    assert path.stat().st_size < 4096
    for result in (read_header(path), read_image(path)):
        assert result.reason == "too_large" and "64 components" in result.detail and "62,500 tiles" in result.detail


def test_every_fragment_that_starts_a_codestream_is_checked(tmp_path: Path) -> None:
    # The Extended Offset Table points pydicom at fragment 2 (30000 x 30000); the frame walk saw fragment 1.
    result = read_image(hostile.extended_offset_table_bypass(tmp_path))
    assert result.reason == "too_large" and "fragment 2" in result.detail and "30000x30000" in result.detail


@pytest.mark.parametrize("name", ["scans.jpg", "scans.png", "scans_jpeg.dcm"])
def test_a_jpeg_with_thousands_of_scans_is_too_complex(tmp_path: Path, name: str) -> None:
    if name.endswith(".dcm"):
        path = hostile.progressive_jpeg_dicom(tmp_path)
    else:
        path = tmp_path / name
        path.write_bytes(hostile.progressive_jpeg())
    result = read_image(path)
    assert result.reason == "too_complex" and "201 scans" in result.detail and str(path) in result.detail


def test_ordinary_progressive_and_baseline_jpegs_still_read(tmp_path: Path) -> None:
    from PIL import Image

    image = Image.fromarray((np.arange(128 * 128) % 251).astype(np.uint8).reshape(128, 128))
    image.save(tmp_path / "progressive.jpg", progressive=True)
    image.save(tmp_path / "baseline.jpg")
    for name in ("progressive.jpg", "baseline.jpg"):
        assert read_image(tmp_path / name).ok, name
