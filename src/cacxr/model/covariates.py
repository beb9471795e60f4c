"""Clinical covariates (age, sex) and their encoding for the model head.

Encoding (:class:`ClinicalEncoder`), fitted on a fold's training patients only:

- ``age`` -> one column, standardised with the training mean and standard deviation; an unknown age
  (NaN) is replaced by the training median first (documented imputation, so that every patient can be
  scored; the baseline reports how many ages were known);
- ``sex`` -> three one-hot columns ``M``, ``F``, ``unknown`` (an empty or unrecognised sex is its own
  level rather than a guess).

``--clinical age,sex`` therefore gives the head 4 covariates beside the image features; the encoder's
statistics are stored in each fold's fold.json (``clinical_encoder``) so that inference applies the same
transform to the values read from a DICOM header. The age + sex baseline built on the same encoding is
:mod:`cacxr.stats.baseline`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cacxr.core import CacxrError

__all__ = [
    "CLINICAL_FEATURES",
    "SEX_LEVELS",
    "ClinicalEncoder",
    "parse_clinical",
    "clinical_width",
    "sex_level",
]

logger = logging.getLogger(__name__)

CLINICAL_FEATURES = ("age", "sex")
SEX_LEVELS = ("M", "F", "unknown")


def parse_clinical(value: str | Sequence[str] | None) -> list[str]:
    """The clinical features of a ``--clinical`` value, in canonical order.

    Args:
        value: ``"age,sex"``, ``"age"``, ``"sex"``, a list of those names, or ``""``/``"none"``/None for none.

    Returns:
        A sub-list of ``["age", "sex"]``.

    Raises:
        CacxrError: an unknown feature name.
    """
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = {str(p).strip().lower() for p in parts} - {"", "none"}
    unknown = sorted(names - set(CLINICAL_FEATURES))
    if unknown:
        raise CacxrError(f"--clinical: unknown feature(s) {', '.join(unknown)}; use age, sex or age,sex")
    return [name for name in CLINICAL_FEATURES if name in names]


def clinical_width(features: Sequence[str]) -> int:
    """Number of encoded columns of ``features`` (age: 1, sex: 3)."""
    return ("age" in features) * 1 + ("sex" in features) * len(SEX_LEVELS)


def _ages(values: Sequence[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def sex_level(value: str | None) -> str:
    text = (value or "").strip().upper()
    return text if text in ("M", "F") else "unknown"


@dataclass(frozen=True)
class ClinicalEncoder:
    """Age standardisation and sex one-hot encoding, with statistics of one training part.

    Attributes:
        features: the encoded features, a sub-list of ``("age", "sex")``.
        age_median: imputed for unknown ages (training median; NaN when no training age was known).
        age_mean: mean of the training ages after imputation.
        age_std: their standard deviation (1 when it is 0).
    """

    features: tuple[str, ...]
    age_median: float = math.nan
    age_mean: float = 0.0
    age_std: float = 1.0

    @classmethod
    def fit(
        cls, features: Sequence[str], ages: Sequence[float | None], sexes: Sequence[str | None]
    ) -> ClinicalEncoder:
        """Statistics of the training patients' covariates.

        Args:
            features: features to encode (see :func:`parse_clinical`).
            ages: ages in years, NaN/None when unknown.
            sexes: ``M``, ``F`` or anything else for unknown (``sexes`` is only used for its length).

        Returns:
            The fitted encoder.

        Raises:
            CacxrError: no features, or age asked for while no training patient has a known age.
        """
        features = tuple(parse_clinical(list(features)))
        if not features:
            raise CacxrError("ClinicalEncoder: no clinical feature to encode")
        if len(ages) != len(sexes):
            raise CacxrError(f"ClinicalEncoder: {len(ages)} ages but {len(sexes)} sexes")
        if "age" not in features:
            return cls(features)
        known = _ages(ages)
        known = known[np.isfinite(known)]
        if len(known) == 0:
            raise CacxrError("--clinical age: no training patient has a known age (labels or DICOM PatientAge)")
        median = float(np.median(known))
        imputed = np.where(np.isfinite(_ages(ages)), _ages(ages), median)
        return cls(features, median, float(imputed.mean()), float(imputed.std()) or 1.0)

    @property
    def columns(self) -> list[str]:
        """Names of the encoded columns, e.g. ``["age_z", "sex_M", "sex_F", "sex_unknown"]``."""
        names = ["age_z"] if "age" in self.features else []
        return names + ([f"sex_{level}" for level in SEX_LEVELS] if "sex" in self.features else [])

    @property
    def width(self) -> int:
        """Number of encoded columns (the model's ``n_clinical``)."""
        return clinical_width(self.features)

    def transform(self, ages: Sequence[float | None], sexes: Sequence[str | None]) -> np.ndarray:
        """Encode covariates; unknown ages get the training median, unknown sexes the ``unknown`` level.

        Args:
            ages: ages in years (NaN/None when unknown).
            sexes: ``M``, ``F``, or anything else for unknown.

        Returns:
            float32 array (n, :attr:`width`).
        """
        if len(ages) != len(sexes):
            raise CacxrError(f"ClinicalEncoder: {len(ages)} ages but {len(sexes)} sexes")
        blocks = []
        if "age" in self.features:
            age = _ages(ages)
            age = np.where(np.isfinite(age), age, self.age_median)
            blocks.append(((age - self.age_mean) / self.age_std)[:, None])
        if "sex" in self.features:
            levels = [sex_level(s) for s in sexes]
            blocks.append(np.array([[lvl == ref for ref in SEX_LEVELS] for lvl in levels], dtype=np.float64))
        return np.hstack(blocks).astype(np.float32) if blocks else np.zeros((len(ages), 0), np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready statistics (stored in fold.json as ``clinical_encoder``)."""
        median = None if math.isnan(self.age_median) else self.age_median
        return {
            "features": list(self.features),
            "columns": self.columns,
            "age_median": median,
            "age_mean": self.age_mean,
            "age_std": self.age_std,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClinicalEncoder:
        """The encoder of :meth:`to_dict` output.

        Raises:
            CacxrError: a record without the needed keys.
        """
        try:
            median = values.get("age_median")
            return cls(
                tuple(parse_clinical(values["features"])),
                math.nan if median is None else float(median),
                float(values["age_mean"]),
                float(values["age_std"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CacxrError(f"not a clinical encoder record ({type(exc).__name__}: {exc})") from None
