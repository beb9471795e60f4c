"""The `cacxr` command line.

Each command lives in ``cacxr.commands.<name>``, a module with ``add_arguments(parser)`` and
``run(args) -> int``. Only the chosen command's module is imported, so ``cacxr --help`` and light
commands start without loading torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cacxr import __version__
from cacxr.core import CacxrError

__all__ = ["COMMANDS", "main", "build_parser"]

# name -> one-line help; the module is cacxr.commands.<name with '-' as '_'>
COMMANDS: dict[str, str] = {
    "synth": "generate a synthetic cohort in the seed layout (site.db + CAC_xxx/rx/*.dcm) or as a PNG/JPEG export",
    "ingest": "inventory and clean a DICOM tree into manifest.csv + excluded.csv (read-only on DATA)",
    "preprocess": "build or update the cached uint8 image store for a manifest",
    "stats": "describe a cohort: patients, sex, age, CAC distribution, with plots",
    "train": "k-fold cross-validated training of a CAC classifier or regressor",
    "evaluate": "test a trained run on other data (e.g. another hospital)",
    "predict": "score DICOM/PNG/JPEG files or folders with a trained run",
    "explain": "saliency overlay (integrated gradients or Grad-CAM) on radiographs",
    "export": "export a trained model to ONNX or TorchScript with its preprocessing contract",
    "compare": "compare several runs side by side (table, forest plot, paired tests)",
    "fit-final": "train one final model on every patient of a run, with settings chosen by its folds",
    "serve": "HTTP API and web page for uploads",
    "weights": "named pretrained weights: list, fetch (verified, cached) or import a file by hand",
    "demo": "the whole pipeline on a generated cohort, sized for a laptop CPU",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; the arguments of ``command`` only (importing just that module)."""
    parser = argparse.ArgumentParser(
        prog="cacxr",
        description="Coronary artery calcium (CAC) from chest radiographs.",
    )
    parser.add_argument("--version", action="version", version=f"cacxr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _command_module(name).add_arguments(sp)
    return parser


def _command_module(name: str):
    return importlib.import_module(f"cacxr.commands.{name.replace('-', '_')}")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(_command_module(args.command).run(args) or 0)
    except CacxrError as exc:
        print(f"cacxr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a last line of defence: one line naming the path, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"cacxr {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cacxr {args.command}: interrupted (rerun the same command with --resume to continue)", file=sys.stderr)
        return 130
