"""`cacxr preprocess MANIFEST --out STORE`: build or update the cached uint8 image store."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's flags."""
    from cacxr.pixels import DEFAULT_PROFILE, PROFILES

    parser.add_argument("manifest", metavar="MANIFEST", help="a manifest.csv written by `cacxr ingest`")
    parser.add_argument(
        "--out", required=True, metavar="STORE", help="store folder (new, or a store to update/resume)"
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default=DEFAULT_PROFILE,
        help="preprocessing recipe (default %(default)s): "
        + "; ".join(f"{p.name}: {p.description}" for p in PROFILES.values()),
    )
    parser.add_argument(
        "--image-size", type=int, default=1024, metavar="S", help="side of the stored images (default 1024)"
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="worker processes (default: every available core)"
    )
    parser.add_argument(
        "--full-decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode every file in full; by default JPEG 2000 and 8-bit JPEG files are decoded only as large "
        "as the profile needs (reduced resolution). An existing store keeps its mode unless this is given; "
        "changing it rebuilds the entries",
    )
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar"
    )


def run(args: argparse.Namespace) -> int:
    """Build the store and print what was done; 1 when no image could be stored."""
    from cacxr.core import CacxrError, require_writable
    from cacxr.pixels import build_store

    if args.workers is not None and args.workers < 1:
        raise CacxrError(f"--workers must be at least 1 (got {args.workers})")
    require_writable(args.out, "the store (--out)", folder=True)
    store = build_store(
        args.manifest,
        args.out,
        profile=args.profile,
        image_size=args.image_size,
        workers=args.workers,
        progress=args.progress,
        full_decode=args.full_decode,
    )
    # Each image that could not be stored was already logged (file and reason) by build_store.
    summary = store.summary or {}
    causes = ", ".join(
        f"{summary[k]} {k}" for k in ("new", "changed", "corrupt", "retried") if summary.get(k)
    )
    print(
        f"{store.root}: {len(store)} images, profile {store.profile} v{store.profile_version}, "
        f"{store.image_size} px, {store.decode} decode; built {summary.get('built', 0)}"
        + (f" ({causes})" if causes else "")
        + f", reused {summary.get('reused', 0)}, failed {len(store.failed)} "
        f"in {summary.get('seconds', 0):.1f} s"
    )
    return 0 if len(store) else 1
