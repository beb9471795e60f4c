"""`cacxr weights list|fetch|import|add`: the registry of named pretrained weights and its cache."""

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
    add = sub.add_parser("add", help="declare your own named weights (a URL) in $CACXR_HOME/sources.toml")
    add.add_argument("name", metavar="NAME", help="the new name")
    add.add_argument("url", metavar="URL", help="where the file is downloaded from")
    add.add_argument("--sha256", help="its SHA-256 (or a prefix of 8+ hex digits); else recorded at the first fetch")
    add.add_argument("--size", type=int, help="its size in bytes, checked after each download")
    add.add_argument("--arch", default="*", help="the architecture it fits (default: any)")
    add.add_argument("--intensity", default="seed", choices=("seed", "xrv"), help="its intensity contract (seed)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action and print its result."""
    from cacxr.model import registry, weightcache

    if args.action == "list":
        print(listing())
    elif args.action == "fetch":
        path = weightcache.fetch(args.name, progress=args.progress, force=args.force)
        print(f"weights '{args.name}' cached and verified: {path}")
    elif args.action == "import":
        path = weightcache.import_file(args.name, args.file)
        print(f"weights '{args.name}' imported and verified: {path}")
    else:
        source = registry.add_source(args.name, args.url, args.sha256, args.size, args.arch, args.intensity)
        print(f"weights '{source.name}' added to {registry.cache_home() / registry.SOURCES_FILE}")
    return 0


def listing() -> str:
    """The table printed by `cacxr weights list` (plain text, one weight source a line)."""
    from cacxr.model import registry, weightcache

    header = ("name", "arch", "intensity", "size", "cached", "checksum")
    rows = [header]
    for source in registry.all_sources().values():
        if source.url is None:
            rows.append((source.name, source.arch, source.intensity, "-", "-", "-"))
            continue
        expected, _, origin = weightcache.expected_checksum(source)
        found = weightcache.cached_file(source)
        size_mb = found.stat().st_size / 2**20 if found else source.size_mb
        size = f"{size_mb:.1f} MiB" if size_mb is not None else "?"
        cached = "yes" if found else "no"
        checksum = f"{origin} {expected[:8]}" if expected else origin
        rows.append((source.name, source.arch, source.intensity, size, cached, checksum))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append(f"cache: {weightcache.weights_dir()}" + ("  (CACXR_OFFLINE: no downloads)" if weightcache.offline() else ""))
    return "\n".join(lines)
