"""The view gate: the shipped weights load safely, read the real radiographs right, and one rule decides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from _torch_threads import torch_threads
from cacxr.core import CacxrError
from cacxr.imaging import (
    HEADER_CONTRADICTS_IMAGE,
    VIEW_FROM_IMAGE,
    GateVerdict,
    classify,
    decide,
    gate_version,
    load_gate,
    read_image,
)
from cacxr.imaging.viewgate import DEFAULT_WEIGHTS, GateNet

# The project's real radiographs with their known content (docs/viewgate.md lists the verdicts).
FRONTALS = [
    "txv_nih_00000001_000.png",
    "txv_siim_chest_pa.dcm",
    "nhsx_nih-cxr14_google_DX.dcm",
    "pydicomdata_RG1_J2KI.dcm",
    "panimg_cxr_CR-MONO1-10-chest.dcm",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def test_the_shipped_gate_is_small_and_versioned() -> None:
    assert DEFAULT_WEIGHTS.is_file() and DEFAULT_WEIGHTS.stat().st_size < 1_000_000
    assert gate_version() == "viewgate-1+10ef1317f2"  # the weights docs/viewgate.md describes


@pytest.mark.parametrize("name", FRONTALS)
def test_real_frontals_are_frontal_and_their_negatives_inverted(real_cxr_dir: Path, name: str) -> None:
    image = read_image(real_cxr_dir / name).image
    verdict = classify(image)
    assert verdict.content == "frontal" and not verdict.inverted, verdict
    assert verdict.probabilities["frontal"] > 0.8
    assert abs(sum(verdict.probabilities.values()) - 1.0) < 1e-5
    negative = classify(1.0 - image)
    assert negative.content == "frontal" and negative.inverted


def test_the_dog_is_not_called_a_human_frontal(real_cxr_dir: Path) -> None:
    verdict = classify(read_image(real_cxr_dir / "highdicom_dx_image_CANINE_lateral_thorax.dcm").image)
    assert verdict.content != "frontal"


def test_a_rendered_document_and_a_ramp_are_not_radiographs() -> None:
    from PIL import Image, ImageDraw

    page = Image.new("L", (600, 800), 255)
    draw = ImageDraw.Draw(page)
    for row in range(40, 760, 22):
        draw.text((40, row), "Patient report - findings - impression " * 2, fill=0)
    assert classify(np.asarray(page, dtype=np.float32) / 255).content == "not_radiograph"
    ramp = np.tile(np.linspace(0, 1, 300, dtype=np.float32), (300, 1))
    assert classify(ramp).content == "not_radiograph"


def test_batched_verdicts_equal_single_ones(real_cxr_dir: Path) -> None:
    images = [read_image(real_cxr_dir / name).image for name in FRONTALS[:3]]
    many = load_gate().classify_many(images, batch_size=2)
    for verdict, image in zip(many, images, strict=True):
        single = classify(image)
        assert verdict.content == single.content
        assert list(verdict.probabilities.values()) == pytest.approx(list(single.probabilities.values()), abs=1e-5)


def test_weights_of_another_shape_or_without_a_rule_are_refused(tmp_path: Path) -> None:
    state = {k: v for k, v in GateNet().state_dict().items() if not k.endswith("num_batches_tracked")}
    wrong = dict(state, **{"fc2.weight": torch.zeros(5, 64)})
    save_file(wrong, str(tmp_path / "wrong.safetensors"), metadata={"rule": "{}"})
    with pytest.raises(CacxrError, match="not view-gate weights"):
        load_gate(tmp_path / "wrong.safetensors")
    save_file(state, str(tmp_path / "norule.safetensors"))
    with pytest.raises(CacxrError, match="no decision rule"):
        load_gate(tmp_path / "norule.safetensors")
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CacxrError, match="not a readable safetensors file|no such"):
        load_gate(tmp_path / "pickle.safetensors")


def _verdict(content: str, inverted: bool = False) -> GateVerdict:
    p = {c: 0.05 for c in ("frontal", "lateral", "not_radiograph")} | {content: 0.9}
    return GateVerdict(content, inverted, p, 0.9 if inverted else 0.1, "test")


# (verdict, recorded view, format, modality) -> (reason, frontal, flag, invert)
RULE = [
    (("frontal", False), "", "png", "", ("", True, VIEW_FROM_IMAGE, False)),
    (("frontal", True), "", "png", "", ("", True, VIEW_FROM_IMAGE, True)),
    (("frontal", True), "frontal", "dicom", "DX", ("", True, "", False)),  # a DICOM is never inverted back
    (("lateral", False), "", "jpeg", "", ("lateral_view", False, "", False)),
    (("lateral", False), "frontal", "dicom", "CR", ("", True, HEADER_CONTRADICTS_IMAGE, False)),
    (("frontal", False), "lateral", "dicom", "DX", ("lateral_view", False, "", False)),
    (("not_radiograph", False), "", "png", "", ("not_radiograph", False, "", False)),
    (("not_radiograph", False), "frontal", "dicom", "OT", ("not_radiograph", False, "", False)),
    (("not_radiograph", False), "frontal", "dicom", "DX", ("", True, HEADER_CONTRADICTS_IMAGE, False)),
    (("not_radiograph", False), "", "dicom", "DX", ("", False, HEADER_CONTRADICTS_IMAGE, False)),
]


@pytest.mark.parametrize(("verdict", "recorded", "fmt", "modality", "expected"), RULE)
def test_one_rule_decides_what_a_verdict_means(verdict, recorded, fmt, modality, expected) -> None:
    decision = decide(_verdict(*verdict), recorded, fmt, modality)
    assert (decision.reason, decision.frontal, decision.flag, decision.invert) == expected
    if decision.reason:
        assert decision.detail
