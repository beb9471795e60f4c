"""Preprocessing profiles: named, versioned recipes from a radiograph to the uint8 image a model sees.

Every profile starts from the array ``cacxr.imaging.read_image`` returns (float32 in [0, 1], bone
bright, VOI LUT / window and MONOCHROME1 inversion already applied) and produces a square uint8
image of side ``S`` (``--image-size``) that the image store keeps. ``normalise`` maps those uint8
values to the model's input range at load time.

Profiles (``PROFILES``):

- ``seed`` (default, v2): the original study's recipe. Global histogram equalisation (the definition
  of ``skimage.exposure.equalize_hist``) -> 8 bit (``floor(255 * x)``, as ``(x * 255).astype(uint8)``)
  -> resize to a ``round(1.21875 * S)`` square (aspect ratio not kept, as in the seed) -> centre crop
  ``S``. Normalised with mean 0.5024 / std 0.2898 on ``x / 255``.
- ``clahe`` (v1): the ``seed`` recipe with contrast-limited adaptive histogram equalisation (OpenCV
  ``createCLAHE``, clip limit 2.0, 8 x 8 tiles, on the image rounded to 8 bits) instead of the
  global one.
- ``xrv`` (v1): the torchxrayvision convention: no equalisation, centre crop to a square (the
  shorter side), resize to ``S``; at load time intensities span [-1024, 1024], so
  torchxrayvision-pretrained encoders see the range they were trained on.

The equalisation rule (``seed`` and every ``global`` profile). The original pipeline called
``equalize_hist`` on what ``pydicom.pixels.apply_voi_lut`` returned, and scikit-image bins that
differently by dtype:

- a window gives a float array: 256 bins over the image's range, the cumulative histogram
  interpolated linearly between bin centres (``per_level=False``);
- a VOI LUT Sequence, no window at all (min-max) or an 8-bit PNG/JPEG gives integers: one bin per
  grey level, ``lut = floor(255 * cdf)`` at each level (``per_level=True``).

The reader records which case applies in ``ImageMeta.voi``; :func:`preprocess_read` (or
:func:`per_level_for`) turns it into ``per_level``. Every caller holding a ``ReadResult`` (image
store, scoring, explanations, the web app) goes through :func:`preprocess_read`, so training and
inference see identical pixels.

A profile's ``version`` is part of the image store's key: change a recipe, bump its version, and
stores built with the old one are rebuilt.

Reduced decoding. Every profile shrinks the radiograph to ``round(oversize * S)`` (after the square crop for
``xrv``), so a file is decoded only as large as that (:func:`decode_side`): :func:`read_for_profile` asks
``read_image(..., min_short_side=decode_side(profile, S))``, and JPEG 2000 / 8-bit JPEG files with a short
side of at least twice that are decoded at a power-of-two reduction (``cacxr.imaging.reduced``). The store
entry then differs from full decode + profile by a fraction of a grey level on average (README, "Reduced
decoding"); ``full_decode=True`` (``cacxr preprocess --full-decode``) decodes every file in full.

Why one module of ~430 lines: the profiles' steps and the one way a file reaches them (read at the size the
profile needs, then preprocess_read, the export inversion included) are one contract and change together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from cacxr.core import CacxrError

if TYPE_CHECKING:
    import os

    import torch

    from cacxr.imaging import GateVerdict, ImageMeta, ReadResult

__all__ = [
    "Profile",
    "PROFILES",
    "DEFAULT_PROFILE",
    "get_profile",
    "preprocess_image",
    "preprocess_read",
    "per_level_for",
    "PER_LEVEL_VOI",
    "normalise",
    "check_image_size",
    "decode_side",
    "read_for_profile",
]

# Fine quantisation of the [min, max] range used by the equalisations: 2**16 levels, so that the
# lookup table built from the 256-bin cumulative histogram is exact to 1/256 of a bin.
_LEVELS = 65536
_BINS = 256

# ``ImageMeta.voi`` values whose original pipeline handed equalize_hist an integer array (one bin
# per grey level); after a window it got floats (256 bins).
PER_LEVEL_VOI = frozenset({"voi_lut", "minmax", "png"})


@dataclass(frozen=True)
class Profile:
    """One preprocessing recipe.

    Attributes:
        name: the name used on the command line (``--profile``).
        version: bumped whenever the recipe's output changes (part of the image store's key).
        description: one line for users.
        equalisation: ``global`` (histogram equalisation), ``clahe`` (contrast-limited adaptive)
            or ``none``.
        square: how a non-square image becomes square: ``stretch`` (resize to a square, as the seed
            does) or ``crop`` (centre crop to the shorter side first, as torchxrayvision does).
        oversize: the image is resized to ``round(oversize * S)`` and then centre cropped to ``S``.
        mean: normalisation mean of ``x / 255``.
        std: normalisation standard deviation of ``x / 255``.
        clahe_clip: CLAHE clip limit (``clahe`` only).
        clahe_tiles: CLAHE tiles per side (``clahe`` only).
    """

    name: str
    version: int
    description: str
    equalisation: Literal["global", "clahe", "none"]
    square: Literal["stretch", "crop"]
    oversize: float
    mean: float
    std: float
    clahe_clip: float = 2.0
    clahe_tiles: int = 8

    def crop_geometry(self, image_size: int) -> tuple[int, int]:
        """The resized side and the crop offset for an output of side ``image_size``.

        Args:
            image_size: output side ``S``.

        Returns:
            ``(resized_side, offset)``: the image is resized to ``resized_side`` square and the
            ``S`` x ``S`` window starting at ``(offset, offset)`` is kept.
        """
        resized = round(self.oversize * image_size)
        return resized, (resized - image_size) // 2


PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            name="seed",
            version=2,
            description="the original recipe: global histogram equalisation (256 bins after a "
            "window, one bin per grey level after a VOI LUT, min-max or PNG), resize to 1.21875 S, "
            "centre crop S; normalised with mean 0.5024 / std 0.2898",
            equalisation="global",
            square="stretch",
            oversize=1.21875,
            mean=0.5024,
            std=0.2898,
        ),
        Profile(
            name="clahe",
            version=1,
            description="the seed recipe with contrast-limited adaptive equalisation (OpenCV CLAHE, "
            "clip 2.0, 8x8 tiles) instead of the global one",
            equalisation="clahe",
            square="stretch",
            oversize=1.21875,
            mean=0.5024,
            std=0.2898,
        ),
        Profile(
            name="xrv",
            version=1,
            description="the torchxrayvision convention: no equalisation, centre crop to a square, "
            "resize to S; intensities in [-1024, 1024] at load time",
            equalisation="none",
            square="crop",
            oversize=1.0,
            # (x / 255 - 0.5) / (1 / 2048) == (x / 255 * 2 - 1) * 1024
            mean=0.5,
            std=1.0 / 2048.0,
        ),
    )
}

DEFAULT_PROFILE = "seed"


def get_profile(profile: str | Profile) -> Profile:
    """Look up a profile by name (a ``Profile`` is returned unchanged).

    Args:
        profile: a name of ``PROFILES`` or a ``Profile``.

    Returns:
        The profile.

    Raises:
        CacxrError: the name is unknown (the message lists the known names).
    """
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except (KeyError, TypeError):
        names = ", ".join(sorted(PROFILES))
        raise CacxrError(f"unknown preprocessing profile {profile!r} (choose one of: {names})") from None


def preprocess_image(
    image: np.ndarray, profile: str | Profile, image_size: int, *, per_level: bool = False
) -> np.ndarray:
    """Apply a profile to one radiograph.

    Callers holding a ``ReadResult`` should use :func:`preprocess_read`, which picks ``per_level``
    from the file's grey-level mapping.

    Args:
        image: float array (rows, cols) in [0, 1], bone bright, as ``read_image`` returns it
            (float32; other dtypes are converted).
        profile: a profile name or ``Profile``.
        image_size: the output side ``S``.
        per_level: global equalisation with one histogram bin per grey level (as ``equalize_hist``
            does on an integer image) instead of 256 bins. Ignored by ``clahe`` and ``xrv``.

    Returns:
        A new C-contiguous uint8 array of shape (S, S).

    Raises:
        CacxrError: the image is not a non-empty 2-D array, or ``image_size`` is not a positive int.
    """
    spec = get_profile(profile)
    check_image_size(image_size)
    image = np.ascontiguousarray(image, dtype=np.float32)  # no copy for read_image's output
    if image.ndim != 2 or image.size == 0:
        raise CacxrError(f"expected a non-empty 2-D image, got an array of shape {image.shape}")
    if spec.square == "crop":
        image = _centre_square(image)
    if spec.equalisation == "global":
        image8 = equalise_global(image, per_level=per_level)
    elif spec.equalisation == "clahe":
        image8 = _equalise_clahe(image, spec.clahe_clip, spec.clahe_tiles)
    else:
        image8 = _to_uint8_rounded(image)
    resized, offset = spec.crop_geometry(image_size)
    image8 = _resize_square(image8, resized)
    return np.ascontiguousarray(image8[offset : offset + image_size, offset : offset + image_size])


def per_level_for(meta: ImageMeta | None) -> bool:
    """Whether the global equalisation of a file's image uses one bin per grey level.

    Args:
        meta: the reader's ``ImageMeta`` (``None``, e.g. a bare array: 256 bins).

    Returns:
        True when ``meta.voi`` is ``voi_lut``, ``minmax`` or ``png``.
    """
    return meta is not None and meta.voi in PER_LEVEL_VOI


def preprocess_read(
    result: ReadResult, profile: str | Profile, image_size: int, verdict: GateVerdict | None = None
) -> np.ndarray:
    """Apply a profile to what ``imaging.read_image`` returned: the one way to preprocess a file.

    An image export (PNG/JPEG) whose grey scale the view gate finds inverted (bone dark) is inverted back
    first (``cacxr.imaging.decide``), here, so the store, predict and serve see the same pixels.

    Args:
        result: a usable ``ReadResult`` (image and meta present).
        profile: a profile name or ``Profile``.
        image_size: the output side ``S``.
        verdict: the gate's verdict on ``result.image`` when the caller has it (exports only; else computed).

    Returns:
        A new C-contiguous uint8 array of shape (S, S).

    Raises:
        CacxrError: the result holds no image (the message carries the reader's reason).
    """
    if result.image is None or not result.ok:
        where = result.meta.path if result.meta is not None else "image"
        raise CacxrError(result.detail or f"{where}: no decoded image to preprocess")
    image = result.image
    if result.meta is not None and result.meta.source_format != "dicom":
        from cacxr.imaging import classify

        verdict = verdict or classify(image)
        if verdict.inverted and verdict.content != "not_radiograph":  # the flag means nothing on other images
            image = 1.0 - image
    return preprocess_image(image, profile, image_size, per_level=per_level_for(result.meta))


def decode_side(profile: str | Profile, image_size: int) -> int:
    """The smallest short side a file needs to be decoded at for ``profile`` at ``image_size``.

    The profile resizes the image (its square crop for ``xrv``) to ``round(oversize * S)`` on each side, so a
    decode whose short side is at least that is never upsampled: 1248 for ``seed`` at S = 1024, 624 at 512.

    Args:
        profile: a profile name or ``Profile``.
        image_size: the output side ``S``.

    Returns:
        The side in pixels.
    """
    spec = get_profile(profile)
    check_image_size(image_size)
    return spec.crop_geometry(image_size)[0]


def read_for_profile(
    path: str | os.PathLike[str],
    profile: str | Profile,
    image_size: int,
    *,
    patient_id: str = "",
    full_decode: bool = False,
    max_pixels: int | None = None,
) -> ReadResult:
    """Read a file for ``profile`` at ``image_size``: decoded no larger than the profile needs.

    Follow with :func:`preprocess_read`. The image store, predict, serve and evaluate read files this way.

    Args:
        path: a DICOM, PNG or JPEG file.
        profile: a profile name or ``Profile``.
        image_size: the output side ``S``.
        patient_id: the cohort's pseudonymous id for the file.
        full_decode: decode every file in full (as before reduced decoding; to compare).
        max_pixels: the reader's size limit (None: its default).

    Returns:
        ``cacxr.imaging.read_image``'s ``ReadResult``; its image is smaller than Rows x Columns when the file
        was decoded reduced.
    """
    from cacxr.imaging import read_image

    side = 0 if full_decode else decode_side(profile, image_size)
    limit = {} if max_pixels is None else {"max_pixels": max_pixels}
    return read_image(path, patient_id, min_short_side=side, **limit)


def normalise(batch: np.ndarray | torch.Tensor, profile: str | Profile) -> torch.Tensor:
    """Map stored intensities (0..255, any shape) to the model's input range.

    ``seed``/``clahe``: ``(x / 255 - 0.5024) / 0.2898``; ``xrv``: ``(x / 255 * 2 - 1) * 1024``.

    Args:
        batch: uint8 values, or floats on the same 0..255 scale (e.g. after augmentation).
        profile: a profile name or ``Profile``.

    Returns:
        A new float32 tensor of the same shape.
    """
    # torch is imported here so that store build workers, which only need preprocess_image, start
    # without loading it.
    import torch

    scale, offset = _affine(get_profile(profile))
    if isinstance(batch, torch.Tensor):
        out = batch.to(torch.float32).mul(scale)
    else:  # a fresh float32 copy: also fine for read-only memory maps of the store
        out = torch.from_numpy(np.array(batch, dtype=np.float32)).mul_(scale)
    return out.add_(offset)


def _affine(spec: Profile) -> tuple[float, float]:
    """``(scale, offset)`` such that ``normalised = x * scale + offset`` for x on the 0..255 scale."""
    return 1.0 / (255.0 * spec.std), -spec.mean / spec.std


def check_image_size(image_size: int) -> None:
    """Raise ``CacxrError`` unless ``image_size`` is an integer >= 8."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise CacxrError(f"image size must be an integer >= 8, got {image_size!r}")


def _centre_square(image: np.ndarray) -> np.ndarray:
    rows, cols = image.shape
    side = min(rows, cols)
    top, left = (rows - side) // 2, (cols - side) // 2
    return image[top : top + side, left : left + side]


def equalise_global(image: np.ndarray, *, per_level: bool = False) -> np.ndarray:
    """``floor(255 * skimage.exposure.equalize_hist(image))`` through a 2**16-entry table.

    The image range [min, max] is mapped to t in [0, 65535] and rounded to a uint16 "cell" (one
    OpenCV pass, no float64 copy). np.histogram's 256-bin index of a value is floor(t * 256 / 65535),
    so the fine histogram of cells sums exactly into the 256-bin one (up to half a cell, 1/512 of a
    bin, at bin edges), and the table holds equalize_hist's interpolated cumulative histogram at
    every cell.

    With ``per_level`` the cells themselves are the bins: an image of at most 65536 distinct,
    evenly spaced grey levels (integers scaled min-max) puts each level in its own cell, and
    ``floor(255 * cdf)`` at a cell is what equalize_hist gives an integer image at that level.
    """
    lo, hi, _, _ = cv2.minMaxLoc(image)
    if not hi > lo:  # also catches NaN
        # equalize_hist puts a constant image in the middle bin and returns 0.5 everywhere.
        return np.full(image.shape, 127, np.uint8)
    top = _LEVELS - 1
    cells = cv2.normalize(image, None, 0, top, cv2.NORM_MINMAX, dtype=cv2.CV_16U)
    fine = cv2.calcHist([cells], [0], None, [_LEVELS], [0, _LEVELS]).ravel()
    if per_level:
        cdf_fine = np.cumsum(fine, dtype=np.float64)
        cdf_fine /= cdf_fine[-1]
        return np.floor(cdf_fine * 255.0).astype(np.uint8)[cells]
    cell_values = np.arange(_LEVELS, dtype=np.float64)
    bin_of_cell = np.minimum(cell_values * _BINS // top, _BINS - 1).astype(np.intp)
    cdf = np.cumsum(np.bincount(bin_of_cell, weights=fine, minlength=_BINS))
    cdf /= cdf[-1]
    # np.interp clamps below the first and above the last bin centre exactly as equalize_hist does.
    centres = (np.arange(_BINS) + 0.5) * (top / _BINS)
    lut = np.floor(np.interp(cell_values, centres, cdf) * 255.0).astype(np.uint8)
    return lut[cells]


def _equalise_clahe(image: np.ndarray, clip: float, tiles: int) -> np.ndarray:
    """OpenCV CLAHE on the 8-bit image (its clip limit is defined for 256 bins)."""
    clahe = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles))
    return clahe.apply(_to_uint8_rounded(image))


def _to_uint8_rounded(image: np.ndarray) -> np.ndarray:
    """round(255 * x), saturated to 0..255, in one OpenCV pass."""
    if image.min() < 0:  # outside the [0, 1] contract; convertScaleAbs would mirror negatives
        image = np.clip(image, 0.0, 1.0)
    return cv2.convertScaleAbs(image, alpha=255.0)


def _resize_square(image8: np.ndarray, side: int) -> np.ndarray:
    """Resize to ``side`` x ``side``: pixel-area averaging when shrinking, bilinear when enlarging."""
    rows, cols = image8.shape
    if (rows, cols) == (side, side):
        return image8
    shrinking = rows * cols >= side * side
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image8, (side, side), interpolation=interpolation)
