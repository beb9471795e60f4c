"""`cacxr weights list|fetch|import`: the registry of named pretrained weights and its cache."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run", "listing"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the sub-commands of `cacxr weights`."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="names, sizes, intensity contracts and whether each is cached")
    fetch = sub.add_parser("fetch", help="download weights into the cache, verified by SHA-256")
    fetch.add_argument("name", metavar="NAME", help="a name from `cacxr weights list`")
    fetch.add_argument("--force", action="store_true", help="download again even when cached")
    fetch.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar (default on)"
    )
    imp = sub.add_parser("import", help="put a file copied by hand (air-gapped machines) into the cache, verified")
    imp.add_argument("name", metavar="NAME", help="a name from `cacxr weights list`")
    imp.add_argument("file", metavar="FILE", help="the weights file (only read)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action and print its result."""
    from cacxr import registry

    if args.action == "list":
        print(listing())
    elif args.action == "fetch":
        path = registry.fetch(args.name, progress=args.progress, force=args.force)
        print(f"weights '{args.name}' cached and verified: {path}")
    else:
        path = registry.import_file(args.name, args.file)
        print(f"weights '{args.name}' imported and verified: {path}")
    return 0


def listing() -> str:
    """The table printed by `cacxr weights list` (plain text, one weight source a line)."""
    from cacxr import registry

    header = ("name", "arch", "intensity", "size", "cached", "checksum")
    rows = [header]
    for source in registry.all_sources().values():
        if source.url is None:
            rows.append((source.name, source.arch, source.intensity, "-", "-", "-"))
            continue
        expected, _, origin = registry.expected_checksum(source)
        size = f"{source.size_mb:.1f} MiB" if source.size_mb is not None else "?"
        cached = "yes" if registry.cached_file(source) else "no"
        checksum = f"{origin} {expected[:8]}" if expected else origin
        rows.append((source.name, source.arch, source.intensity, size, cached, checksum))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append(f"cache: {registry.weights_dir()}" + ("  (CACXR_OFFLINE: no downloads)" if registry.offline() else ""))
    return "\n".join(lines)
