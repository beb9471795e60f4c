"""`cacxr train DATA|MANIFEST --task classification|regression --out RUN`: k-fold cross-validated training.

``--config FILE`` reads the settings from a TOML, YAML or JSON file (cacxr.config.files), a run's config.json
included; flags given on the command line override it. A run's config.json also carries the CPU thread count
it trained on (reused) and its environment (compared; cacxr.training.reproducibility).

``cacxr train RUN --merge`` (or ``cacxr train DATA --out RUN --merge``) writes the run-level files of a run
whose folds were trained as separate ``--fold K`` jobs.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from cacxr.config import FINETUNE_MODES, LOSSES, TASKS, TrainConfig
from cacxr.core import CacxrError, require_writable
from cacxr.runs import REPORT_FILE

__all__ = ["add_arguments", "run", "config_from_args", "ARCH_CHOICES", "PROFILE_CHOICES"]

# Literal copies of cacxr.model.networks.ARCHS / cacxr.pixels.profiles.PROFILES, so that `--help` does not load torch
# (tests/test_train.py checks that they match).
ARCH_CHOICES = ("densenet121", "resnet18", "efficientnet-b0")
PROFILE_CHOICES = ("seed", "xrv", "clahe")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of `cacxr train` (defaults are those of ``TrainConfig``)."""
    d = TrainConfig()
    switch = argparse.BooleanOptionalAction
    parser.add_argument(
        "data",
        nargs="?",
        metavar="DATA|MANIFEST",
        help="DICOM data folder (ingested into RUN/ingest) or a manifest.csv; with --merge, the run folder",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings from a TOML/YAML/JSON file (keys as in config.json; a run's config.json reruns it); "
        "flags given here override the file",
    )
    parser.add_argument("--task", choices=TASKS, help="classification (CAC > --threshold) or regression (log CAC)")
    parser.add_argument("--out", metavar="RUN", help="the run folder (new or empty, or an existing run with --resume)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs per fold (default {d.epochs})")
    parser.add_argument("--lr", type=float, help="learning rate (default 3e-4 classification, 1e-3 regression)")
    parser.add_argument("--arch", choices=ARCH_CHOICES, default=d.arch, help=f"encoder (default {d.arch})")
    parser.add_argument("--viz", action=switch, default=d.viz, help="write PNG plots (default on)")
    parser.add_argument("--save", action=switch, default=d.save, help="save each fold's model (default on)")
    parser.add_argument("--wd", type=float, default=d.wd, help=f"weight decay (default {d.wd})")
    parser.add_argument("--batchsize", type=int, default=d.batchsize, help=f"batch size (default {d.batchsize})")
    parser.add_argument("--momentum", type=float, default=d.momentum, help=f"SGD momentum, regression (default {d.momentum})")
    parser.add_argument("--kfold", type=int, default=d.kfold, help=f"cross-validation folds (default {d.kfold})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed of folds, model and order (default {d.seed})")
    parser.add_argument("--image-size", type=int, default=d.image_size, help=f"model input side in px (default {d.image_size})")
    parser.add_argument(
        "--threshold",
        type=float,
        default=d.threshold,
        help="positive means CAC > T, strictly (default 0: any calcium); Agatston scores are whole numbers, so the "
        "guideline endpoints CAC >= 100 and CAC >= 400 are --threshold 99 and 399",
    )
    parser.add_argument(
        "--weights", default=d.weights, metavar="none|PATH|NAME", help="pretrained weights (default none)"
    )
    parser.add_argument(
        "--finetune",
        choices=FINETUNE_MODES,
        help="what trains: last block + head, all, or head only (default: last with --weights, all without)",
    )
    parser.add_argument("--fold", type=int, metavar="K", help="train fold K only (a job of a run shared by jobs)")
    parser.add_argument("--device", default=d.device, metavar="auto|cpu|cuda", help="default auto (CUDA if present)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    parser.add_argument("--loss", choices=LOSSES, default=d.loss, help="regression loss (default mae)")
    parser.add_argument(
        "--profile",
        choices=PROFILE_CHOICES,
        default=d.profile,
        help="preprocessing (default: the weights' intensity contract, xrv for xrv-* weights, else seed)",
    )
    parser.add_argument(
        "--feature-cache",
        action=switch,
        default=d.feature_cache,
        help="with a frozen trunk and no augmentation, compute trunk features once (default on)",
    )
    parser.add_argument("--augment", action=switch, default=d.augment, help="random augmentation (default off)")
    parser.add_argument(
        "--val-fraction", type=float, default=d.val_fraction, help="validation share of each training part (0.2)"
    )
    parser.add_argument("--workers", type=int, metavar="N", help="processes for ingest and preprocessing")
    parser.add_argument(
        "--store", metavar="DIR", help="image store folder (default RUN/../cacxr-cache/<data>-<hash>/store-...)"
    )
    parser.add_argument("--feature-cache-dir", metavar="DIR", help="feature cache folder (default <store>/features)")
    parser.add_argument(
        "--num-threads",
        type=int,
        metavar="N",
        help="torch CPU threads, recorded in config.json (default: --config's num_threads, else a resumed "
        "run's, else torch's); other counts give other figures",
    )
    parser.add_argument(
        "--site", choices=("internal", "external", "all"), default=d.site, help="patients to train on (internal)"
    )
    parser.add_argument(
        "--milestones",
        type=_int_list,
        metavar="E1,E2,...",
        help="epochs where the learning rate is multiplied by --gamma (default 20,35 or 20,40,60)",
    )
    parser.add_argument("--gamma", type=float, default=d.gamma, help=f"learning-rate decay (default {d.gamma})")
    parser.add_argument("--patience", type=int, metavar="N", help="stop a fold after N epochs without improvement")
    parser.add_argument(
        "--clinical",
        type=_clinical_list,
        default=[],
        metavar="age,sex",
        help="clinical covariates fed to the head beside the image features: age, sex or age,sex (default none)",
    )
    parser.add_argument(
        "--calibration",
        choices=("platt", "isotonic", "none"),
        default=d.calibration,
        help="calibration of each fold's scores, fitted on its validation patients (default platt)",
    )
    parser.add_argument(
        "--operating-point",
        default=d.operating_point,
        metavar="youden|sensitivity=X|specificity=X",
        help="rule fixing the operating point of new patients on all folds' out-of-fold test predictions, "
        f"reported by leave-one-fold-out (default {d.operating_point}: a rule-out point)",
    )
    parser.add_argument("--amp", action=switch, help="mixed precision on CUDA (default: bf16/fp16 where fast)")
    parser.add_argument("--channels-last", action=switch, help="channels-last tensors on CUDA (default: auto)")
    parser.add_argument("--compile", action=switch, help="torch.compile the trained part on CUDA (default: auto)")
    parser.add_argument("--merge", action="store_true", help="merge the finished folds of RUN into the run's results")
    parser.add_argument(
        "--final",
        action=switch,
        default=False,
        help="after cross-validation, train the final model on every patient into RUN/final (cacxr fit-final)",
    )
    parser.add_argument("--progress", action=switch, default=d.progress, help="progress bars (default on)")
    parser.add_argument(
        "--track",
        choices=("mlflow", "tensorboard"),
        help="log the finished run: MLflow (MLFLOW_TRACKING_URI or ./mlruns) or TensorBoard (RUN/tensorboard)",
    )
    _mark_defaults(parser)  # keep last: every flag above is then known to be given or defaulted


class _Default:
    """A value argparse filled in (the flag was not given), so that ``--config`` can tell the two apart."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _mark_defaults(parser: argparse.ArgumentParser) -> None:
    """Wrap the default of every flag that sets a ``TrainConfig`` field in :class:`_Default`."""
    for f in fields(TrainConfig):
        parser.set_defaults(**{f.name: _Default(parser.get_default(f.name))})


def _unwrap(args: argparse.Namespace) -> None:
    """Replace the :class:`_Default` markers by their values, in place."""
    for name, value in vars(args).items():
        if isinstance(value, _Default):
            setattr(args, name, value.value)


def run(args: argparse.Namespace) -> int:
    """Train (or merge) and print the pooled result and the report's path."""
    from cacxr.training import merge_folds, train_run

    cfg = config_from_args(args)
    _unwrap(args)
    if args.merge:
        run_dir = args.out or args.data
        if not run_dir:
            raise CacxrError("--merge needs the run folder: cacxr train RUN --merge")
        metrics = merge_folds(run_dir)
    else:
        missing = [flag for flag, value in (("DATA|MANIFEST", cfg.data), ("--task", cfg.task), ("--out", cfg.out)) if not value]
        if missing:
            raise CacxrError(f"missing {', '.join(missing)}: cacxr train DATA|MANIFEST --task TASK --out RUN")
        run_dir = cfg.out
        require_writable(cfg.out, "the run folder (--out)", folder=True)
        metrics = train_run(cfg)
    from cacxr.training import launch_rank

    if launch_rank() != 0:
        return 0  # under torchrun, rank 0 reports (and fits the final model)
    print(summary(metrics, Path(run_dir)))
    if cfg.track and metrics.get("complete", True):
        from cacxr.runs import track_run

        where = track_run(run_dir, cfg.track)
        if where:
            print(f"tracked: {where}")
    if args.final and metrics.get("complete", True):
        from cacxr.commands.fit_final import summary as final_summary
        from cacxr.training import fit_final

        final = fit_final(run_dir, device=cfg.device, num_threads=cfg.num_threads, progress=cfg.progress)
        print(final_summary(final, run_dir))
    return 0


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of parsed `cacxr train` arguments: defaults, then ``--config FILE``, then given flags."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    merged = {name: value.value if isinstance(value, _Default) else value for name, value in values.items()}
    config_file = getattr(args, "config", None)
    if config_file:
        from cacxr.config import read_config_file

        given = {name: value for name, value in values.items() if not isinstance(value, _Default)}
        merged |= read_config_file(config_file) | given
    return TrainConfig(**merged)


def summary(metrics: dict[str, Any], run_dir: Path) -> str:
    """The lines printed after training: pooled AUC with its CI (regression: MAE, Spearman) and the report."""
    if not metrics.get("complete", True):
        done = ", ".join(map(str, metrics["folds_done"]))
        todo = ", ".join(map(str, metrics["folds_missing"]))
        return (
            f"folds finished: {done}; still to train: {todo}\n"
            f"once they have finished: cacxr train {run_dir} --merge"
        )
    pooled = metrics["pooled"]
    lines = []
    fold_level = metrics.get("fold_level") or {}
    if fold_level.get("auc_mean") is not None:
        lines.append(
            f"mean per-fold AUC {_fmt(fold_level['auc_mean'])} (95% CI {_ci(fold_level.get('auc_ci'))}; "
            f"folds {_fmt(fold_level.get('auc_min'))}-{_fmt(fold_level.get('auc_max'))})"
        )
    lines.append(f"pooled AUC {_fmt(pooled.get('auc'))} (95% CI {_ci(pooled.get('auc_ci'))}), "
                 f"balanced accuracy {_fmt(pooled.get('balanced_accuracy'))}")
    if metrics.get("stability_warning"):
        lines.append(f"warning: {metrics['stability_warning']}")
    for line in metrics.get("environment_differences") or ():  # a rerun elsewhere than the recorded run
        lines.append(f"warning: {line}")
    point = metrics.get("operating_point") or {}
    if point.get("threshold") is not None:
        expected = point.get("expected") or (
            f"sensitivity {_fmt(point.get('sensitivity'))}, specificity {_fmt(point.get('specificity'))}"
        )
        lines.append(f"operating point {point['rule']}: threshold {point['threshold']:.3f}; {expected}")
    if metrics["task"] == "regression":
        lines.append(f"MAE of log CAC {_fmt(pooled.get('mae_log'))}, Spearman {_fmt(pooled.get('spearman'))}")
    lines.append(f"report: {run_dir / REPORT_FILE}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ci(ci: Any) -> str:
    if not ci or None in ci:
        return "n/a"
    return f"{ci[0]:.3f}-{ci[1]:.3f}"


def _clinical_list(text: str) -> list[str]:
    from cacxr.model import parse_clinical

    try:
        return parse_clinical(text)
    except CacxrError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs such as 20,35, got {text!r}") from None

