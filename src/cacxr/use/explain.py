"""Saliency overlays: which parts of a radiograph drove a run's score.

Two captum methods (captum is an optional dependency: ``pip install 'cacxr[explain]'``):

- ``integrated-gradients`` (default): :class:`captum.attr.IntegratedGradients` of the run's score with
  respect to the normalised input, from a black baseline (a uint8 image of zeros, normalised like any
  input). The heat map is the absolute attribution, lightly smoothed (Gaussian, sigma = S/128 px) so that
  regions rather than single pixels stand out.
- ``gradcam``: :class:`captum.attr.LayerGradCam` on the output of the encoder's last block (the block
  that fine-tuning trains), positive part only, upsampled bilinearly to the input size. The layer per
  architecture (:data:`GRADCAM_LAYERS`):

  ================  ===============================================  ===========
  arch              layer                                            resolution
  ================  ===============================================  ===========
  resnet18          ``encoder.layer4``                               S/32
  densenet121       ``encoder.features.norm5`` (after denseblock4)   S/32
  efficientnet-b0   ``encoder.features.8`` (final 1x1 conv block)    S/32
  ================  ===============================================  ===========

The attributed score is the run's score (``cacxr.model.scoring.RunScorer``): the calibrated P(CAC > threshold)
for classification runs, the predicted log-CAC for regression runs; an ensemble run averages the
attributions of its folds (integrated gradients of the ensemble mean; the mean of the folds' Grad-CAM
maps). A ``--clinical`` run is attributed with the image's own age and sex (from its header, as
``predict`` uses them), held fixed; the title shows the same score as ``predict``. Heat maps are scaled to [0, 1] (divided by
their 99.5th percentile, then clipped) and drawn over the preprocessed radiograph the model saw.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from cacxr.core import CacxrError, missing_dependency, refuse_overwrite, write_bytes
from cacxr.use.inputs import clinical_values, expand_inputs, prepare_input
from cacxr.use.predict import score_module

if TYPE_CHECKING:
    from cacxr.imaging import ImageMeta
    from cacxr.use.loaded_run import LoadedRun

__all__ = [
    "METHODS",
    "GRADCAM_LAYERS",
    "ExplainRow",
    "explain_image",
    "explain_prepared",
    "prepare_image",
    "render_overlay",
    "overlay_title",
    "explain_png",
    "explain_paths",
]

logger = logging.getLogger(__name__)

METHODS = ("integrated-gradients", "gradcam")
# arch -> dotted module path inside CACNet whose output Grad-CAM weighs (see the module docstring).
GRADCAM_LAYERS: dict[str, str] = {
    "resnet18": "encoder.layer4",
    "densenet121": "encoder.features.norm5",
    "efficientnet-b0": "encoder.features.8",
}
_PERCENTILE = 99.5


def _captum():
    try:
        from captum import attr
    except ImportError:
        raise missing_dependency("captum", "explain") from None
    return attr


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise CacxrError(f"unknown explanation method {method!r}: choose one of {', '.join(METHODS)}")


def _scaled(heat: np.ndarray) -> np.ndarray:
    """Heat map scaled to [0, 1] by its 99.5th percentile (all zeros stays all zeros)."""
    top = float(np.percentile(heat, _PERCENTILE))
    if top <= 0:
        top = float(heat.max())
    if top <= 0:
        return np.zeros_like(heat, dtype=np.float32)
    return np.clip(heat / top, 0.0, 1.0).astype(np.float32)


def _integrated_gradients(
    module: torch.nn.Module, x: torch.Tensor, baseline: torch.Tensor, steps: int
) -> np.ndarray:
    import cv2

    attr = _captum().IntegratedGradients(module)
    attributions = attr.attribute(x, baselines=baseline, n_steps=steps, internal_batch_size=min(steps, 8))
    heat = attributions.detach()[0, 0].abs().cpu().numpy().astype(np.float32)
    sigma = max(1.0, heat.shape[0] / 128.0)
    return cv2.GaussianBlur(heat, (0, 0), sigmaX=sigma)


def _gradcam(module: torch.nn.Module, x: torch.Tensor, arch: str) -> np.ndarray:
    attr = _captum()
    maps = []
    for index in range(module.n_members):
        layer = module.member_model(index).get_submodule(GRADCAM_LAYERS[arch])
        cam = attr.LayerGradCam(lambda batch, i=index: module.member(i, batch), layer)
        result = cam.attribute(x, relu_attributions=True)
        upsampled = attr.LayerAttribution.interpolate(
            result, tuple(x.shape[-2:]), interpolate_mode="bilinear"
        )
        maps.append(upsampled.detach()[0, 0].cpu().numpy())
    return np.mean(maps, axis=0).astype(np.float32)


def explain_prepared(
    run: LoadedRun,
    image: np.ndarray,
    method: str = "integrated-gradients",
    steps: int = 32,
    clinical: tuple[float | None, str | None] | None = None,
) -> tuple[np.ndarray, float]:
    """Attribution heat map of a preprocessed image (uint8 S x S, the run's profile and size).

    Args:
        run: the loaded run (one fold, the ensemble or the final model).
        image: the uint8 (S, S) model input (``preprocess.preprocess_image``).
        method: ``integrated-gradients`` or ``gradcam``.
        steps: integration steps of integrated gradients.
        clinical: the image's ``(age, sex)`` for a ``--clinical`` run (``inference.clinical_values``;
            None: unknown), held fixed while the image is attributed.

    Returns:
        ``(heat, score)``: float32 (S, S) in [0, 1], and the run's score of the image, the same as
        ``cacxr predict`` gives (calibrated probability of CAC > threshold, or predicted CAC).

    Raises:
        CacxrError: unknown method, wrong image shape, or captum missing.
    """
    from cacxr.pixels import normalise

    _check_method(method)
    if image.shape != (run.image_size, run.image_size):
        raise CacxrError(
            f"expected a preprocessed {run.image_size}x{run.image_size} image, got {image.shape}"
        )
    module = score_module(run, clinical)
    x = normalise(image[None, None], run.profile).to(run.device)
    baseline = normalise(np.zeros_like(image)[None, None], run.profile).to(run.device)
    if method == "integrated-gradients":
        heat = _integrated_gradients(module, x, baseline, steps)
    else:
        heat = _gradcam(module, x, run.config.arch)
    score = float(run.scores(image, clinical=[clinical or (None, None)]).score[0])
    return _scaled(heat), score


def explain_image(
    run: LoadedRun,
    image: np.ndarray,
    method: str = "integrated-gradients",
    steps: int = 32,
    *,
    meta: ImageMeta | None = None,
) -> tuple[np.ndarray, float]:
    """Attribution heat map of a decoded radiograph (float32 [0, 1], bone bright, as ``read_image`` gives).

    Args:
        run: the loaded run.
        image: 2-D float array in [0, 1].
        method: ``integrated-gradients`` or ``gradcam``.
        steps: integration steps of integrated gradients.
        meta: the image's ``ImageMeta`` from ``read_image``: its ``voi`` picks the equalisation as
            ``preprocess.preprocess_read`` does (None: 256-bin equalisation).

    Returns:
        ``(heat, score)`` as :func:`explain_prepared`; the heat map is aligned with the preprocessed image
        (:func:`prepare_image`), not with ``image``.
    """
    values, _ = clinical_values(run, meta)
    return explain_prepared(run, prepare_image(run, image, meta), method, steps, values)


def prepare_image(run: LoadedRun, image: np.ndarray, meta: ImageMeta | None = None) -> np.ndarray:
    """The run's uint8 (S, S) model input of a decoded radiograph, equalised as its ``meta`` says.

    Args:
        run: the loaded run (its profile and image size).
        image: 2-D float array in [0, 1].
        meta: the image's ``ImageMeta`` (None: 256-bin equalisation).

    Returns:
        The preprocessed image, identical to what the image store holds for the same file.
    """
    from cacxr.pixels import per_level_for, preprocess_image

    return preprocess_image(image, run.profile, run.image_size, per_level=per_level_for(meta))


def overlay_title(run: LoadedRun, score: float, method: str) -> str:
    """The figure title: the score and the method, e.g. ``P(CAC > 0) = 0.73 · integrated gradients``."""
    name = method.replace("-", " ")
    if run.task == "regression":
        shown = f"{score:.1f}" if score < 10 else f"{score:.0f}"
        return f"predicted CAC = {shown} (log-CAC attributed) · {name}"
    return f"P(CAC > {run.threshold:g}) = {score:.2f} · {name}"


def render_overlay(image: np.ndarray, heat: np.ndarray, title: str, alpha: float = 0.6) -> bytes:
    """Draw a heat map over a grey radiograph, with a colour bar and a title.

    The heat map's opacity grows with its value (up to ``alpha``), so the radiograph stays visible where
    attributions are low.

    Args:
        image: the radiograph (S, S), uint8 or float (drawn in grey, its own range).
        heat: (S, S) values in [0, 1].
        title: the figure title (see :func:`overlay_title`).
        alpha: opacity of the hottest pixels.

    Returns:
        PNG bytes.

    Raises:
        CacxrError: the image and the heat map differ in shape.
    """
    from matplotlib.figure import Figure  # the object API: no pyplot state, no global backend choice

    if image.shape != heat.shape:
        raise CacxrError(f"image {image.shape} and heat map {heat.shape} differ in shape")
    fig = Figure(figsize=(6.0, 5.2), dpi=110)
    ax = fig.add_subplot()
    ax.imshow(image, cmap="gray")
    shown = ax.imshow(heat, cmap="inferno", vmin=0.0, vmax=1.0, alpha=np.clip(heat, 0.0, 1.0) * alpha)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="attribution (relative)")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def explain_png(
    run: LoadedRun,
    image: np.ndarray,
    method: str = "integrated-gradients",
    steps: int = 32,
    *,
    meta: ImageMeta | None = None,
) -> tuple[bytes, float]:
    """:func:`explain_image` then :func:`render_overlay` on the preprocessed image: ``(png, score)``.

    ``meta`` (the image's ``ImageMeta``) picks the equalisation as in :func:`explain_image`.
    """
    prepared = prepare_image(run, image, meta)
    values, _ = clinical_values(run, meta)
    heat, score = explain_prepared(run, prepared, method, steps, values)
    return render_overlay(prepared, heat, overlay_title(run, score, method)), score


@dataclass
class ExplainRow:
    """The outcome for one input: the PNG written, or the error."""

    input: str
    output: str = ""
    score: float | None = None
    warning: str = ""
    error: str = ""


def png_names(paths: Sequence[str]) -> list[str]:
    """One PNG name per input: its stem, or, when stems repeat, its path below the inputs' common folder.

    ``XYZ_101/rx/IM-1.dcm`` and ``XYZ_102/rx/IM-1.dcm`` become ``XYZ_101_rx_IM-1.png`` and
    ``XYZ_102_rx_IM-1.png``; a numeric suffix settles anything still equal.
    """
    stems = [Path(p).stem for p in paths]
    repeated = [p for p, stem in zip(paths, stems, strict=True) if stems.count(stem) > 1]
    common = Path(os.path.commonpath([str(Path(p).resolve()) for p in repeated])) if repeated else None
    names, seen = [], set()
    for path, stem in zip(paths, stems, strict=True):
        if common is not None and stems.count(stem) > 1:
            below = Path(path).resolve().relative_to(common)  # "." when the same file is given twice
            stem = "_".join([*below.parent.parts, stem]) if below.parts else stem
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "image"
        name, n = f"{stem}.png", 2
        while name in seen:
            name, n = f"{stem}_{n}.png", n + 1
        seen.add(name)
        names.append(name)
    return names


def explain_paths(
    run: LoadedRun,
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    method: str = "integrated-gradients",
    steps: int = 32,
    progress: bool = True,
    overwrite: bool = False,
) -> list[ExplainRow]:
    """Write one overlay PNG per input.

    ``out`` is the PNG itself when there is one input and ``out`` ends in ``.png`` (and is not an existing
    folder); otherwise ``out`` is a folder and each PNG is named after its input (``<stem>.png``; inputs
    with the same stem are told apart by their folders, e.g. ``XYZ_101_rx_IM-1.png``).

    Args:
        run: the loaded run.
        inputs: files and folders (folders are searched as by ``cacxr predict``).
        out: a PNG file or a folder.
        method: ``integrated-gradients`` or ``gradcam``.
        steps: integration steps of integrated gradients.
        progress: show a progress bar.
        overwrite: replace PNGs that already exist (default: refuse before computing anything).

    Returns:
        One row per input file; unreadable inputs have ``error`` set and no PNG.

    Raises:
        CacxrError: unknown method, captum missing, several inputs with ``out`` naming one PNG, ``out``
            an existing file that is not a PNG, or an existing PNG without ``overwrite``.
    """
    _check_method(method)
    _captum()  # fail early, before reading anything, when captum is missing
    entries = expand_inputs(inputs)
    out = Path(out)
    single_file = out.suffix.lower() == ".png" and not out.is_dir()
    if single_file and len(entries) > 1:
        raise CacxrError(
            f"--out {out} names one PNG but the inputs give {len(entries)} images: pass a folder"
        )
    if not single_file and out.exists() and not out.is_dir():
        raise CacxrError(f"{out}: exists and is not a folder; give a folder or a new FILE.png for --out")
    targets = [out] if single_file else [out / name for name in png_names([p for p, _ in entries])]
    for (_, error), target in zip(entries, targets, strict=True):
        if not error:
            refuse_overwrite(target, overwrite)
    rows = []
    for (path, error), target in tqdm(
        list(zip(entries, targets, strict=True)), unit="image", desc="explain", disable=not progress
    ):
        row = ExplainRow(input=path, error=error)
        rows.append(row)
        if error:
            continue
        image, meta, _, notes, row.error = prepare_input(run, path)
        if image is None:
            continue
        values, unknown = clinical_values(run, meta)  # the covariates predict uses for the same file
        row.warning = "; ".join([*notes, *unknown])
        heat, row.score = explain_prepared(run, image, method, steps, values)
        write_bytes(target, render_overlay(image, heat, overlay_title(run, row.score, method)))
        row.output = str(target)
    return rows
