"""Several trained runs side by side: a table, a forest plot and paired tests against the best run.

``compare_runs([RUN_A, RUN_B, ...], OUT)`` reads each run's metrics.json, config.json and predictions.csv
and writes::

    OUT/compare.md     the table (pooled AUC with its 95 % CI, balanced accuracy, sensitivity, specificity;
                       regression runs also MAE of log CAC and Spearman), the paired tests, the settings
                       that differ between the runs
    OUT/compare.csv    the same, one row per run, numbers written exactly as in each metrics.json
    OUT/compare.json   everything compare_runs returns
    OUT/forest.png     each run's pooled AUC and its 95 % CI

Figures are copied from each run's metrics.json, never recomputed, so they are exactly the run's own.

Runs are compared only when they are comparable: the same patients with the same CAC scores (from
predictions.csv; a run without it falls back to its manifest's sha256) and the same threshold (CAC >
threshold is the endpoint). Runs that differ in either are not refused: they are shown apart, in
groups A, B, ..., with a note, and a group's best run and paired tests concern that group only.

Headline: each run's mean per-fold AUC with its 95 % interval (metrics.json ``fold_level``), the pooled
out-of-fold AUC beside it (it includes the calibration drift between fold models).

Reference run: within a group, the run with the highest **inner-validation** AUC (the mean of its folds'
``val_auc`` in fold.json) is the reference; the test folds take no part in choosing it. When a run's folds
hold no validation AUC (runs trained before calibrated folds), the reference is the highest mean per-fold
test AUC and the group's ranking is marked exploratory.

Paired test: each other run is compared with the reference on the same patients. When both runs put every
shared patient in the same fold, the test is fold-stratified (``cacxr.stats.folds.fold_paired_test``: the
mean of the within-fold paired DeLong differences, its interval and p-value); otherwise it falls back to
DeLong's test on the pooled scores, and says so. ``diff`` is the reference's AUC minus this run's. Holm's
correction is applied across all the paired tests of the comparison (``p_holm``).

Why one module of ~450 lines: comparing runs is one job (each run's figures, the ranking on validation,
the fold-paired tests with Holm's correction); its files are written by compare_outputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from cacxr.config import EXECUTION_FIELDS, LOCATION_FIELDS, TrainConfig
from cacxr.core import CacxrError, write_json, write_text
from cacxr.runs import folder as runfolder
from cacxr.runs.compare_outputs import METRIC_COLUMNS, REGRESSION_ONLY, csv_text, forest_plot, markdown

__all__ = [
    "compare_runs", "summary_lines", "METRIC_COLUMNS", "COMPARED_SETTINGS"]

# config.json keys that define what a run computes: not where its files were, nor whether it drew plots.
# (num_threads: an execution option, but recorded because another CPU thread count gives other figures)
_VERSION_KEYS = ("cacxr_version", "torch_version", "store_profile_version", "num_threads")
_NOT_COMPARED = {*EXECUTION_FIELDS, *LOCATION_FIELDS, "viz", "save"}
COMPARED_SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.name not in _NOT_COMPARED) + _VERSION_KEYS

_MISSING = "—"


@dataclass
class _Run:
    """One run as read from its folder."""

    path: Path
    name: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    # patient_id -> (label, score, cac_score, fold or None); None when the run has no readable predictions.csv
    predictions: dict[str, tuple[int, float, float, int | None]] | None
    predictions_note: str = ""
    group: str = ""
    paired: dict[str, Any] | None = None
    paired_note: str = ""
    best: bool = False  # the reference of its group
    val_auc: float | None = None  # mean inner-validation AUC of its folds (fold.json val_auc)

    @property
    def task(self) -> str:
        return str(self.metrics.get("task") or self.config.get("task") or "classification")

    @property
    def threshold(self) -> float:
        return float(self.metrics.get("threshold", self.config.get("threshold", 0.0)))

    @property
    def pooled(self) -> dict[str, Any]:
        return self.metrics.get("pooled") or {}

    @property
    def fold_level(self) -> dict[str, Any]:
        """metrics.json's fold_level, or one computed from predictions.csv's folds for older runs."""
        if isinstance(self.metrics.get("fold_level"), dict):
            return self.metrics["fold_level"]
        from cacxr.stats import fold_level_auc

        if self.predictions is None or any(v[3] is None for v in self.predictions.values()):
            return {}
        folds = sorted({v[3] for v in self.predictions.values()})
        rows = list(self.predictions.values())
        return fold_level_auc(
            [(k, [r[0] for r in rows if r[3] == k], [r[1] for r in rows if r[3] == k]) for k in folds],
            pooled_auc=self.pooled.get("auc"),
            pooled_auc_ci=self.pooled.get("auc_ci"),
        )


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One line per note and per run of a ``compare_runs`` result: its AUCs and its paired test."""
    lines = [f"note: {note}" for note in result["notes"]]
    for entry in result["runs"]:
        auc = "n/a" if entry["auc"] is None else f"{entry['auc']:.3f}"
        mean = "n/a" if entry["auc_mean_folds"] is None else f"{entry['auc_mean_folds']:.3f}"
        if entry["best"]:
            group_entry = next(g for g in result["groups"] if g["id"] == entry["group"])
            versus = "best of its group" + (" (exploratory: ranked on test folds)" if group_entry["exploratory"] else "")
        elif entry["paired"]:
            paired = entry["paired"]
            versus = (
                f"vs best {paired['diff']:+.3f}, DeLong p = {paired['p_value']:.3g} "
                f"(Holm {paired['p_holm']:.3g}; {'fold-stratified' if paired['stratified'] else 'pooled'})"
            )
        else:
            versus = entry["paired_note"]
        group = f"[{entry['group']}] " if len(result["groups"]) > 1 else ""
        lines.append(f"{group}{entry['name']} ({entry['task']}): mean per-fold AUC {mean} (pooled {auc}); {versus}")
    return lines


def compare_runs(
    run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], viz: bool = True
) -> dict[str, Any]:
    """Compare trained runs and write compare.md, compare.csv, compare.json and forest.png into ``out``.

    Args:
        run_dirs: two or more finished run folders (each with config.json and metrics.json).
        out: the output folder (created when missing; only the four files above are written there).
        viz: draw forest.png.

    Returns:
        ``{"runs": [...], "groups": [...], "settings_differ": [...], "notes": [...], "files": {...}}``.
        Each run has ``name``, ``path``, ``group``, ``task``, ``threshold``, ``n``, ``n_pos``, the
        pooled metrics of :data:`METRIC_COLUMNS` and ``auc_ci`` exactly as in its metrics.json (regression
        metrics ``None`` for classification runs), ``best`` (the reference of its group), ``paired``
        (``delong_test`` result against the best run plus ``against`` and ``n``, or ``None``),
        ``paired_note`` (why there is no paired test) and ``settings`` (its values of the settings that
        differ). Each group has ``id``, ``threshold``, ``n_patients``, ``runs`` and ``best``.

    Raises:
        CacxrError: fewer than two runs, a run given twice, or a folder that is not a finished run.
    """
    if len(run_dirs) < 2:
        raise CacxrError("compare needs at least two run folders")
    runs = _read_runs(run_dirs)
    groups = _group(runs)
    for members in groups.values():
        _paired_tests(members)
    _holm(runs)
    differ = _settings_that_differ(runs)
    notes = _notes(runs, groups)
    out_dir = Path(out)
    files = {
        "markdown": out_dir / "compare.md",
        "csv": out_dir / "compare.csv",
        "json": out_dir / "compare.json",
    }
    if viz:
        files["forest"] = out_dir / "forest.png"
    result = {
        "runs": [_run_summary(run, differ, groups) for run in runs],
        "groups": [_group_summary(gid, members) for gid, members in groups.items()],
        "settings_differ": differ,
        "notes": notes,
        "files": {k: str(v) for k, v in files.items()},
    }
    write_text(files["csv"], csv_text(result))
    write_text(files["markdown"], markdown(result))
    if viz:
        forest_plot(result, files["forest"])
    write_json(files["json"], result)
    return result


# ---- reading ---------------------------------------------------------------------------------------------


def _read_runs(run_dirs: Sequence[str | os.PathLike[str]]) -> list[_Run]:
    paths = [Path(d) for d in run_dirs]
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            raise CacxrError(f"{path}: given twice (as {seen[key]} too); list each run once")
        seen[key] = path
    names = _names(paths)
    return [_read_run(path, name) for path, name in zip(paths, names, strict=True)]


def _names(paths: list[Path]) -> list[str]:
    """Each run's folder name, with its parent folder when two runs share a name."""
    names = [p.resolve().name for p in paths]
    return [
        "/".join(p.resolve().parts[-2:]) if names.count(name) > 1 else name
        for p, name in zip(paths, names, strict=True)
    ]


def _read_run(path: Path, name: str) -> _Run:
    if not path.is_dir():
        raise CacxrError(f"{path}: no such run folder")
    metrics = runfolder.read_metrics(path)
    config = runfolder.read_config(path)
    if "pooled" not in metrics or "task" not in metrics:
        raise CacxrError(
            f"{path / runfolder.METRICS_FILE}: not the metrics of a cross-validated run (no pooled figures)"
        )
    predictions, note = _read_predictions(path)
    return _Run(
        path=path, name=name, config=config, metrics=metrics, predictions=predictions, predictions_note=note,
        val_auc=_validation_auc(path, config),
    )


def _validation_auc(path: Path, config: dict[str, Any]) -> float | None:
    """The mean of the folds' inner-validation AUCs (fold_<k>/fold.json ``val_auc``); None when any is missing."""
    values = []
    for k in range(int(config.get("kfold") or 0)):
        try:
            record = runfolder.read_fold_record(path, k)
        except CacxrError:
            return None
        value = record.get("val_auc") if isinstance(record, dict) else None
        if not _finite(value):
            return None
        values.append(float(value))
    return float(np.mean(values)) if values else None


def _read_predictions(run_dir: Path) -> tuple[dict[str, tuple[int, float, float, int | None]] | None, str]:
    """patient_id -> (label, score, cac_score, fold), or None and the reason (then no paired test is possible).

    The ranking score is the unclipped predicted log CAC of a regression run when predictions.csv has it.
    """
    try:
        rows = runfolder.read_run_predictions(run_dir)
    except CacxrError as exc:
        return None, str(exc)
    table = {
        row["patient_id"]: (row["label"], row.get("log_cac", row["score"]), row["cac_score"], row.get("fold"))
        for row in rows
    }
    if len(table) != len(rows):
        return None, f"{run_dir / runfolder.PREDICTIONS}: a patient appears twice"
    return table, ""


# ---- grouping and paired tests -------------------------------------------------------------------------


def _cohort_key(run: _Run) -> tuple[float, str]:
    """Runs with equal keys are comparable: same threshold, same patients with the same CAC scores."""
    if run.predictions is not None:
        text = "\n".join(f"{pid},{entry[2]!r}" for pid, entry in sorted(run.predictions.items()))
        cohort = "patients:" + hashlib.sha256(text.encode()).hexdigest()
    else:
        cohort = f"manifest:{run.config.get('manifest_sha256', run.path)}"
    return run.threshold, cohort


def _group(runs: list[_Run]) -> dict[str, list[_Run]]:
    """Runs by comparable cohort, labelled A, B, ... in the order given."""
    by_key: dict[tuple[float, str], list[_Run]] = {}
    for run in runs:
        by_key.setdefault(_cohort_key(run), []).append(run)
    groups = {}
    for index, members in enumerate(by_key.values()):
        gid = _group_id(index)
        for run in members:
            run.group = gid
        groups[gid] = members
    return groups


def _group_id(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def _ranking(members: list[_Run]) -> tuple[str, bool]:
    """What ranks a group's runs, and whether that ranking is exploratory (test figures)."""
    if all(run.val_auc is not None for run in members):
        return "inner-validation AUC (mean of the folds' val_auc)", False
    return "mean per-fold test AUC (exploratory: the folds hold no inner-validation AUC)", True


def _rank_value(run: _Run, exploratory: bool) -> float | None:
    if not exploratory:
        return run.val_auc
    mean = run.fold_level.get("auc_mean")
    return mean if _finite(mean) else run.pooled.get("auc")


def _best(members: list[_Run]) -> _Run | None:
    """The run ranked first (the first given on ties); None when no run has a defined figure."""
    _, exploratory = _ranking(members)
    scored = [run for run in members if _finite(_rank_value(run, exploratory))]
    return max(scored, key=lambda run: _rank_value(run, exploratory)) if scored else None


def _paired_tests(members: list[_Run]) -> None:
    """A paired test of each run against its group's reference run, on their shared patients."""
    from cacxr.stats import delong_test, fold_paired_test

    best = _best(members)
    for run in members:
        run.best = run is best
        if best is None:
            run.paired_note = "no run of this group has a defined AUC"
            continue
        if run is best or len(members) == 1:
            continue
        if best.predictions is None or run.predictions is None:
            missing = run if run.predictions is None else best
            run.paired_note = f"no paired test: {missing.predictions_note}"
            continue
        shared = sorted(set(best.predictions) & set(run.predictions))
        labels = np.array([best.predictions[pid][0] for pid in shared])
        a = np.array([best.predictions[pid][1] for pid in shared])
        b = np.array([run.predictions[pid][1] for pid in shared])
        folds = [best.predictions[pid][3] for pid in shared]
        same_folds = None not in folds and folds == [run.predictions[pid][3] for pid in shared]
        try:
            if same_folds:
                keys = np.array(folds)
                test = fold_paired_test(
                    [(k, labels[keys == k], a[keys == k], b[keys == k]) for k in sorted(set(folds))]
                )
            else:
                test = {"method": "DeLong on pooled scores (the runs' folds differ)", **delong_test(labels, a, b)}
        except CacxrError as exc:
            run.paired_note = f"no paired test: {exc}"
            continue
        run.paired = {"against": best.name, **test, "n": len(shared), "stratified": same_folds}


def _holm(runs: list[_Run]) -> None:
    """Holm's correction across every paired test of the comparison (``p_holm``)."""
    from cacxr.stats import holm_adjust

    tested = [run for run in runs if run.paired is not None]
    for run, adjusted in zip(tested, holm_adjust([run.paired["p_value"] for run in tested]), strict=True):
        run.paired["p_holm"] = adjusted
        run.paired["n_tests"] = len(tested)


def _settings_that_differ(runs: list[_Run]) -> list[str]:
    """config.json keys among :data:`COMPARED_SETTINGS` whose values are not the same in every run."""
    differ = []
    for key in COMPARED_SETTINGS:
        values = [json.dumps(run.config.get(key, _MISSING), sort_keys=True) for run in runs]
        if len(set(values)) > 1:
            differ.append(key)
    return differ


def _notes(runs: list[_Run], groups: dict[str, list[_Run]]) -> list[str]:
    notes = []
    if len(groups) > 1:
        described = "; ".join(
            f"group {gid}: CAC > {_number(members[0].threshold)}, {_n_patients(members[0])} patients "
            f"({', '.join(run.name for run in members)})"
            for gid, members in groups.items()
        )
        notes.append(
            "These runs do not all share the same patients and threshold, so they are shown apart in "
            f"{len(groups)} groups ({described}). Figures of different groups are not comparable: each group "
            "has its own best run, and paired tests are done within a group only."
        )
    for run in runs:
        if run.predictions is None:
            notes.append(f"{run.name}: {run.predictions_note}; its patients are known only by its manifest hash.")
        if run.metrics.get("stability_warning"):
            notes.append(f"{run.name}: stability warning: {run.metrics['stability_warning']}")
    return notes


# ---- summaries -------------------------------------------------------------------------------------------


def _run_summary(run: _Run, differ: list[str], groups: dict[str, list[_Run]]) -> dict[str, Any]:
    pooled = run.pooled
    summary: dict[str, Any] = {
        "name": run.name,
        "path": str(run.path),
        "group": run.group,
        "task": run.task,
        "threshold": run.threshold,
        "n": pooled.get("n"),
        "n_pos": pooled.get("n_pos"),
    }
    for key, _ in METRIC_COLUMNS:
        summary[key] = None if key in REGRESSION_ONLY and run.task != "regression" else pooled.get(key)
    summary["auc_ci"] = pooled.get("auc_ci")
    fold_level = run.fold_level
    summary["auc_mean_folds"] = fold_level.get("auc_mean")
    summary["auc_mean_ci"] = fold_level.get("auc_ci")
    summary["auc_folds_range"] = [fold_level.get("auc_min"), fold_level.get("auc_max")] if fold_level else None
    summary["auc_mean_method"] = fold_level.get("method")
    summary["val_auc"] = run.val_auc
    summary["best"] = run.best
    summary["paired"] = run.paired
    summary["paired_note"] = run.paired_note
    summary["settings"] = {key: run.config.get(key) for key in differ}
    return summary


def _group_summary(gid: str, members: list[_Run]) -> dict[str, Any]:
    best = next((run for run in members if run.best), None)
    ranked_by, exploratory = _ranking(members)
    return {
        "id": gid,
        "ranked_by": ranked_by,
        "exploratory": exploratory,
        "threshold": members[0].threshold,
        "n_patients": _n_patients(members[0]),
        "runs": [run.name for run in members],
        "best": best.name if best else None,
    }


def _n_patients(run: _Run) -> int | None:
    return len(run.predictions) if run.predictions is not None else run.pooled.get("n")


# ---- formatting ------------------------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> str:
    return f"{float(value):g}"
