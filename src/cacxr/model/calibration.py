"""Calibration maps: a model's raw score -> a calibrated probability of CAC > threshold.

Each fold fits its map on its inner-validation patients at the selected epoch (stored in fold.json as
``calibration``); the final model fits it on its held-out calibration patients (final.json). The raw
score of a model is a real number:

- classification: the log-odds of the positive class (``logit[1] - logit[0]``);
- regression: the predicted log CAC (``log(CAC + 0.001)``), so the map gives P(CAC > T) from it.

Methods (``--calibration``):

- ``platt`` (default): logistic regression of the label on the raw score, with Platt's (1999) smoothed
  targets ``(n+ + 1) / (n+ + 2)`` and ``1 / (n- + 2)`` so that a validation split that the model separates
  perfectly still gives a finite slope; ``p = sigmoid(slope * raw + intercept)``, fitted to convergence by
  Newton's method in float64 (:func:`platt_fit`). A fitted slope <= 0 (validation scores no better than
  chance) falls back to a near-flat increasing map around the smoothed prevalence, steep enough that float32
  scores keep their order.
- ``isotonic``: :class:`sklearn.isotonic.IsotonicRegression` on the raw score, stored as its knots and
  applied by linear interpolation between them (constant beyond the ends).
- ``none``: ``p = sigmoid(raw - offset)``: the softmax probability for classification (offset 0); for
  regression ``offset = log(T + 0.5 + 0.001)``, i.e. p = 0.5 where the predicted CAC rounds above T.

A validation split with a single class cannot be calibrated: the map falls back to ``none`` and says so
(``"note"``). :class:`CalibrationModule` is the same map as a differentiable torch module (used by the
scoring path, explanations and the exported models).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from cacxr.core import CacxrError, cac_to_target

__all__ = [
    "METHODS", "fit_calibration", "apply_calibration", "identity_calibration", "none_offset", "CalibrationModule",
    "platt_fit",
]

METHODS = ("platt", "isotonic", "none")
# The smallest Platt slope: keeps the raw scores' order when the validation split cannot estimate one.
MIN_SLOPE = 1e-6
# The fallback map spreads the validation scores' range over this much probability around the prevalence:
# near-flat, yet steep enough that float32 scores (the scoring path's dtype) keep distinct probabilities
# (a slope of 1e-6 gave float32 ties between scores up to ~0.15 apart).
FALLBACK_SPREAD = 0.01
# Newton's method on Platt's two parameters stops when a step moves them by less than this (relative).
_PLATT_TOL = 1e-12


def platt_fit(x: np.ndarray, target: np.ndarray, max_iter: int = 200) -> tuple[float, float]:
    """(slope, intercept) maximising the soft-target log-likelihood, fitted to convergence (Newton, float64).

    The likelihood ``sum t log p + (1 - t) log(1 - p)``, ``p = sigmoid(a x + b)``, with soft targets
    ``0 < t < 1`` is strictly concave with a finite maximum whenever ``x`` is not constant; Newton's method
    with step halving converges to it quadratically (Platt 1999; Lin, Lin & Weng 2007). A constant ``x``
    gives slope 0 and the intercept of the mean target.

    Args:
        x: raw scores (float64, finite).
        target: soft targets in (0, 1), same length.
        max_iter: Newton steps at most.

    Returns:
        ``(slope, intercept)``.
    """
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    mean_t = float(np.clip(t.mean(), 1e-12, 1 - 1e-12))
    params = np.array([0.0, math.log(mean_t / (1.0 - mean_t))])
    if len(x) < 2 or np.ptp(x) == 0:
        return 0.0, float(params[1])
    design = np.column_stack([x, np.ones_like(x)])

    def loss(theta: np.ndarray) -> float:
        z = design @ theta
        return float(np.sum(np.logaddexp(0.0, z) - t * z))

    current = loss(params)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(design @ params)))
        grad = design.T @ (p - t)
        hess = (design * (p * (1.0 - p))[:, None]).T @ design
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        size = 1.0
        while size > 1e-10:
            trial = params - size * step
            value = loss(trial)
            if value <= current:
                break
            size /= 2.0
        else:
            break
        moved = np.max(np.abs(trial - params) / np.maximum(1.0, np.abs(params)))
        params, current = trial, value
        if moved < _PLATT_TOL:
            break
    return float(params[0]), float(params[1])


def none_offset(task: str, threshold: float) -> float:
    """The ``none`` map's offset: 0 (log-odds), or the log CAC where the predicted CAC rounds above T."""
    if task == "classification":
        return 0.0
    return float(cac_to_target(threshold + 0.5))


def identity_calibration(offset: float = 0.0, note: str = "") -> dict[str, Any]:
    """The ``none`` map: ``sigmoid(raw - offset)``."""
    record: dict[str, Any] = {"method": "none", "offset": float(offset)}
    if note:
        record["note"] = note
    return record


def fit_calibration(raw: ArrayLike, labels: ArrayLike, method: str, offset: float = 0.0) -> dict[str, Any]:
    """Fit a calibration map on validation scores.

    Args:
        raw: the model's raw scores (log-odds, or predicted log CAC) of the validation patients.
        labels: their 0/1 labels (CAC > threshold).
        method: ``platt``, ``isotonic`` or ``none``.
        offset: the ``none`` map's offset (see the module docstring), also used by the fallback.

    Returns:
        The map as a JSON-able dict: ``{"method", ...parameters, "n", "n_positive"}``.

    Raises:
        CacxrError: unknown method, or scores and labels of different lengths.
    """
    if method not in METHODS:
        raise CacxrError(f"--calibration must be one of {', '.join(METHODS)} (got {method!r})")
    x = np.asarray(raw, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(x) != len(y):
        raise CacxrError(f"calibration: {len(x)} scores but {len(y)} labels")
    counts = {"n": int(len(y)), "n_positive": int(y.sum())}
    if method == "none":
        return {**identity_calibration(offset), **counts}
    finite = np.isfinite(x)
    x, y = x[finite], y[finite]
    if len(np.unique(y)) < 2:
        note = "validation patients of one class: not calibrated"
        return {**identity_calibration(offset, note), "requested": method, **counts}
    if method == "platt":
        n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
        target = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
        slope, intercept = platt_fit(x, target)
        prevalence = float(np.mean(target))
        spread = float(np.ptp(x)) if len(x) > 1 and np.ptp(x) > 0 else 1.0
        floor = max(MIN_SLOPE, FALLBACK_SPREAD / (prevalence * (1.0 - prevalence) * spread))
        if slope >= floor:
            return {"method": "platt", "slope": slope, "intercept": intercept, **counts}
        # A map must never reverse the model's ranking (that would be choosing the direction on the
        # validation split), nor flatten it into ties: a model no better than chance there keeps its order,
        # near the smoothed prevalence.
        middle = float(np.min(x) + np.max(x)) / 2.0 if len(x) else 0.0
        return {
            "method": "platt", "slope": floor, **counts,
            "intercept": math.log(prevalence / (1.0 - prevalence)) - floor * middle,
            "note": f"validation scores do not rank the patients (fitted slope {slope:.3g}): probabilities near "
            f"{prevalence:.3f}, the validation prevalence {n_pos}/{len(y)} smoothed as Platt's targets "
            f"((n+ + 1)/(n+ + 2) for a positive, 1/(n- + 2) for a negative), within ±{FALLBACK_SPREAD / 2:g} over "
            "the validation scores; ranking kept",
        }  # fmt: skip
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y)
    return {
        "method": "isotonic",
        "x": [float(v) for v in iso.X_thresholds_],
        "y": [float(v) for v in iso.y_thresholds_],
        **counts,
    }


def apply_calibration(record: dict[str, Any] | None, raw: ArrayLike) -> np.ndarray:
    """Calibrated probabilities of raw scores (a missing map is ``none`` with offset 0).

    Args:
        record: a map from :func:`fit_calibration` (or None).
        raw: raw scores.

    Returns:
        float64 probabilities, the shape of ``raw``.
    """
    with torch.no_grad():
        values = torch.as_tensor(np.asarray(raw, dtype=np.float64))
        return CalibrationModule(record)(values).numpy()


def _sigmoid_params(record: dict[str, Any]) -> tuple[float, float]:
    """(slope, intercept) of a ``platt`` or ``none`` map."""
    if record.get("method") == "platt":
        return float(record["slope"]), float(record["intercept"])
    return 1.0, -float(record.get("offset") or 0.0)


class CalibrationModule(torch.nn.Module):
    """A calibration map as a torch module (differentiable; exportable to ONNX and TorchScript).

    Args:
        record: a map from :func:`fit_calibration` (None: ``none`` with offset 0).

    Raises:
        CacxrError: an unknown or malformed map.
    """

    def __init__(self, record: dict[str, Any] | None) -> None:
        super().__init__()
        record = record or identity_calibration()
        method = record.get("method")
        if method not in METHODS:
            raise CacxrError(f"unknown calibration method {method!r} in a model record")
        self.isotonic = method == "isotonic"
        if self.isotonic:
            knots_x = np.asarray(record.get("x") or [0.0], dtype=np.float64)
            knots_y = np.asarray(record.get("y") or [0.5], dtype=np.float64)
            if len(knots_x) != len(knots_y) or not np.all(np.diff(knots_x) >= 0):
                raise CacxrError("malformed isotonic calibration map (knots)")
            widths = np.diff(knots_x)
            slopes = np.divide(np.diff(knots_y), widths, out=np.zeros_like(widths), where=widths > 0)
            # Parameters kept in float64 (exact in apply_calibration), cast to the input's dtype when applied.
            self.register_buffer("knots", torch.tensor(knots_x, dtype=torch.float64))
            self.register_buffer("start", torch.tensor(float(knots_y[0]), dtype=torch.float64))
            self.register_buffer("slopes", torch.tensor(slopes, dtype=torch.float64))
            a, b = 1.0, 0.0
        else:
            a, b = _sigmoid_params(record)
            if not (math.isfinite(a) and math.isfinite(b)):
                raise CacxrError("malformed calibration map (slope or intercept not finite)")
        self.register_buffer("slope", torch.tensor(a, dtype=torch.float64))
        self.register_buffer("intercept", torch.tensor(b, dtype=torch.float64))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        dtype = raw.dtype
        if not self.isotonic:
            return torch.sigmoid(raw * self.slope.to(dtype) + self.intercept.to(dtype))
        start = self.start.to(dtype)
        if self.slopes.numel() == 0:
            return torch.zeros_like(raw) + start
        # Linear interpolation as a sum of clamped ramps: only elementwise operations (exportable).
        knots = self.knots.to(dtype)
        lo, hi = knots[:-1], knots[1:]
        ramps = torch.minimum(torch.maximum(raw[..., None], lo), hi) - lo
        return start + (ramps * self.slopes.to(dtype)).sum(dim=-1)
