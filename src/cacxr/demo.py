"""``cacxr demo``: the whole pipeline on a generated cohort, sized for a laptop CPU.

synth (a cohort with the archive's faults and a calcium signal) -> ingest -> image store -> 5-fold
cross-validated training, twice (classification of CAC > threshold, then regression of log CAC on the same
patients, folds and settings) -> metrics, plots and reports -> the two runs compared, all inside one folder::

    OUT/demo.json        the demo's settings (a second run on OUT continues an unfinished demo)
    OUT/cohort/          the synthetic cohort (site.db, CAC_xxx/rx/*.dcm, synth_truth.json)
    OUT/cacxr-cache/     the image store and the feature cache
    OUT/run/             the run folder: config.json, metrics.json, predictions.csv, plots/, report.html
    OUT/run_regression/  the same for the regression approach
    OUT/compare/         the two approaches side by side (cacxr.compare): compare.md, forest.png, ...
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cacxr import runfolder
from cacxr.atomic import write_json
from cacxr.errors import CacxrError

__all__ = ["DemoSettings", "run_demo"]

logger = logging.getLogger(__name__)

_MARKER = "demo.json"
_COMPARISON = Path("compare") / "compare.md"  # written last: the demo has finished


@dataclass(frozen=True)
class DemoSettings:
    """What the demo generates and how it trains (the defaults were measured to learn the synthetic signal).

    Attributes:
        patients: internal patients of the synthetic cohort.
        synth_size: side of the generated radiographs, in pixels.
        image_size: side of the model input, in pixels.
        epochs: training epochs per fold.
        arch: encoder.
        kfold: cross-validation folds.
        threshold: positive means CAC > threshold.
        finetune: what trains (``all``: the whole network, from random weights).
        lr: learning rate.
        batchsize: images per step.
        seed: seed of the cohort and of the training.
    """

    patients: int = 200
    synth_size: int = 256
    image_size: int = 128
    epochs: int = 10
    arch: str = "resnet18"
    kfold: int = 5
    threshold: float = 0.0
    finetune: str = "all"
    lr: float = 1e-3
    batchsize: int = 16
    seed: int = 0


def run_demo(
    out: str | os.PathLike[str] = "cacxr-demo",
    settings: DemoSettings | None = None,
    progress: bool = True,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Generate a cohort, ingest it, train a cross-validated classifier and regressor, and compare them.

    Args:
        out: the demo folder (new or empty, or an unfinished demo to continue).
        settings: cohort and training settings (default: :class:`DemoSettings`).
        progress: show progress bars.
        num_threads: torch CPU threads (default: torch's choice).

    Returns:
        The classification run's metrics.json content (its report is ``out/run/report.html``), with
        ``"compare"``: the ``cacxr.compare.compare_runs`` result of the two runs.

    Raises:
        CacxrError: ``out`` holds something else, a finished demo, or a demo with other settings.
    """
    from cacxr.compare import compare_runs, summary_lines
    from cacxr.config import TrainConfig
    from cacxr.synth import TRUTH_FILE, make_cohort
    from cacxr.train import train_run

    settings = settings or DemoSettings()
    root = Path(out)
    run_dir = root / "run"
    _check_folder(root, settings, run_dir)
    write_json(root / _MARKER, asdict(settings))

    cohort = root / "cohort"
    if not (cohort / TRUTH_FILE).is_file():
        # Generated beside and renamed when complete: an interrupted synth never looks like a cohort.
        partial = root / ".cohort-partial"
        if partial.exists():
            shutil.rmtree(partial)  # the demo's own unfinished cohort
        make_cohort(partial, settings.patients, seed=settings.seed, size=settings.synth_size, progress=progress)
        partial.rename(cohort)

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
        batchsize=settings.batchsize,
        seed=settings.seed,
        resume=run_dir.is_dir() and any(run_dir.iterdir()),
        num_threads=num_threads,
        progress=progress,
    )
    metrics = train_run(config)
    # The second approach on the same patients, folds and settings, so that the paired comparison is fair.
    regression_dir = root / "run_regression"
    regression = dataclasses.replace(
        config,
        task="regression",
        out=str(regression_dir),
        resume=regression_dir.is_dir() and any(regression_dir.iterdir()),
    )
    train_run(regression)
    comparison = compare_runs([run_dir, regression_dir], root / "compare")
    for line in summary_lines(comparison):
        logger.info("%s", line)
    logger.info("both approaches side by side: %s", root / _COMPARISON)
    return {**metrics, "compare": comparison}


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
    if recorded != asdict(settings):
        changed = ", ".join(f"{k}: {recorded.get(k)!r} there, {v!r} now" for k, v in asdict(settings).items() if recorded.get(k) != v)
        raise CacxrError(f"{root}: holds an unfinished demo with other settings ({changed}); choose another --out")
    logger.info("%s: continuing the unfinished demo", root)
