"""The one scoring path: model outputs -> raw scores -> calibrated probabilities -> a run's scores.

Every score cacxr reports goes through this module: the training loop's validation and test scoring
(:func:`raw_scores` + :mod:`cacxr.model.calibration`), and a loaded run (``cacxr.use.loaded_run.LoadedRun.score``) that
predict, evaluate, explain, export and serve all use, through :class:`RunScorer`.

Per model (a fold's, or the final model):

- raw score: classification: the log-odds ``logit[1] - logit[0]``; regression: the predicted log CAC
  (the standardised output mapped back with the training mean/std);
- probability: the model's calibration map (fold.json / final.json ``calibration``) of its raw score:
  the calibrated P(CAC > threshold).

A run (one model or the fold ensemble) reports the mean over its models of the calibrated probability;
regression also reports the mean predicted log CAC and its CAC (``exp(log CAC) - 0.001``, at least 0).

Covariates (``--clinical``) enter as raw age (years; NaN: unknown) and sex codes (:data:`SEX_CODES`) and
are encoded inside :class:`RunScorer` with each model's own training statistics, so that an exported
module takes age and sex as inputs exactly as ``predict`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from cacxr.core import CacxrError
from cacxr.model.calibration import CalibrationModule, identity_calibration, none_offset

__all__ = ["SEX_CODES", "sex_code", "raw_scores", "covariate_tensors", "ClinicalInputs", "ModelScore", "RunScorer"]

# Sex as the integer input of a scorer: the index of its level in cacxr.model.covariates.SEX_LEVELS (M, F, unknown).
SEX_CODES = {"M": 0, "F": 1}
_UNKNOWN_SEX = 2


def sex_code(sex: str | None) -> int:
    """The scorer's code of a sex value: 0 ``M``, 1 ``F``, 2 anything else (unknown)."""
    return SEX_CODES.get(str(sex or "").strip().upper(), _UNKNOWN_SEX)


def raw_scores(task: str, out: torch.Tensor, target_mean: float = 0.0, target_std: float = 1.0) -> torch.Tensor:
    """A model's raw score from its output: log-odds (classification) or predicted log CAC (regression).

    Args:
        task: ``classification`` or ``regression``.
        out: model outputs (N, 2) or (N, 1).
        target_mean: regression: training mean of the log CAC.
        target_std: regression: its standard deviation.

    Returns:
        Tensor (N,), differentiable.
    """
    if task == "classification":
        return out[:, 1] - out[:, 0]
    return out[:, 0] * target_std + target_mean


class ClinicalInputs(torch.nn.Module):
    """``cacxr.model.covariates.ClinicalEncoder`` in torch: raw age and sex codes -> the model's covariates.

    Args:
        record: the encoder's ``to_dict()`` (fold.json / final.json ``clinical_encoder``).
    """

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__()
        self.features = tuple(record.get("features") or ())
        median = record.get("age_median")
        self.register_buffer("age_median", torch.tensor(math.nan if median is None else float(median)))
        self.register_buffer("age_mean", torch.tensor(float(record.get("age_mean") or 0.0)))
        self.register_buffer("age_std", torch.tensor(float(record.get("age_std") or 1.0)))
        self.register_buffer("levels", torch.arange(3))

    def forward(self, age: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        blocks = []
        if "age" in self.features:
            age = age.float()
            known = torch.where(torch.isnan(age), self.age_median.expand_as(age), age)
            blocks.append(((known - self.age_mean) / self.age_std)[:, None])
        if "sex" in self.features:
            blocks.append((sex.long()[:, None] == self.levels[None, :]).float())
        return torch.cat(blocks, dim=1)


class ModelScore(torch.nn.Module):
    """One model's raw score and calibrated probability.

    Args:
        model: a ``CACNet`` in eval mode.
        task: ``classification`` or ``regression``.
        record: the model's fold.json / final.json (``target_mean``, ``target_std``, ``calibration``,
            ``clinical_encoder``).
        threshold: positive means CAC > threshold: the ``none`` map of a record without ``calibration``
            (a run trained before calibration existed) centres a regression model's probability there.

    Raises:
        CacxrError: a model that takes covariates without an encoder in its record.
    """

    def __init__(self, model: torch.nn.Module, task: str, record: dict[str, Any], threshold: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.target_mean = float(record.get("target_mean") or 0.0)
        self.target_std = float(record.get("target_std") or 1.0)
        self.calibration = CalibrationModule(
            record.get("calibration") or identity_calibration(none_offset(task, threshold))
        )
        encoder = record.get("clinical_encoder")
        if getattr(model, "n_clinical", 0) and not encoder:
            raise CacxrError("a model that takes clinical covariates has no clinical_encoder in its record")
        self.clinical = ClinicalInputs(encoder) if encoder and getattr(model, "n_clinical", 0) else None

    def forward(self, x: torch.Tensor, age: torch.Tensor, sex: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(raw, probability)`` of a normalised batch (N, 1, S, S), each (N,)."""
        covariates = () if self.clinical is None else (self.clinical(age, sex).to(x.dtype),)
        return self.from_output(self.model(x, *covariates))

    def from_output(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(raw, probability)`` of the model's outputs (the training loop scores its test part with this)."""
        raw = raw_scores(self.task, out.float(), self.target_mean, self.target_std)
        return raw, self.calibration(raw)


class RunScorer(torch.nn.Module):
    """The score of a run's loaded models (one, or the fold ensemble) as one torch module.

    ``forward(x, age, sex)`` returns the attributed score, shape (N,): the mean calibrated probability
    (classification) or the mean predicted log CAC (regression). :meth:`outputs` gives both the mean
    probability and the mean log CAC (None for classification).

    Args:
        members: one :class:`ModelScore` per loaded model.
        task: ``classification`` or ``regression``.
    """

    def __init__(self, members: Sequence[ModelScore], task: str) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.task = task

    @property
    def takes_covariates(self) -> bool:
        """True when any model uses age and sex."""
        return any(m.clinical is not None for m in self.members)

    def outputs(
        self, x: torch.Tensor, age: torch.Tensor | None = None, sex: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(mean probability, mean log CAC or None)`` of a normalised batch; unknown covariates by default."""
        n = x.shape[0]
        age = torch.full((n,), math.nan, device=x.device) if age is None else age
        sex = torch.full((n,), _UNKNOWN_SEX, dtype=torch.long, device=x.device) if sex is None else sex
        pairs = [member(x, age, sex) for member in self.members]
        probability = torch.stack([p for _, p in pairs]).mean(dim=0)
        log_cac = torch.stack([r for r, _ in pairs]).mean(dim=0) if self.task == "regression" else None
        return probability, log_cac

    def member_score(self, index: int, x: torch.Tensor, age: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        """The attributed score of one model (Grad-CAM averages the models' maps)."""
        raw, probability = self.members[index](x, age, sex)
        return raw if self.task == "regression" else probability

    def forward(
        self, x: torch.Tensor, age: torch.Tensor | None = None, sex: torch.Tensor | None = None
    ) -> torch.Tensor:
        probability, log_cac = self.outputs(x, age, sex)
        return log_cac if log_cac is not None else probability


def covariate_tensors(
    clinical: Sequence[tuple[float | None, str | None]] | None, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Age (float, NaN unknown) and sex code tensors of ``n`` images from ``(age, sex)`` pairs.

    Raises:
        CacxrError: ``clinical`` of another length.
    """
    values = list(clinical) if clinical is not None else [(None, None)] * n
    if len(values) != n:
        raise CacxrError(f"{len(values)} clinical (age, sex) pairs for {n} images")
    ages = [math.nan if a is None else float(a) for a, _ in values]
    return torch.tensor(ages, dtype=torch.float32), torch.tensor([sex_code(s) for _, s in values], dtype=torch.long)

