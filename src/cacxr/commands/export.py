"""`cacxr export RUN --format onnx|torchscript --out FILE`: one deployable model with its contract."""

from __future__ import annotations

import argparse

from cacxr.commands import add_model_argument, add_overwrite_argument

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's flags."""
    from cacxr.use import FORMATS

    parser.add_argument("run_dir", metavar="RUN", help="a trained run folder")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx or torchscript")
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="the model file to write (e.g. model.onnx)"
    )
    add_model_argument(parser, "export")
    add_overwrite_argument(parser, "the --out file")


def run(args: argparse.Namespace) -> int:
    """Export and print what the file contains."""
    from cacxr.core import refuse_overwrite, require_writable
    from cacxr.use import export_run, load_run

    refuse_overwrite(args.out, args.overwrite)  # e.g. RUN/metrics.json: never replaced silently
    require_writable(args.out, "the model file (--out)")
    info = export_run(load_run(args.run_dir, fold=args.fold), args.out, format=args.format)
    print(
        f"{info['path']}: {info['format']} {info['arch']} ({info['model']}), "
        f"inputs {', '.join(entry['name'] for entry in info['inputs'])}; image (N, 1, {info['image_size']}, "
        f"{info['image_size']}) normalised with profile "
        f"{info['profile']} v{info['profile_version']}; output {info['output']}"
    )
    return 0
