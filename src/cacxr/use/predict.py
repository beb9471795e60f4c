"""Scoring files with a trained run: the rows of ``cacxr predict`` (and serve's answer), their CSV and table.

Each input (found and read by :mod:`cacxr.use.inputs`) is scored by ``LoadedRun.scores`` (the scoring path
of :mod:`cacxr.model.scoring`). Each input gets one :class:`PredictionRow`. Inputs that cannot be read get an ``error`` (the reader's reason
code and detail) and the others are still scored; inputs that can be scored but deserve caution get a
``warning`` (lateral or unknown view, small image, PNG/JPEG without view information). Rows name inputs by
their path only: no DICOM header field that could identify a patient is ever copied.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from cacxr.core import CacxrError, csv_text, write_text
from cacxr.use.inputs import clinical_values, expand_inputs, prepare_input

if TYPE_CHECKING:
    from cacxr.use.loaded_run import LoadedRun, RunScores

__all__ = [
    "PredictionRow",
    "PREDICTION_COLUMNS",
    "score_paths",
    "score_image",
    "score_module",
    "write_predictions_csv",
    "format_table",
]

logger = logging.getLogger(__name__)


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
        error: why the input could not be scored ("" when it was): a lateral or a non-radiograph is
            refused (``lateral_view`` / ``not_radiograph``), as ingest excludes it.
        gate: the view gate's verdict on the pixels, e.g. ``frontal (p 0.97)`` ("" when not decoded).
    """

    input: str
    probability: float | None = None
    label: int | None = None
    predicted_cac: float | None = None
    agatston_band: str = ""
    warning: str = ""
    error: str = ""
    gate: str = ""

    @property
    def ok(self) -> bool:
        """True when the input was scored."""
        return not self.error and self.label is not None


PREDICTION_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(PredictionRow))


def _fill(run: LoadedRun, row: PredictionRow, scores: RunScores, index: int) -> None:
    """Write image ``index`` of run scores into ``row`` (probability; regression: CAC, band) with its label."""
    from cacxr.core import AGATSTON_BANDS, agatston_band

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
                image, meta, row.gate, notes, error = prepare_input(run, row.input)
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
    from cacxr.pixels import per_level_for, preprocess_image

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
    from cacxr.model import covariate_tensors

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
    write_text(path, csv_text(PREDICTION_COLUMNS, ({k: _cell(v) for k, v in asdict(row).items()} for row in rows)))


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
