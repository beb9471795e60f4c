"""`cacxr evaluate`: test a trained run, unchanged, on other data (e.g. another hospital's cohort).

The run's fold models score every labelled patient of the new data as an ensemble (or one fold), and the
run's validation-chosen decision threshold is applied as it is: nothing is refitted on the new data.
The images go through the same recipe as training: ingest (a DATA folder) -> an image store built with the
run's preprocessing profile and image size -> the models.

Which patients: a DATA folder is ingested into ``OUT/ingest`` with ``site`` (default ``external``:
``cacxr ingest`` calls a patient folder internal when its name contains "CAC", so another hospital's
folders are external; use ``all`` to take every patient whatever its folder name, ``internal`` for
CAC-named folders). A manifest.csv is used as it is, unless ``site`` is given (then its rows are filtered
by their ``site`` column). Patients without a CAC label or whose image cannot be preprocessed are left out
and counted. Images the run was trained on are refused: evaluating on training data would be optimistic.

Outputs in OUT: ``metrics.json`` (``cacxr.stats.metrics.build_metrics`` with one pseudo-fold ``external``:
pooled metrics with 95 % bootstrap intervals, plus ``evaluation`` (settings and counts) and, with
``compare``, ``comparison``: a paired DeLong test of the two runs' AUCs on the same patients),
``predictions.csv`` (patient_id, site, cac_score, label, score, predicted_label; regression adds cac_band and
predicted_band; a comparison adds score_compare and predicted_label_compare), ``plots/`` and
``report.html``. ``evaluation.json`` marks OUT as an evaluation folder;
re-running into it reuses its ingest and image store.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from cacxr import __version__
from cacxr.core import CacxrError, true_label, write_json
from cacxr.ingest import MANIFEST_FILE, SUMMARY_FILE, ManifestRow, labelled_rows, read_manifest
from cacxr.runs import folder as runfolder

if TYPE_CHECKING:
    from cacxr.use.loaded_run import LoadedRun

__all__ = ["SITES", "DEFAULT_SITE", "evaluate_run"]

logger = logging.getLogger(__name__)

SITES = ("external", "internal", "all")
DEFAULT_SITE = "external"
MARKER = "evaluation.json"
PSEUDO_FOLD = "external"
PLOT_FILES = (
    "roc.png", "confusion.png", "error_by_band.png", "calibration.png", "scatter.png", "agatston_confusion.png",
)  # fmt: skip


@dataclass
class _Scored:
    """Scores of one run on the evaluation patients."""

    name: str
    run: LoadedRun
    scores: dict[str, float]  # patient id -> score (probability, or predicted CAC)
    failed: dict[str, str]  # patient id -> why its image could not be preprocessed
    labels: dict[str, int] = field(default_factory=dict)  # patient id -> the run's predicted label
    extra: dict[str, dict[str, float]] = field(default_factory=dict)  # regression: log_cac, probability


def _check_out(out: Path, run_dir: Path, data: Path) -> None:
    """Refuse an output folder that would overwrite a run or something that is not ours."""
    if out.resolve() == run_dir.resolve():
        raise CacxrError(
            f"--out {out} is the run folder itself: choose another folder (it would overwrite metrics.json)"
        )
    if out.is_file():
        raise CacxrError(f"--out {out} is a file: give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise CacxrError(
            f"--out {out} is not empty and is not a cacxr evaluation folder (no {MARKER}): "
            "choose a new or empty folder"
        )
    if data.is_dir() and out.resolve().is_relative_to(data.resolve()):
        raise CacxrError(f"--out {out} lies inside the data folder {data}: choose a folder outside it")


def _evaluation_rows(
    data: Path,
    out: Path,
    site: str | None,
    labels: str | os.PathLike[str] | None,
    workers: int | None,
    progress: bool,
) -> tuple[list[ManifestRow], dict[str, Any]]:
    """The manifest rows to evaluate (ingesting a DATA folder first) and a summary of how they were chosen."""
    from cacxr.ingest import ingest

    if site is not None and site not in SITES:
        raise CacxrError(f"unknown site {site!r}: choose one of {', '.join(SITES)}")
    if data.is_dir():
        chosen = site or DEFAULT_SITE
        summary = ingest(
            data, out / runfolder.INGEST_DIR, labels=labels, site=chosen, workers=workers, progress=progress,
            overwrite=True,
        )  # its own folder: a rerun replaces it
        manifest = out / runfolder.INGEST_DIR / MANIFEST_FILE
        source = {
            "data": str(data),
            "kind": "folder",
            "site": chosen,
            "ingest": str(out / runfolder.INGEST_DIR / SUMMARY_FILE),
        }
        if not read_manifest(manifest):
            hint = (
                " (folders whose name contains 'CAC' are internal: try --site all)"
                if chosen == "external"
                else ""
            )
            reasons = {k: v for k, v in summary.get("counts", {}).items() if v}
            raise CacxrError(
                f"{data}: no usable labelled image for --site {chosen}{hint}; excluded: {reasons}"
            )
        chosen = "all"  # ingest kept the site's patients only
    elif data.is_file():
        manifest, chosen = data, site or "all"
        source = {"data": str(data), "kind": "manifest", "site": site or "as listed"}
    else:
        raise CacxrError(f"{data}: no such data folder or manifest file")
    # The selection of cacxr train: the site's rows that have a CAC score.
    labelled, source["n_without_label"] = labelled_rows(manifest, chosen, "evaluated")
    return labelled, source


def _training_paths(run: LoadedRun, run_dir: Path) -> set[str]:
    """Resolved image paths of the run's training manifest (empty when it cannot be found)."""
    data = str(getattr(run.config, "data", "") or "")
    try:
        path = runfolder.find_run_manifest(run_dir, data if data.endswith(".csv") else None)
        return {str(Path(row.path).resolve()) for row in read_manifest(path)}
    except CacxrError as exc:
        logger.warning("cannot read the run's training manifest (%s); leakage check skipped", exc)
    return set()


def _refuse_training_images(rows: list[ManifestRow], run: LoadedRun, run_dir: Path) -> None:
    seen = _training_paths(run, run_dir)
    overlap = sorted(row.patient_id for row in rows if str(Path(row.path).resolve()) in seen)
    if overlap:
        shown = ", ".join(overlap[:5]) + (" ..." if len(overlap) > 5 else "")
        raise CacxrError(
            f"{len(overlap)} of the evaluation images were used to train {run_dir} ({shown}): evaluate on "
            "patients the run has not seen (e.g. --site external for a cohort trained with --site internal)"
        )


def _score_store(
    name: str,
    run: LoadedRun,
    rows: list[ManifestRow],
    out: Path,
    batch_size: int,
    workers: int | None,
    progress: bool,
) -> _Scored:
    """Score every row's image through an image store built with the run's profile and size."""
    from cacxr.pixels import build_store

    store_dir = out / f"store-{run.profile}-{run.image_size}"
    store = build_store(
        rows, store_dir, profile=run.profile, image_size=run.image_size, workers=workers, progress=progress
    )
    available = set(store.ids)
    ids = [row.patient_id for row in rows if row.patient_id in available]
    covariates = {row.patient_id: (row.age, row.sex) for row in rows}  # used by --clinical runs only
    scored = _Scored(name, run, {}, dict(store.failed))
    for start in tqdm(range(0, len(ids), batch_size), unit="batch", desc="evaluate", disable=not progress):
        chunk = ids[start : start + batch_size]
        images = np.stack([store.get(pid) for pid in chunk])
        result = run.scores(images, clinical=[covariates[pid] for pid in chunk])  # the run's one scoring path
        labels = run.predict_label(result)
        for i, pid in enumerate(chunk):
            scored.scores[pid] = float(result.score[i])
            scored.labels[pid] = int(labels[i])
            if result.log_cac is not None:
                scored.extra[pid] = {"log_cac": float(result.log_cac[i]), "probability": float(result.probability[i])}
    return scored


def _name(run_dir: Path, fold: int | None) -> str:
    return run_dir.name + ("" if fold is None else f" (fold {fold})")


def evaluate_run(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fold: int | None = None,
    compare: str | os.PathLike[str] | None = None,
    site: str | None = None,
    labels: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    workers: int | None = None,
    n_boot: int = 2000,
    viz: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a trained run on other data; write metrics.json, predictions.csv, plots and report.html.

    Args:
        run_dir: the trained run folder.
        data: a DATA folder (ingested into ``out/ingest``) or a manifest.csv.
        out: the output folder (new, empty, or an earlier evaluation folder).
        fold: score with this fold's model only (default: the ensemble of all folds).
        compare: another run folder scored on the same patients (ensemble), for a paired DeLong test.
        site: which patients (see the module docstring); default ``external`` for a DATA folder and
            every row for a manifest.
        labels: the label table for a DATA folder (default ``data/site.db``).
        batch_size: images scored together.
        workers: processes for ingest and preprocessing (default: the CPU count).
        n_boot: bootstrap resamples of each confidence interval.
        viz: write the PNG plots (and embed them in report.html).
        progress: show progress bars.

    Returns:
        The metrics.json content.

    Raises:
        CacxrError: a bad run, data or output folder, no usable patient, images the run was trained on,
            runs with different thresholds, or too few cases of a class for the comparison.
    """
    from cacxr.runs import write_report
    from cacxr.stats import build_metrics, delong_test
    from cacxr.use.loaded_run import load_run

    run_dir, data, out = Path(run_dir), Path(data), Path(out)
    if batch_size < 1:
        raise CacxrError(f"--batch-size must be at least 1 (got {batch_size})")
    run = load_run(run_dir, fold=fold)
    other = load_run(compare) if compare is not None else None
    if other is not None and float(other.threshold) != float(run.threshold):
        raise CacxrError(
            f"{run_dir} defines positive as CAC > {run.threshold:g} but {compare} as CAC > {other.threshold:g}: "
            "a paired comparison needs runs trained for the same threshold"
        )
    _check_out(out, run_dir, data)
    settings = {
        "run": str(run_dir),
        "fold": fold,
        "compare": None if compare is None else str(compare),
        "data": str(data),
        "site": site,
        "cacxr_version": __version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MARKER, {"status": "started", **settings})

    rows, source = _evaluation_rows(data, out, site, labels, workers, progress)
    _refuse_training_images(rows, run, run_dir)
    runs = [_score_store(_name(run_dir, fold), run, rows, out, batch_size, workers, progress)]
    if other is not None:
        _refuse_training_images(rows, other, Path(compare))
        name = _name(Path(compare), None)
        if name == runs[0].name:  # two runs in folders of the same name: tell them apart by path
            name = str(compare)
        runs.append(_score_store(name, other, rows, out, batch_size, workers, progress))
    scored = [row for row in rows if all(row.patient_id in r.scores for r in runs)]
    if not scored:
        raise CacxrError(f"{data}: no image could be preprocessed for scoring")
    cac = np.array([row.cac_score for row in scored], dtype=float)
    y = (cac > run.threshold).astype(int)
    score_a = np.array([runs[0].scores[row.patient_id] for row in scored])

    metrics = build_metrics(
        run.task,
        run.threshold,
        [
            {
                "fold": PSEUDO_FOLD,
                "cac_true": cac,
                "score": score_a,
                "decision_threshold": run.decision_threshold,
            }
        ],
        n_boot=n_boot,
    )
    metrics["evaluation"] = {
        **settings,
        **source,
        "folds_used": [int(k) for k, _ in run.models],
        "model": run.model_name,
        "decision_threshold": float(run.decision_threshold),
        "profile": run.profile,
        "image_size": int(run.image_size),
        "n_patients": len(scored),
        "n_positive": int(y.sum()),
        "n_not_scored": len(rows) - len(scored),
        "not_scored": sorted({f"{pid}: {why}" for r in runs for pid, why in r.failed.items()}),
    }
    if other is not None:
        score_b = np.array([runs[1].scores[row.patient_id] for row in scored])
        metrics["comparison"] = {
            "run_a": runs[0].name,
            "run_b": runs[1].name,
            "test": "paired DeLong test of the two AUCs (same patients)",
            "n": len(scored),
            **delong_test(y, score_a, score_b),
        }

    _write_predictions(out / runfolder.PREDICTIONS, scored, runs, run)
    for name in PLOT_FILES:  # an earlier evaluation's plots must not outlive it (only our own names)
        (out / runfolder.PLOTS_DIR / name).unlink(missing_ok=True)
    if viz:
        _write_plots(out / runfolder.PLOTS_DIR, scored, runs, metrics)
    runfolder.write_metrics(out, metrics)
    write_report(out)
    write_json(out / MARKER, {"status": "done", **settings})
    logger.info("evaluation of %s on %d patients written to %s", run_dir, len(scored), out)
    return metrics


def _write_predictions(path: Path, rows: list[ManifestRow], runs: list[_Scored], run: LoadedRun) -> None:
    """predictions.csv through the run's predictions writer (the columns of RUN/predictions.csv, plus site)."""
    from cacxr.runs import write_run_predictions

    table = []
    for row in rows:
        record: dict[str, Any] = {
            "patient_id": row.patient_id,
            "fold": PSEUDO_FOLD,
            "site": row.site,
            "gate": row.gate,
            "cac_score": row.cac_score,
            "label": int(true_label(row.cac_score, run.threshold)),
            "score": runs[0].scores[row.patient_id],
            "predicted_label": runs[0].labels[row.patient_id],
            **runs[0].extra.get(row.patient_id, {}),
        }
        if len(runs) > 1:
            record["score_compare"] = runs[1].scores[row.patient_id]
            record["predicted_label_compare"] = runs[1].labels[row.patient_id]
        table.append(record)
    write_run_predictions(path, run.task, table, {PSEUDO_FOLD: run.decision_threshold})


def _write_plots(
    folder: Path, rows: list[ManifestRow], runs: list[_Scored], metrics: dict[str, Any]
) -> list[Path]:
    """The run's plot set (``runfiles.write_score_plots``); a compared run is drawn thin in the ROC."""
    from cacxr.runs import write_score_plots

    run = runs[0].run
    cac = np.array([row.cac_score for row in rows], dtype=float)
    y = (cac > run.threshold).astype(int)
    score = np.array([runs[0].scores[row.patient_id] for row in rows])
    return write_score_plots(
        folder, run.task, run.threshold, y, cac, score, metrics["pooled"],
        curves=[(r.name, y, [r.scores[row.patient_id] for row in rows]) for r in runs[1:]],
        name=runs[0].name, scope="evaluation data",
        confusion_title=f"Confusion at the run's decision threshold {run.decision_threshold:.3g}",
    )  # fmt: skip
