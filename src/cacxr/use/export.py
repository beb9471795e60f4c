"""Export a trained run to ONNX or TorchScript, with its preprocessing contract inside the file.

The exported model is the run's scorer (:class:`cacxr.model.scoring.RunScorer`, the computation behind
``cacxr predict``): the final model, one fold (``fold=K``) or the ensemble of the run's folds, each with its
calibration map. It takes a **normalised** float32 batch ``image`` of shape (N, 1, S, S) and returns
``score`` of shape (N,): the calibrated probability of CAC > threshold (classification) or the predicted
log-CAC, ``log(clip(CAC, 0, 2000) + 0.001)`` (regression; CAC = exp(score) - 0.001), and for regression a
second output ``probability``, the calibrated P(CAC > threshold).

A run trained with ``--clinical`` takes two more inputs, ``age`` (float32 (N,), years; NaN: unknown, the
model's training median is used) and ``sex`` (int64 (N,): 0 M, 1 F, 2 unknown), encoded inside the model
with each model's training statistics (listed in the contract's ``clinical``), exactly as ``predict``
encodes the DICOM header's PatientAge and PatientSex.

Everything a deployment needs to feed it the same pixels as training travels in the file
(:func:`contract`): the preprocessing profile and its version, the image size, the normalisation both as
the profile's mean/std of ``x / 255`` and as ``normalised = uint8 * scale + offset``, the task threshold,
the decision threshold, the task, the architecture, which model (final, ensemble or one fold), the
inputs and the cacxr version. ONNX keeps it in the
model's ``metadata_props`` (one key per entry, values as JSON text, plus ``cacxr`` with the whole
contract); TorchScript keeps it as the extra file ``cacxr.json`` (``torch.jit.load(path,
_extra_files={"cacxr.json": ""})``).

ONNX goes through ``torch.onnx.export`` (the dynamo exporter, opset 18, batch axis dynamic); TorchScript
through ``torch.jit.trace``. Both writes are atomic.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cacxr.core import CacxrError, atomic_path, missing_dependency
from cacxr.runs import FINAL_FOLD

if TYPE_CHECKING:
    from cacxr.use.loaded_run import LoadedRun

__all__ = ["FORMATS", "OPSET", "EXTRA_FILE", "contract", "export_run", "read_contract"]

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
OPSET = 18
EXTRA_FILE = "cacxr.json"  # TorchScript extra file holding the contract
INPUT_NAME, OUTPUT_NAME = "image", "score"
_EXPORTER_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx")


def contract(run: LoadedRun) -> dict[str, Any]:
    """The preprocessing and decision contract of ``run`` (what a consumer needs besides the weights).

    Args:
        run: the loaded run.

    Returns:
        A JSON-serialisable dict (see the module docstring).
    """
    from cacxr import __version__
    from cacxr.pixels import get_profile

    profile = get_profile(run.profile)
    # (x / 255 - mean) / std written as x * scale + offset, in double precision
    scale, offset = 1.0 / (255.0 * profile.std), -profile.mean / profile.std
    output = (
        "log-CAC = log(clip(CAC, 0, 2000) + 0.001); CAC = exp(score) - 0.001; "
        f"probability: calibrated probability of CAC > {run.threshold:g}"
        if run.task == "regression"
        else f"calibrated probability of CAC > {run.threshold:g}"
    )
    decides = "probability" if run.decision_on == "probability" else "predicted CAC"
    size = int(run.image_size)
    inputs = [{"name": INPUT_NAME, "shape": ["N", 1, size, size], "dtype": "float32"}]
    if run.scorer.takes_covariates:
        inputs += [
            {"name": "age", "shape": ["N"], "dtype": "float32", "meaning": "age in years; NaN: unknown "
             "(the model's training median age is used)"},
            {"name": "sex", "shape": ["N"], "dtype": "int64", "meaning": "0: M, 1: F, 2: unknown"},
        ]  # fmt: skip
    meta = {
        "task": run.task,
        "threshold": float(run.threshold),
        "decision_threshold": float(run.decision_threshold),
        "decision_rule": f"positive when {decides} >= decision_threshold",
        "output": output,
        "outputs": [OUTPUT_NAME, *(["probability"] if run.task == "regression" else [])],
        "arch": run.config.arch,
        "model": run.model_name,
        "profile": profile.name,
        "profile_version": int(profile.version),
        "image_size": size,
        "normalisation": {
            "mean": float(profile.mean),
            "std": float(profile.std),
            "formula": "(x / 255 - mean) / std for uint8 x",
            "scale": scale,
            "offset": offset,
        },
        "input": inputs[0],
        "inputs": inputs,
        "calibration": {_model_name_of(k): run.folds[k].get("calibration") for k, _ in run.models},
        "cacxr_version": __version__,
    }
    if not run.is_final:
        meta["folds"] = [int(fold) for fold, _ in run.models]
    if run.scorer.takes_covariates:
        # The training statistics each model encodes age and sex with (cacxr.model.covariates.ClinicalEncoder).
        meta["clinical"] = {_model_name_of(k): run.folds[k].get("clinical_encoder") for k, _ in run.models}
    return meta


def _model_name_of(fold: int) -> str:
    return "final" if fold == FINAL_FOLD else f"fold {fold}"


class _Exported(torch.nn.Module):
    """The run's scorer with the exported inputs and outputs (image only, or image, age and sex)."""

    def __init__(self, scorer: torch.nn.Module) -> None:
        super().__init__()
        self.scorer = scorer

    def _outputs(self, probability: torch.Tensor, log_cac: torch.Tensor | None) -> Any:
        return probability if log_cac is None else (log_cac, probability)

    def forward(self, image: torch.Tensor) -> Any:
        return self._outputs(*self.scorer.outputs(image))


class _ExportedWithCovariates(_Exported):
    def forward(self, image: torch.Tensor, age: torch.Tensor, sex: torch.Tensor) -> Any:  # type: ignore[override]
        return self._outputs(*self.scorer.outputs(image, age, sex))


@contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """Raise the given loggers to WARNING for the duration of the block (their INFO is pass-by-pass detail)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_onnx(module: torch.nn.Module, example: tuple[torch.Tensor, ...], out: Path, meta: dict[str, Any]) -> None:
    try:
        import onnx
    except ImportError:
        raise missing_dependency("onnx", "export") from None
    names = [entry["name"] for entry in meta["inputs"]]
    batch = torch.export.Dim("batch", min=1, max=4096)
    with tempfile.TemporaryDirectory(prefix="cacxr-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        with (
            warnings.catch_warnings(),
            _quiet(_EXPORTER_LOGGERS),
        ):  # exporter internals are not the user's concern
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example,
                str(raw),
                input_names=names,
                output_names=meta["outputs"],
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                dynamic_shapes={name: {0: batch} for name in names},
                verbose=False,
            )
        model = onnx.load(str(raw))
    for key, value in {**meta, "cacxr": meta}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(model)
    with atomic_path(out) as tmp_out:
        onnx.save(model, str(tmp_out))


def _export_torchscript(
    module: torch.nn.Module, example: tuple[torch.Tensor, ...], out: Path, meta: dict[str, Any]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
    with atomic_path(out) as tmp_out, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still asked for
        torch.jit.save(traced, str(tmp_out), _extra_files={EXTRA_FILE: json.dumps(meta)})


def export_run(run: LoadedRun, out: str | os.PathLike[str], format: str = "onnx") -> dict[str, Any]:
    """Write the run's score model to ``out`` in ``format``.

    Args:
        run: the loaded run (``load_run(run_dir, fold=K)`` exports one fold, else the ensemble).
        out: the output file (e.g. ``model.onnx`` or ``model.pt``); replaced atomically.
        format: ``onnx`` or ``torchscript``.

    Returns:
        The contract written into the file (:func:`contract`) plus ``path`` and ``format``.

    Raises:
        CacxrError: unknown format, ``out`` is a folder, onnx missing, or the exporter fails.
    """
    if format not in FORMATS:
        raise CacxrError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise CacxrError(
            f"--out {out} is a folder: give a file name (e.g. {out / ('model.' + _suffix(format))})"
        )
    meta = contract(run)
    scorer = copy.deepcopy(run.scorer).cpu().eval()  # device-neutral, leaving the run as it is
    for param in scorer.parameters():
        param.requires_grad_(False)
    example: tuple[torch.Tensor, ...] = (torch.zeros(2, 1, run.image_size, run.image_size),)
    if scorer.takes_covariates:
        module: torch.nn.Module = _ExportedWithCovariates(scorer)
        example += (torch.tensor([60.0, math.nan]), torch.tensor([0, 2], dtype=torch.long))
    else:
        module = _Exported(scorer)
    try:
        if format == "onnx":
            _export_onnx(module, example, out, meta)
        else:
            _export_torchscript(module, example, out, meta)
    except CacxrError:
        raise
    except Exception as exc:  # exporter internals: report them as a failed export of this run
        raise CacxrError(f"{format} export to {out} failed: {type(exc).__name__}: {exc}") from exc
    logger.info("exported %s (%s, %s) to %s", run.config.arch, format, meta["model"], out)
    return {**meta, "path": str(out), "format": format}


def _suffix(format: str) -> str:
    return "onnx" if format == "onnx" else "pt"


def read_contract(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the contract back from an exported file (ONNX or TorchScript, chosen by content).

    Args:
        path: a file written by :func:`export_run`.

    Returns:
        The contract dict.

    Raises:
        CacxrError: the file is missing or carries no cacxr contract.
    """
    path = Path(path)
    if not path.is_file():
        raise CacxrError(f"{path}: no such file")
    try:
        import zipfile

        if zipfile.is_zipfile(path):  # TorchScript archives are zip files
            extra = {EXTRA_FILE: ""}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            return json.loads(extra[EXTRA_FILE])
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        return json.loads(props["cacxr"])
    except ImportError:
        raise missing_dependency("onnx", "export") from None
    except Exception as exc:
        raise CacxrError(f"{path}: no cacxr contract could be read ({type(exc).__name__}: {exc})") from exc
