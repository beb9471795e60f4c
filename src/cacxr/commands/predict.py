"""`cacxr predict RUN INPUT... [--out FILE.csv]`: score radiograph files or folders with a trained run."""

from __future__ import annotations

import argparse
import sys

from cacxr.commands import add_model_argument, add_overwrite_argument
from cacxr.core import CacxrError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's flags."""
    parser.add_argument("run_dir", metavar="RUN", help="a trained run folder (cacxr train --out)")
    parser.add_argument(
        "inputs", metavar="INPUT", nargs="+", help="DICOM/PNG/JPEG files or folders (searched recursively)"
    )
    parser.add_argument(
        "--out", metavar="FILE.csv", help="write the rows as CSV here (default: a table on stdout)"
    )
    add_model_argument(parser, "score with")
    add_overwrite_argument(parser, "the --out file")
    parser.add_argument(
        "--batch-size", type=int, default=16, metavar="N", help="images scored together (default 16)"
    )
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar"
    )


def run(args: argparse.Namespace) -> int:
    """Score the inputs; 0 when at least one input was scored (failed inputs are rows with an error)."""
    from cacxr.core import refuse_overwrite, require_writable
    from cacxr.use import format_table, load_run, score_paths, write_predictions_csv

    refuse_overwrite(args.out, args.overwrite)  # e.g. RUN/predictions.csv: never replaced silently
    require_writable(args.out, "the predictions (--out)")  # before scoring, not after
    loaded = load_run(args.run_dir, fold=args.fold)
    rows = score_paths(loaded, args.inputs, batch_size=args.batch_size, progress=args.progress)
    if args.out:
        write_predictions_csv(rows, args.out)
    else:
        print(format_table(rows))
    failed = sum(1 for row in rows if not row.ok)
    scored = len(rows) - failed
    where = f"; rows in {args.out}" if args.out else ""
    print(f"cacxr predict: scored {scored} of {len(rows)} inputs, {failed} failed{where}", file=sys.stderr)
    if scored == 0:
        raise CacxrError(f"none of the {len(rows)} inputs could be scored (see the error column)")
    return 0
