"""The model behind the service: a small protocol, and its implementation over a trained run.

The web app only needs four things from a model (:class:`ServedModel`): a description of itself, the
preprocessed image it sees, a score and a saliency overlay. :class:`RunModel` provides them for a
``cacxr.use.loaded_run.LoadedRun`` through the package's one inference path (``cacxr.use.predict.score_image``,
``cacxr.use.explain.explain_png``), so the service scores an upload exactly as ``cacxr predict`` scores a file.

The run's torch modules are shared by every request; one lock serialises the calls that run them
(scoring and attributions, whose Grad-CAM hooks on shared layers must not interleave). Decoding and
preprocessing stay outside the lock, so they run in parallel in the worker threads.
"""

from __future__ import annotations

import hashlib
import io
import threading
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from cacxr.use import LoadedRun

__all__ = ["ServedModel", "RunModel", "png_bytes"]


@runtime_checkable
class ServedModel(Protocol):
    """What the web app needs from a model (see :class:`RunModel`)."""

    def describe(self) -> dict[str, Any]:
        """Name and version: arch, task, threshold, run name/id, package versions."""
        ...

    def prepare(self, image: np.ndarray, meta: Any = None) -> np.ndarray:
        """The model's input (uint8 S x S) from a decoded radiograph (float32 [0, 1], bone bright)."""
        ...

    def predict(self, image: np.ndarray, meta: Any = None) -> dict[str, Any]:
        """``cacxr.use.predict.score_image``'s answer for a decoded radiograph (``meta``: its ImageMeta)."""
        ...

    def explain(self, image: np.ndarray, method: str, steps: int, meta: Any = None) -> tuple[bytes, float]:
        """A saliency overlay PNG of a decoded radiograph and the score it explains."""
        ...


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 grey image as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


class RunModel:
    """A trained run served by the app: the run loaded once, its model calls serialised by a lock.

    Args:
        run: a run from ``cacxr.use.loaded_run.load_run`` (one fold or the ensemble of its folds).
    """

    def __init__(self, run: LoadedRun) -> None:
        self.run = run
        self._lock = threading.Lock()
        self._description = _describe_run(run)

    def describe(self) -> dict[str, Any]:
        """The model's name and version, as answered by ``/health`` and with every prediction.

        Returns:
            ``run_name`` (the run folder's name), ``run_id`` (the first 12 hex digits of the sha256 of
            the run's config.json and of the served folds' weight files: it changes whenever the model
            does), ``arch``, ``task``, ``threshold`` (positive means CAC > threshold),
            ``decision_threshold``, ``profile``, ``image_size``, ``folds``, ``cacxr_version`` (the serving
            package) and ``trained_with`` (the package version recorded in config.json at training).
        """
        return dict(self._description)

    def prepare(self, image: np.ndarray, meta: Any = None) -> np.ndarray:
        """The run's preprocessing (profile and size) of a decoded radiograph: uint8 (S, S).

        ``meta`` (the upload's ImageMeta) picks the equalisation as the image store does.
        """
        from cacxr.use import prepare_image

        return prepare_image(self.run, image, meta)

    def predict(self, image: np.ndarray, meta: Any = None) -> dict[str, Any]:
        """Score a decoded radiograph (``cacxr.use.predict.score_image``), one request at a time.

        ``meta`` (the upload's ImageMeta) picks the equalisation as the image store does and gives
        age and sex to runs trained with ``--clinical``.
        """
        from cacxr.use import score_image

        with self._lock:
            return score_image(self.run, image, meta)

    def explain(self, image: np.ndarray, method: str, steps: int, meta: Any = None) -> tuple[bytes, float]:
        """Saliency overlay PNG and the explained score (``cacxr.use.explain.explain_png``), one at a time.

        ``meta`` (the upload's ImageMeta) picks the equalisation as the image store does.
        """
        from cacxr.use import explain_png

        with self._lock:
            return explain_png(self.run, image, method=method, steps=steps, meta=meta)


def _describe_run(run: LoadedRun) -> dict[str, Any]:
    """See :meth:`RunModel.describe`; the digest reads the weight files once, at start-up."""
    from cacxr import __version__
    from cacxr.runs import folder as runfolder

    config_file = run.run_dir / runfolder.CONFIG_FILE
    digest = hashlib.sha256(config_file.read_bytes())
    for fold, _ in run.models:  # the final model (FINAL_FOLD) lives in RUN/final, not in a fold folder
        with open(runfolder.model_path(run.run_dir, fold), "rb") as fp:
            for block in iter(lambda fp=fp: fp.read(2**20), b""):
                digest.update(block)
    recorded = runfolder.read_config(run.run_dir) or {}
    return {
        "run_name": run.run_dir.resolve().name,
        "run_id": digest.hexdigest()[:12],
        "arch": run.config.arch,
        "task": run.task,
        "threshold": run.threshold,
        "decision_threshold": run.decision_threshold,
        "profile": run.profile,
        "image_size": run.image_size,
        "folds": [fold for fold, _ in run.models],
        "model": run.model_name,
        "calibration": sorted({str((r.get("calibration") or {}).get("method", "none")) for r in run.folds.values()}),
        "cacxr_version": __version__,
        "trained_with": str(recorded.get("cacxr_version", "")),
    }
