"""Command-line front ends, one module per `cacxr` command, and the flags several of them share."""

from __future__ import annotations

import argparse

__all__ = ["add_model_argument", "add_overwrite_argument"]


def _model_choice(value: str) -> int | str:
    if value in ("final", "ensemble"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'final', 'ensemble' or a fold number, got {value!r}") from None


def add_overwrite_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite/--no-overwrite``: replace ``what`` when it exists (default: refuse, exit 2)."""
    parser.add_argument(
        "--overwrite",
        action=argparse.BooleanOptionalAction,
        default=False,
        help=f"replace {what} when it exists (default: refuse with exit code 2)",
    )


def add_model_argument(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--fold final|ensemble|K``: which of a run's models ``verb`` uses (default: final if fitted, else ensemble)."""
    parser.add_argument(
        "--fold",
        type=_model_choice,
        metavar="final|ensemble|K",
        help=f"the model to {verb}: the final model (the default when `cacxr fit-final` made one), "
        "the fold ensemble (mean of the folds, the default otherwise), or fold K only",
    )
