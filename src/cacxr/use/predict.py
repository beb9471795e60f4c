"""From a file to a score: the one inference path shared by ``predict``, ``explain`` and ``serve``.

A trained run (``cacxr.use.loaded_run.load_run``) scores images that go through exactly the steps of training:
``imaging.read_image`` (float32 [0, 1], bone bright) -> ``preprocess.preprocess_read`` with the run's
profile and image size (uint8 S x S; the equalisation follows the file's grey-level mapping, as in the
image store) -> ``LoadedRun.score`` (normalisation and the fold models, averaged
as an ensemble unless one fold was chosen).

Inputs are files or folders. Folders are searched recursively for DICOM files (``*.dcm``, ``*.dicom`` and
extension-less files whose content parses as DICOM) and PNG/JPEG images. A file given explicitly is always
tried, whatever its name, so that a bad file gets a row with its error instead of vanishing.

Each input gets one :class:`PredictionRow`. Inputs that cannot be read get an ``error`` (the reader's reason
code and detail) and the others are still scored; inputs that can be scored but deserve caution get a
``warning`` (lateral or unknown view, small image, PNG/JPEG without view information). Rows name inputs by
their path only: no DICOM header field that could identify a patient is ever copied.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from cacxr.core.atomic import write_text
from cacxr.core.errors import CacxrError
from cacxr.core.safepaths import file_kind

if TYPE_CHECKING:
    from cacxr.use.loaded_run import LoadedRun, RunScores

__all__ = [
    "PredictionRow",
    "PREDICTION_COLUMNS",
    "SMALL_IMAGE_PX",
    "expand_inputs",
    "score_paths",
    "score_image",
    "score_module",
    "load_input",
    "prepare_input",
    "image_warnings",
    "clinical_values",
    "write_predictions_csv",
    "format_table",
]

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
# Below this many pixels on the short side a radiograph has far less detail than the training images.
SMALL_IMAGE_PX = 512


@dataclass
class PredictionRow:
    """The result for one input file.

    Attributes:
        input: the file's path (the only identifier written: never a DICOM header field).
        probability: the calibrated P(CAC > threshold), the mean over the run's models (both tasks).
        label: 1 when the score is at or above the run's decision threshold, else 0.
        predicted_cac: the predicted CAC score (regression runs).
        agatston_band: the Agatston band of ``predicted_cac`` (regression runs).
        warning: reasons to be careful with this score, separated by ``"; "`` ("" when none).
        error: why the input could not be scored ("" when it was).
    """

    input: str
    probability: float | None = None
    label: int | None = None
    predicted_cac: float | None = None
    agatston_band: str = ""
    warning: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        """True when the input was scored."""
        return not self.error and self.label is not None


PREDICTION_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(PredictionRow))


def _looks_like_dicom(path: Path) -> bool:
    """Whether an extension-less file is DICOM: a part-10 preamble, or a forced parse with image tags."""
    import pydicom
    from pydicom.misc import is_dicom

    try:
        if is_dicom(path):
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


def image_warnings(meta: Any) -> list[str]:
    """Reasons to be careful with a readable image (view and size), from its ``ImageMeta``.

    Args:
        meta: the ``cacxr.imaging.ImageMeta`` of a decoded file.

    Returns:
        Short notes ("lateral view ...", "unknown view ...", "small image ...", "PNG: view unknown ...").
    """
    from cacxr.imaging import is_frontal, is_lateral

    notes: list[str] = []
    if meta.source_format != "dicom":
        notes.append(f"{meta.source_format.upper()}: view unknown (assumed frontal)")
    elif is_lateral(meta):
        notes.append("lateral view (the model was trained on frontal radiographs)")
    elif not is_frontal(meta):
        if meta.view:
            view = f"ViewPosition {meta.view!r}"
        else:
            view = "no ViewPosition" + (
                "; the description says frontal" if meta.view_hint == "frontal" else ""
            )
        notes.append(f"unknown view ({view}; assumed frontal)")
    if 0 < min(meta.rows, meta.cols) < SMALL_IMAGE_PX:
        notes.append(f"small image ({meta.rows}x{meta.cols} px, under {SMALL_IMAGE_PX} px)")
    return notes


def load_input(run: LoadedRun, path: str | os.PathLike[str]) -> tuple[np.ndarray | None, list[str], str]:
    """Read and preprocess one file for ``run``.

    Args:
        run: the loaded run (its profile and image size are used).
        path: a DICOM, PNG or JPEG file.

    Returns:
        ``(image, warnings, error)``: the uint8 (S, S) model input or ``None``, the warnings, and the
        error ("" when the image is usable).
    """
    image, _, notes, error = prepare_input(run, path)
    return image, notes, error


def prepare_input(run: LoadedRun, path: str | os.PathLike[str]) -> tuple[np.ndarray | None, Any, list[str], str]:
    """:func:`load_input` plus the file's ``ImageMeta`` (its age and sex feed ``--clinical`` runs).

    Returns:
        ``(image, meta, warnings, error)``.
    """
    from cacxr.imaging import read_image
    from cacxr.pixels.profiles import preprocess_read

    try:
        result = read_image(path)
        if not result.ok or result.image is None:
            return None, None, [], f"{result.reason}: {result.detail}" if result.detail else result.reason
        image = preprocess_read(result, run.profile, run.image_size)
    except Exception as exc:  # a batch goes on whatever one file does; the reason is kept in the row
        logger.debug("cannot prepare %s", path, exc_info=True)
        return None, None, [], f"unreadable: {path}: {type(exc).__name__}: {exc}"
    return image, result.meta, image_warnings(result.meta), ""


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


def _fill(run: LoadedRun, row: PredictionRow, scores: RunScores, index: int) -> None:
    """Write image ``index`` of run scores into ``row`` (probability; regression: CAC, band) with its label."""
    from cacxr.core.task import AGATSTON_BANDS, agatston_band

    row.label = int(run.predict_label(scores)[index])
    row.probability = float(scores.probability[index])
    if run.task == "regression":
        row.predicted_cac = float(scores.score[index])
        row.agatston_band = AGATSTON_BANDS[int(np.asarray(agatston_band([row.predicted_cac]))[0])]


def score_paths(
    run: LoadedRun,
    inputs: Sequence[str | os.PathLike[str]],
    batch_size: int = 16,
    progress: bool = True,
) -> list[PredictionRow]:
    """Score files and folders with a trained run.

    Args:
        run: a run from ``cacxr.use.loaded_run.load_run`` (one fold, or the ensemble of its folds).
        inputs: files and folders (see :func:`expand_inputs`).
        batch_size: images scored together (memory: batch_size x S x S).
        progress: show a progress bar.

    Returns:
        One row per file found, in input order; unreadable inputs have ``error`` set.

    Raises:
        CacxrError: ``batch_size`` is not positive.
    """
    if batch_size < 1:
        raise CacxrError(f"--batch-size must be at least 1 (got {batch_size})")
    rows = [PredictionRow(input=path, error=error) for path, error in expand_inputs(inputs)]
    todo = [row for row in rows if not row.error]
    with tqdm(total=len(todo), unit="image", desc="predict", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            ready: list[tuple[PredictionRow, np.ndarray]] = []
            covariates: list[tuple[float, str]] = []
            for row in todo[start : start + batch_size]:
                image, meta, notes, error = prepare_input(run, row.input)
                if image is not None:
                    values, unknown = clinical_values(run, meta)
                    notes = [*notes, *unknown]
                    covariates.append(values)
                    ready.append((row, image))
                row.warning, row.error = "; ".join(notes), error
                bar.update()
            if ready:
                scores = run.scores(np.stack([image for _, image in ready]), clinical=covariates)
                for index, (row, _) in enumerate(ready):
                    _fill(run, row, scores, index)
    return rows


def score_image(run: LoadedRun, image: np.ndarray, meta: Any = None) -> dict[str, Any]:
    """Score one decoded radiograph (float32 [0, 1], bone bright, as ``imaging.read_image`` gives).

    Args:
        run: the loaded run.
        image: a 2-D float array in [0, 1].
        meta: the image's ``ImageMeta``: its ``voi`` picks the equalisation exactly as
            ``preprocess.preprocess_read`` does, its age and sex feed a ``--clinical`` run
            (None: unknown, 256-bin equalisation).

    Returns:
        ``{"task", "threshold", "decision_threshold", "probability", "label", "predicted_cac",
        "agatston_band"}`` (``probability``, the calibrated P(CAC > threshold), for both tasks; the last two
        for regression runs, else ``None``/""); a ``--clinical`` run adds ``warning`` (unknown age or sex,
        "" when none).

    Raises:
        CacxrError: ``image`` is not a 2-D array.
    """
    from cacxr.pixels.profiles import per_level_for, preprocess_image

    array = np.asarray(image)
    if array.ndim != 2:
        raise CacxrError(f"expected a 2-D grey image, got an array of shape {array.shape}")
    prepared = preprocess_image(
        array.astype(np.float32, copy=False), run.profile, run.image_size, per_level=per_level_for(meta)
    )
    row = PredictionRow(input="")
    values, notes = clinical_values(run, meta)
    _fill(run, row, run.scores(prepared[None], clinical=[values]), 0)
    extra = {"warning": "; ".join(notes)} if run.clinical_features else {}
    return {
        **extra,
        "task": run.task,
        "threshold": float(run.threshold),
        "decision_threshold": float(run.decision_threshold),
        "probability": row.probability,
        "label": row.label,
        "predicted_cac": row.predicted_cac,
        "agatston_band": row.agatston_band,
    }


def score_module(run: LoadedRun, clinical: tuple[float | None, str | None] | None = None) -> torch.nn.Module:
    """The run's score as one ``torch.nn.Module`` with the covariates held fixed (for attributions).

    It takes a normalised float batch (N, 1, S, S) (``preprocess.normalise`` of the uint8 images) and
    returns the attributed score, shape (N,): the mean calibrated probability of CAC > threshold
    (classification) or the mean predicted log CAC (regression): ``run.scorer`` itself, so the same
    numbers as :meth:`cacxr.use.loaded_run.LoadedRun.scores`.

    Args:
        run: the loaded run.
        clinical: ``(age, sex)`` of the image for a ``--clinical`` run (None: unknown, i.e. the training
            median age and the unknown sex level); ignored by image-only runs.

    Returns:
        A module in eval mode sharing the run's model weights.
    """
    from cacxr.model.scoring import covariate_tensors

    age, sex = covariate_tensors([clinical or (None, None)], 1)
    return _FixedCovariates(run.scorer, age.to(run.device), sex.to(run.device)).eval()


class _FixedCovariates(torch.nn.Module):
    """A run scorer with one image's covariates repeated over the batch (captum passes images only)."""

    def __init__(self, scorer: torch.nn.Module, age: torch.Tensor, sex: torch.Tensor) -> None:
        super().__init__()
        self.scorer = scorer
        self.register_buffer("age", age)
        self.register_buffer("sex", sex)

    @property
    def n_members(self) -> int:
        return len(self.scorer.members)

    def member(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """The attributed score of one model (for Grad-CAM, which averages the models' maps)."""
        n = x.shape[0]
        return self.scorer.member_score(index, x, self.age.expand(n), self.sex.expand(n))

    def member_model(self, index: int) -> torch.nn.Module:
        return self.scorer.members[index].model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return self.scorer(x, self.age.expand(n), self.sex.expand(n))


def write_predictions_csv(rows: Sequence[PredictionRow], path: str | os.PathLike[str]) -> None:
    """Write rows as CSV (columns :data:`PREDICTION_COLUMNS`) atomically; missing values are empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(PREDICTION_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(value) for key, value in asdict(row).items()})
    write_text(path, buf.getvalue())


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_table(rows: Sequence[PredictionRow]) -> str:
    """A plain-text table of the rows for the terminal (empty columns left out)."""
    columns = [c for c in PREDICTION_COLUMNS if c == "input" or any(_cell(getattr(r, c)) for r in rows)]
    cells = [[_cell(getattr(row, c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    return "\n".join(lines)
