"""Preprocessing profiles: normalisation values, geometry, and equalisation against the seed's baseline."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage.exposure import equalize_hist

from cacxr.core import CacxrError
from cacxr.imaging import read_image
from cacxr.pixels import PROFILES, get_profile, normalise, preprocess_image

SEED_MEAN, SEED_STD = 0.5024, 0.2898


def seed_baseline(image: np.ndarray, size: int) -> np.ndarray:
    """The original per-sample path: skimage equalisation -> uint8 -> PIL bilinear -> centre crop."""
    equalised = (equalize_hist(image.astype(np.float64)) * 255).astype(np.uint8)
    resized = round(1.21875 * size)
    offset = (resized - size) // 2
    big = np.asarray(Image.fromarray(equalised).resize((resized, resized), Image.BILINEAR))
    return big[offset : offset + size, offset : offset + size]


def smooth_image(rows: int, cols: int, seed: int) -> np.ndarray:
    """A radiograph-like float32 image in [0, 1]: smooth structures, mild noise, 12-bit levels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols] / max(rows, cols)
    image = 0.45 + 0.3 * np.sin(6 * x + seed) * np.cos(4 * y) + 0.15 * np.exp(-((x - 0.5) ** 2) * 20)
    image += rng.normal(0, 0.01, image.shape)
    return (np.round(np.clip(image, 0, 1) * 4095) / 4095).astype(np.float32)


@pytest.mark.parametrize("name", ["seed", "clahe", "xrv"])
def test_profiles_are_named_versioned_and_documented(name):
    profile = get_profile(name)
    assert profile is PROFILES[name]
    assert profile.name == name
    assert profile.version >= 1
    assert len(profile.description) > 20
    assert get_profile(profile) is profile


def test_unknown_profile_lists_the_names():
    with pytest.raises(CacxrError, match=r"unknown preprocessing profile 'sead'.*clahe, seed, xrv"):
        get_profile("sead")


@pytest.mark.parametrize(
    ("profile", "value", "expected"),
    [
        ("seed", 0, (0 - SEED_MEAN) / SEED_STD),
        ("seed", 255, (1 - SEED_MEAN) / SEED_STD),
        ("seed", 128, (128 / 255 - SEED_MEAN) / SEED_STD),
        ("clahe", 64, (64 / 255 - SEED_MEAN) / SEED_STD),
        ("xrv", 0, -1024.0),
        ("xrv", 255, 1024.0),
        ("xrv", 51, (51 / 255 * 2 - 1) * 1024),
    ],
)
@pytest.mark.parametrize("container", ["numpy", "torch"])
def test_normalise_exact_values(profile, value, expected, container):
    batch = np.full((2, 1, 3, 3), value, np.uint8)
    if container == "torch":
        batch = torch.from_numpy(batch)
    out = normalise(batch, profile)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32
    assert out.shape == (2, 1, 3, 3)
    assert out.flatten().tolist() == pytest.approx([expected] * 18, rel=1e-6, abs=1e-4)


@pytest.mark.parametrize(
    "batch",
    [
        torch.full((4, 4), 200, dtype=torch.uint8),
        torch.full((4, 4), 200.0),
        np.full((4, 4), 200.0, np.float32),
    ],
)
def test_normalise_does_not_modify_its_input(batch):
    normalise(batch, "seed")
    assert float(batch[0, 0]) == 200


def test_normalise_accepts_a_read_only_memory_map(tmp_path):
    np.save(tmp_path / "image.npy", np.full((4, 4), 255, np.uint8))
    mapped = np.load(tmp_path / "image.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about non-writable arrays
        out = normalise(mapped, "xrv")
    assert out.flatten().tolist() == [1024.0] * 16


@pytest.mark.parametrize("profile", ["seed", "clahe", "xrv"])
@pytest.mark.parametrize(("shape", "size"), [((300, 240), 64), ((90, 120), 128), ((64, 64), 64)])
def test_output_shape_and_dtype(profile, shape, size):
    out = preprocess_image(smooth_image(*shape, seed=1), profile, size)
    assert out.dtype == np.uint8
    assert out.shape == (size, size)
    assert out.flags.c_contiguous
    assert out.max() > out.min()


@pytest.mark.parametrize("profile", ["seed", "clahe", "xrv"])
def test_float64_and_strided_input_give_the_same_result(profile):
    image = smooth_image(120, 90, seed=4)
    expected = preprocess_image(image, profile, 48)
    np.testing.assert_array_equal(preprocess_image(image.astype(np.float64), profile, 48), expected)
    strided = np.asfortranarray(image)  # same values, column-major memory
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(preprocess_image(strided, profile, 48), expected)


@pytest.mark.parametrize(("size", "resized", "offset"), [(1024, 1248, 112), (512, 624, 56), (64, 78, 7)])
def test_seed_crop_geometry(size, resized, offset):
    assert get_profile("seed").crop_geometry(size) == (resized, offset)
    assert get_profile("xrv").crop_geometry(size) == (size, 0)


def test_seed_resizes_to_oversize_then_crops_the_centre():
    # A horizontal ramp has a flat histogram, so equalisation keeps it a ramp: column j of the output
    # shows the value of column j + 7 of the 78-px resized image.
    ramp = np.tile(np.linspace(0, 1, 156, dtype=np.float32), (156, 1))
    out = preprocess_image(ramp, "seed", 64).astype(float)
    expected = 255 * (np.arange(64) + 7 + 0.5) / 78
    assert np.abs(out.mean(axis=0) - expected).max() < 3
    assert np.ptp(out, axis=0).max() <= 1  # every row alike


def test_xrv_crops_to_a_centred_square_without_stretching():
    image = np.zeros((100, 60), np.float32)
    image[:20] = image[80:] = 1.0  # only the rows outside the central 60 x 60 square are bright
    image[20:80] = np.linspace(0, 0.8, 60, dtype=np.float32)  # a ramp along columns inside it
    out = preprocess_image(image, "xrv", 60)
    expected = np.rint(np.linspace(0, 0.8, 60) * 255)
    assert np.abs(out.astype(float) - expected).max() <= 1
    assert out.max() <= 205


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equalisation_matches_skimage_at_full_resolution(seed):
    from cacxr.pixels.profiles import equalise_global

    image = smooth_image(333, 271, seed)
    ours = equalise_global(image).astype(int)
    theirs = (equalize_hist(image.astype(np.float64)) * 255).astype(np.uint8).astype(int)
    assert np.abs(ours - theirs).mean() < 0.05
    assert np.abs(ours - theirs).max() <= 1


@pytest.mark.parametrize(
    "name",
    [
        "nhsx_nih-cxr14_google_DX.dcm",
        "panimg_cxr_CR-MONO1-10-chest.dcm",
        "txv_nih_00000001_000.png",
        "synthetic",
    ],
)
def test_seed_profile_within_one_grey_level_of_the_seed_baseline(name, real_cxr_dir):
    if name == "synthetic":
        image = smooth_image(700, 600, seed=5)
    else:
        result = read_image(Path(real_cxr_dir) / name)
        assert result.ok, result.detail
        image = result.image
    size = 256
    ours = preprocess_image(image, "seed", size).astype(float)
    baseline = seed_baseline(image, size).astype(float)
    assert np.abs(ours - baseline).mean() <= 1.0


def test_clahe_is_opencv_clahe_on_the_8_bit_image_then_the_seed_geometry():
    image = smooth_image(256, 256, seed=3)
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(np.rint(image * 255).astype(np.uint8))
    expected = cv2.resize(clahe, (78, 78), interpolation=cv2.INTER_AREA)[7:71, 7:71]
    np.testing.assert_array_equal(preprocess_image(image, "clahe", 64), expected)
    assert not np.array_equal(preprocess_image(image, "seed", 64), expected)


# seed: equalize_hist puts a constant image in the middle bin (0.5); clahe: whatever OpenCV's CLAHE
# maps a flat tile to, but flat; xrv: rint(0.5 * 255).
@pytest.mark.parametrize(("profile", "expected"), [("seed", 127), ("clahe", None), ("xrv", 128)])
def test_constant_image_gives_a_uniform_image(profile, expected):
    values = np.unique(preprocess_image(np.full((50, 40), 0.5, np.float32), profile, 32)).tolist()
    assert len(values) == 1
    assert expected is None or values == [expected]


@pytest.mark.parametrize(
    ("image", "size", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), 32, "2-D image"),
        (np.zeros((0, 5), np.float32), 32, "2-D image"),
        (np.zeros((10, 10), np.float32), 4, "integer >= 8"),
        (np.zeros((10, 10), np.float32), 32.0, "integer >= 8"),
    ],
)
def test_bad_input_is_a_clear_error(image, size, message):
    with pytest.raises(CacxrError, match=message):
        preprocess_image(image, "seed", size)


# ------------------------------------------------ per-level equalisation and the one path from a file


def original_pipeline(path: Path, size: int) -> np.ndarray:
    """The seed study's path on a DICOM: equalize_hist on apply_voi_lut's output, whatever its dtype."""
    import pydicom
    from pydicom.pixels import apply_voi_lut

    ds = pydicom.dcmread(path)
    equalised = (equalize_hist(apply_voi_lut(ds.pixel_array, ds)) * 255).astype(np.uint8)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        equalised = 255 - equalised
    resized = round(1.21875 * size)
    offset = (resized - size) // 2
    big = np.asarray(Image.fromarray(equalised).resize((resized, resized), Image.BILINEAR))
    return big[offset : offset + size, offset : offset + size]


def write_plain_dicom(path: Path, stored: np.ndarray, window: bool) -> Path:
    """A small DX DICOM of ``stored`` (uint16), with a window or none (the reader then uses min-max)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition = "DX", "PA"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = 2048, 3000
    ds.PixelData = stored.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def few_levels(rows: int, cols: int, levels: int, seed: int) -> np.ndarray:
    """A uint16 image with ``levels`` distinct values spread over 12 bits, unevenly populated."""
    rng = np.random.default_rng(seed)
    values = np.sort(rng.choice(4096, size=levels, replace=False)).astype(np.uint16)
    weights = rng.gamma(0.5, size=levels)
    return values[rng.choice(levels, size=(rows, cols), p=weights / weights.sum())]


@pytest.mark.parametrize(("levels", "seed"), [(5, 0), (12, 1), (40, 2), (300, 3)])
def test_per_level_equalisation_is_equalize_hist_of_the_integer_image(levels, seed):
    from cacxr.pixels.profiles import equalise_global

    stored = few_levels(97, 83, levels, seed)
    lo, hi = int(stored.min()), int(stored.max())
    image = ((stored.astype(np.float32) - lo) / (hi - lo)).astype(np.float32)  # read_image's min-max
    theirs = (equalize_hist(stored) * 255).astype(np.uint8).astype(int)
    ours = equalise_global(image, per_level=True).astype(int)
    assert np.abs(ours - theirs).max() <= 1
    # the 256-bin version is what equalize_hist gives floats, not integers: visibly different here
    assert np.abs(equalise_global(image).astype(int) - theirs).mean() > 0.5


@pytest.mark.parametrize(
    ("voi", "per_level"), [("window", False), ("voi_lut", True), ("minmax", True), ("png", True)]
)
def test_preprocess_read_picks_per_level_from_the_readers_voi(voi, per_level, tmp_path):
    from dataclasses import replace

    from cacxr.pixels import per_level_for, preprocess_read

    path = write_plain_dicom(tmp_path / "CAC_001" / "IM-1.dcm", few_levels(90, 70, 20, 4), window=False)
    read = read_image(path, "CAC_001")
    assert read.ok and read.meta.voi == "minmax"
    result = replace(read, meta=replace(read.meta, voi=voi))
    assert per_level_for(result.meta) is per_level
    expected = preprocess_image(result.image, "seed", 32, per_level=per_level)
    other = preprocess_image(result.image, "seed", 32, per_level=not per_level)
    got = preprocess_read(result, "seed", 32)
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, other)


def test_preprocess_read_refuses_a_failed_read_with_the_readers_reason(tmp_path):
    from cacxr.pixels import preprocess_read

    bad = tmp_path / "CAC_002" / "IM-1.dcm"
    bad.parent.mkdir()
    bad.write_bytes(b"not a dicom at all")
    result = read_image(bad, "CAC_002")
    assert not result.ok
    with pytest.raises(CacxrError, match="IM-1.dcm"):
        preprocess_read(result, "seed", 32)


def test_per_level_is_ignored_by_clahe_and_xrv():
    image = smooth_image(120, 100, seed=6)
    for profile in ("clahe", "xrv"):
        np.testing.assert_array_equal(
            preprocess_image(image, profile, 32, per_level=True), preprocess_image(image, profile, 32)
        )


@pytest.mark.parametrize("name", ["nhsx_nih-cxr14_google_DX.dcm", "txv_siim_chest_pa.dcm"])
def test_preprocess_read_follows_the_original_pipeline_on_dicoms_without_window(name, real_cxr_dir):
    from cacxr.pixels import preprocess_read

    path = Path(real_cxr_dir) / name
    result = read_image(path)
    assert result.ok and result.meta.voi == "minmax", result.detail
    original = original_pipeline(path, 256).astype(float)
    ours = np.abs(preprocess_read(result, "seed", 256) - original).mean()
    binned = np.abs(preprocess_image(result.image, "seed", 256) - original).mean()
    assert ours <= 0.6 and ours < binned


@pytest.mark.parametrize("window", [False, True])
def test_store_scoring_explain_and_data_see_the_same_pixels(window, tmp_path):
    """The image store (training) and every inference entry point prepare one file identically."""
    from types import SimpleNamespace

    from cacxr.ingest import ManifestRow
    from cacxr.pixels import build_store, preprocess_read
    from cacxr.training.dataset import preprocess_for_model
    from cacxr.use import prepare_image
    from cacxr.use.inputs import load_input

    size = 32
    path = write_plain_dicom(
        tmp_path / "data" / "CAC_003" / "rx" / "IM-1.dcm", few_levels(80, 64, 25, 7), window
    )
    row = ManifestRow(patient_id="CAC_003", path=str(path), site="internal", cac_score=0.0)
    store = build_store([row], tmp_path / "store", image_size=size, workers=1, progress=False)
    stored = store.get("CAC_003")
    result = read_image(path, "CAC_003")
    assert result.meta.voi == ("window" if window else "minmax")

    np.testing.assert_array_equal(stored, preprocess_read(result, "seed", size))
    run = SimpleNamespace(profile="seed", image_size=size)  # all the scoring path reads from a run
    scored, _, error = load_input(run, path)  # what score_paths and explain_paths score
    assert error == ""
    np.testing.assert_array_equal(scored, stored)
    np.testing.assert_array_equal(prepare_image(run, result.image, result.meta), stored)  # serve, explain
    tensor = preprocess_for_model(result.image, "seed", size, meta=result.meta)
    torch.testing.assert_close(tensor, normalise(stored, "seed")[None])
    # without the file's meta an image is equalised with 256 bins: different for a min-max file
    assert np.array_equal(preprocess_image(result.image, "seed", size), stored) is window
