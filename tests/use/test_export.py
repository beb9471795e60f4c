"""`cacxr export`: ONNX and TorchScript files that agree with PyTorch and carry the preprocessing contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from _tiny_run import IMAGE_SIZE, tiny_run
from cacxr.cli import main
from cacxr.core import CacxrError, target_to_cac
from cacxr.pixels import normalise
from cacxr.use import export_run, load_run, read_contract
from cacxr.use.export import contract
from cacxr.use.predict import score_module

TOLERANCE = 1e-4
# Loading the TorchScript files back: upstream deprecates TorchScript, the brief still asks for it.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)


def _run_exported(path: Path, fmt: str, batches: list[torch.Tensor], output: int = 0) -> list[np.ndarray]:
    """Output ``output`` of the exported model (0: score; 1: probability, regression) for each batch."""
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [session.run(None, {"image": x.numpy()})[output] for x in batches]
    model = torch.jit.load(str(path)).eval()
    outs = [model(x) for x in batches]
    return [(out[output] if isinstance(out, tuple) else out).detach().numpy() for out in outs]


# (format, fold): the ensemble in both formats, one fold in TorchScript (ONNX export is the slow one).
EXPORTS = [("onnx", None), ("torchscript", None), ("torchscript", 1)]


@pytest.fixture(scope="module")
def loaded(run_dir: Path) -> dict[int | None, object]:
    return {fold: load_run(run_dir, fold=fold) for fold in (None, 1)}


@pytest.fixture(scope="module")
def exported(loaded, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int | None], Path]:
    folder = tmp_path_factory.mktemp("export")
    files = {}
    for fmt, fold in EXPORTS:
        path = folder / f"model_{fold}.{'onnx' if fmt == 'onnx' else 'pt'}"
        export_run(loaded[fold], path, fmt)
        files[fmt, fold] = path
    return files


@pytest.mark.parametrize(("fmt", "fold"), EXPORTS)
def test_exported_model_agrees_with_pytorch(loaded, exported, fmt: str, fold: int | None) -> None:
    run = loaded[fold]
    images = [_images(batch, seed=batch) for batch in (1, 5)]  # the batch axis is dynamic
    inputs = [normalise(batch[:, None], run.profile) for batch in images]
    for batch, x, got in zip(images, inputs, _run_exported(exported[fmt, fold], fmt, inputs), strict=True):
        assert got.shape == (len(batch),)
        with torch.no_grad():
            np.testing.assert_allclose(got, score_module(run)(x).numpy(), atol=TOLERANCE)
        # ... and with the run's own scoring of the uint8 images (the path predict uses)
        np.testing.assert_allclose(got, np.asarray(run.score(batch)), atol=TOLERANCE)


@pytest.mark.parametrize(("fmt", "fold"), EXPORTS)
def test_contract_round_trips(loaded, exported, fmt: str, fold: int | None) -> None:
    run = loaded[fold]
    meta = read_contract(exported[fmt, fold])
    assert meta == json.loads(json.dumps(contract(run)))
    assert meta["folds"] == ([0, 1] if fold is None else [1])
    assert meta["image_size"] == IMAGE_SIZE and meta["profile"] == "seed" and meta["profile_version"] >= 1
    assert meta["task"] == "classification" and meta["arch"] == "resnet18" and meta["threshold"] == 0.0
    assert meta["decision_threshold"] == pytest.approx(run.decision_threshold)
    norm = meta["normalisation"]
    assert (norm["mean"], norm["std"]) == (0.5024, 0.2898)
    # the stated affine map is exactly what normalise does
    values = np.array([0, 17, 255], dtype=np.uint8)
    np.testing.assert_allclose(
        values * norm["scale"] + norm["offset"], normalise(values, "seed").numpy(), rtol=1e-6
    )


def test_onnx_metadata_props_hold_each_entry(exported) -> None:
    model = onnx.load(str(exported["onnx", None]), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["image_size"]) == IMAGE_SIZE
    assert json.loads(props["profile"]) == "seed"
    assert json.loads(props["cacxr"])["task"] == "classification"
    assert model.opset_import[0].version >= 17
    assert not list(exported["onnx", None].parent.glob("*.data"))  # one self-contained file


def test_regression_export_returns_log_cac(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    reg = load_run(tiny_run(tmp_path_factory, "regression"))
    path = tmp_path / "reg.pt"
    info = export_run(reg, path, "torchscript")
    assert info["task"] == "regression" and "log-CAC" in info["output"]
    images = _images(3)
    x = [normalise(images[:, None], reg.profile)]
    ((log_cac,), (probability,)) = _run_exported(path, "torchscript", x), _run_exported(path, "torchscript", x, 1)
    scores = reg.scores(images)
    np.testing.assert_allclose(target_to_cac(log_cac), scores.score, rtol=1e-4, atol=1e-3)
    # The second output is the calibrated P(CAC > threshold) that predict reports.
    np.testing.assert_allclose(probability, scores.probability, atol=TOLERANCE)
    assert info["outputs"] == ["score", "probability"]


def test_cli_export_prints_the_contract(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.pt"
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(out), "--fold", "0"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "(fold 0)" in printed and "profile seed" in printed
    assert read_contract(out)["folds"] == [0]


@pytest.mark.parametrize(
    ("argv_tail", "message"),
    [
        (["--format", "keras"], "invalid choice: 'keras'"),
        (["--format", "onnx"], "the following arguments are required: --out"),
    ],
)
def test_cli_rejects_bad_flags(run_dir: Path, capsys, argv_tail: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", str(run_dir), *argv_tail])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("format", "unknown export format 'keras'"),
        ("folder", "is a folder: give a file name"),
        ("not_exported", "no cacxr contract could be read"),
    ],
)
def test_library_refusals(run_dir: Path, tmp_path: Path, case: str, message: str) -> None:
    run = load_run(run_dir, fold=0)
    with pytest.raises(CacxrError, match=message):
        if case == "format":
            export_run(run, tmp_path / "m.x", "keras")
        elif case == "folder":
            export_run(run, tmp_path, "onnx")
        else:
            (tmp_path / "x.onnx").write_bytes(b"junk")
            read_contract(tmp_path / "x.onnx")


def test_missing_run_is_refused(tmp_path: Path, capsys) -> None:
    assert (
        main(["export", str(tmp_path / "nope"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    )
    assert str(tmp_path / "nope") in capsys.readouterr().err
