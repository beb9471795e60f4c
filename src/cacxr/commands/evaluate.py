"""`cacxr evaluate RUN DATA|MANIFEST --out DIR`: test a trained run, unchanged, on other data."""

from __future__ import annotations

import argparse

from cacxr.commands import add_model_argument

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's flags."""
    from cacxr.use import DEFAULT_SITE, SITES

    parser.add_argument("run_dir", metavar="RUN", help="a trained run folder")
    parser.add_argument(
        "data", metavar="DATA|MANIFEST", help="a DICOM data folder (ingested first) or a manifest.csv"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (new, empty or an earlier evaluation)"
    )
    add_model_argument(parser, "evaluate")
    parser.add_argument(
        "--compare", metavar="OTHER_RUN", help="score the same patients with another run; paired DeLong test"
    )
    parser.add_argument(
        "--site",
        choices=SITES,
        default=None,
        help=f"patients to take from DATA (default {DEFAULT_SITE}: folders without 'CAC' in their name; "
        "'all' for every folder); for a manifest, filters its site column (default: every row)",
    )
    parser.add_argument(
        "--labels", metavar="FILE", help="label table for DATA (site.db or CSV; default DATA/site.db)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, metavar="N", help="images scored together (default 16)"
    )
    parser.add_argument("--workers", type=int, metavar="N", help="processes for ingest and preprocessing")
    parser.add_argument(
        "--n-boot", type=int, default=2000, metavar="N", help="bootstrap resamples per interval"
    )
    parser.add_argument("--viz", action=argparse.BooleanOptionalAction, default=True, help="write plots")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars"
    )


def run(args: argparse.Namespace) -> int:
    """Run the evaluation and print the headline figures."""
    from cacxr.core import require_writable
    from cacxr.use import evaluate_run

    require_writable(args.out, "the evaluation folder (--out)", folder=True)
    metrics = evaluate_run(
        args.run_dir,
        args.data,
        args.out,
        fold=args.fold,
        compare=args.compare,
        site=args.site,
        labels=args.labels,
        batch_size=args.batch_size,
        workers=args.workers,
        n_boot=args.n_boot,
        viz=args.viz,
        progress=args.progress,
    )
    pooled, ev = metrics["pooled"], metrics["evaluation"]
    lo, hi = pooled["auc_ci"]
    auc = "n/a (one class)" if pooled["auc"] is None else f"{pooled['auc']:.3f} (95% CI {lo:.3f}-{hi:.3f})"
    print(f"{ev['n_patients']} patients ({ev['n_positive']} with CAC > {metrics['threshold']:g}): AUC {auc}")
    if "comparison" in metrics:
        c = metrics["comparison"]
        print(
            f"vs {c['run_b']}: AUC {c['auc_b']:.3f}, difference {c['diff']:+.3f}, paired DeLong p = {c['p_value']:.3g}"
        )
    print(f"report: {args.out}/report.html")
    return 0
