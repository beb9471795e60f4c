"""`cacxr fit-final RUN`: train the run's final model on all its patients (settings chosen by the folds)."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of `cacxr fit-final`."""
    switch = argparse.BooleanOptionalAction
    parser.add_argument("run_dir", metavar="RUN", help="a finished cross-validated run folder")
    parser.add_argument("--device", default="auto", metavar="auto|cpu|cuda", help="default auto (CUDA if present)")
    parser.add_argument("--overwrite", action="store_true", help="train again when RUN/final already exists")
    parser.add_argument("--workers", type=int, metavar="N", help="processes if the image store must be rebuilt")
    parser.add_argument("--num-threads", type=int, metavar="N", help="torch CPU threads (default: torch's)")
    parser.add_argument("--progress", action=switch, default=True, help="progress bars (default on)")


def run(args: argparse.Namespace) -> int:
    """Train the final model and print how its settings were chosen."""
    from cacxr.training import fit_final

    final = fit_final(
        args.run_dir,
        device=args.device,
        overwrite=args.overwrite,
        workers=args.workers,
        num_threads=args.num_threads,
        progress=args.progress,
    )
    print(summary(final, args.run_dir))
    return 0


def summary(final: dict, run_dir: str) -> str:
    """The lines printed after fitting: epochs, threshold and where the model is."""
    return (
        f"final model: {final['n_patients']} patients, {final['epochs']} epochs "
        f"({final['epochs_chosen_by']}), decision threshold {final['decision_threshold']:.4g} "
        f"({final['threshold_chosen_by']})\n"
        f"written to {run_dir}/final/; predict, evaluate, explain, export and serve now use it "
        "(the fold ensemble stays selectable)\n"
        "it has no held-out estimate of its own: the cross-validated figures in metrics.json are the estimate"
    )
