"""CACNet: one-channel encoders, the trunk/tail split, fine-tuning modes and frozen BatchNorms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _torch_threads import torch_threads
from cacxr.core import CacxrError
from cacxr.model import ARCHS, build_model

# Trainable parameter prefixes of set_finetune("last"): the last block (+ final norm / conv) and the head.
LAST_BLOCK = {
    "densenet121": ("encoder.features.denseblock4.denselayer16.", "encoder.features.norm5."),
    "resnet18": ("encoder.layer4.",),
    "efficientnet-b0": ("encoder.features.7.", "encoder.features.8."),
}
STEM = {
    "densenet121": "encoder.features.conv0.weight",
    "resnet18": "encoder.conv1.weight",
    "efficientnet-b0": "encoder.features.0.0.weight",
}
# (channels, spatial size) of the trunk output for a 64 px input.
TRUNK_SHAPE = {"densenet121": (992, 2), "resnet18": (256, 4), "efficientnet-b0": (192, 2)}


@pytest.fixture(autouse=True, scope="module")
def _few_threads():
    with torch_threads(1):
        yield


def _images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _bn_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running_" in k}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("n_outputs", "n_clinical"), [(2, 0), (1, 0), (1, 3)])
def test_one_channel_model_gives_n_outputs(arch, n_outputs, n_clinical):
    model = build_model(arch, n_outputs, n_clinical).eval()
    assert model.state_dict()[STEM[arch]].shape[1] == 1
    clinical = torch.randn(3, n_clinical) if n_clinical else None
    with torch.no_grad():
        out = model(_images(3), clinical)
    assert out.shape == (3, n_outputs)
    assert torch.isfinite(out).all()
    assert model.head[0].in_features == model.n_features + n_clinical
    assert model.head[0].out_features == 64


@pytest.mark.parametrize("arch", ARCHS)
def test_trunk_then_tail_equals_forward_and_the_torchvision_encoder(arch):
    model = build_model(arch, 2).eval()
    x = _images()
    with torch.no_grad():
        feats = model.trunk_features(x)
        assert feats.shape[1:] == (TRUNK_SHAPE[arch][0], TRUNK_SHAPE[arch][1], TRUNK_SHAPE[arch][1])
        torch.testing.assert_close(model.tail(feats), model(x), rtol=0, atol=0)
        # The split must not change the network: pooled features equal torchvision's own forward.
        torch.testing.assert_close(model.embed(x), model.encoder(x), rtol=1e-5, atol=1e-6)
    assert model.embed(x).shape == (2, model.n_features)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    ("mode", "trunk_frozen", "block_trains"),
    [("last", True, True), ("head", True, False), ("all", False, True)],
)
def test_set_finetune_chooses_exactly_what_trains(arch, mode, trunk_frozen, block_trains):
    model = build_model(arch, 2).set_finetune(mode)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if mode == "all":
        expected = {n for n, _ in model.named_parameters()}
    else:
        prefixes = ("head.", *LAST_BLOCK[arch]) if block_trains else ("head.",)
        expected = {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
    assert trainable == expected
    assert any(n.startswith(LAST_BLOCK[arch]) for n in trainable) == block_trains
    assert model.trunk_is_frozen() is trunk_frozen


@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_batchnorms_stay_in_eval_mode_and_keep_their_statistics(arch):
    model = build_model(arch, 2, finetune="last")
    model.train()
    assert model.training
    frozen = [m for m in model._trunk_modules for m in m.modules()]
    assert frozen and not any(m.training for m in frozen)
    block = [m for m in model._block_modules for m in m.modules()]
    assert all(m.training for m in block)

    before_trunk = _bn_stats(nn.ModuleList(model._trunk_modules))
    before_block = _bn_stats(nn.ModuleList(model._block_modules))
    model(_images(4)).sum().backward()
    after_trunk = _bn_stats(nn.ModuleList(model._trunk_modules))
    after_block = _bn_stats(nn.ModuleList(model._block_modules))
    assert before_trunk.keys() == after_trunk.keys()
    assert all(torch.equal(before_trunk[k], after_trunk[k]) for k in before_trunk)
    # The trainable block's statistics do move: the check above is not vacuous.
    assert any(not torch.equal(before_block[k], after_block[k]) for k in before_block)
    # Frozen trunk weights get no gradient.
    assert all(p.grad is None for p in model.trunk_parameters())
    assert model.head[0].weight.grad is not None


@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_trunk_is_deterministic_in_training_mode(arch):
    model = build_model(arch, 2, finetune="last").train()
    x = _images()
    with torch.no_grad():
        first, second = model.trunk_features(x), model.trunk_features(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    model.set_finetune("all").train()
    stats = _bn_stats(nn.ModuleList(model._trunk_modules))
    with torch.no_grad():
        model.trunk_features(x)
    changed = _bn_stats(nn.ModuleList(model._trunk_modules))
    assert any(not torch.equal(stats[k], changed[k]) for k in stats)


def test_switching_modes_back_to_all_unfreezes_everything():
    model = build_model("resnet18", 1, finetune="head").train()
    model.set_finetune("all")
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build_model("vgg16", 2), "unknown architecture 'vgg16'"),
        (lambda: build_model("resnet18", 2).set_finetune("middle"), "unknown fine-tuning mode 'middle'"),
        (lambda: build_model("resnet18", 2, 3)(_images()), r"clinical covariates of shape \(N, 3\), got None"),
        (lambda: build_model("resnet18", 2, 3)(_images(), torch.zeros(2, 2)), r"got \(2, 2\)"),
        (lambda: build_model("resnet18", 2)(_images(), torch.zeros(2, 1)), "without clinical covariates"),
        (lambda: build_model("resnet18", 0), "invalid model size"),
    ],
)
def test_bad_use_gives_a_clear_error(call, message):
    with pytest.raises(CacxrError, match=message):
        call()
