"""A trained run folder loaded for inference (predict, evaluate, explain, export, serve).

``load_run(RUN)`` reads config.json and every fold's ``model.safetensors`` + ``fold.json``; the result
scores preprocessed images (uint8 S x S, the run's profile and size) the way training scored its test
patients:

- classification: the mean over the fold models of P(CAC > threshold);
- regression: the mean over the fold models of the predicted log CAC (each model's standardised output
  mapped back with its fold's training mean/std), returned as predicted CAC.

The decision threshold of the ensemble is the mean of the folds' thresholds, each chosen on its fold's
validation patients (regression: every fold uses the user's threshold + 0.5, i.e. the predicted score
rounded to an integer Agatston score is above the threshold). A score is positive when it is >= that.

When the run has a final model (``RUN/final/``, written by ``cacxr fit-final`` or ``cacxr train --final``:
one model trained on every patient, see :mod:`cacxr.final`), ``load_run`` uses it by default, with the
decision threshold recorded in final.json; ``fold="ensemble"`` still loads the fold models and ``fold=K``
one fold. The final model appears in ``LoadedRun.models`` and ``folds`` under the key :data:`FINAL_FOLD`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cacxr.config import TrainConfig, resolve_device
from cacxr.errors import CacxrError
from cacxr.models import CACNet

if TYPE_CHECKING:
    from cacxr.clinical import ClinicalEncoder

__all__ = ["LoadedRun", "load_run", "FINAL_FOLD"]

# Key of the final model (trained on every patient) in ``LoadedRun.models`` and ``LoadedRun.folds``.
FINAL_FOLD = -1


@dataclass
class LoadedRun:
    """The models of a run and its decision rule.

    Attributes:
        run_dir: the run folder.
        config: the run's settings.
        models: ``(fold, model in eval mode)`` pairs (``FINAL_FOLD`` for the final model).
        folds: fold -> its fold.json record (the final model: its final.json).
        device: where the models run.
        batch_size: images per forward pass in :meth:`score`.
    """

    run_dir: Path
    config: TrainConfig
    models: list[tuple[int, CACNet]]
    folds: dict[int, dict[str, Any]]
    device: torch.device
    batch_size: int = 16

    @property
    def is_final(self) -> bool:
        """True when the final model (trained on every patient) is loaded rather than fold models."""
        return [k for k, _ in self.models] == [FINAL_FOLD]

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
    def decision_threshold(self) -> float:
        """Mean of the loaded folds' decision thresholds (chosen on validation patients)."""
        return float(np.mean([self.folds[k]["decision_threshold"] for k, _ in self.models]))

    @property
    def clinical_features(self) -> list[str]:
        """The clinical covariates the models take (``--clinical``; empty for image-only runs)."""
        return list(self.config.clinical or [])

    def clinical_encoder(self, fold: int) -> ClinicalEncoder | None:
        """The covariate encoder of ``fold`` (its training statistics), None for an image-only run.

        Raises:
            CacxrError: a model that takes covariates but whose record has no encoder.
        """
        from cacxr.clinical import ClinicalEncoder

        record = self.folds[fold].get("clinical_encoder")
        if record:
            return ClinicalEncoder.from_dict(record)
        if any(k == fold and model.n_clinical for k, model in self.models):
            raise CacxrError(f"{self.run_dir}: the model of fold {fold} takes clinical covariates but its record "
                             "has no clinical_encoder")
        return None

    def score(
        self,
        images: np.ndarray | torch.Tensor,
        clinical: Sequence[tuple[float | None, str | None]] | None = None,
    ) -> np.ndarray:
        """Scores of preprocessed images.

        Args:
            images: uint8 array (N, S, S) (or one (S, S) image) from the image store or
                ``preprocess.preprocess_image``; or a float tensor (N, 1, S, S) already normalised
                (``preprocess.normalise``).
            clinical: ``(age, sex)`` per image for a run trained with ``--clinical`` (e.g. the DICOM
                header's PatientAge/PatientSex); None, or NaN/"" values, use each fold's training median
                age and the unknown sex level. Ignored by image-only runs.

        Returns:
            float64 array (N,): probability of CAC > threshold, or predicted CAC (regression).

        Raises:
            CacxrError: images of another size or type.
        """
        from cacxr.metrics import target_to_cac
        from cacxr.preprocess import normalise

        size = self.image_size
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            if images.ndim != 4 or tuple(images.shape[1:]) != (1, size, size):
                raise CacxrError(f"expected normalised images (N, 1, {size}, {size}), got {tuple(images.shape)}")
            batch = images.float()
        else:
            array = np.array(images)  # a writable copy (store images are read-only memory maps)
            array = array[None] if array.ndim == 2 else array
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != (size, size):
                raise CacxrError(
                    f"expected uint8 images (N, {size}, {size}) preprocessed with profile {self.profile!r}, "
                    f"got {array.dtype} {array.shape}"
                )
            batch = normalise(array, self.profile)[:, None]
        stats = self.target_stats
        per_model = []
        with torch.inference_mode():
            for fold, model in self.models:
                covariates = self.clinical_inputs(fold, clinical, len(batch))
                outs = [
                    model(
                        batch[i : i + self.batch_size].to(self.device),
                        *(() if covariates is None else (covariates[i : i + self.batch_size].to(self.device),)),
                    ).float().cpu()
                    for i in range(0, len(batch), self.batch_size)
                ]
                out = torch.cat(outs) if outs else torch.empty((0, model.n_outputs))
                if self.task == "classification":
                    per_model.append(torch.softmax(out, dim=1)[:, 1].numpy().astype(np.float64))
                else:
                    mean, std = stats[fold]
                    per_model.append(out[:, 0].numpy().astype(np.float64) * std + mean)
        mean_score = np.mean(per_model, axis=0)
        return target_to_cac(mean_score) if self.task == "regression" else mean_score

    def clinical_inputs(
        self, fold: int, clinical: Sequence[tuple[float | None, str | None]] | None, n: int
    ) -> torch.Tensor | None:
        """The encoded covariates of ``n`` images for ``fold``'s model (None for an image-only run).

        Args:
            fold: a loaded fold.
            clinical: ``(age, sex)`` per image, or None (all unknown: training median age, unknown sex).
            n: number of images.

        Raises:
            CacxrError: ``clinical`` of another length.
        """
        encoder = self.clinical_encoder(fold)
        if encoder is None:
            return None
        values = list(clinical) if clinical is not None else [(None, None)] * n
        if len(values) != n:
            raise CacxrError(f"{len(values)} clinical (age, sex) pairs for {n} images")
        return torch.from_numpy(encoder.transform([a for a, _ in values], [s for _, s in values]))

    def predict_label(self, scores: np.ndarray) -> np.ndarray:
        """1 where a score is >= :attr:`decision_threshold`, else 0."""
        return (np.asarray(scores, dtype=np.float64) >= self.decision_threshold).astype(np.int64)


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
    from cacxr.training.runfiles import FOLD_RECORD, MODEL_FILE, fold_dir
    from cacxr.weights import load_saved_model

    root = Path(run_dir)
    config_path = root / "config.json"
    try:
        config = TrainConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise CacxrError(f"{root}: not a trained run folder (no config.json)") from None
    except (OSError, ValueError, TypeError) as exc:
        raise CacxrError(f"{config_path}: unreadable ({exc})") from None
    from cacxr.final import FINAL_DIR, FINAL_RECORD, has_final

    if isinstance(fold, str) and fold.strip().lstrip("-").isdigit():
        fold = int(fold)
    if fold is None:
        fold = "final" if has_final(root) else "ensemble"
    if fold == "final":
        if not has_final(root):
            raise CacxrError(
                f"{root}: no final model (no {FINAL_DIR}/{FINAL_RECORD} with its weights); "
                f"train it with `cacxr fit-final {root}`, or use the fold ensemble"
            )
        return _load_final(root / FINAL_DIR, config, resolve_device(device))
    if fold == "ensemble":
        fold = None
    elif not isinstance(fold, int):
        raise CacxrError(f"fold must be a fold number, 'final' or 'ensemble' (got {fold!r})")
    if fold is not None and not 0 <= fold < config.kfold:
        raise CacxrError(f"{root}: fold {fold} does not exist (the run has folds 0..{config.kfold - 1})")
    wanted = [fold] if fold is not None else list(range(config.kfold))
    missing = [
        str(fold_dir(root, k) / name)
        for k in wanted
        for name in (FOLD_RECORD, MODEL_FILE)
        if not (fold_dir(root, k) / name).is_file()
    ]
    if missing:
        hint = " (a run trained with --no-save has no models)" if any(m.endswith(MODEL_FILE) for m in missing) else ""
        raise CacxrError(f"{root}: incomplete run, missing {', '.join(missing)}{hint}")
    target = resolve_device(device)
    models, records = [], {}
    for k in wanted:
        directory = fold_dir(root, k)
        try:
            records[k] = json.loads((directory / FOLD_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CacxrError(f"{directory / FOLD_RECORD}: unreadable ({exc})") from None
        model, _ = load_saved_model(directory / MODEL_FILE)
        if model.arch != config.arch:
            raise CacxrError(f"{directory / MODEL_FILE}: a {model.arch} model, but the run trained {config.arch}")
        models.append((k, model.to(target).eval()))
    return LoadedRun(run_dir=root, config=config, models=models, folds=records, device=target)


def _load_final(directory: Path, config: TrainConfig, target: torch.device) -> LoadedRun:
    """The final model of a run (``RUN/final/``) as a one-model run."""
    from cacxr.final import FINAL_RECORD, MODEL_FILE
    from cacxr.weights import load_saved_model

    try:
        record = json.loads((directory / FINAL_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CacxrError(f"{directory / FINAL_RECORD}: unreadable ({exc})") from None
    model, _ = load_saved_model(directory / MODEL_FILE)
    if model.arch != config.arch:
        raise CacxrError(f"{directory / MODEL_FILE}: a {model.arch} model, but the run trained {config.arch}")
    return LoadedRun(
        run_dir=directory.parent,
        config=config,
        models=[(FINAL_FOLD, model.to(target).eval())],
        folds={FINAL_FOLD: record},
        device=target,
    )
