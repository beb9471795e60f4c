"""`cacxr stats DATA|DIR --out DIR2`: cohort description tables and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from cacxr.commands import add_overwrite_argument
from cacxr.ingest import cohort_stats

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `cacxr stats`."""
    parser.add_argument(
        "source",
        metavar="DATA|DIR",
        help="ingest output folder or manifest.csv (images used), or DATA folder / label file (label table)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR2", help="folder for stats.md/.csv/.json and PNGs"
    )
    add_overwrite_argument(parser, "the stats.md/.csv/.json of an earlier run in --out")


def run(args: argparse.Namespace) -> int:
    """Run cohort_stats and print where the results are."""
    from cacxr.core import refuse_inside, refuse_overwrite, require_writable

    source = Path(args.source)
    data = source if source.is_dir() and not (source / "manifest.csv").exists() else None
    if source.name == "site.db":
        data = source.parent
    if data is not None:  # a DATA folder (or its site.db) is only ever read
        refuse_inside(args.out, [data], "the stats folder (--out)")
    for name in ("stats.md", "stats.csv", "stats.json"):
        refuse_overwrite(Path(args.out) / name, args.overwrite)
    require_writable(args.out, "the stats folder (--out)", folder=True)
    result = cohort_stats(args.source, args.out)
    overall = result["groups"]["all"]
    print(f"describes {result['description']}")
    share = overall["share_cac_zero"]
    print(
        f"patients: {overall['n_patients']} (M {overall['n_male']}, F {overall['n_female']}); "
        f"share CAC = 0: {'-' if share is None else f'{share:.1%}'}"
    )
    print(f"outputs: {args.out}/stats.md, stats.csv, stats.json, *.png")
    return 0
