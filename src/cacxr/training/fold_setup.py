"""What a fold is built from: its model, its task (targets, loss, raw scores), its covariate encoder, its seeds and the metadata saved with its weights."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from cacxr.config import TrainConfig
from cacxr.core import CacxrError, cac_to_target, true_label
from cacxr.model import (
    CACNet,
    ClinicalEncoder,
    build_model,
    clinical_width,
    load_pretrained,
    none_offset,
    raw_scores,
)
from cacxr.stats import classification_metrics

__all__ = [
    "fold_seed",
    "build_fold_model",
    "model_metadata",
    "calibration_offset",
    "FoldTask",
    "fit_encoder",
]

logger = logging.getLogger(__name__)



def fold_seed(seed: int, *parts: int) -> int:
    """A 31-bit seed derived from the run's seed and e.g. (fold,) or (fold, epoch)."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0] & 0x7FFFFFFF)


def build_fold_model(cfg: TrainConfig) -> CACNet:
    """The model every fold starts from: initialised from ``cfg.seed``, pretrained weights, fine-tuning mode.

    Args:
        cfg: a resolved config.

    Returns:
        The model on the CPU, in training mode.

    Raises:
        CacxrError: unknown architecture, or weights that cannot be loaded (cacxr.model.weights).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.arch, 2 if cfg.task == "classification" else 1, clinical_width(cfg.clinical))
    report = load_pretrained(model, cfg.weights)
    logger.info("%s: %s", cfg.arch, report.summary())
    return model.set_finetune(cfg.finetune)


def model_metadata(cfg: TrainConfig, record: dict[str, Any]) -> dict[str, str]:
    """String metadata stored beside a model's weights (fold or final model: the file then stands on its own).

    Args:
        cfg: the run's settings.
        record: the model's fold.json / final.json content (``fold``, ``decision_threshold``, ...).
    """
    values = {
        "task": cfg.task,
        "fold": record["fold"],
        "threshold": cfg.threshold,
        "decision_threshold": record["decision_threshold"],
        "target_mean": record.get("target_mean"),
        "target_std": record.get("target_std"),
        "profile": cfg.profile,
        "image_size": cfg.image_size,
        "best_epoch": record.get("best_epoch"),
        "epochs": record.get("epochs", record.get("epochs_run")),
        "clinical": ",".join(cfg.clinical),
        "calibration": (record.get("calibration") or {}).get("method", "none"),
    }
    return {k: "" if v is None else str(v) for k, v in values.items()}


def calibration_offset(cfg: TrainConfig) -> float:
    """The raw score where an uncalibrated (``none``) probability is 0.5: 0, or the regression cut's log CAC."""
    return none_offset(cfg.task, cfg.threshold)


class FoldTask:
    """Targets, loss and scores of a task: CE on 0/1 labels, or L1/MSE on the standardised log CAC."""

    def __init__(self, cfg: TrainConfig, cac: dict[str, float], train_ids: list[str]) -> None:
        self.name = cfg.task
        self.threshold = cfg.threshold
        self.loss_name = cfg.loss
        self.cac = cac
        self.mean, self.std = 0.0, 1.0
        if self.name == "regression":
            logs = cac_to_target([cac[i] for i in train_ids])
            # The training part's statistics only: validation and test stay unseen.
            self.mean = float(logs.mean())
            self.std = float(logs.std()) or 1.0

    def labels(self, ids: list[str]) -> np.ndarray:
        return true_label([self.cac[i] for i in ids], self.threshold)

    def targets(self, ids: list[str]) -> np.ndarray:
        if self.name == "classification":
            return self.labels(ids).astype(np.float32)
        return ((cac_to_target([self.cac[i] for i in ids]) - self.mean) / self.std).astype(np.float32)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.name == "classification":
            return F.cross_entropy(out, target.long())
        fn = F.l1_loss if self.loss_name == "mae" else F.mse_loss
        return fn(out[:, 0], target)

    def raw(self, out: torch.Tensor) -> np.ndarray:
        """The raw scores of outputs (cacxr.model.scoring): log-odds, or predicted log CAC."""
        return raw_scores(self.name, out.float(), self.mean, self.std).cpu().numpy().astype(np.float64)

    def val_metric(self, ids: list[str], out: torch.Tensor) -> float | None:
        """Validation AUC (classification) or MAE of log CAC (regression)."""
        if self.name == "classification":
            return classification_metrics(self.labels(ids), self.raw(out))["auc"]
        return float(np.mean(np.abs(self.raw(out) - cac_to_target([self.cac[i] for i in ids]))))

    def selection_key(self, val_loss: float, metric: float | None) -> tuple[float, float]:
        """Larger is better: (AUC, -loss) or (-MAE, -loss); an undefined value counts as the worst."""
        loss = -val_loss if math.isfinite(val_loss) else -math.inf
        if metric is None or not math.isfinite(metric):
            return -math.inf, loss
        return (metric if self.name == "classification" else -metric), loss


def fit_encoder(
    cfg: TrainConfig, train_ids: list[str], covariates: dict[str, tuple[float, str]] | None
) -> ClinicalEncoder | None:
    """The ``--clinical`` encoder fitted on the training patients (None without ``--clinical``)."""
    if not cfg.clinical:
        return None
    if covariates is None:
        raise CacxrError("--clinical needs the patients' age and sex (manifest columns age, sex)")
    values = [covariates.get(pid, (math.nan, "")) for pid in train_ids]
    return ClinicalEncoder.fit(cfg.clinical, [a for a, _ in values], [s for _, s in values])
