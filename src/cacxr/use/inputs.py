"""Inputs of a trained run: files and folders to radiographs, read and preprocessed as training did.

Inputs are files or folders. Folders are searched recursively for DICOM files (``*.dcm``, ``*.dicom`` and
extension-less files whose content parses as DICOM) and PNG/JPEG images. A file given explicitly is always
tried, whatever its name, so that a bad file gets a row with its error instead of vanishing.

Each image goes through exactly the steps of training: ``cacxr.pixels.read_for_profile`` (``read_image``:
float32 [0, 1], bone bright; JPEG 2000 and 8-bit JPEG decoded only as large as the run's profile and image
size need, as in the image store) -> ``cacxr.pixels.profiles.preprocess_read`` with the run's profile and
image size (uint8 S x S; the equalisation follows the file's grey-level mapping, as in the image store). Inputs that can be scored
but deserve caution get warnings (lateral or unknown view, small image, PNG/JPEG without view information).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cacxr.core import file_kind

if TYPE_CHECKING:
    from cacxr.use.loaded_run import LoadedRun

__all__ = [
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "SMALL_IMAGE_PX",
    "expand_inputs",
    "image_warnings",
    "judge_image",
    "load_input",
    "prepare_input",
    "read_bounded",
    "clinical_values",
]

logger = logging.getLogger(__name__)
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
# Below this many pixels on the short side a radiograph has far less detail than the training images.
SMALL_IMAGE_PX = 512


def _looks_like_dicom(path: Path) -> bool:
    """Whether an extension-less file is DICOM: a part-10 preamble, or a forced parse with image tags."""
    import pydicom
    from pydicom.misc import is_dicom

    from cacxr.imaging import is_deflated

    try:
        if is_dicom(path) or is_deflated(path):  # deflated: never inflated here (the reader bounds it)
            return True
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        return any(keyword in ds for keyword in ("SOPClassUID", "Modality", "Rows"))
    except Exception:  # any parse failure simply means "not DICOM"
        return False


def _is_candidate(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES or suffix in IMAGE_SUFFIXES:
        return True
    return suffix == "" and _looks_like_dicom(path)


def _not_regular(path: Path) -> str:
    """The error for a path that is neither a regular file nor a folder ("" for those)."""
    kind = file_kind(path)
    return "" if kind in ("", "a folder") else f"not_regular_file: {path}: {kind}, not opened"


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[tuple[str, str]]:
    """Turn files and folders into the list of files to score.

    Args:
        inputs: files (always kept) and folders (searched recursively, in sorted order, for DICOM and
            PNG/JPEG files; other files are skipped).

    Returns:
        ``(path, error)`` pairs in input order; ``error`` is "" for a file to score, or says why the input
        yields nothing (missing path, folder without images).
    """
    out: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            out.append((str(path), ""))
        elif path.is_dir():
            entries = sorted(path.rglob("*"))
            found = [p for p in entries if p.is_file() and _is_candidate(p)]
            # FIFOs, sockets, devices and links to them: an error row each, never opened
            odd = [(str(p), _not_regular(p)) for p in entries if _not_regular(p)]
            if not found:
                out.append((str(path), "folder contains no DICOM, PNG or JPEG file"))
            out.extend(sorted([(str(p), "") for p in found] + odd))
        else:
            kind = file_kind(path)
            out.append((str(path), "no such file or folder" if kind == "missing" else _not_regular(path)))
    return out


def image_warnings(meta: Any, decision: Any = None) -> list[str]:
    """Reasons to be careful with a readable image (view, grey scale and size), from its ``ImageMeta``.

    Args:
        meta: the ``cacxr.imaging.ImageMeta`` of a decoded file.
        decision: the view gate's ``cacxr.imaging.GateDecision`` on it, when the gate ran.

    Returns:
        Short notes ("frontal view read from the image ...", "header view contradicts the image ...",
        "grey scale inverted back ...", "unknown view ...", "small image ...").
    """
    from cacxr.imaging import HEADER_CONTRADICTS_IMAGE, VIEW_FROM_IMAGE, is_frontal

    notes: list[str] = []
    flag = getattr(decision, "flag", None)
    if flag == VIEW_FROM_IMAGE:
        what = f"{meta.source_format.upper()} export" if meta.source_format != "dicom" else "no ViewPosition"
        notes.append(f"{what}: frontal view read from the image")
    elif flag == HEADER_CONTRADICTS_IMAGE:
        notes.append(f"the view gate disagrees with the header ({meta.modality or 'no modality'}, view "
                     f"{meta.view or 'none'}): the header is kept")  # fmt: skip
    if not getattr(decision, "frontal", True) or (decision is None and not is_frontal(meta)):
        view = f"ViewPosition {meta.view!r}" if meta.view else f"no view ({meta.source_format.upper()})"
        notes.append(f"unknown view ({view}; assumed frontal)")
    if getattr(decision, "invert", False):
        notes.append("grey scale inverted (bone dark): inverted back")
    if 0 < min(meta.rows, meta.cols) < SMALL_IMAGE_PX:
        notes.append(f"small image ({meta.rows}x{meta.cols} px, under {SMALL_IMAGE_PX} px)")
    return notes


def load_input(
    run: LoadedRun, path: str | os.PathLike[str], *, full_decode: bool = False
) -> tuple[np.ndarray | None, list[str], str]:
    """Read and preprocess one file for ``run``.

    Args:
        run: the loaded run (its profile and image size are used).
        path: a DICOM, PNG or JPEG file.
        full_decode: decode the file in full instead of only as large as the profile needs.

    Returns:
        ``(image, warnings, error)``: the uint8 (S, S) model input or ``None``, the warnings, and the
        error ("" when the image is usable).
    """
    image, _, _, notes, error = prepare_input(run, path, full_decode=full_decode)
    return image, notes, error


def prepare_input(
    run: LoadedRun, path: str | os.PathLike[str], *, full_decode: bool = False
) -> tuple[np.ndarray | None, Any, str, list[str], str]:
    """:func:`load_input` plus the file's ``ImageMeta`` (its age and sex feed ``--clinical`` runs) and the
    view gate's verdict (on the image as decoded for the run's size).

    Returns:
        ``(image, meta, gate, warnings, error)``: ``gate`` is the verdict described ("" when the file could
        not be decoded); a file the gate (or its header) says is lateral or not a chest radiograph gets the
        error ``lateral_view`` / ``not_radiograph``, as ingest would exclude it.
    """
    from cacxr.pixels import preprocess_read

    try:
        result = read_bounded(path, run.profile, run.image_size, full_decode=full_decode)
        if not result.ok or result.image is None:
            return None, None, "", [], f"{result.reason}: {result.detail}" if result.detail else result.reason
        # The rule ingest follows (cacxr.imaging.decide): what it would exclude is refused, not scored.
        meta = result.meta
        verdict, decision = judge_image(result.image, meta)
        notes = image_warnings(meta, decision)
        if decision.reason:
            return None, meta, verdict.describe(), notes, f"{decision.reason}: {path}: {decision.detail}"
        image = preprocess_read(result, run.profile, run.image_size, verdict)
    except Exception as exc:  # a batch goes on whatever one file does; the reason is kept in the row
        logger.debug("cannot prepare %s", path, exc_info=True)
        return None, None, "", [], f"unreadable: {path}: {type(exc).__name__}: {exc}"
    return image, meta, verdict.describe(), notes, ""


def read_bounded(
    path: str | os.PathLike[str],
    profile: Any,
    image_size: int,
    *,
    full_decode: bool = False,
    max_pixels: int | None = None,
) -> Any:
    """``cacxr.pixels.read_for_profile`` in the bounded decode pool (``cacxr.imaging.run_isolated``).

    A decoder that aborts, runs out of its memory cap or loops costs this file only (its ``ReadResult``
    then has the pool's reason: ``unreadable``, ``too_large`` or ``too_complex``), never the command or
    the server. The workers keep the working folder they started in: they get the absolute path, the
    messages name the path as given.
    """
    from cacxr.imaging import ReadResult, read_image, run_isolated
    from cacxr.pixels import decode_side

    given, absolute = os.fspath(path), os.path.abspath(path)
    side = 0 if full_decode else decode_side(profile, image_size)  # as pixels.read_for_profile
    limit = {} if max_pixels is None else {"max_pixels": max_pixels}
    outcome = run_isolated(read_image, absolute, min_short_side=side, **limit)
    if not outcome.ok:
        return ReadResult(None, None, outcome.reason, f"{given}: {outcome.detail}")
    result = outcome.value
    if absolute != given:
        meta = None if result.meta is None else dataclasses.replace(result.meta, path=given)
        result = dataclasses.replace(result, meta=meta, detail=result.detail.replace(absolute, given))
    return result


def judge_image(image: np.ndarray, meta: Any) -> tuple[Any, Any]:
    """The view gate's verdict on a decoded image and what it means under the one rule ingest follows.

    Args:
        image: the reader's float32 image.
        meta: its ``cacxr.imaging.ImageMeta`` (the recorded view, modality and format).

    Returns:
        ``(GateVerdict, GateDecision)`` (``cacxr.imaging.classify`` and ``cacxr.imaging.decide``).
    """
    from cacxr.imaging import classify, decide, is_frontal, is_lateral

    verdict = classify(image)
    recorded = "lateral" if is_lateral(meta) else ("frontal" if is_frontal(meta) else "")
    return verdict, decide(verdict, recorded, meta.source_format, meta.modality)


def clinical_values(run: LoadedRun, meta: Any) -> tuple[tuple[float, str], list[str]]:
    """The ``(age, sex)`` of an image for a ``--clinical`` run, from its header, and notes on unknowns.

    Args:
        run: the loaded run.
        meta: the image's ``cacxr.imaging.ImageMeta`` (PatientAge, PatientSex), or None (PNG/JPEG, upload).

    Returns:
        ``((age or NaN, sex or ""), notes)``; the notes are empty for image-only runs or known values.
    """
    age = float(meta.age) if meta is not None and meta.age is not None else math.nan
    sex = (meta.sex or "") if meta is not None else ""
    features = run.clinical_features
    notes = []
    if "age" in features and not math.isfinite(age):
        notes.append("age unknown: the training median age was used")
    if "sex" in features and sex not in ("M", "F"):
        notes.append("sex unknown: encoded as unknown")
    return (age, sex), notes
