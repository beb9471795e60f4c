"""Benchmark: the feature cache's trunk pass, fp32 eager against the engine a build chooses (run by hand).

    python benchmarks/bench_trunk.py --sizes 512 1024 --n 4 2

For each size S, a random-init ``--arch`` trunk (timings do not depend on the weights) computes the maps of
``--n`` random S x S store images through ``FeatureCache.build``, once with ``engine="eager"`` (plain fp32,
the reference) and once with the engine ``engine="auto"`` picks for a large build on this machine
(``onnx`` when onnxruntime is installed, else ``channels_last``). The chosen engine runs twice: first with the
one-off ONNX export included (what the first build of a cache key pays), then on other images of the same
key, the export reused. Rounds are interleaved (eager, chosen, ...) and medians reported, as ratios against
the eager pass of the same run, with the largest difference between the cached maps (float16) of the two.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class RandomStore:
    """Random uint8 images with the attributes a feature cache reads."""

    def __init__(self, n: int, size: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.images = {f"P{seed}_{i:03d}": rng.integers(0, 256, (size, size), dtype=np.uint8) for i in range(n)}
        self.profile, self.profile_version, self.image_size = "seed", 2, size
        self.ids = sorted(self.images)

    def get(self, patient_id: str) -> np.ndarray:
        return self.images[patient_id]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="image sizes S")
    parser.add_argument("--n", type=int, nargs="+", default=[4, 2], help="images per size (one per size or one)")
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (medians)")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from cacxr.model import build_model
    from cacxr.training.features import TRUNK_TOLERANCE, FeatureCache

    try:
        import onnxruntime  # noqa: F401

        chosen = "onnx"
    except ImportError:
        chosen = "channels_last"
    counts = args.n if len(args.n) == len(args.sizes) else args.n[:1] * len(args.sizes)
    torch.manual_seed(0)
    model = build_model(args.arch, 2, finetune="head")
    print(f"{args.arch} trunk, {torch.get_num_threads()} torch threads, chosen engine: {chosen}")
    print(f"{'S':>5}{'n':>4}{'eager s/img':>13}{chosen + ' s/img':>20}{'ratio':>8}{'with export':>13}{'max |d| / max':>15}")
    for size, n in zip(args.sizes, counts, strict=True):
        times: dict[str, list[float]] = {"eager": [], "first": [], "reused": []}
        worst = 0.0
        for rnd in range(args.rounds):
            scratch = Path(tempfile.mkdtemp(prefix="cacxr-trunk-"))
            try:
                store, other = RandomStore(n, size, 2 * rnd), RandomStore(n, size, 2 * rnd + 1)
                builds = {}
                for name, engine, source, folder in (
                    ("eager", "eager", store, "eager"),
                    ("first", chosen, store, "chosen"),
                    ("reused", chosen, other, "chosen"),
                ):
                    start = time.perf_counter()
                    builds[name] = FeatureCache.build(
                        model, source, source.ids, scratch / folder, batch_size=args.batch, progress=False,
                        engine=engine,
                    )  # fmt: skip
                    times[name].append((time.perf_counter() - start) / n)
                ref, got = builds["eager"].get(store.ids).numpy(), builds["first"].get(store.ids).numpy()
                worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        eager, first, reused = (float(np.median(times[k])) for k in ("eager", "first", "reused"))
        print(
            f"{size:>5}{n:>4}{eager:>13.2f}{reused:>20.2f}{eager / reused:>7.2f}x{eager / first:>12.2f}x"
            f"{worst:>15.1e}"
        )
    print(f"(tolerance of the cache: {TRUNK_TOLERANCE:.0e} of the largest value, plus float16 rounding)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
