"""Benchmark: the seed's per-sample preprocessing against the image store (run by hand, not in CI).

    python benchmarks/bench_preprocess.py --n 16

Makes ``--n`` synthetic ``--size`` x ``--size`` 16-bit uncompressed DICOMs (``cacxr.synth.make_cohort``
without faults when it is available, else a built-in writer), then on the same files measures:

(a) baseline: the original per-sample path in one process: pydicom ``dcmread(force=True)`` ->
    ``apply_voi_lut`` -> ``skimage.exposure.equalize_hist`` -> uint8 -> MONOCHROME1 inversion ->
    PIL bilinear resize to round(1.21875 S) -> centre crop S -> float tensor -> normalise;
(b) first pass: ``build_store`` with every core and in one process, with reduced decoding (the default:
    JPEG 2000 and 8-bit JPEG decoded only as large as the profile needs) and, in one process, with
    ``full_decode=True`` (every file decoded in full, the store path before issue 22);
(c) a later epoch: ``StoreDataset`` over every image (store read + normalise), as a training loop does;

With ``--archive mixed`` the images are re-encoded in turn as uncompressed, RLE, JPEG-LS and JPEG 2000
(all lossless), as an archive mixing scanners holds them; the baseline then decodes with pydicom's default
plugins (pylibjpeg-libjpeg for JPEG-LS, pylibjpeg-openjpeg for JPEG 2000), the store with the decoders
``cacxr.imaging.decoders`` chooses. A per-syntax table compares the two decoders on the same files.

(d) where the store's CPU goes: per transfer syntax, the read (decode) and profile CPU per file in one
    store worker, with reduced and with full decoding, and the most any number of cores could gain from it;

plus bytes per image on disk, RSS growth, the mean absolute difference between the baseline's
uint8 pixels and the store's, and between the reduced-decode and full-decode stores. Targets (2-core machine): (b) >= 8x (a), (c) >= 200 images/s,
<= 1.1 MiB per image, difference <= 1 grey level on average.

The difference target covers the images where both recipes are the same. The baseline windows the
raw stored values (it skips the modality LUT); cacxr follows the DICOM standard (VOI after the
modality LUT), so on files with RescaleSlope != 1 or RescaleIntercept != 0 the two recipes differ:
those images are reported separately (count and difference), not in the target.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB since start (or the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS, where the kernel allows it."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children: the store's pool workers count once the
    build has closed (joined) them."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


MIXED_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # explicit VR little endian (uncompressed)
    "1.2.840.10008.1.2.5",  # RLE lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
)


def reencode(files: list[Path]) -> None:
    """Re-encode the files in turn with each of MIXED_SYNTAXES (lossless: same pixels)."""
    import pydicom
    from pydicom.uid import UID

    for index, path in enumerate(files):
        ds = pydicom.dcmread(path, force=True)
        pixels = ds.pixel_array
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        syntax = UID(MIXED_SYNTAXES[index % len(MIXED_SYNTAXES)])
        if syntax.is_compressed:
            ds.compress(syntax, pixels)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)


# pydicom 3.0's own plugin order (what it uses when not told): the first one installed.
PYDICOM_ORDER = {
    "1.2.840.10008.1.2.5": ("pylibjpeg", "pydicom"),
    "1.2.840.10008.1.2.4.80": ("gdcm", "pylibjpeg", "pyjpegls"),
    "1.2.840.10008.1.2.4.90": ("gdcm", "pylibjpeg", "pillow"),
}


def codec_table(rows: list, repeats: int = 2) -> list[tuple[str, str, float, str, float]]:
    """Per transfer syntax: pydicom's default decoder and cacxr's choice, best ms per image of each."""
    import pydicom
    from pydicom.pixels.decoders.base import get_decoder

    from cacxr.imaging.decoders import decoding_plugin

    by_syntax: dict[str, list[str]] = {}
    for row in rows:
        uid = pydicom.dcmread(row.path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        by_syntax.setdefault(uid, []).append(row.path)
    table = []
    for uid, paths in sorted(by_syntax.items()):
        chosen = decoding_plugin(uid)
        available = get_decoder(uid).available_plugins if uid.is_compressed else ()
        default = next((p for p in PYDICOM_ORDER.get(uid, ()) if p in available), "")
        times = {}
        for plugin in dict.fromkeys([default, chosen]):
            best = []
            for path in paths:
                runs = []
                for _ in range(repeats):
                    ds = pydicom.dcmread(path)
                    start = time.perf_counter()
                    if plugin:
                        ds.pixel_array_options(decoding_plugin=plugin)
                    _ = ds.pixel_array
                    runs.append(time.perf_counter() - start)
                best.append(min(runs))
            times[plugin] = 1e3 * float(np.mean(best))
        table.append((uid.name, default or "native", times[default], chosen or "native", times[chosen]))
    return table


def entry_cost(path: str, image_size: int, full_decode: bool) -> tuple[str, float, float]:
    """(syntax, read CPU s, profile CPU s) of one store entry, as a store worker computes it (no write)."""
    import pydicom

    from cacxr.pixels import get_profile, preprocess_read, read_for_profile

    spec = get_profile("seed")
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name
    start = time.process_time()
    result = read_for_profile(path, spec, image_size, full_decode=full_decode)
    read = time.process_time()
    preprocess_read(result, spec, image_size)
    return syntax, read - start, time.process_time() - read


def store_cost_table(rows: list, image_size: int, full_decode: bool) -> dict[str, tuple[int, float, float]]:
    """Per transfer syntax: (files, read ms, profile ms) of CPU per file in one store worker (one thread).

    The same bounded worker, modules and initializer as the store build, warmed up on every syntax first, so
    this is where the build's CPU goes per file once the pool runs.
    """
    from cacxr.core import one_thread_per_worker
    from cacxr.imaging import bounded_pool
    from cacxr.pixels.build import store_worker_modules

    warm_up = rows[: len(MIXED_SYNTAXES)]  # one file of each syntax: the decoders' lazy imports
    jobs = [(r.path, image_size, full_decode) for r in (*warm_up, *rows)]
    costs: dict[str, list[tuple[float, float]]] = {}
    with bounded_pool(1, store_worker_modules(), one_thread_per_worker) as pool:
        outcomes = list(pool.map(entry_cost, jobs, star=True))
    for outcome in outcomes[len(warm_up) :]:
        syntax, read, profile = outcome.value
        costs.setdefault(syntax, []).append((read, profile))
    return {k: (len(v), *(1e3 * np.mean(v, axis=0))) for k, v in sorted(costs.items())}


def make_data(folder: Path, n: int, size: int, archive: str = "uncompressed") -> list:
    """The benchmark's DICOMs as manifest rows (one frontal image per patient)."""
    from cacxr.ingest import ManifestRow

    try:
        from cacxr.synth import make_cohort
    except ImportError:
        make_cohort = None
    if make_cohort is not None:
        make_cohort(folder, patients=n, size=size, faults=False, progress=False)
        files = [sorted((folder / d.name).rglob("*.dcm"))[0] for d in sorted(folder.iterdir()) if d.is_dir()]
        source = "cacxr.synth.make_cohort"
    else:
        files = [write_dicom(folder / f"CAC_{i:03d}" / "rx" / "IM-1.dcm", size, seed=i) for i in range(n)]
        source = "built-in writer"
    if archive == "mixed":
        reencode(files[:n])
    kind = "uncompressed, RLE, JPEG-LS, JPEG 2000 in turn" if archive == "mixed" else "as synthesised"
    print(f"data: {len(files[:n])} DICOMs {size}x{size} 16-bit, {kind} ({source}) in {folder}")
    return [
        ManifestRow(patient_id=path.parts[-3], path=str(path), site="internal", cac_score=0.0)
        for path in files[:n]
    ]


def write_dicom(path: Path, size: int, seed: int) -> Path:
    """A chest-like 12-bit DX image with a window: smooth anatomy, ribs and quantum noise."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    y, x = (np.mgrid[0:size, 0:size].astype(np.float32) / size) - 0.5
    body = np.exp(-(x**2) / 0.12 - y**2 / 0.2)
    lungs = np.exp(-((np.abs(x) - 0.18) ** 2) / 0.012 - (y + 0.02) ** 2 / 0.06)
    ribs = 0.08 * np.maximum(0, np.sin(40 * (y + 0.1 * x**2) + seed)) * lungs
    heart = np.exp(-((x + 0.06) ** 2) / 0.01 - (y - 0.1) ** 2 / 0.012)
    image = 600 + 2600 * body - 1500 * lungs + 900 * heart + 2500 * ribs
    image += rng.normal(0, 25, image.shape).astype(np.float32)
    pixels = np.clip(image, 0, 4095).astype(np.uint16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition = "DX", "PA"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2000, 3600
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def has_rescale(path: str) -> bool:
    """Whether the file has a non-identity modality LUT (RescaleSlope != 1 or RescaleIntercept != 0)."""
    import pydicom

    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    return float(ds.get("RescaleSlope", 1) or 1) != 1.0 or float(ds.get("RescaleIntercept", 0) or 0) != 0.0


def baseline_sample(path: str, image_size: int):
    """The seed's per-sample path; returns (uint8 crop, normalised tensor)."""
    import pydicom
    import torch
    from PIL import Image
    from pydicom.pixels import apply_voi_lut
    from skimage.exposure import equalize_hist

    ds = pydicom.dcmread(path, force=True)
    image = apply_voi_lut(ds.pixel_array, ds)
    image = (equalize_hist(image) * 255).astype(np.uint8)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        image = 255 - image
    resized = round(1.21875 * image_size)
    offset = (resized - image_size) // 2
    image = np.asarray(Image.fromarray(image).resize((resized, resized), Image.BILINEAR))
    crop = image[offset : offset + image_size, offset : offset + image_size]
    tensor = (torch.from_numpy(crop.copy()).float()[None] / 255 - 0.5024) / 0.2898
    return crop, tensor


class Measure:
    """Wall time, CPU time of this process, and peak RSS growth of one block."""

    def __enter__(self) -> Measure:
        reset_peak_rss()
        self._rss, self._wall, self._cpu = rss_mib(), time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = cpu_seconds() - self._cpu
        self.rss_growth = peak_rss_mib() - self._rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=40, help="number of images (default 40)")
    parser.add_argument("--size", type=int, default=2048, help="side of the synthetic DICOMs (default 2048)")
    parser.add_argument("--image-size", type=int, default=1024, help="stored image side S (default 1024)")
    parser.add_argument("--workers", type=int, default=None, help="store build workers (default: all cores)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="scratch folder (default: a new temporary one)"
    )
    parser.add_argument(
        "--archive",
        choices=("uncompressed", "mixed"),
        default="uncompressed",
        help="the files as synthesised, or re-encoded in turn as uncompressed/RLE/JPEG-LS/JPEG 2000",
    )
    args = parser.parse_args(argv)
    if min(args.n, args.size, args.image_size) < 1:
        parser.error("--n, --size and --image-size must be at least 1")

    import torch

    from cacxr.pixels import build_store, default_workers
    from cacxr.training.dataset import StoreDataset

    torch.set_num_threads(1)
    scratch = Path(tempfile.mkdtemp(prefix="cacxr-bench-")) if args.dir is None else args.dir
    try:
        rows = make_data(scratch / "data", args.n, args.size, args.archive)
        n = len(rows)
        workers = args.workers or default_workers()
        build = {"image_size": args.image_size, "progress": False}

        with Measure() as baseline_m:  # (a)
            baseline = [baseline_sample(row.path, args.image_size)[0] for row in rows]
        with Measure() as first_m:  # (b) every core
            store = build_store(rows, scratch / "store", workers=workers, **build)
        with Measure() as serial_m:  # (b) in this process only: the per-core cost
            build_store(rows, scratch / "store-1", workers=1, **build)
        with Measure() as full_m:  # (b) every file decoded in full, in this process: the path before reduction
            full_store = build_store(rows, scratch / "store-full", workers=1, full_decode=True, **build)
        assert len(store) == n, store.failed
        reduced_vs_full = np.array(
            [np.abs(full_store.get(p).astype(np.int16) - store.get(p)) for p in store.ids]
        ).reshape(n, -1)

        # (c) later epochs: the dataset a training loop iterates, repeated for at least 2 s
        dataset = StoreDataset(store, store.ids)
        epochs = 0
        with Measure() as epoch_m:
            while epochs < 2 or time.perf_counter() - epoch_m._wall < 2.0:
                for index in range(len(dataset)):
                    assert dataset[index]["image"].shape == (1, args.image_size, args.image_size)
                epochs += 1

        npy_bytes = sum(store.entry_path(pid).stat().st_size for pid in store.ids) / n
        store_bytes = sum(p.stat().st_size for p in (scratch / "store").rglob("*") if p.is_file()) / n
        diffs = np.array(
            [
                np.abs(b.astype(np.int16) - store.get(r.patient_id)).mean()
                for b, r in zip(baseline, rows, strict=True)
            ]
        )
        rescaled = np.array([has_rescale(r.path) for r in rows], dtype=bool)
        codecs = codec_table(rows) if args.archive == "mixed" else []
        costs = {mode: store_cost_table(rows, args.image_size, mode == "full") for mode in ("reduced", "full")}
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)

    rate_a = n / baseline_m.wall
    table = [
        ("(a) baseline, per sample, 1 process", baseline_m, 1),
        (f"(b) store, reduced decode, {workers} processes", first_m, 1),
        ("(b) store, reduced decode, 1 process", serial_m, 1),
        ("(b) store, full decode, 1 process", full_m, 1),
        ("(c) later epoch (StoreDataset, normalised)", epoch_m, epochs),
    ]
    print(f"\n{n} images {args.size}x{args.size} -> S={args.image_size}; {default_workers()} cores available")
    print(f"{'path':<44}{'images/s':>10}{'ratio':>8}{'CPU ms/image':>21}{'RSS growth':>12}")
    rates = {}
    for name, m, repeats in table:
        rates[name] = rate = n * repeats / m.wall
        cpu = f"{m.cpu / (n * repeats) * 1e3:.1f}"  # the store's workers included (joined by then)
        print(f"{name:<44}{rate:>10.1f}{rate / rate_a:>8.2f}{cpu:>21}{m.rss_growth:>9.1f} MiB")
    print(
        f"disk per image: {npy_bytes / 2**20:.4f} MiB (.npy), {store_bytes / 2**20:.4f} MiB with sidecar + index"
    )
    same = diffs[~rescaled]
    if same.size:
        print(
            f"mean |baseline - store| over the {same.size} images without rescale (same recipe): "
            f"{same.mean():.3f} grey levels (worst image {same.max():.3f})"
        )
    else:
        print("mean |baseline - store|: no image without rescale to compare")
    if rescaled.any():
        print(
            f"excluded: {int(rescaled.sum())} images with RescaleSlope/Intercept (baseline skips the "
            f"modality LUT): mean |baseline - store| {diffs[rescaled].mean():.3f} grey levels "
            f"(worst {diffs[rescaled].max():.3f})"
        )
    if codecs:
        print(f"\n{'transfer syntax':<46}{'pydicom default':>26}{'cacxr choice':>26}{'speed-up':>10}")
        print("(mean decode time per image, best of 2, one process)")
        for name, default, t_default, chosen, t_chosen in codecs:
            print(
                f"{name:<46}{default:>16}{t_default:>7.0f} ms{chosen:>16}{t_chosen:>7.0f} ms"
                f"{t_default / t_chosen:>9.1f}x"
            )
    print(
        f"reduced vs full decode store: mean |d| {reduced_vs_full.mean():.3f} grey levels (worst image "
        f"{reduced_vs_full.mean(axis=1).max():.3f}), max {int(reduced_vs_full.max())}; per core "
        f"{full_m.cpu / max(serial_m.cpu, 1e-9):.2f}x less CPU with reduced decoding"
    )
    baseline_ms = baseline_m.cpu / n * 1e3
    print(f"\nwhere the store's CPU goes (ms per file, one worker, one thread; baseline {baseline_ms:.0f} ms per image)")
    print(f"{'transfer syntax':<46}{'files':>6}{'read (reduced)':>16}{'profile':>9}{'read (full)':>13}{'profile':>9}")
    for syntax, (count, read, profile) in costs["reduced"].items():
        _, full_read, full_profile = costs["full"][syntax]
        print(f"{syntax:<46}{count:>6}{read:>16.0f}{profile:>9.0f}{full_read:>13.0f}{full_profile:>9.0f}")
    cores = default_workers()
    for mode, per_syntax in costs.items():
        mean_ms = sum(c * (r + p) for c, r, p in per_syntax.values()) / n
        print(
            f"{mode} decode: {mean_ms:.0f} ms of CPU per image of this archive; even with nothing else to do, "
            f"{cores} cores could go at most {cores * baseline_ms / mean_ms:.1f}x the baseline's {baseline_ms:.0f} ms"
        )
    rate_b, rate_c = rates[table[1][0]], rates[table[4][0]]
    checks = {
        "first pass >= 8x baseline": rate_b / rate_a >= 8,
        "later epoch >= 200 images/s": rate_c >= 200,
        "<= 1.1 MiB per image": npy_bytes <= 1.1 * 2**20 * (args.image_size / 1024) ** 2,
        "mean difference <= 1 grey level (no rescale)": bool(same.size) and float(same.mean()) <= 1.0,
    }
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
