"""Benchmark: a short load test of `cacxr serve` on the loopback interface (run by hand, not in CI).

    python benchmarks/bench_serve.py --run RUN [--requests 300] [--concurrency 8] [--file IMAGE]

Starts ``cacxr serve RUN`` as a separate process on a free port of 127.0.0.1 (nothing else is ever
contacted), then sends ``--requests`` uploads of one radiograph to ``POST /predict``, ``--concurrency`` at a
time, and prints the latency p50/p95/max, the requests per second and the errors. Bounded: it stops
sending after ``--max-seconds`` and gives up on a request after ``--timeout`` seconds. The exit code is
1 when any request failed or none completed.

Without ``--run`` a tiny run is trained first in a temporary folder (synthetic cohort, resnet18 at
64 px, 2 folds, 1 epoch); the default image is the real SIIM DICOM beside the project
(``../shared/data/real_cxr/txv_siim_chest_pa.dcm``, 1024 x 1024 JPEG) when present, else a synthetic one.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HOST = "127.0.0.1"  # loopback only: the benchmark never opens the service to the network
REAL_DICOM = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_cxr" / "txv_siim_chest_pa.dcm"


def tiny_run(folder: Path) -> tuple[Path, Path]:
    """Train a tiny run on a synthetic cohort; returns (run folder, an external patient's DICOM)."""
    from cacxr.config import TrainConfig
    from cacxr.synth import make_cohort
    from cacxr.training import train_run

    cohort = folder / "cohort"
    make_cohort(cohort, 40, external=4, seed=0, size=256, faults=False, progress=False)
    config = TrainConfig(
        task="classification", data=str(cohort), out=str(folder / "run"), arch="resnet18", epochs=1,
        kfold=2, image_size=64, seed=1, batchsize=8, viz=False, workers=1, progress=False,
        store=str(folder / "store"),
    )  # fmt: skip
    train_run(config)
    external = sorted(p for p in cohort.rglob("*.dcm") if "CAC" not in p.relative_to(cohort).parts[0])
    return folder / "run", external[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(run: Path, port: int, threads: int) -> subprocess.Popen:
    """``cacxr serve`` in its own process; returns once /health answers."""
    command = [sys.executable, "-m", "cacxr", "serve", str(run), "--host", HOST, "--port", str(port)]
    command += ["--workers-threads", str(threads)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"cacxr serve exited with {process.returncode}: {process.stderr.read()}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("cacxr serve did not start within 120 s")


async def load(url: str, data: bytes, name: str, n: int, concurrency: int, max_s: float, timeout: float):
    """Send ``n`` uploads, ``concurrency`` at a time; returns (latencies in s, errors, wall seconds)."""
    latencies: list[float] = []
    errors: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty() and time.perf_counter() - start < max_s:
                queue.get_nowait()
                sent = time.perf_counter()
                try:
                    answer = await client.post(url, files={"file": (name, data, "application/octet-stream")})
                    if answer.status_code != 200:
                        errors.append(f"HTTP {answer.status_code}: {answer.text[:200]}")
                    else:
                        latencies.append(time.perf_counter() - sent)
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: train a tiny one first)")
    parser.add_argument("--file", type=Path, help="the radiograph to upload (default: see above)")
    parser.add_argument("--requests", type=int, default=300, help="uploads to send (default 300)")
    parser.add_argument("--concurrency", type=int, default=8, help="uploads in flight (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="the server's --workers-threads (default 2)")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="stop sending after this (180)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in s (60)")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 5000 or not 1 <= args.concurrency <= 64:
        parser.error("--requests must be in 1..5000 and --concurrency in 1..64")

    with tempfile.TemporaryDirectory(prefix="cacxr-bench-serve-") as scratch:
        run, image = args.run, args.file
        if run is None:
            print("training a tiny run…", file=sys.stderr)
            run, synthetic = tiny_run(Path(scratch))
            image = image or (REAL_DICOM if REAL_DICOM.is_file() else synthetic)
        elif image is None:
            if not REAL_DICOM.is_file():
                parser.error("--file is required when ../shared/data/real_cxr is absent")
            image = REAL_DICOM
        data = image.read_bytes()
        port = free_port()
        server = start_server(run, port, args.threads)
        try:
            url = f"http://{HOST}:{port}/predict"
            warm = httpx.post(url, files={"file": (image.name, data)}, timeout=args.timeout)
            if warm.status_code != 200:
                print(f"warm-up request failed: HTTP {warm.status_code}: {warm.text}", file=sys.stderr)
                return 1
            latencies, errors, wall = asyncio.run(
                load(url, data, image.name, args.requests, args.concurrency, args.max_seconds, args.timeout)
            )
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()

    done = len(latencies)
    print(f"image        {image.name} ({len(data) / 1024:.0f} KB), run {Path(run).name}")
    print(f"requests     {done} ok, {len(errors)} failed, of {args.requests} ({args.concurrency} at a time)")
    if done:
        ms = [1000 * s for s in latencies]
        print(
            f"latency      p50 {percentile(ms, 50):.0f} ms, p95 {percentile(ms, 95):.0f} ms, max {max(ms):.0f} ms"
        )
        print(f"throughput   {done / wall:.1f} requests/s over {wall:.1f} s")
    for error in errors[:5]:
        print(f"error        {error}", file=sys.stderr)
    return 0 if done and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
