"""`cacxr demo [--out DIR] [--full]`: synth -> ingest -> store -> cross-validated training -> report, on the CPU."""

from __future__ import annotations

import argparse
import dataclasses
import time

from cacxr.core import require_writable
from cacxr.demo import FULL_DEMO, DemoSettings

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of `cacxr demo` (defaults are those of ``DemoSettings``, or ``FULL_DEMO`` with --full)."""
    d = DemoSettings()
    parser.add_argument("--out", default="cacxr-demo", metavar="DIR", help="demo folder (default ./cacxr-demo)")
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"the full-size demo: standard plaques, {FULL_DEMO.image_size} px, {FULL_DEMO.kfold} folds, "
        f"{FULL_DEMO.epochs} epochs (much longer)",
    )
    parser.add_argument("--patients", type=int, help=f"synthetic patients (default {d.patients})")
    parser.add_argument("--synth-size", type=int, help=f"side of the generated radiographs (default {d.synth_size})")
    parser.add_argument(
        "--plaque-scale", type=float, help=f"plaque size relative to the standard cohort (default {d.plaque_scale})"
    )
    parser.add_argument("--image-size", type=int, help=f"model input side in px (default {d.image_size})")
    parser.add_argument("--epochs", type=int, help=f"epochs per fold (default {d.epochs})")
    parser.add_argument("--arch", choices=("densenet121", "resnet18", "efficientnet-b0"), help=f"encoder ({d.arch})")
    parser.add_argument("--kfold", type=int, help=f"cross-validation folds (default {d.kfold})")
    parser.add_argument("--seed", type=int, help=f"seed of cohort and training (default {d.seed})")
    parser.add_argument("--num-threads", type=int, metavar="N", help="torch CPU threads per training (default: auto)")
    parser.add_argument(
        "--parallel",
        action=argparse.BooleanOptionalAction,
        help="train the regressor in a second process beside the classifier (default: with 2+ cores)",
    )
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")


def run(args: argparse.Namespace) -> int:
    """Run the demo and print each approach's figures, the time it took and where the reports are."""
    from cacxr.demo import headline, run_demo

    base = FULL_DEMO if args.full else DemoSettings()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(DemoSettings) if getattr(args, f.name, None) is not None}
    settings = dataclasses.replace(base, **given)
    require_writable(args.out, "the demo folder (--out)", folder=True)
    started = time.perf_counter()
    result = run_demo(
        args.out, settings, progress=args.progress, num_threads=args.num_threads, parallel=args.parallel
    )
    print("\n".join(headline(result, args.out)))
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0
