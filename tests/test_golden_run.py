"""Behaviour is pinned: a fixed-seed pipeline run must reproduce the recorded outputs byte for byte.

A small synthetic cohort goes through the command line as a user runs it (synth, ingest, train with
``--final``, evaluate on the external patients, predict, export) and the files a user reads are compared
with the copies recorded in ``tests/golden/`` before the package was reorganised: the manifest, the run's
metrics.json and predictions.csv, the evaluation's metrics.json and predictions.csv, predict's CSV and the
export contract. Absolute paths, timestamps and version strings are masked first; nothing else is.

To record new golden files after an intended change of behaviour: ``CACXR_WRITE_GOLDEN=1 pytest
tests/test_golden_run.py`` (and say why in the commit).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from cacxr.cli import main

GOLDEN = Path(__file__).parent / "golden"
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")]

# (output name in tests/golden, path inside the work folder)
OUTPUTS = {
    "manifest.csv": "ingest/manifest.csv",
    "excluded.csv": "ingest/excluded.csv",
    "run_metrics.json": "run/metrics.json",
    "run_predictions.csv": "run/predictions.csv",
    "run_folds.csv": "run/folds.csv",
    "final.json": "run/final/final.json",
    "evaluate_metrics.json": "evaluate/metrics.json",
    "evaluate_predictions.csv": "evaluate/predictions.csv",
    "predict.csv": "predict.csv",
    "export_contract.json": "contract.json",
}
_VOLATILE_KEYS = re.compile(r"(version|time|date|elapsed|seconds|created|duration|host|pid|_at)$", re.IGNORECASE)


def _cli(*argv: str) -> None:
    assert main([*argv]) == 0, f"cacxr {' '.join(argv)} failed"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Run the pipeline once and return each output's masked text."""
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("golden")
    cohort = work / "cohort"
    _cli("synth", str(cohort), "--patients", "24", "--external", "8", "--seed", "3", "--size", "64", "--workers", "1", "--no-progress")
    _cli("ingest", str(cohort), "--out", str(work / "ingest"), "--workers", "1", "--no-progress")
    _cli(
        "train", str(work / "ingest" / "manifest.csv"), "--task", "classification", "--out", str(work / "run"),
        "--arch", "resnet18", "--finetune", "head", "--epochs", "2", "--kfold", "2", "--image-size", "64",
        "--batchsize", "8", "--seed", "5", "--no-viz", "--workers", "1", "--num-threads", "1", "--no-progress",
        "--store", str(work / "store"), "--final",
    )
    _cli(
        "evaluate", str(work / "run"), str(cohort), "--out", str(work / "evaluate"), "--site", "external",
        "--workers", "1", "--n-boot", "200", "--no-viz", "--no-progress",
    )
    external = sorted(str(p) for p in cohort.glob("XYZ_*/rx/*.dcm"))[:4]
    _cli("predict", str(work / "run"), *external, "--out", str(work / "predict.csv"), "--no-progress")
    _cli("export", str(work / "run"), "--format", "onnx", "--out", str(work / "model.onnx"))
    (work / "contract.json").write_text(json.dumps(_onnx_contract(work / "model.onnx"), indent=1, sort_keys=True))
    return {name: _masked((work / rel).read_text(), work) for name, rel in OUTPUTS.items()}


def _onnx_contract(path: Path) -> dict:
    """The contract stored in the exported file (read without cacxr, as a consumer would)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return json.loads({p.key: p.value for p in model.metadata_props}["cacxr"])


def _masked(text: str, work: Path) -> str:
    """The text with the work folder's path, timestamps and version strings replaced by placeholders."""
    text = text.replace(str(work), "<work>")
    try:
        return json.dumps(_mask_json(json.loads(text)), indent=1, sort_keys=True) + "\n"
    except json.JSONDecodeError:
        return text


def _mask_json(value):
    if isinstance(value, dict):
        return {k: "<masked>" if _VOLATILE_KEYS.search(k) else _mask_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_json(v) for v in value]
    if isinstance(value, str) and value.startswith("{"):
        try:
            return _mask_json(json.loads(value))
        except json.JSONDecodeError:
            return value
    return value


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_output_is_byte_identical_to_the_recorded_run(outputs: dict[str, str], name: str) -> None:
    golden = GOLDEN / name
    if os.environ.get("CACXR_WRITE_GOLDEN") == "1":
        golden.write_text(outputs[name])
    assert golden.is_file(), f"{golden} missing: record it with CACXR_WRITE_GOLDEN=1"
    assert outputs[name] == golden.read_text(), f"{name} differs from the recorded run"
