"""Weights: every supported file layout loads exactly, and files that do not fit are refused."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from cacxr.core import CacxrError
from cacxr.model import build_model, load_pretrained, load_saved_model, save_model
from cacxr.model.weights import WEIGHT_SOURCES, XRV_FILE, imagenet_file, load_model_file


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """No real torch hub or torchxrayvision cache is visible to these tests."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CACXR_HOME", str(tmp_path / "cacxr_home"))
    monkeypatch.setenv("CACXR_OFFLINE", "1")  # downloads are tested in test_registry.py


def _resnet18_state(in_channels: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision resnet18 state dict with random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None)
    if in_channels != 3:
        net.conv1 = torch.nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    state = net.state_dict()
    for key, value in state.items():
        if "running" in key:
            value.uniform_(0.5, 1.5)
    return state


def _densenet_features(in_channels: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    net = torchvision.models.densenet121(weights=None)
    if in_channels != 3:
        net.features.conv0 = torch.nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return net.state_dict()


def _expected_encoder(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """``encoder.<key>`` -> tensor for a torchvision state dict (head dropped, stem summed to one channel)."""
    out = {}
    for key, value in state.items():
        name = key[len(prefix):]
        if name.split(".")[0] in ("fc", "classifier"):
            continue
        if value.ndim == 4 and value.shape[1] == 3:
            value = value.sum(1, keepdim=True)
        out[f"encoder.{name}"] = value
    return out


def _assert_loaded(model, expected: dict[str, torch.Tensor]) -> None:
    actual = model.state_dict()
    assert expected, "nothing to compare"
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)


# Each case writes one file layout and returns (model, file, expected tensors, expected report notes).
def _torchvision_full(tmp: Path):
    state = _resnet18_state()
    torch.save(state, tmp / "resnet18.pth")
    return build_model("resnet18", 2), tmp / "resnet18.pth", _expected_encoder(state), ["3-channel stem was summed"]


def _torchvision_one_channel(tmp: Path):
    state = _resnet18_state(in_channels=1)
    torch.save(state, tmp / "resnet18_1ch.pt")
    return build_model("resnet18", 2), tmp / "resnet18_1ch.pt", _expected_encoder(state), ["head starts at random"]


def _features_only_old_densenet_keys(tmp: Path):
    # torchvision's own densenet121 release file names dense-layer modules 'norm.1' instead of 'norm1'.
    state = {k: v for k, v in _densenet_features(3).items() if k.startswith("features.")}
    old = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in state.items()}
    assert old.keys() != state.keys()
    torch.save(old, tmp / "densenet_features.pth")
    return build_model("densenet121", 1), tmp / "densenet_features.pth", _expected_encoder(state), []


def _original_encoder_file(tmp: Path):
    # The original project's CheXpert encoder: {"model": {encoder.*, fc1.*, fc2.*}}, densenet without
    # the 'features.' level, plus training bookkeeping beside it.
    state = _densenet_features(1)
    encoder = {f"encoder.{k[len('features.'):]}": v for k, v in state.items() if k.startswith("features.")}
    heads = {"fc1.weight": torch.randn(256, 1024), "fc1.bias": torch.randn(256), "fc2.weight": torch.randn(14, 256), "fc2.bias": torch.randn(14)}
    torch.save({"model": {**encoder, **heads}, "epoch": 12, "arch": "densenet121"}, tmp / "chexpert.pth.tar")
    expected = {f"encoder.{k}": v for k, v in state.items() if k.startswith("features.")}
    return build_model("densenet121", 2), tmp / "chexpert.pth.tar", expected, ["without the 'features.' level", "4 tensors of the file's own head"]


def _original_cac_checkpoint(tmp: Path):
    state = _resnet18_state(in_channels=1)
    head = {"fc.0.weight": torch.randn(64, 512), "fc.0.bias": torch.randn(64), "fc.2.weight": torch.randn(2, 64), "fc.2.bias": torch.randn(2)}
    enc = {f"encoder.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    torch.save({**enc, **head}, tmp / "cac_fold1.pt")
    expected = {**_expected_encoder(state), **{k.replace("fc.", "head."): v for k, v in head.items()}}
    return build_model("resnet18", 2), tmp / "cac_fold1.pt", expected, ["loaded as head.0/head.2"]


def _original_cac_checkpoint_other_head(tmp: Path):
    state = _resnet18_state(in_channels=1)
    head = {"fc.0.weight": torch.randn(128, 512), "fc.0.bias": torch.randn(128), "fc.3.weight": torch.randn(1, 128), "fc.3.bias": torch.randn(1)}
    enc = {f"module.encoder.{k}": v for k, v in state.items() if not k.startswith("fc.")}  # nn.DataParallel
    torch.save({**enc, **{f"module.{k}": v for k, v in head.items()}}, tmp / "cac_regression.pt")
    return build_model("resnet18", 2), tmp / "cac_regression.pt", _expected_encoder(state), ["differs from this head", "head starts at random"]


def _cacxr_safetensors(tmp: Path):
    source = build_model("efficientnet-b0", 1, n_clinical=2)
    save_model(source, tmp / "model.safetensors", {"fold": "3"})
    return build_model("efficientnet-b0", 1, n_clinical=2), tmp / "model.safetensors", source.state_dict(), []


def _cacxr_file_of_another_task(tmp: Path):
    source = build_model("resnet18", 1)  # a regression model, loaded into a classifier
    save_model(source, tmp / "regression.safetensors")
    expected = {k: v for k, v in source.state_dict().items() if k.startswith("encoder.")}
    return build_model("resnet18", 2), tmp / "regression.safetensors", expected, ["does not fit this head"]


@pytest.mark.parametrize(
    "make",
    [
        _cacxr_file_of_another_task,
        _torchvision_full,
        _torchvision_one_channel,
        _features_only_old_densenet_keys,
        _original_encoder_file,
        _original_cac_checkpoint,
        _original_cac_checkpoint_other_head,
        _cacxr_safetensors,
    ],
)
def test_each_layout_loads_exactly(tmp_path, make):
    model, path, expected, notes = make(tmp_path)
    untouched_head = model.head[0].weight.clone()
    report = load_pretrained(model, str(path))
    _assert_loaded(model, expected)
    assert report.source == str(path)
    assert set(expected) <= set(report.loaded)
    assert all(k.startswith("head.") or k.endswith("num_batches_tracked") for k in report.missing)
    for note in notes:
        assert any(note in n for n in report.notes), (note, report.notes)
    head_in_file = any(k.startswith("head.") for k in expected)
    assert torch.equal(model.head[0].weight, untouched_head) is not head_in_file


def test_cacxr_file_round_trips_with_metadata_and_outputs(tmp_path):
    source = build_model("resnet18", 2, n_clinical=1).eval()
    save_model(source, tmp_path / "fold_0" / "model.safetensors", {"task": "classification"})
    state, meta = load_model_file(tmp_path / "fold_0" / "model.safetensors")
    assert meta["arch"] == "resnet18" and meta["n_clinical"] == "1" and meta["task"] == "classification"
    assert state.keys() == source.state_dict().keys()
    rebuilt, _ = load_saved_model(tmp_path / "fold_0" / "model.safetensors")
    x, clinical = torch.randn(2, 1, 64, 64), torch.randn(2, 1)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, clinical), source(x, clinical), rtol=0, atol=0)
    assert not list((tmp_path / "fold_0").glob(".*.tmp"))


class _RunsCode:
    """Unpickling this would create a folder: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _half_missing(tmp: Path) -> Path:
    state = _resnet18_state()
    keys = sorted(state)
    torch.save({k: state[k] for k in keys[::2]}, tmp / "half.pt")
    return tmp / "half.pt"


def _wrong_shape(tmp: Path) -> Path:
    state = _resnet18_state()
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp / "wrong.safetensors")
    return tmp / "wrong.safetensors"


def _other_arch(tmp: Path) -> Path:
    torch.save(_densenet_features(3), tmp / "densenet.pth")
    return tmp / "densenet.pth"


def _arbitrary_objects(tmp: Path) -> Path:
    torch.save({"conv1.weight": torch.zeros(1), "hook": _RunsCode(tmp / "code_ran")}, tmp / "evil.pt")
    return tmp / "evil.pt"


def _not_weights(tmp: Path) -> Path:
    (tmp / "notes.pt").write_text("these are not weights")
    return tmp / "notes.pt"


def _random_bytes(tmp: Path) -> Path:
    (tmp / "corrupt.pth").write_bytes(bytes(range(256)) * 20)  # opens like a pickle, then makes no sense
    return tmp / "corrupt.pth"


def _no_tensors(tmp: Path) -> Path:
    torch.save({"epoch": 3, "model": {"lr": 0.1}}, tmp / "empty.pt")
    return tmp / "empty.pt"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_half_missing, r"refused: does not fit resnet18: \d+ of its 100 encoder tensors are missing"),
        (_wrong_shape, r"refused: 1 tensors have the wrong shape .*layer1\.0\.conv1\.weight \(32, 64, 3, 3\)"),
        (_other_arch, "refused: does not fit resnet18"),
        (_arbitrary_objects, r"refused: the file is a pickle of Python objects \(it contains posix\.mkdir\)"),
        (_not_weights, "not a readable PyTorch or safetensors weights file"),
        (_random_bytes, "not a readable PyTorch or safetensors weights file"),
        (_no_tensors, "refused: no tensors found"),
    ],
)
def test_files_that_do_not_fit_are_refused_naming_the_file(tmp_path, make, message):
    path = make(tmp_path)
    model = build_model("resnet18", 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CacxrError, match=message) as info:
        load_pretrained(model, str(path))
    assert str(path) in str(info.value)
    assert not (tmp_path / "code_ran").exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_imagenet_offline_with_empty_caches_says_how_to_import_the_file(tmp_path):
    with pytest.raises(CacxrError) as info:
        load_pretrained(build_model("densenet121", 2), "imagenet")
    assert str(tmp_path / "cacxr_home" / "weights") in str(info.value)
    assert "copy densenet121-a639ec97.pth" in str(info.value)
    assert "cacxr weights import imagenet-densenet121 FILE" in str(info.value)


def test_imagenet_file_in_the_hub_cache_is_verified_before_use(tmp_path):
    path = imagenet_file("resnet18")
    assert path == tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(_resnet18_state(seed=5), path)  # not torchvision's file: its SHA-256 does not start f37072fd
    model = build_model("resnet18", 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CacxrError, match=f"{path}: checksum mismatch for weights 'imagenet-resnet18'"):
        load_pretrained(model, "imagenet")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_imagenet_from_a_path_reads_the_file(tmp_path):
    state = _resnet18_state(seed=5)
    torch.save(state, tmp_path / "r18.pth")
    model = build_model("resnet18", 2)
    report = load_pretrained(model, f"imagenet={tmp_path / 'r18.pth'}")
    _assert_loaded(model, _expected_encoder(state))
    assert report.intensity == "seed"


def test_xrv_weights_from_a_path_use_the_xrv_intensity(tmp_path):
    # torchxrayvision's DenseNet: torchvision key names, one input channel, an 18-finding classifier.
    state = _densenet_features(1)
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    state |= {"classifier.weight": torch.randn(18, 1024), "classifier.bias": torch.randn(18)}
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "xrv.safetensors")
    model = build_model("densenet121", 2)
    report = load_pretrained(model, f"xrv-densenet121-all={tmp_path / 'xrv.safetensors'}")
    _assert_loaded(model, _expected_encoder(state))
    assert report.intensity == "xrv"
    assert sorted(report.unexpected) == ["classifier.bias", "classifier.weight"]
    assert WEIGHT_SOURCES["xrv-densenet121-all"].intensity == "xrv"


@pytest.mark.parametrize(
    ("arch", "spec", "message"),
    [
        ("densenet121", "xrv-densenet121-all", "weights 'xrv-densenet121-all' are not in the cache .*cacxr weights import"),
        ("resnet18", "xrv-densenet121-all", "are for densenet121, not resnet18"),
        ("resnet18", "chexpert-best", r"'chexpert-best': not a registry name \(none, imagenet, imagenet-densenet121, .*xrv-densenet121-all\) and no such file"),
        ("resnet18", "imagenet=/nowhere/resnet.pth", "/nowhere/resnet.pth: no such weights file"),
    ],
)
def test_named_sources_fail_clearly_offline(arch, spec, message):
    with pytest.raises(CacxrError, match=message):
        load_pretrained(build_model(arch, 2), spec)


@pytest.mark.skipif(importlib.util.find_spec("torchxrayvision") is not None, reason="torchxrayvision installed")
def test_xrv_pickled_release_file_without_torchxrayvision_is_not_unpickled(tmp_path):
    found = tmp_path / "home" / ".torchxrayvision" / "models_data" / XRV_FILE
    found.parent.mkdir(parents=True)
    torch.save({"model_object": _RunsCode(tmp_path / "code_ran")}, found)
    with pytest.raises(CacxrError, match=f"{found} is torchxrayvision's pickled model.*pip install torchxrayvision"):
        load_pretrained(build_model("densenet121", 2), "xrv-densenet121-all")
    assert not (tmp_path / "code_ran").exists()


def test_none_loads_nothing():
    model = build_model("resnet18", 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained(model, "none")
    assert report.loaded == [] and report.source == "none"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
