"""A trained run folder loaded for inference: its models, settings and decision threshold.

``load_run(RUN)`` reads config.json and the models of the run (through :mod:`cacxr.runs.folder`); the result
scores preprocessed images (uint8 S x S, the run's profile and size) plus optional covariates (age, sex)
through :class:`cacxr.model.scoring.RunScorer` (the scoring path), the way training scored its test patients:

- classification: the mean over the loaded models of the calibrated P(CAC > threshold);
- regression: the mean over the models of the predicted log CAC, returned as predicted CAC, plus the mean
  calibrated P(CAC > threshold) (:class:`RunScores`).

Predict, evaluate, explain, export and serve all call :meth:`LoadedRun.scores` (or use
:attr:`LoadedRun.scorer`, the same computation as a torch module).

Decision threshold: ``metrics.json["operating_point"]["threshold"]`` when the run has one (a calibrated
probability chosen on every fold's out-of-fold test predictions, for new patients; it then applies to the
probability of every task);
otherwise the mean of the loaded models' thresholds (each fold's chosen on its validation patients;
regression: the user's threshold + 0.5 on the predicted CAC, i.e. the predicted score rounded to an integer
Agatston score is above the threshold). A score is positive when it is >= that.

When the run has a final model (``RUN/final/``, written by ``cacxr fit-final`` or ``cacxr train --final``:
one model trained on the run's patients, see :mod:`cacxr.training.final`), ``load_run`` uses it by default, with the
decision threshold recorded in final.json; ``fold="ensemble"`` still loads the fold models and ``fold=K``
one fold. The final model appears in ``LoadedRun.models`` and ``folds`` under the key :data:`FINAL_FOLD`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cacxr.config import TrainConfig, resolve_device
from cacxr.core import CacxrError, predicted_label
from cacxr.model import CACNet, ModelScore, RunScorer, covariate_tensors
from cacxr.runs import FINAL_FOLD
from cacxr.runs import folder as runfolder

if TYPE_CHECKING:
    from cacxr.model import ClinicalEncoder

__all__ = ["LoadedRun", "RunScores", "load_run", "FINAL_FOLD"]


@dataclass
class RunScores:
    """The scores of a batch of images.

    Attributes:
        score: probability of CAC > threshold (classification) or predicted CAC (regression).
        probability: the calibrated probability of CAC > threshold (both tasks).
        log_cac: the predicted log CAC, unclipped (regression; None for classification).
    """

    score: np.ndarray
    probability: np.ndarray
    log_cac: np.ndarray | None = None


@dataclass
class LoadedRun:
    """The models of a run, their scoring and its decision rule.

    Attributes:
        run_dir: the run folder.
        config: the run's settings.
        models: ``(fold, model in eval mode)`` pairs (``FINAL_FOLD`` for the final model).
        folds: fold -> its fold.json record (the final model: its final.json).
        device: where the models run.
        batch_size: images per forward pass in :meth:`scores`.
        operating_threshold: the run's operating-point threshold (metrics.json), or None.
    """

    run_dir: Path
    config: TrainConfig
    models: list[tuple[int, CACNet]]
    folds: dict[int, dict[str, Any]]
    device: torch.device
    batch_size: int = 16
    operating_threshold: float | None = None
    scorer: RunScorer = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            members = [ModelScore(model, self.task, self.folds[k], self.threshold) for k, model in self.models]
        except CacxrError as exc:
            raise CacxrError(f"{self.run_dir}: {exc}") from None
        self.scorer = RunScorer(members, self.task).to(self.device).eval()

    @property
    def is_final(self) -> bool:
        """True when the final model (trained on every patient) is loaded rather than fold models."""
        return [k for k, _ in self.models] == [FINAL_FOLD]

    @property
    def model_name(self) -> str:
        """Which model scores: ``final``, ``ensemble of folds 0, 1, ...`` or ``fold K``."""
        if self.is_final:
            return "final"
        if len(self.models) == 1:
            return f"fold {self.models[0][0]}"
        return "ensemble of folds " + ", ".join(str(k) for k, _ in self.models)

    @property
    def task(self) -> str:
        """``classification`` or ``regression``."""
        return self.config.task

    @property
    def threshold(self) -> float:
        """Positive means CAC > threshold."""
        return float(self.config.threshold)

    @property
    def profile(self) -> str:
        """Preprocessing profile of the images the models expect."""
        return self.config.profile

    @property
    def image_size(self) -> int:
        """Side S of the images the models expect."""
        return int(self.config.image_size)

    @property
    def target_stats(self) -> dict[int, tuple[float, float]]:
        """Fold -> (mean, std) of the training log CAC ((0, 1) for classification)."""
        return {
            k: (float(r.get("target_mean") or 0.0), float(r.get("target_std") or 1.0)) for k, r in self.folds.items()
        }

    @property
    def decision_on(self) -> str:
        """What the decision threshold applies to: ``probability``, or ``score`` (regression's predicted CAC)."""
        return "score" if self.task == "regression" and self.operating_threshold is None else "probability"

    @property
    def decision_threshold(self) -> float:
        """The operating-point threshold, else the mean of the loaded models' decision thresholds."""
        if self.operating_threshold is not None:
            return float(self.operating_threshold)
        return float(np.mean([self.folds[k]["decision_threshold"] for k, _ in self.models]))

    @property
    def clinical_features(self) -> list[str]:
        """The clinical covariates the models take (``--clinical``; empty for image-only runs)."""
        return list(self.config.clinical or [])

    def clinical_encoder(self, fold: int) -> ClinicalEncoder | None:
        """The covariate encoder of ``fold`` (its training statistics), None for an image-only run."""
        from cacxr.model import ClinicalEncoder

        record = self.folds[fold].get("clinical_encoder")
        return ClinicalEncoder.from_dict(record) if record else None

    def normalised(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The model input (N, 1, S, S) float32 of uint8 images (or of an already normalised float batch).

        Raises:
            CacxrError: images of another size or type.
        """
        from cacxr.pixels import normalise

        size = self.image_size
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            if images.ndim != 4 or tuple(images.shape[1:]) != (1, size, size):
                raise CacxrError(f"expected normalised images (N, 1, {size}, {size}), got {tuple(images.shape)}")
            return images.float()
        array = np.array(images)  # a writable copy (store images are read-only memory maps)
        array = array[None] if array.ndim == 2 else array
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != (size, size):
            raise CacxrError(
                f"expected uint8 images (N, {size}, {size}) preprocessed with profile {self.profile!r}, "
                f"got {array.dtype} {array.shape}"
            )
        return normalise(array, self.profile)[:, None]

    def scores(
        self,
        images: np.ndarray | torch.Tensor,
        clinical: Sequence[tuple[float | None, str | None]] | None = None,
    ) -> RunScores:
        """Scores of preprocessed images: the one place where a run turns images into scores.

        Args:
            images: uint8 array (N, S, S) (or one (S, S) image) from the image store or
                ``preprocess.preprocess_image``; or a float tensor (N, 1, S, S) already normalised
                (``preprocess.normalise``).
            clinical: ``(age, sex)`` per image for a run trained with ``--clinical`` (e.g. the DICOM
                header's PatientAge/PatientSex); None, or NaN/"" values, use each model's training median
                age and the unknown sex level. Ignored by image-only runs.

        Returns:
            The scores (:class:`RunScores`).

        Raises:
            CacxrError: images of another size or type, or ``clinical`` of another length.
        """
        from cacxr.core import target_to_cac

        batch = self.normalised(images)
        ages, sexes = covariate_tensors(clinical, len(batch))
        probs, logs = [], []
        with torch.inference_mode():
            for i in range(0, len(batch), self.batch_size):
                part = slice(i, i + self.batch_size)
                probability, log_cac = self.scorer.outputs(
                    batch[part].to(self.device), ages[part].to(self.device), sexes[part].to(self.device)
                )
                probs.append(probability.double().cpu().numpy())
                if log_cac is not None:
                    logs.append(log_cac.double().cpu().numpy())
        probability = np.concatenate(probs) if probs else np.zeros(0)
        if self.task == "regression":
            log_cac = np.concatenate(logs) if logs else np.zeros(0)
            return RunScores(target_to_cac(log_cac), probability, log_cac)
        return RunScores(probability, probability)

    def score(
        self,
        images: np.ndarray | torch.Tensor,
        clinical: Sequence[tuple[float | None, str | None]] | None = None,
    ) -> np.ndarray:
        """``scores(images, clinical).score``: the probability, or the predicted CAC (regression)."""
        return self.scores(images, clinical).score

    def predict_label(self, scores: RunScores | np.ndarray) -> np.ndarray:
        """1 where the decision value is >= :attr:`decision_threshold`, else 0.

        Args:
            scores: :class:`RunScores`, or an array on the :attr:`decision_on` scale.
        """
        if isinstance(scores, RunScores):
            scores = scores.probability if self.decision_on == "probability" else scores.score
        return predicted_label(scores, self.decision_threshold)


def load_run(
    run_dir: str | os.PathLike[str], fold: int | str | None = None, device: str = "cpu"
) -> LoadedRun:
    """Load a trained run for inference.

    Args:
        run_dir: the run folder (``cacxr train --out``).
        fold: ``None``: the final model when the run has one (``RUN/final/``), else every fold (the
            ensemble); ``"final"``: the final model; ``"ensemble"``: every fold; ``K``: fold K only.
        device: ``cpu``, ``cuda`` or ``auto``.

    Returns:
        The loaded run, models in eval mode.

    Raises:
        CacxrError: not a run folder, an unknown fold, or missing fold files (all of them are named).
    """
    from cacxr.model import load_saved_model

    root = Path(run_dir)
    try:
        config = TrainConfig.from_dict(runfolder.read_config(root))
    except (TypeError, ValueError) as exc:
        raise CacxrError(f"{root / runfolder.CONFIG_FILE}: unreadable ({exc})") from None
    if isinstance(fold, str) and fold.strip().lstrip("-").isdigit():
        fold = int(fold)
    if fold is None:
        fold = "final" if runfolder.has_final(root) else "ensemble"
    if fold in ("final", FINAL_FOLD):
        if not runfolder.has_final(root):
            raise CacxrError(
                f"{root}: no final model (no {runfolder.record_path(root, FINAL_FOLD)} with its weights); "
                f"train it with `cacxr fit-final {root}`, or use the fold ensemble"
            )
        wanted = [FINAL_FOLD]
    elif fold == "ensemble":
        wanted = list(range(config.kfold))
    elif not isinstance(fold, int):
        raise CacxrError(f"fold must be a fold number, 'final' or 'ensemble' (got {fold!r})")
    elif not 0 <= fold < config.kfold:
        raise CacxrError(f"{root}: fold {fold} does not exist (the run has folds 0..{config.kfold - 1})")
    else:
        wanted = [fold]
    missing = [
        str(path)
        for k in wanted
        for path in (runfolder.record_path(root, k), runfolder.model_path(root, k))
        if not path.is_file()
    ]
    if missing:
        hint = " (a run trained with --no-save has no models)" if any(
            m.endswith(runfolder.MODEL_FILE) for m in missing) else ""  # fmt: skip
        raise CacxrError(f"{root}: incomplete run, missing {', '.join(missing)}{hint}")
    target = resolve_device(device)
    models, records = [], {}
    for k in wanted:
        records[k] = runfolder.read_model_record(root, k)
        path = runfolder.model_path(root, k)
        model, _ = load_saved_model(path)
        if model.arch != config.arch:
            raise CacxrError(f"{path}: a {model.arch} model, but the run trained {config.arch}")
        models.append((k, model.to(target).eval()))
    return LoadedRun(
        run_dir=root,
        config=config,
        models=models,
        folds=records,
        device=target,
        operating_threshold=runfolder.decision_threshold_override(root),
    )
