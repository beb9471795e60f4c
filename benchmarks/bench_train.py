"""Training speed of the original recipe with and without the frozen-trunk feature cache (run by hand).

The original recipe: densenet121 frozen but its last dense layer (``set_finetune("last")``), batch 4, AdamW.
Without the cache every step runs the whole network; with it, the trunk runs once per image (the feature
pass) and every step runs only the tail on maps read from the cache. Images are random (speed does not
depend on content) and the cache lives in a temporary folder.

The projection of the full original recipe (5 folds x 50 epochs, 506 images, training on ~4/5 of them per
fold) counts training steps only, plus one feature pass over the 506 images for the cache (and the trunk's
one-off ONNX export when that engine runs); evaluation passes are left out (they cost the same trunk forward
both ways, once cached). The feature pass is timed with ``--engine`` (default ``auto``: ONNX Runtime on the
CPU when installed, as training uses it) and with the fp32 eager trunk on the same images, so the table also
says what the engine gains, and where the cached recipe's time goes (feature pass vs tail steps).

Usage::

    python benchmarks/bench_train.py --sizes 512 1024 --n-images 8 --steps 3 [--threads 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from cacxr.model import build_model
from cacxr.pixels import normalise
from cacxr.training.features import ENGINES, FeatureCache, resolve_engine

FOLDS, EPOCHS, COHORT = 5, 50, 506
TRAIN_IMAGES = FOLDS * EPOCHS * round(COHORT * (FOLDS - 1) / FOLDS)


class MemoryStore:
    """Random uint8 images with the image store's attributes (ids, get, profile, image_size)."""

    def __init__(self, n: int, size: int) -> None:
        rng = np.random.default_rng(0)
        self.images = {f"CAC_{i:03d}": rng.integers(0, 256, (size, size), dtype=np.uint8) for i in range(n)}
        self.ids = sorted(self.images)
        self.profile = "seed"
        self.image_size = size

    def get(self, patient_id: str) -> np.ndarray:
        return self.images[patient_id]


@dataclass
class Row:
    size: int
    plain_ips: float  # training images/s, whole network per step
    cached_ips: float  # training images/s, tail on cached maps
    feature_ips: float  # trunk images/s for the one-off feature pass (the engine's export left out)
    eager_feature_ips: float  # the same pass with the fp32 eager trunk, the reference engine
    export_s: float  # the engine's one-off cost before the pass (the ONNX export; 0 for eager engines)
    engine: str

    @property
    def plain_hours(self) -> float:
        return TRAIN_IMAGES / self.plain_ips / 3600

    @property
    def feature_hours(self) -> float:
        return (self.export_s + COHORT / self.feature_ips) / 3600

    @property
    def cached_hours(self) -> float:
        return self.feature_hours + TRAIN_IMAGES / self.cached_ips / 3600


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images_per_second(step: Callable[[list[str]], None], ids: list[str], batch: int, steps: int, device: torch.device) -> float:
    """Time ``steps`` training steps (after one warm-up step) over batches cycling through ``ids``."""
    batches = [[ids[(s * batch + j) % len(ids)] for j in range(batch)] for s in range(steps + 1)]
    step(batches[0])
    _sync(device)
    start = time.perf_counter()
    for b in batches[1:]:
        step(b)
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def _feature_pass(model: torch.nn.Module, store: MemoryStore, batch: int, device: torch.device, engine: str) -> tuple[float, float]:
    """(one-off seconds, images/s) of the feature pass with ``engine`` in a fresh cache folder.

    The first image is cached alone, which exports the trunk when the engine needs it; the rest then reuse
    the export, as every later build on that cache key does.
    """
    with tempfile.TemporaryDirectory(prefix="cacxr-bench-") as tmp:
        timings = []
        for ids in (store.ids[:1], store.ids):
            _sync(device)
            start = time.perf_counter()
            FeatureCache.build(model, store, ids, tmp, batch_size=batch, device=device, progress=False, engine=engine)
            _sync(device)
            timings.append(time.perf_counter() - start)
    rest = len(store.ids) - 1
    per_image = timings[1] / rest
    return max(timings[0] - per_image, 0.0), 1 / per_image


def bench_size(size: int, n_images: int, steps: int, batch: int, device: torch.device, engine: str) -> Row:
    """Measure one image size both ways on the same model and images."""
    torch.manual_seed(0)
    store = MemoryStore(n_images, size)
    model = build_model("densenet121", 2, finetune="last").to(device).train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4, weight_decay=1e-4)
    targets = torch.tensor([0, 1] * batch, device=device)[:batch]

    def train_on(output: torch.Tensor) -> None:
        loss = F.cross_entropy(output, targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    def plain_step(ids: list[str]) -> None:
        x = normalise(np.stack([store.get(i) for i in ids]), store.profile).unsqueeze(1).to(device)
        train_on(model(x))

    plain = _images_per_second(plain_step, store.ids, batch, steps, device)
    engine = resolve_engine(engine, device, COHORT * size * size)  # what training picks for the whole cohort
    export_s, feature_ips = _feature_pass(model, store, batch, device, engine)
    _, eager_ips = _feature_pass(model, store, batch, device, "eager")
    with tempfile.TemporaryDirectory(prefix="cacxr-bench-") as tmp:
        cache = FeatureCache.build(model, store, store.ids, tmp, batch_size=batch, device=device, progress=False)
        model.train()

        def cached_step(ids: list[str]) -> None:
            train_on(model.tail(cache.get(ids).to(device)))

        cached = _images_per_second(cached_step, store.ids, batch, steps, device)
    return Row(size, plain, cached, feature_ips, eager_ips, export_s, engine)



def _print_table(rows: list[Row]) -> None:
    print(
        f"\nOriginal recipe (densenet121 frozen but its last dense layer, batch 4, AdamW); projection: "
        f"{FOLDS} folds x {EPOCHS} epochs x {TRAIN_IMAGES // (FOLDS * EPOCHS)} training images "
        f"+ one feature pass over {COHORT} images"
    )
    header = (
        f"{'size':>5} | {'plain img/s':>11} | {'cached img/s':>12} | {'trunk img/s':>11} | {'step x':>7} | "
        f"{'full recipe plain':>17} | {'full recipe cached':>18} | {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.size:>5} | {r.plain_ips:>11.2f} | {r.cached_ips:>12.1f} | {r.feature_ips:>11.2f} | "
            f"{r.cached_ips / r.plain_ips:>6.0f}x | {r.plain_hours:>15.1f} h | {r.cached_hours:>16.2f} h | "
            f"{r.plain_hours / r.cached_hours:>5.0f}x"
        )
    print("\nWhere the cached recipe's time goes")
    for r in rows:
        print(
            f"{r.size:>5} px: feature pass ({r.engine}) {r.feature_hours:.2f} h = {r.export_s:.0f} s one-off + "
            f"{COHORT} images at {r.feature_ips:.2f} img/s ({r.feature_ips / r.eager_feature_ips:.1f}x the fp32 eager "
            f"trunk, {r.eager_feature_ips:.2f} img/s); tail steps {r.cached_hours - r.feature_hours:.2f} h; "
            f"100x would need {r.plain_hours / 100:.2f} h in all"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="image sizes (px)")
    parser.add_argument("--n-images", type=int, default=8, help="distinct images (and feature-pass size)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per way (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=4, help="the original recipe uses 4")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--engine", default="auto", choices=ENGINES, help="trunk engine of the feature pass (training's default: auto)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for size in args.sizes:
        rows.append(bench_size(size, args.n_images, args.steps, args.batch_size, device, args.engine))
        print(f"{size} px done: plain {rows[-1].plain_ips:.2f} img/s, cached {rows[-1].cached_ips:.1f} img/s", flush=True)
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, n-images {args.n_images}, steps {args.steps}")
    _print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
