"""GPU throughput of each encoder: training and inference images/s in float32 and bfloat16, and the
fraction of the card's measured matrix-multiply peak that the model achieves (run by hand).

1. The peak: a large square matmul in float32 and in bfloat16, timed; TFLOP/s = 2 N^3 / time. Float32
   is measured with TF32 allowed exactly when cuDNN allows it for convolutions (PyTorch's default), so
   that model and peak run on the same units.
2. The model's FLOPs per image, counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions
   and matrix products): one forward for inference, forward + backward for training (the whole network
   trains: ``set_finetune("all")``).
3. Images/s: training steps (AdamW, cross-entropy) and inference batches (eval, ``inference_mode``) on
   random images, after warm-up steps, with the fast path's memory format (cacxr.training.accel) and autocast to
   bfloat16 for the bf16 rows. Achieved TFLOP/s = FLOPs per image x images/s; fraction = that / peak.
4. With ``--store N``: the input side. ``N`` synthetic ``--store-size`` px DICOMs in a mixed-codec archive
   (uncompressed, RLE, JPEG-LS, JPEG 2000, as ``bench_preprocess.py --archive mixed``) go through the image
   store build at each size, with reduced decoding (the default: JPEG 2000 / 8-bit JPEG decoded only as large
   as the profile needs) and with ``full_decode=True``, on every core: images/s of each, to set against the
   GPU's images/s (a first epoch cannot run faster than the store is built).

Usage::

    python benchmarks/bench_gpu.py --device cuda --sizes 1024 --batch 8 [--compile] [--json out.json]
    python benchmarks/bench_gpu.py --device cuda --sizes 512 1024 --store 32   # + the store build's images/s
    python benchmarks/bench_gpu.py --device cpu --sizes 64      # a quick check that it runs
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from cacxr.config import resolve_device
from cacxr.core import write_json
from cacxr.model import ARCHS, build_model
from cacxr.training.accel import AccelPlan, choose_accel

DTYPES = {"fp32": None, "bf16": "bfloat16"}


@dataclass
class Row:
    """One encoder at one size and precision."""

    arch: str
    size: int
    dtype: str
    batch: int
    train_ips: float | None  # images/s; None when it did not fit in memory
    infer_ips: float | None
    train_gflop: float  # per image, forward + backward
    infer_gflop: float  # per image, forward
    train_tflops: float | None
    infer_tflops: float | None
    train_peak_fraction: float | None
    infer_peak_fraction: float | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 1.0) -> float:
    """Measured TFLOP/s of an ``n x n`` matmul in ``dtype`` (repeated for about ``seconds``)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32  # as fp32 convolutions run
    try:
        for _ in range(3):
            a @ b
        _sync(device)
        start, iters = time.perf_counter(), 0
        while True:
            for _ in range(10):
                a @ b
            iters += 10
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * n**3 * iters / elapsed / 1e12


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, *args, output_mask=None, **kwargs) -> int:
    """FLOPs of a convolution's backward: one forward's worth for grad input, one for grad weight.

    Replaces torch's formula, which counts grad weight ``groups`` times too many for grouped convolutions
    (efficientnet's depthwise ones); ``args`` are bias, stride, padding, dilation, transposed, ...
    """
    transposed = args[4]
    mask = output_mask if output_mask is not None else args[7]
    return conv_flop_count(x_shape, w_shape, grad_out_shape, transposed) * (int(mask[0]) + int(mask[1]))


_FLOP_FIXES = {torch.ops.aten.convolution_backward: _conv_backward_flop}


def count_flops(arch: str, size: int, device: torch.device) -> tuple[float, float]:
    """FLOPs per image of (training step: forward + backward, inference: forward), counted on one image."""
    model = build_model(arch, 2).to(device)
    x = torch.randn(1, 1, size, size, device=device)
    target = torch.zeros(1, dtype=torch.long, device=device)
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    infer = counter.get_total_flops()
    model.train()
    with FlopCounterMode(display=False, custom_mapping=_FLOP_FIXES) as counter:
        F.cross_entropy(model(x), target).backward()
    return float(counter.get_total_flops()), float(infer)


def _images_per_second(step: Callable[[], None], batch: int, warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def throughput(
    arch: str, size: int, batch: int, plan: AccelPlan, warmup: int, steps: int, device: torch.device
) -> tuple[float | None, float | None]:
    """Training and inference images/s of ``arch`` at ``size`` under ``plan`` (None: out of memory)."""
    torch.manual_seed(0)
    model = plan.prepare_model(build_model(arch, 2).to(device))
    x = plan.to_device(torch.randn(batch, 1, size, size), device)
    target = torch.arange(batch, device=device) % 2
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = plan.grad_scaler_for()
    trained = plan.compile_module(model)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with plan.autocast():
            loss = F.cross_entropy(trained(x), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def infer_step() -> None:
        with torch.inference_mode(), plan.autocast():
            trained(x)

    results: list[float | None] = []
    for mode, step in (("train", train_step), ("eval", infer_step)):
        model.train(mode == "train")
        try:
            results.append(_images_per_second(step, batch, warmup, steps, device))
        except torch.cuda.OutOfMemoryError:
            logging.warning("%s at %d px, batch %d: out of GPU memory in %s", arch, size, batch, mode)
            results.append(None)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results[0], results[1]


def run(args: argparse.Namespace) -> dict:
    """Measure the peaks and every (arch, size, dtype); returns the JSON-ready results."""
    device = resolve_device(args.device)
    n = args.matmul_size or (8192 if device.type == "cuda" else 512)
    peaks = {name: matmul_peak(device, torch.float32 if dtype is None else getattr(torch, dtype), n, args.peak_seconds)
             for name, dtype in DTYPES.items()}
    base = choose_accel(device, compile=args.compile)
    if device.type != "cuda":  # the benchmark runs bf16 on the CPU too (the training path never does)
        base = replace(base, compile=args.compile)
    rows = []
    for arch in args.archs:
        for size in args.sizes:
            train_flops, infer_flops = count_flops(arch, size, device)
            for name, dtype in DTYPES.items():
                plan = replace(base, amp_dtype=dtype, grad_scaler=False)
                train_ips, infer_ips = throughput(arch, size, args.batch, plan, args.warmup, args.steps, device)
                train_tf = None if train_ips is None else train_flops * train_ips / 1e12
                infer_tf = None if infer_ips is None else infer_flops * infer_ips / 1e12
                rows.append(
                    Row(
                        arch, size, name, args.batch, train_ips, infer_ips, train_flops / 1e9, infer_flops / 1e9,
                        train_tf, infer_tf,
                        None if train_tf is None else train_tf / peaks[name],
                        None if infer_tf is None else infer_tf / peaks[name],
                    )
                )
                print(_format_row(rows[-1]), flush=True)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "matmul_size": n,
        "peak_tflops": peaks,
        "fp32_tf32": bool(device.type == "cuda" and torch.backends.cudnn.allow_tf32),
        "plan": base.describe(),
        "rows": [asdict(r) for r in rows],
    }


def store_rates(n: int, source_size: int, sizes: list[int], workers: int | None) -> list[dict]:
    """Images/s of the image store build on a mixed-codec archive, reduced against full decoding, per size."""
    import shutil
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_preprocess import make_data
    from cacxr.pixels import build_store

    scratch = Path(tempfile.mkdtemp(prefix="cacxr-gpu-store-"))
    rates = []
    try:
        rows = make_data(scratch / "data", n, source_size, "mixed")
        # untimed warm-up: the first build pays the decoders' imports and the pool's start-up
        build_store(rows, scratch / "warm-up", image_size=sizes[0], workers=workers, progress=False)
        for size in sizes:
            for decode in ("reduced", "full"):
                start = time.perf_counter()
                store = build_store(
                    rows, scratch / f"{decode}-{size}", image_size=size, workers=workers, progress=False,
                    full_decode=decode == "full",
                )  # fmt: skip
                elapsed = time.perf_counter() - start
                rates.append({"size": size, "decode": decode, "images": len(store), "images_per_s": n / elapsed})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rates


def _fmt(value: float | None, spec: str) -> str:
    return "OOM" if value is None else format(value, spec)


def _format_row(r: Row) -> str:
    return (
        f"{r.arch:>15} | {r.size:>5} | {r.dtype:>4} | {_fmt(r.train_ips, '10.1f')} | {_fmt(r.infer_ips, '10.1f')} | "
        f"{r.train_gflop:>9.1f} | {r.infer_gflop:>9.1f} | {_fmt(r.train_tflops, '8.2f')} | "
        f"{_fmt(r.infer_tflops, '8.2f')} | {_fmt(None if r.train_peak_fraction is None else 100 * r.train_peak_fraction, '7.1f')} | "
        f"{_fmt(None if r.infer_peak_fraction is None else 100 * r.infer_peak_fraction, '7.1f')}"
    )


HEADER = (
    f"{'arch':>15} | {'size':>5} | {'prec':>4} | {'train im/s':>10} | {'infer im/s':>10} | {'train GF':>9} | "
    f"{'infer GF':>9} | {'train TF':>8} | {'infer TF':>8} | {'train %':>7} | {'infer %':>7}"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu (default auto)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024], help="image sizes in px (default 1024)")
    parser.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS), help="encoders (default all)")
    parser.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--matmul-size", type=int, help="side of the peak matmul (default 8192 on CUDA, 512 on CPU)")
    parser.add_argument("--peak-seconds", type=float, default=1.0, help="time spent measuring each peak")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the model")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--store", type=int, default=0, metavar="N", help="also time the store build on N files")
    parser.add_argument("--store-size", type=int, default=2048, help="side of the store benchmark's DICOMs")
    parser.add_argument("--store-workers", type=int, help="store build processes (default: every core)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("TF = achieved TFLOP/s; % = share of the measured matmul peak of the same precision")
    print(HEADER)
    print("-" * len(HEADER))
    results = run(args)
    peaks = ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in results["peak_tflops"].items())
    print(f"device: {results['device']}; matmul peak ({results['matmul_size']}^2): {peaks}")
    if args.store:
        results["store"] = store_rates(args.store, args.store_size, args.sizes, args.store_workers)
        print(f"image store build, mixed-codec archive of {args.store} x {args.store_size} px DICOMs:")
        by = {(r["size"], r["decode"]): r["images_per_s"] for r in results["store"]}
        for size in args.sizes:
            reduced, full = by[(size, "reduced")], by[(size, "full")]
            print(f"  S={size}: reduced decode {reduced:.1f} im/s, full decode {full:.1f} im/s ({reduced / full:.2f}x)")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
