"""`cacxr explain RUN IMAGE... --out PATH`: saliency overlays (integrated gradients or Grad-CAM)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cacxr.commands import add_model_argument, add_overwrite_argument
from cacxr.core import CacxrError, require_writable

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's flags."""
    from cacxr.use import METHODS

    parser.add_argument("run_dir", metavar="RUN", help="a trained run folder")
    parser.add_argument("inputs", metavar="IMAGE", nargs="+", help="DICOM/PNG/JPEG files or folders")
    parser.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="FILE.png for one image, else a folder (one <name>.png per image)",
    )
    parser.add_argument(
        "--method", choices=METHODS, default=METHODS[0], help="attribution method (default %(default)s)"
    )
    add_model_argument(parser, "explain")
    add_overwrite_argument(parser, "existing PNGs")
    parser.add_argument(
        "--steps", type=int, default=32, metavar="N", help="integrated-gradients steps (default 32)"
    )
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar"
    )


def run(args: argparse.Namespace) -> int:
    """Write the overlays; unreadable inputs are reported and skipped."""
    from cacxr.use import explain_paths, load_run

    if args.steps < 1:
        raise CacxrError(f"--steps must be at least 1 (got {args.steps})")
    require_writable(args.out, "the overlays (--out)", folder=Path(args.out).suffix.lower() != ".png")
    loaded = load_run(args.run_dir, fold=args.fold)
    rows = explain_paths(
        loaded,
        args.inputs,
        args.out,
        method=args.method,
        steps=args.steps,
        progress=args.progress,
        overwrite=args.overwrite,
    )
    for row in rows:
        if row.error:
            print(f"cacxr explain: {row.input}: {row.error}", file=sys.stderr)
        else:
            note = f" (warning: {row.warning})" if row.warning else ""
            print(f"{row.output}{note}")
    done = sum(1 for row in rows if row.output)
    if done == 0:
        raise CacxrError(f"none of the {len(rows)} inputs could be explained")
    print(f"cacxr explain: {done} of {len(rows)} images explained", file=sys.stderr)
    return 0
