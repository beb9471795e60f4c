"""`cacxr synth OUT --patients N [--format dicom|png|jpeg]`: write a synthetic cohort (seed layout or image export)."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``cacxr synth``."""
    parser.add_argument(
        "out",
        metavar="OUT",
        help="new or empty folder for site.db and <patient>/rx/*.dcm (png/jpeg: labels.csv and <patient>/*.png|jpg)",
    )
    parser.add_argument(
        "--patients", type=int, required=True, metavar="N", help="internal patients (CAC_001...)"
    )
    parser.add_argument(
        "--external", type=int, default=0, metavar="M", help="external-site patients (XYZ_101...; default 0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="same seed, same labels and pixels (default 0)")
    parser.add_argument(
        "--size", type=int, default=512, metavar="PX", help="radiograph rows and columns (default 512)"
    )
    parser.add_argument(
        "--faults",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the real archive's faults (laterals, CT folders, id padding, ...; default on; "
        "DICOM layout only: png/jpeg exports ignore it)",
    )
    parser.add_argument(
        "--format",
        choices=("dicom", "png", "jpeg"),
        default="dicom",
        help="dicom: the seed layout (default); png/jpeg: an image export like MIMIC-CXR-JPG / CheXpert "
        "(OUT/<patient>/<name>.png|jpg, OUT/labels.csv with study and CT dates, views on half the rows)",
    )
    parser.add_argument(
        "--signal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw calcified plaques; --no-signal draws none (a negative control; default on)",
    )
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar"
    )
    parser.add_argument("--workers", type=int, default=None, help="drawing threads (default: automatic)")
    parser.add_argument(
        "--plaque-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="plaque length and width relative to the standard cohort (default 1; the demo uses larger ones)",
    )


def run(args: argparse.Namespace) -> int:
    """Write the cohort and print a one-line summary."""
    from cacxr.synth import make_cohort, summary

    truth = make_cohort(
        args.out,
        patients=args.patients,
        external=args.external,
        seed=args.seed,
        size=args.size,
        faults=args.faults,
        signal=args.signal,
        progress=args.progress,
        workers=args.workers,
        plaque_scale=args.plaque_scale,
        image_format=args.format,
    )
    print(f"cacxr synth: {args.out}: {summary(truth)}")
    return 0
