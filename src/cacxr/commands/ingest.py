"""`cacxr ingest DATA --out DIR`: inventory and clean a DICOM tree (DATA is only read)."""

from __future__ import annotations

import argparse

from cacxr.commands import add_overwrite_argument
from cacxr.ingest import SITES, ingest

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `cacxr ingest`."""
    parser.add_argument(
        "data", metavar="DATA", help="cohort folder: DATA/<patient>/rx/*.dcm (+ DATA/site.db)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (not inside DATA)")
    parser.add_argument(
        "--labels", metavar="FILE", help="label table, site.db or CSV (default: DATA/site.db)"
    )
    parser.add_argument(
        "--site", choices=SITES, default="internal", help="patients to use: folder names with CAC = internal"
    )
    parser.add_argument("--workers", type=int, metavar="N", help="parallel processes (default: CPU count)")
    parser.add_argument(
        "--decode-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decode the pixels of candidate images so undecodable files never reach the manifest",
    )
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars"
    )
    add_overwrite_argument(parser, "the manifest, excluded.csv and ingest.json of an earlier ingest in --out")


def run(args: argparse.Namespace) -> int:
    """Run ingest and print a short summary."""
    from cacxr.core import require_writable

    require_writable(args.out, "the ingest folder (--out)", folder=True)
    summary = ingest(
        args.data,
        args.out,
        labels=args.labels,
        site=args.site,
        workers=args.workers,
        decode_check=args.decode_check,
        progress=args.progress,
        overwrite=args.overwrite,
    )
    sites = ", ".join(f"{site} {n}" for site, n in summary["n_patients"].items() if site != "total")
    print(f"patients kept: {summary['n_patients']['total']} ({sites})")
    print(
        f"files: {summary['n_dicom_candidates']} DICOM candidates, {summary['ignored_files']} non-DICOM ignored"
    )
    excluded = {reason: n for reason, n in summary["counts"].items() if n}
    if excluded:
        print("excluded: " + ", ".join(f"{reason} {n}" for reason, n in excluded.items()))
    if summary["id_fixes"]:
        print(f"id fixes: {len(summary['id_fixes'])} (listed in ingest.json)")
    for name, path in summary["outputs"].items():
        print(f"{name}: {path}")
    return 0
