"""``cacxr demo``: the whole pipeline on a generated cohort, sized for a laptop CPU.

synth (a cohort with the archive's faults and a calcium signal) -> ingest -> image store -> cross-validated
training, twice (classification of CAC > threshold and regression of log CAC on the same patients, folds and
settings; in two processes side by side when the machine has two cores) -> metrics, plots and reports -> the
two runs compared, all inside one folder::

    OUT/demo.json        the demo's settings (a second run on OUT continues an unfinished demo)
    OUT/cohort/          the synthetic cohort (site.db, CAC_xxx/rx/*.dcm, synth_truth.json)
    OUT/cacxr-cache/     the image store and the feature cache
    OUT/run/             the run folder: config.json, metrics.json, predictions.csv, plots/, report.html
    OUT/run_regression/  the same for the regression approach
    OUT/compare/         the two approaches side by side (cacxr.runs.compare): compare.md, forest.png, ...
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cacxr.core import CacxrError, write_json
from cacxr.runs import folder as runfolder

__all__ = ["DemoSettings", "FULL_DEMO", "run_demo", "headline"]

logger = logging.getLogger(__name__)

_MARKER = "demo.json"
_COMPARISON = Path("compare") / "compare.md"  # written last: the demo has finished


@dataclass(frozen=True)
class DemoSettings:
    """What the demo generates and how it trains (the defaults were measured to learn the synthetic signal).

    Attributes:
        patients: internal patients of the synthetic cohort.
        synth_size: side of the generated radiographs, in pixels.
        plaque_scale: plaque size relative to the standard cohort (cacxr.synth): larger plaques stay visible
            at the demo's small input size.
        image_size: side of the model input, in pixels.
        epochs: training epochs per fold.
        arch: encoder.
        kfold: cross-validation folds.
        threshold: positive means CAC > threshold.
        finetune: what trains (``all``: the whole network, from random weights).
        lr: learning rate of the classifier (AdamW).
        regression_lr: learning rate of the regressor (SGD with momentum, the recipe's optimiser).
        milestones: epochs at which both learning rates are divided by 10.
        batchsize: images per step.
        seed: seed of the cohort and of the training.
    """

    patients: int = 200
    synth_size: int = 256
    plaque_scale: float = 3.0
    image_size: int = 64
    epochs: int = 8
    arch: str = "resnet18"
    kfold: int = 3
    threshold: float = 0.0
    finetune: str = "all"
    lr: float = 1e-3
    regression_lr: float = 1e-2
    milestones: tuple[int, ...] = (6,)
    batchsize: int = 16
    seed: int = 0


# `cacxr demo --full`: the standard cohort's plaques at twice the input size, five folds, more epochs.
FULL_DEMO = DemoSettings(plaque_scale=1.0, image_size=128, epochs=20, kfold=5, milestones=(14,))


def run_demo(
    out: str | os.PathLike[str] = "cacxr-demo",
    settings: DemoSettings | None = None,
    progress: bool = True,
    num_threads: int | None = None,
    parallel: bool | None = None,
) -> dict[str, Any]:
    """Generate a cohort, ingest it, train a cross-validated classifier and regressor, and compare them.

    Args:
        out: the demo folder (new or empty, or an unfinished demo to continue).
        settings: cohort and training settings (default: :class:`DemoSettings`).
        progress: show progress bars (the classifier's; the regressor trains quietly beside it).
        num_threads: torch CPU threads of each training (default: the cores shared between the two).
        parallel: train the regressor in a second process while the classifier trains (default: when the
            machine has two or more cores).

    Returns:
        The classification run's metrics.json content (its report is ``out/run/report.html``), with
        ``"regression"``: the regression run's metrics.json content, and ``"compare"``: the
        ``cacxr.runs.compare.compare_runs`` result of the two runs.

    Raises:
        CacxrError: ``out`` holds something else, a finished demo, or a demo with other settings.
    """
    from cacxr.config import TrainConfig
    from cacxr.runs import compare_runs, summary_lines
    from cacxr.synth import TRUTH_FILE, make_cohort
    from cacxr.training import train_run

    settings = settings or DemoSettings()
    root = Path(out)
    run_dir = root / "run"
    _check_folder(root, settings, run_dir)
    write_json(root / _MARKER, _record(settings))

    cohort = root / "cohort"
    if not (cohort / TRUTH_FILE).is_file():
        # Generated beside and renamed when complete: an interrupted synth never looks like a cohort.
        partial = root / ".cohort-partial"
        if partial.exists():
            shutil.rmtree(partial)  # the demo's own unfinished cohort
        make_cohort(
            partial,
            settings.patients,
            seed=settings.seed,
            size=settings.synth_size,
            progress=progress,
            plaque_scale=settings.plaque_scale,
        )
        partial.rename(cohort)

    cores = os.cpu_count() or 1
    parallel = cores >= 2 if parallel is None else parallel
    # Two trainings side by side each get half the cores (oversubscribed OpenMP threads are far slower).
    threads = num_threads or max(1, cores // 2 if parallel else cores)
    config = TrainConfig(
        task="classification",
        data=str(cohort),
        out=str(run_dir),
        epochs=settings.epochs,
        arch=settings.arch,
        kfold=settings.kfold,
        image_size=settings.image_size,
        threshold=settings.threshold,
        weights="none",
        finetune=settings.finetune,
        lr=settings.lr,
        milestones=list(settings.milestones),
        batchsize=settings.batchsize,
        seed=settings.seed,
        resume=run_dir.is_dir() and any(run_dir.iterdir()),
        num_threads=threads,
        progress=progress,
        store=str(root / "cacxr-cache" / "store-classification"),
    )
    # The second approach on the same patients, folds and settings, so that the paired comparison is fair
    # (its own image store: the two trainings may build theirs at the same time).
    regression_dir = root / "run_regression"
    regression = dataclasses.replace(
        config,
        task="regression",
        out=str(regression_dir),
        lr=settings.regression_lr,
        resume=regression_dir.is_dir() and any(regression_dir.iterdir()),
        progress=False if parallel else progress,
        store=str(root / "cacxr-cache" / "store-regression"),
    )
    if parallel:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pending = pool.submit(train_run, regression)
            metrics = train_run(config)
            regression_metrics = pending.result()
    else:
        metrics = train_run(config)
        regression_metrics = train_run(regression)
    comparison = compare_runs([run_dir, regression_dir], root / "compare")
    for line in summary_lines(comparison):
        logger.info("%s", line)
    logger.info("both approaches side by side: %s", root / _COMPARISON)
    return {**metrics, "regression": regression_metrics, "compare": comparison}


def headline(result: dict[str, Any], root: str | os.PathLike[str]) -> list[str]:
    """The lines the demo ends with: each approach's figures, then where the reports and comparison are."""
    root = Path(root)
    lines = []
    for name, metrics in (("classification", result), ("regression", result["regression"])):
        folds = [f["auc"] for f in metrics["folds"] if f.get("auc") is not None]
        pooled = metrics["pooled"]
        text = f"{name:<14} per-fold AUC mean {_fmt(sum(folds) / len(folds) if folds else None)}"
        if folds:
            text += f" (folds {min(folds):.3f}-{max(folds):.3f})"
        text += f"; pooled AUC {_fmt(pooled.get('auc'))} (95% CI {_ci(pooled.get('auc_ci'))})"
        if name == "regression":
            text += f"; Spearman {_fmt(pooled.get('spearman'))}, MAE of log CAC {_fmt(pooled.get('mae_log'))}"
        lines.append(text)
    lines += [
        f"reports:        {root / 'run' / 'report.html'}  {root / 'run_regression' / 'report.html'}",
        f"comparison:     {root / _COMPARISON}",
    ]
    return lines


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ci(ci: Any) -> str:
    return "n/a" if not ci or None in ci else f"{ci[0]:.3f}-{ci[1]:.3f}"


def _check_folder(root: Path, settings: DemoSettings, run_dir: Path) -> None:
    """Refuse anything but a new/empty folder or an unfinished demo with the same settings."""
    if root.exists() and not root.is_dir():
        raise CacxrError(f"{root}: exists and is not a folder; choose a folder for --out")
    if not root.is_dir() or not any(root.iterdir()):
        return
    marker = root / _MARKER
    if not marker.is_file():
        raise CacxrError(f"{root}: not empty and not a cacxr demo folder (no {_MARKER}); choose another --out")
    if (root / _COMPARISON).is_file():
        raise CacxrError(
            f"{root}: already holds a finished demo (report: {run_dir / runfolder.REPORT_FILE}, comparison: "
            f"{root / _COMPARISON}); "
            "choose another --out to run it again"
        )
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CacxrError(f"{marker}: unreadable ({exc})") from None
    if recorded != _record(settings):
        changed = ", ".join(f"{k}: {recorded.get(k)!r} there, {v!r} now" for k, v in _record(settings).items() if recorded.get(k) != v)
        raise CacxrError(f"{root}: holds an unfinished demo with other settings ({changed}); choose another --out")
    logger.info("%s: continuing the unfinished demo", root)


def _record(settings: DemoSettings) -> dict[str, Any]:
    """The settings as demo.json holds them (tuples become lists)."""
    return json.loads(json.dumps(asdict(settings)))
