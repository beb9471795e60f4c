"""`cacxr ingest DATA --out DIR`: inventory and clean an archive of DICOM or image exports (DATA is only read)."""

from __future__ import annotations

import argparse

from cacxr.commands import add_overwrite_argument
from cacxr.ingest import ingest

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `cacxr ingest`."""
    parser.add_argument(
        "data", metavar="DATA", help="cohort folder: DATA/<patient>/... DICOM, PNG or JPEG files (+ DATA/site.db)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (not inside DATA)")
    parser.add_argument(
        "--labels",
        metavar="FILE",
        help="label table, site.db or CSV (default: DATA/site.db); a CSV with a path column lists the images",
    )
    parser.add_argument(
        "--site",
        default="internal",
        metavar="SITE",
        help="patients to use: internal (default), external, all, or a value of the table's site column "
        "(without one: folder names with CAC are internal; an archive with neither is one site)",
    )
    parser.add_argument(
        "--max-days",
        type=int,
        metavar="N",
        help="keep only radiographs taken within N days of the patient's ct_date, the closest first "
        "(default: no window)",
    )
    parser.add_argument(
        "--gate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read the pixels of every candidate with the view gate: not a chest radiograph, lateral, inverted",
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
        max_days=args.max_days,
        gate=args.gate,
    )
    sites = ", ".join(f"{site} {n}" for site, n in summary["n_patients"].items() if site != "total")
    print(f"patients kept: {summary['n_patients']['total']} ({sites})")
    formats = ", ".join(f"{fmt} {n}" for fmt, n in summary["formats"]["candidates"].items())
    print(f"files: {summary['n_candidates']} candidates ({formats}), {summary['ignored_files']} others ignored")
    print(f"sites: {summary['site_rule']}")
    gaps = summary["ct_window"]["kept_gap_days"]
    if gaps["n"]:
        print(f"days from the CT of the kept images: median {gaps['median']:g}, range {gaps['min']:g} to {gaps['max']:g}")
    if summary["ct_window"].get("note"):
        print(f"note: {summary['ct_window']['note']}")
    excluded = {reason: n for reason, n in summary["counts"].items() if n}
    if excluded:
        print("excluded: " + ", ".join(f"{reason} {n}" for reason, n in excluded.items()))
    if summary["id_fixes"]:
        print(f"id fixes: {len(summary['id_fixes'])} (listed in ingest.json)")
    for name, path in summary["outputs"].items():
        print(f"{name}: {path}")
    return 0
