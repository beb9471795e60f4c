"""`cacxr demo [--out DIR]`: synth -> ingest -> store -> cross-validated training -> report, on the CPU."""

from __future__ import annotations

import argparse
import time
from dataclasses import fields

from cacxr.demo import DemoSettings

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of `cacxr demo` (defaults are those of ``DemoSettings``)."""
    d = DemoSettings()
    parser.add_argument("--out", default="cacxr-demo", metavar="DIR", help="demo folder (default ./cacxr-demo)")
    parser.add_argument("--patients", type=int, default=d.patients, help=f"synthetic patients (default {d.patients})")
    parser.add_argument(
        "--synth-size", type=int, default=d.synth_size, help=f"side of the generated radiographs (default {d.synth_size})"
    )
    parser.add_argument(
        "--image-size", type=int, default=d.image_size, help=f"model input side in px (default {d.image_size})"
    )
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs per fold (default {d.epochs})")
    parser.add_argument(
        "--arch", choices=("densenet121", "resnet18", "efficientnet-b0"), default=d.arch, help=f"encoder ({d.arch})"
    )
    parser.add_argument("--kfold", type=int, default=d.kfold, help=f"cross-validation folds (default {d.kfold})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed of cohort and training (default {d.seed})")
    parser.add_argument("--num-threads", type=int, metavar="N", help="torch CPU threads (default: torch's)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the pooled AUC, the time it took and the report's path."""
    from pathlib import Path

    from cacxr.commands.train import summary
    from cacxr.demo import run_demo

    names = {f.name for f in fields(DemoSettings)}
    settings = DemoSettings(**{k: v for k, v in vars(args).items() if k in names})
    started = time.perf_counter()
    metrics = run_demo(args.out, settings, progress=args.progress, num_threads=args.num_threads)
    print(summary(metrics, Path(args.out) / "run"))
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0
