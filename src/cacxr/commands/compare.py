"""`cacxr compare RUN... [--out DIR]`: several runs side by side (table, forest plot, paired tests)."""

from __future__ import annotations

import argparse

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


def run(args: argparse.Namespace) -> int:
    """Compare the runs and print one line per run and where the results are."""
    from cacxr.compare import compare_runs, summary_lines

    result = compare_runs(args.runs, args.out, viz=args.viz)
    for line in summary_lines(result):
        print(line)
    if result["settings_differ"]:
        print(f"settings that differ: {', '.join(result['settings_differ'])}")
    print(f"table: {result['files']['markdown']}")
    return 0
