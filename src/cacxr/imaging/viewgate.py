"""The view and content gate: what a decoded image shows, read from its pixels.

A 0.1 M-parameter CNN (``viewgate.safetensors`` beside this module, 0.45 MB, shipped in the package, no
download) takes the reader's float32 image in [0, 1] and says whether it is a ``frontal`` chest radiograph,
a ``lateral`` one, or ``not_radiograph`` (a CT or MR slice, a photograph, a document, a screenshot, a
radiograph of another body part), and whether its grey scale is ``inverted`` (bone dark). Model card,
sources, licences and held-out figures: docs/viewgate.md; the training script: scripts/viewgate/.

Preprocessing: images whose long side exceeds 512 px are first decimated (nearest neighbour) to 512 px,
then averaged (INTER_AREA) to 64 x 64 and standardised; the network also sees log(height / width). About
1-6 ms per image on one CPU core, 4000 x 4000 included. The decision rule, chosen on validation data to keep
frontals, is stored in the weights file's metadata.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from cacxr.core import CacxrError, read_safetensors
from cacxr.imaging.viewrule import GateVerdict

__all__ = [
    "CONTENTS",
    "INPUT_SIZE",
    "DEFAULT_WEIGHTS",
    "GateNet",
    "ViewGate",
    "classify",
    "classify_many",
    "gate_version",
    "load_gate",
    "preprocess",
]

CONTENTS = ("frontal", "lateral", "not_radiograph")
INPUT_SIZE = 64
DECIMATE_TO = 512  # long side after the cheap first resize (a direct INTER_AREA from 4000 px costs 70-170 ms)
DEFAULT_WEIGHTS = Path(__file__).with_name("viewgate.safetensors")


class GateNet(nn.Module):
    """Four strided 3x3 conv blocks on the 64 x 64 input, then an MLP that also sees log(height / width).

    Outputs 4 logits: the 3 content classes (softmax) and the inverted flag (sigmoid).
    """

    def __init__(self) -> None:
        super().__init__()
        channels = (1, 16, 32, 48, 64)
        blocks: list[nn.Module] = []
        for cin, cout in zip(channels[:-1], channels[1:], strict=True):
            blocks += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*blocks)
        self.fc1 = nn.Linear(channels[-1] * (INPUT_SIZE // 16) ** 2 + 1, 64)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(64, len(CONTENTS) + 1)

    def forward(self, x: torch.Tensor, log_aspect: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 4)`` of images ``(N, 1, 64, 64)`` and their ``log(h / w)`` ``(N,)``."""
        f = torch.cat([self.features(x).flatten(1), log_aspect.view(-1, 1)], dim=1)
        return self.fc2(self.drop(torch.relu(self.fc1(f))))


def preprocess(image: np.ndarray) -> tuple[np.ndarray, float]:
    """A reader's image (float32 2-D in [0, 1]) -> (64 x 64 standardised float32, log(height / width)).

    Raises:
        ValueError: not a 2-D image (a trailing RGB axis is averaged), or under 2 px on a side.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = img[..., :3].mean(axis=2)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {img.shape}")
    h, w = img.shape
    if h < 2 or w < 2:
        raise ValueError(f"image too small: {img.shape}")
    scale = float(np.iinfo(img.dtype).max) if img.dtype.kind in "ui" else 1.0  # integers: by their range
    img = np.ascontiguousarray(img, dtype=np.float32)
    if max(h, w) > DECIMATE_TO:
        s = DECIMATE_TO / max(h, w)
        img = cv2.resize(img, (max(2, round(w * s)), max(2, round(h * s))), interpolation=cv2.INTER_NEAREST)
    img = np.nan_to_num(img, nan=0.0, posinf=1.0, neginf=0.0) / np.float32(scale)
    small = np.clip(cv2.resize(img, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA), 0.0, 1.0)
    small = (small - float(small.mean())) / max(float(small.std()), 1e-3)
    return small.astype(np.float32), float(np.log(h / w))


class ViewGate:
    """The gate's network, its decision rule and its version, loaded from a weights file."""

    def __init__(self, weights: str | os.PathLike[str]) -> None:
        state, metadata = read_safetensors(weights)
        model = GateNet()
        wanted = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if found != wanted or any(v.dtype != torch.float32 for v in state.values()):
            differ = sorted(set(wanted) ^ set(found)) or [k for k in wanted if wanted[k] != found[k]]
            raise CacxrError(f"{weights}: not view-gate weights (keys, shapes or dtypes differ: {differ[:5]})")
        model.load_state_dict(state, strict=False)  # only the BatchNorm counters are absent
        self.model = model.eval()
        try:
            rule = json.loads(metadata["rule"])
            self.t_not_radiograph, self.t_lateral = float(rule["t_not_radiograph"]), float(rule["t_lateral"])
            self.t_inverted = float(rule["t_inverted"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CacxrError(f"{weights}: no decision rule in its metadata ({exc!r})") from None
        digest = hashlib.sha256()
        for key in sorted(state):
            digest.update(key.encode())
            digest.update(str(tuple(state[key].shape)).encode())
            digest.update(state[key].contiguous().numpy().tobytes())
        digest.update(json.dumps(rule, sort_keys=True).encode())
        self.version = f"viewgate-1+{digest.hexdigest()[:10]}"

    def decide(self, p: np.ndarray) -> str:
        """The decision rule chosen on validation (it favours keeping frontals)."""
        p_lateral, p_other = float(p[1]), float(p[2])
        if p_other >= self.t_not_radiograph and p_other >= p_lateral:
            return "not_radiograph"
        if p_lateral >= self.t_lateral:
            return "lateral"
        return "not_radiograph" if p_other >= self.t_not_radiograph else "frontal"

    def _verdicts(self, prepared: list[tuple[np.ndarray, float]]) -> list[GateVerdict]:
        x = torch.from_numpy(np.stack([image for image, _ in prepared])[:, None])
        aspect = torch.tensor([a for _, a in prepared], dtype=torch.float32)
        with torch.inference_mode():
            logits = self.model(x, aspect)
        probabilities = torch.softmax(logits[:, :3], dim=1).numpy()
        inverted = torch.sigmoid(logits[:, 3]).numpy()
        return [
            GateVerdict(
                content=self.decide(p),
                inverted=bool(q >= self.t_inverted),
                probabilities={c: float(v) for c, v in zip(CONTENTS, p, strict=True)},
                inverted_probability=float(q),
                version=self.version,
            )
            for p, q in zip(probabilities, inverted, strict=True)
        ]

    def classify(self, image: np.ndarray) -> GateVerdict:
        """The verdict on one image (see :func:`preprocess` for the input)."""
        return self._verdicts([preprocess(image)])[0]

    def classify_many(self, images: Iterable[np.ndarray], batch_size: int = 32) -> list[GateVerdict]:
        """Verdicts on several images, batched (the same verdicts as one by one)."""
        out: list[GateVerdict] = []
        batch: list[tuple[np.ndarray, float]] = []
        for image in images:
            batch.append(preprocess(image))
            if len(batch) == batch_size:
                out += self._verdicts(batch)
                batch = []
        return out + (self._verdicts(batch) if batch else [])


@functools.lru_cache(maxsize=4)
def load_gate(weights: str | os.PathLike[str] | None = None) -> ViewGate:
    """The gate of ``weights`` (default: the shipped one), loaded once per process.

    Raises:
        CacxrError: the file is missing, not safetensors, or holds other keys, shapes or dtypes.
    """
    return ViewGate(DEFAULT_WEIGHTS if weights is None else weights)


def classify(image: np.ndarray) -> GateVerdict:
    """The shipped gate's verdict on one image."""
    return load_gate().classify(image)


def classify_many(images: Iterable[np.ndarray]) -> list[GateVerdict]:
    """The shipped gate's verdicts on several images."""
    return load_gate().classify_many(images)


def gate_version() -> str:
    """The shipped gate's version (``viewgate-1+<hash>``), recorded in ingest.json and run outputs."""
    return load_gate().version

