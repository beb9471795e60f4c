"""Benchmark: the same cross-validated run on a reduced-decode store and on a full-decode store (issue 22).

    python benchmarks/compare_reduced_runs.py --out /tmp/reduced-runs [--codec jpeg j2k] [--markdown FILE]

For each codec it generates the demo's synthetic cohort (``cacxr.synth.make_cohort``, demo plaques) in a
syntax that reduced decoding applies to, at a size where it does (the file's short side at least twice the
profile's decode side, so the reduction factor is 2 or more):

- ``jpeg``: the cohort as an image export of plain baseline 8-bit .jpg files (libjpeg DCT scaling);
- ``j2k``: the cohort in the seed's DICOM layout without faults, every radiograph re-encoded as JPEG 2000
  lossless (OpenJPEG resolution levels).

It ingests the cohort once, builds two image stores from the same manifest (``build_store``: reduced
decoding, the default, and ``full_decode=True``, as ``cacxr preprocess --full-decode`` does), checks the
reduction happened (entries not byte-identical, the reduction factor of the files), and trains the same
classification run on each store (``train_run``: same seed, folds and settings; the demo's by default).
It writes, per codec, a table: each fold's AUC with its bootstrap 95% interval on both stores, their
difference, and whether each lies within the other's interval; the pooled AUCs; and the stores' grey-level
differences (mean and max absolute difference per entry, averaged and at worst over the entries).

``tests/training/test_reduced_runs.py`` runs the same functions on a smaller cohort.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cacxr.demo import DemoSettings

CODECS = ("jpeg", "j2k")


@dataclass(frozen=True)
class Settings(DemoSettings):
    """The cohort and the run: ``cacxr demo``'s classification run (its settings), images at 512 px."""

    synth_size: int = 512
    num_threads: int | None = None
    workers: int = 1
    control_seeds: tuple[int, ...] = ()  # also train both stores with these seeds (training noise)


@dataclass
class Comparison:
    """What one codec's comparison measured."""

    codec: str
    settings: Settings
    reduction: dict[str, Any] = field(default_factory=dict)  # decoded vs declared short side
    stores: dict[str, Any] = field(default_factory=dict)  # grey-level differences between the stores
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # mode -> metrics.json content
    control: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)  # seed -> mode -> pooled
    seconds: dict[str, float] = field(default_factory=dict)

    def folds(self) -> list[dict[str, Any]]:
        """Per fold: both AUCs and intervals, their difference, each within the other's interval."""
        full = {f["fold"]: f for f in self.runs["full"]["folds"]}
        rows = []
        for reduced in self.runs["reduced"]["folds"]:
            other = full[reduced["fold"]]
            rows.append(_pair(reduced["fold"], reduced, other))
        return rows

    def pooled(self) -> dict[str, Any]:
        return _pair("pooled", self.runs["reduced"]["pooled"], self.runs["full"]["pooled"])


def _pair(name: Any, reduced: dict[str, Any], full: dict[str, Any]) -> dict[str, Any]:
    r_auc, f_auc = reduced["auc"], full["auc"]
    r_ci, f_ci = list(reduced["auc_ci"]), list(full["auc_ci"])
    return {
        "fold": name,
        "reduced_auc": r_auc,
        "reduced_ci": r_ci,
        "full_auc": f_auc,
        "full_ci": f_ci,
        "diff": r_auc - f_auc,
        "reduced_in_full_ci": f_ci[0] <= r_auc <= f_ci[1],
        "full_in_reduced_ci": r_ci[0] <= f_auc <= r_ci[1],
    }


def make_coded_cohort(out: Path, codec: str, s: Settings) -> Path:
    """The demo's cohort (no faults) with every radiograph in ``codec``; returns the cohort folder."""
    from cacxr.synth import make_cohort

    if codec not in CODECS:
        raise ValueError(f"codec {codec!r}: expected one of {', '.join(CODECS)}")
    image_format = "jpeg" if codec == "jpeg" else "dicom"
    make_cohort(out, s.patients, seed=s.seed, size=s.synth_size, faults=False, progress=False,
                plaque_scale=s.plaque_scale, image_format=image_format)
    if codec == "j2k":
        for path in sorted(out.rglob("*.dcm")):
            _to_j2k(path)
    return out


def _to_j2k(path: Path) -> None:
    """Re-encode an uncompressed DICOM radiograph as JPEG 2000 lossless, in place (written beside, renamed)."""
    import pydicom
    from pydicom.uid import JPEG2000Lossless

    from cacxr.core import write_bytes

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    write_bytes(path, buffer.getvalue())


def ingest_cohort(cohort: Path, out: Path, workers: int = 1) -> Path:
    """Ingest the cohort; returns its manifest.csv."""
    from cacxr.ingest import MANIFEST_FILE, ingest
    from cacxr.synth import LABELS_FILE

    labels = cohort / LABELS_FILE  # an image export's label table; the DICOM layout has site.db
    ingest(cohort, out, labels=labels if labels.is_file() else None, workers=workers, progress=False)
    return out / MANIFEST_FILE


def reduction_factors(manifest: Path, profile: str, image_size: int) -> dict[str, Any]:
    """How much the files shrank when decoded for the profile: declared / decoded short side, per file."""
    from cacxr.ingest import read_manifest
    from cacxr.pixels import read_for_profile

    factors = []
    for row in read_manifest(manifest):
        read = read_for_profile(row.path, profile, image_size)
        if not read.ok:
            raise RuntimeError(f"{row.path}: unreadable ({read.detail})")
        factors.append(min(read.meta.rows, read.meta.cols) / min(read.image.shape[:2]))
    values = np.asarray(factors)
    return {"files": len(values), "reduced": int((values >= 2).sum()), "factor_min": float(values.min()),
            "factor_max": float(values.max())}


def compare_stores(reduced, full) -> dict[str, Any]:
    """Grey-level differences between the two stores' entries (uint8 levels, after the profile)."""
    means, maxima, identical = [], [], 0
    for pid in full.ids:
        a, b = reduced.get(pid).astype(np.int16), full.get(pid).astype(np.int16)
        diff = np.abs(a - b)
        identical += int(not diff.any())
        means.append(float(diff.mean()))
        maxima.append(int(diff.max()))
    return {"entries": len(means), "identical": identical, "mean_of_means": float(np.mean(means)),
            "worst_mean": float(np.max(means)), "mean_of_max": float(np.mean(maxima)),
            "worst_max": int(np.max(maxima))}


def train(manifest: Path, store: Path, out: Path, s: Settings) -> dict[str, Any]:
    """The demo's classification run on ``manifest`` with the image store ``store`` (already built)."""
    from cacxr.config import TrainConfig
    from cacxr.training import train_run

    config = TrainConfig(
        task="classification", data=str(manifest), out=str(out), epochs=s.epochs, arch=s.arch, kfold=s.kfold,
        image_size=s.image_size, weights="none", finetune=s.finetune, lr=s.lr, milestones=list(s.milestones),
        batchsize=s.batchsize, seed=s.seed, num_threads=s.num_threads, progress=False, store=str(store),
        viz=False, save=False, workers=s.workers,
    )
    return train_run(config)


def compare(root: Path, codec: str, s: Settings) -> Comparison:
    """Generate, ingest, build both stores, train on each; everything is written under ``root/codec``."""
    from cacxr.pixels import ImageStore, build_store

    result = Comparison(codec, s)
    base = root / codec
    t0 = time.perf_counter()
    cohort = make_coded_cohort(base / "cohort", codec, s)
    manifest = ingest_cohort(cohort, base / "ingest", s.workers)
    result.seconds["cohort"] = time.perf_counter() - t0
    result.reduction = reduction_factors(manifest, "seed", s.image_size)
    stores = {}
    for mode in ("reduced", "full"):
        t0 = time.perf_counter()
        stores[mode] = build_store(manifest, base / f"store-{mode}", "seed", s.image_size, workers=s.workers,
                                   progress=False, full_decode=mode == "full")
        result.seconds[f"store_{mode}"] = time.perf_counter() - t0
    result.stores = compare_stores(stores["reduced"], stores["full"])
    for mode in ("reduced", "full"):
        t0 = time.perf_counter()
        result.runs[mode] = train(manifest, base / f"store-{mode}", base / f"run-{mode}", s)
        result.seconds[f"train_{mode}"] = time.perf_counter() - t0
        # the run reused the store as built: same mode, nothing rebuilt
        reopened = ImageStore.open(base / f"store-{mode}")
        if reopened.decode != mode:
            raise RuntimeError(f"{reopened.root}: training switched the store to {reopened.decode} decoding")
    for seed in s.control_seeds:
        for mode in ("reduced", "full"):
            run = train(manifest, base / f"store-{mode}", base / f"run-{mode}-seed{seed}", replace(s, seed=seed))
            result.control.setdefault(seed, {})[mode] = run["pooled"]
    return result


def _ci(ci: list[float]) -> str:
    return f"{ci[0]:.3f}-{ci[1]:.3f}"


def markdown(results: list[Comparison]) -> str:
    """The tables README shows."""
    lines = []
    for r in results:
        s, st, red = r.settings, r.stores, r.reduction
        lines += [
            f"**{r.codec}** ({s.patients} patients, {s.synth_size} px files -> seed profile S = {s.image_size}: "
            f"{red['reduced']} of {red['files']} files decoded reduced, factor {red['factor_min']:g}-"
            f"{red['factor_max']:g}; {st['identical']} of {st['entries']} store entries byte-identical; grey-level "
            f"difference per entry: mean {st['mean_of_means']:.2f} (worst entry {st['worst_mean']:.2f}), max "
            f"{st['mean_of_max']:.1f} on average (worst {st['worst_max']}))",
            "",
            "| fold | AUC reduced (95% CI) | AUC full (95% CI) | reduced - full | reduced in full's CI | full in "
            "reduced's CI |",
            "|---|---|---|---|---|---|",
        ]
        for row in [*r.folds(), r.pooled()]:
            lines.append(
                f"| {row['fold']} | {row['reduced_auc']:.3f} ({_ci(row['reduced_ci'])}) | {row['full_auc']:.3f} "
                f"({_ci(row['full_ci'])}) | {row['diff']:+.3f} | {'yes' if row['reduced_in_full_ci'] else 'NO'} | "
                f"{'yes' if row['full_in_reduced_ci'] else 'NO'} |"
            )
        if r.control:
            pooled = {s.seed: {m: r.runs[m]["pooled"] for m in ("reduced", "full")}, **r.control}
            cells = [f"seed {seed}: {p['reduced']['auc']:.3f} / {p['full']['auc']:.3f} "
                     f"({p['reduced']['auc'] - p['full']['auc']:+.3f})" for seed, p in pooled.items()]
            spread = {m: [p[m]["auc"] for p in pooled.values()] for m in ("reduced", "full")}
            lines += ["", "Training noise (the same two stores, other training seeds; the folds change with the "
                      "seed): pooled AUC reduced / full (difference): " + "; ".join(cells) + ". Range over seeds "
                      "on one store: " + ", ".join(f"{m} {min(v):.3f}-{max(v):.3f}" for m, v in spread.items())
                      + "."]
        secs = r.seconds
        lines += ["", f"time: cohort + ingest {secs['cohort']:.0f} s, stores {secs['store_reduced']:.1f} s reduced / "
                  f"{secs['store_full']:.1f} s full, training {secs['train_reduced']:.0f} s / "
                  f"{secs['train_full']:.0f} s", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="new or empty work folder")
    parser.add_argument("--codec", nargs="+", choices=CODECS, default=list(CODECS))
    defaults = Settings()
    parser.add_argument("--patients", type=int, default=defaults.patients)
    parser.add_argument("--synth-size", type=int, default=defaults.synth_size)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--kfold", type=int, default=defaults.kfold)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--control-seeds", type=int, nargs="*", default=[],
                        help="also train both stores with these seeds, to show the training noise")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out}: not empty")
    s = Settings(patients=args.patients, synth_size=args.synth_size, image_size=args.image_size,
                 epochs=args.epochs, kfold=args.kfold, seed=args.seed, num_threads=args.num_threads,
                 control_seeds=tuple(args.control_seeds))
    results = [compare(args.out, codec, s) for codec in args.codec]
    text = markdown(results)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    if args.json:
        record = [{"codec": r.codec, "settings": r.settings.__dict__, "reduction": r.reduction, "stores": r.stores,
                   "folds": r.folds(), "pooled": r.pooled(), "control": r.control, "seconds": r.seconds} for r in results]
        args.json.write_text(json.dumps(record, indent=1, default=list), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
