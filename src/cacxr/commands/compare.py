"""`cacxr compare RUN... [--out DIR]`: several runs side by side (table, forest plot, paired tests)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cacxr.commands import add_overwrite_argument

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of `cacxr compare`."""
    parser.add_argument("runs", metavar="RUN", nargs="+", help="two or more finished run folders")
    parser.add_argument(
        "--out", default="compare", metavar="DIR", help="folder for compare.md/.csv/.json and forest.png (./compare)"
    )
    parser.add_argument(
        "--viz", action=argparse.BooleanOptionalAction, default=True, help="draw forest.png (default on)"
    )
    add_overwrite_argument(parser, "the compare.md/.csv/.json and forest.png of an earlier comparison in --out")


def run(args: argparse.Namespace) -> int:
    """Compare the runs and print one line per run and where the results are."""
    from cacxr.core import refuse_overwrite, require_writable
    from cacxr.runs import compare_runs, summary_lines

    require_writable(args.out, "the comparison folder (--out)", folder=True)
    for name in ("compare.md", "compare.csv", "compare.json", "forest.png"):
        refuse_overwrite(Path(args.out) / name, args.overwrite)
    result = compare_runs(args.runs, args.out, viz=args.viz)
    for line in summary_lines(result):
        print(line)
    if result["settings_differ"]:
        print(f"settings that differ: {', '.join(result['settings_differ'])}")
    print(f"table: {result['files']['markdown']}")
    return 0
