"""Benchmark: per-file overhead of decoding in the bounded pool (cacxr.imaging.DecodePool) vs in-process.

    python benchmarks/bench_sandbox.py [--rounds 3] [--folder ../shared/data/real_cxr]

Same files, same run: each round decodes every file in-process (cacxr's read_image), then through a
1-worker pool (isolation cost: pickling the path, the image coming back over the pipe, the dispatcher),
then through a 2-worker pool (throughput). Pool start-up is reported separately (paid once per process).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "imaging"))
import sandbox_tasks as t  # noqa: E402

from cacxr.imaging import DecodePool  # noqa: E402

REAL_CXR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_cxr"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", default=str(REAL_CXR))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    files = sorted(str(p) for p in Path(args.folder).iterdir() if p.suffix in (".dcm", ".png"))
    preload = ("numpy", "pydicom", "PIL.Image", "cacxr.imaging")
    t.read_image(files[0])  # warm the in-process imports too
    started = time.perf_counter()
    pool1 = DecodePool(workers=1, preload=preload, memory_limit=int(1.5 * 2**30), time_limit=60)
    pool1.run(t.square, 1)
    startup = time.perf_counter() - started
    pool2 = DecodePool(workers=2, preload=preload, memory_limit=int(1.5 * 2**30), time_limit=60)
    pool2.run(t.square, 1)
    list(pool1.map(t.read_image, files))  # first decode in the worker (lazy imports inside pydicom)
    list(pool2.map(t.read_image, files))
    inline, isolated, parallel = [], [], []
    per_inline: dict[str, list[float]] = {}
    per_pool: dict[str, list[float]] = {}
    pixels = 0
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        images = []
        for f in files:
            t1 = time.perf_counter()
            images.append(t.read_image(f))
            per_inline.setdefault(f, []).append(time.perf_counter() - t1)
        inline.append(time.perf_counter() - t0)
        for f in files:
            t1 = time.perf_counter()
            pool1.run(t.read_image, f)
            per_pool.setdefault(f, []).append(time.perf_counter() - t1)
        t0 = time.perf_counter()
        results = list(pool1.map(t.read_image, files))
        isolated.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        list(pool2.map(t.read_image, files))
        parallel.append(time.perf_counter() - t0)
        assert all(r.ok for r in results)
        pixels = sum(getattr(i, "size", 0) for i in images)
    pool1.close()
    pool2.close()
    n = len(files)
    a, b, c = statistics.median(inline), statistics.median(isolated), statistics.median(parallel)
    print(f"{n} files, {pixels / 1e6:.1f} M pixels per round, {args.rounds} rounds (median)")
    print(f"in-process         {a * 1000 / n:8.1f} ms/file")
    print(f"pool, 1 worker     {b * 1000 / n:8.1f} ms/file   overhead {(b - a) * 1000 / n:+.1f} ms/file, "
          f"ratio {b / a:.3f}")
    print(f"pool, 2 workers    {c * 1000 / n:8.1f} ms/file   ratio {c / a:.3f} (throughput)")
    for f in files:
        a1, b1 = statistics.median(per_inline[f]), statistics.median(per_pool[f])
        print(f"  {Path(f).name[:44]:44s} in-process {a1 * 1000:7.1f} ms  pool {b1 * 1000:7.1f} ms  "
              f"{(b1 - a1) * 1000:+6.1f} ms")
    print(f"pool start-up      {startup:8.2f} s (once per process, {len(preload)} modules preloaded)")


if __name__ == "__main__":
    main()
