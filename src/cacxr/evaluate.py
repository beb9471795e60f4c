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

Outputs in OUT: ``metrics.json`` (``cacxr.metrics.build_metrics`` with one pseudo-fold ``external``:
pooled metrics with 95 % bootstrap intervals, plus ``evaluation`` (settings and counts) and, with
``compare``, ``comparison``: a paired DeLong test of the two runs' AUCs on the same patients),
``predictions.csv`` (patient_id, site, cac_score, label, score, predicted_label; regression adds cac_band and
predicted_band; a comparison adds score_compare and predicted_label_compare), ``plots/`` and
``report.html``. ``evaluation.json`` marks OUT as an evaluation folder;
re-running into it reuses its ingest and image store.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from cacxr import __version__
from cacxr.atomic import write_json, write_text
from cacxr.errors import CacxrError
from cacxr.manifest import ManifestRow, read_manifest

if TYPE_CHECKING:
    from cacxr.run import LoadedRun

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
    scores: dict[str, float]
    failed: dict[str, str]  # patient id -> why its image could not be preprocessed


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
            data, out / "ingest", labels=labels, site=chosen, workers=workers, progress=progress, overwrite=True
        )  # its own folder: a rerun replaces it
        rows = read_manifest(out / "ingest" / "manifest.csv")
        source = {
            "data": str(data),
            "kind": "folder",
            "site": chosen,
            "ingest": str(out / "ingest" / "ingest.json"),
        }
        if not rows:
            hint = (
                " (folders whose name contains 'CAC' are internal: try --site all)"
                if chosen == "external"
                else ""
            )
            reasons = {k: v for k, v in summary.get("counts", {}).items() if v}
            raise CacxrError(
                f"{data}: no usable labelled image for --site {chosen}{hint}; excluded: {reasons}"
            )
    elif data.is_file():
        rows = read_manifest(data)
        if site not in (None, "all"):
            rows = [row for row in rows if row.site == site]
        source = {"data": str(data), "kind": "manifest", "site": site or "as listed"}
        if not rows:
            raise CacxrError(f"{data}: no patient left in the manifest (--site {site})")
    else:
        raise CacxrError(f"{data}: no such data folder or manifest file")
    labelled = [row for row in rows if not math.isnan(row.cac_score)]
    source["n_without_label"] = len(rows) - len(labelled)
    if not labelled:
        raise CacxrError(f"{data}: no patient has a CAC label, so nothing can be evaluated")
    return labelled, source


def _training_paths(run: LoadedRun, run_dir: Path) -> set[str]:
    """Resolved image paths of the run's training manifest (empty when it cannot be found)."""
    candidates = [run_dir / "ingest" / "manifest.csv"]
    data = str(getattr(run.config, "data", "") or "")
    if data.endswith(".csv"):
        candidates.insert(0, Path(data))
    for path in candidates:
        if path.is_file():
            try:
                return {str(Path(row.path).resolve()) for row in read_manifest(path)}
            except CacxrError:
                logger.warning("cannot read the run's training manifest %s; leakage check skipped", path)
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
    from cacxr.store import build_store

    store_dir = out / f"store-{run.profile}-{run.image_size}"
    store = build_store(
        rows, store_dir, profile=run.profile, image_size=run.image_size, workers=workers, progress=progress
    )
    available = set(store.ids)
    ids = [row.patient_id for row in rows if row.patient_id in available]
    covariates = {row.patient_id: (row.age, row.sex) for row in rows}  # used by --clinical runs only
    scores: dict[str, float] = {}
    for start in tqdm(range(0, len(ids), batch_size), unit="batch", desc="evaluate", disable=not progress):
        chunk = ids[start : start + batch_size]
        images = np.stack([store.get(pid) for pid in chunk])
        values = np.asarray(run.score(images, clinical=[covariates[pid] for pid in chunk]), dtype=float).reshape(-1)
        scores.update(zip(chunk, values.tolist(), strict=True))
    return _Scored(name, run, scores, dict(store.failed))


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
    from cacxr.metrics import build_metrics, delong_test
    from cacxr.run import load_run

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

    _write_predictions(out / "predictions.csv", scored, runs, run)
    for name in PLOT_FILES:  # an earlier evaluation's plots must not outlive it (only our own names)
        (out / "plots" / name).unlink(missing_ok=True)
    plots = _write_plots(out / "plots", scored, runs, metrics) if viz else []
    write_json(out / "metrics.json", metrics)
    _write_report(out / "report.html", metrics, plots)
    write_json(out / MARKER, {"status": "done", **settings})
    logger.info("evaluation of %s on %d patients written to %s", run_dir, len(scored), out)
    return metrics


def _write_predictions(path: Path, rows: list[ManifestRow], runs: list[_Scored], run: LoadedRun) -> None:
    """predictions.csv: one row per evaluated patient (true CAC and label, score, predicted label, ...)."""
    from cacxr.metrics import AGATSTON_BANDS, agatston_band

    columns = ["patient_id", "site", "cac_score", "label", "score", "predicted_label"]
    if run.task == "regression":
        columns += ["cac_band", "predicted_band"]  # as in the run's predictions.csv
    if len(runs) > 1:
        columns += ["score_compare", "predicted_label_compare"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        score = runs[0].scores[row.patient_id]
        record: dict[str, Any] = {
            "patient_id": row.patient_id,
            "site": row.site,
            "cac_score": f"{row.cac_score:g}",
            "label": int(row.cac_score > run.threshold),
            "score": f"{score:.6g}",
            "predicted_label": int(np.asarray(run.predict_label(np.array([score])))[0]),
        }
        if run.task == "regression":
            record["cac_band"] = AGATSTON_BANDS[int(agatston_band([row.cac_score])[0])]
            record["predicted_band"] = AGATSTON_BANDS[int(agatston_band([score])[0])]
        if len(runs) > 1:
            other_score = runs[1].scores[row.patient_id]
            record["score_compare"] = f"{other_score:.6g}"
            record["predicted_label_compare"] = int(
                np.asarray(runs[1].run.predict_label(np.array([other_score])))[0]
            )
        writer.writerow(record)
    write_text(path, buf.getvalue())


def _write_plots(
    folder: Path, rows: list[ManifestRow], runs: list[_Scored], metrics: dict[str, Any]
) -> list[Path]:
    """ROC, confusion, calibration (classification), error by band; regression: scatter, Agatston confusion."""
    from cacxr import plots

    run = runs[0].run
    cac = np.array([row.cac_score for row in rows], dtype=float)
    y = (cac > run.threshold).astype(int)
    score = np.array([runs[0].scores[row.patient_id] for row in rows])
    pooled = metrics["pooled"]
    threshold = f"CAC > {run.threshold:g}"
    written = [
        plots.roc_plot(  # the evaluated run drawn thick with its CI, a compared run thin
            [(r.name, y, [r.scores[row.patient_id] for row in rows]) for r in runs[1:]],
            folder / "roc.png",
            title=f"ROC on the evaluation data ({threshold})",
            pooled=(runs[0].name, y, score),
            ci=tuple(pooled["auc_ci"]),
        ),
        plots.confusion_plot(
            pooled["confusion_matrix"],
            [f"CAC <= {run.threshold:g}", threshold],
            folder / "confusion.png",
            title=f"Confusion at the run's decision threshold {run.decision_threshold:.3g}",
        ),
    ]
    return written + plots.outcome_plots(folder, run.task, y, cac, score, pooled)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


_HEADLINE = (
    "auc", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "accuracy",
    "mae_log", "spearman", "agatston_accuracy", "agatston_kappa",
)  # fmt: skip


def _write_report(path: Path, metrics: dict[str, Any], plots: list[Path]) -> None:
    """A small self-contained HTML page: settings, the AUC with its CI, a metrics table, the plots."""
    ev, pooled = metrics["evaluation"], metrics["pooled"]
    lo, hi = pooled.get("auc_ci", [None, None])
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{esc(_fmt(pooled[name]))}</td></tr>"
        for name in _HEADLINE
        if name in pooled
    )
    settings = {
        "run": ev["run"],
        "models": "fold "
        + ", ".join(map(str, ev["folds_used"]))
        + (" (ensemble mean)" if len(ev["folds_used"]) > 1 else ""),
        "data": ev["data"],
        "patients (site)": f"{ev['n_patients']} ({ev['site']}), {ev['n_positive']} positive",
        "left out": f"{ev['n_without_label']} without label, {ev['n_not_scored']} not preprocessable",
        "positive means": f"CAC > {metrics['threshold']:g}",
        "decision threshold (from the run's validation, unchanged)": f"{ev['decision_threshold']:.4g}",
        "preprocessing": f"{ev['profile']}, {ev['image_size']} px",
    }
    table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in settings.items())
    comparison = ""
    if "comparison" in metrics:
        c = metrics["comparison"]
        comparison = (
            f"<h2>Comparison</h2><p>{esc(c['run_a'])}: AUC {_fmt(c['auc_a'])}; {esc(c['run_b'])}: AUC "
            f"{_fmt(c['auc_b'])}; difference {_fmt(c['diff'])} (95% CI {_fmt(c['ci'][0])} to {_fmt(c['ci'][1])}), "
            f"paired DeLong p = {c['p_value']:.3g} on {c['n']} patients.</p>"
        )
    images = "".join(
        f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{esc(p.stem.replace('_', ' '))}</figcaption></figure>"
        for p in plots
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cacxr evaluation</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}}
.big{{font-size:2.2em;font-weight:bold}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}} img{{max-width:100%}}
figure{{display:inline-block;width:46%;margin:.5em}}</style></head><body>
<h1>Evaluation of a trained run on new data</h1>
<p class="big">AUC {esc(_fmt(pooled.get("auc")))} <small>(95% CI {esc(_fmt(lo))} to {esc(_fmt(hi))})</small></p>
<p>The run's models and decision threshold were applied unchanged; intervals are percentile bootstrap.</p>
<table>{table}</table>
<h2>Metrics</h2><table>{rows}</table>
{comparison}
<h2>Plots</h2>{images}
</body></html>
"""
    write_text(path, page)
