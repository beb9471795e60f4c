"""report.html: the one self-contained page of a run that a person reads first.

The page is built from the run folder only (config.json, metrics.json, plots/*.png), so it can be
rebuilt at any time with :func:`write_report`. Every text that comes from a file is escaped, and the
PNGs are embedded as base64 data URIs: the page loads nothing from elsewhere.

Why one module of ~420 lines: it lays out the one page (sections from report_sections, the plots, the
evaluation variant); splitting the page would split its order.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cacxr import __version__
from cacxr.core import AGATSTON_BANDS, CacxrError, read_json_object, write_text
from cacxr.ingest import SUMMARY_FILE, read_manifest
from cacxr.runs.report_sections import (
    baseline_note,
    calibration_section,
    endpoints_section,
    guideline_wording,
    headline,
    operating_point_section,
    p_text,
)
from cacxr.runs.report_sections import esc as _e
from cacxr.runs.report_sections import fmt as _fmt
from cacxr.runs.report_sections import number as _number

__all__ = ["write_report", "render_report"]

# Binary metrics of the headline table: (key, column title).
_BINARY_COLUMNS = (
    ("auc", "AUC"),
    ("balanced_accuracy", "balanced accuracy"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("accuracy", "accuracy"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("f1", "F1"),
)
_REGRESSION_COLUMNS = (
    ("mae_log", "MAE (log CAC)"),
    ("rmse_log", "RMSE (log CAC)"),
    ("r2_log", "R² (log CAC)"),
    ("spearman", "Spearman ρ"),
    ("pearson_log", "Pearson r (log CAC)"),
    ("agatston_accuracy", "Agatston band accuracy"),
    ("agatston_kappa", "Agatston κ (linear)"),
)
# Settings shown in the summary, in this order: (config key, label).
_SUMMARY_SETTINGS = (
    ("arch", "encoder"),
    ("weights", "pretrained weights"),
    ("finetune", "fine-tuned layers"),
    ("profile", "preprocessing profile"),
    ("image_size", "image size (px)"),
    ("epochs", "epochs (max.)"),
    ("lr", "learning rate"),
    ("batchsize", "batch size"),
    ("loss", "regression loss"),
    ("augment", "augmentation"),
    ("kfold", "folds"),
    ("val_fraction", "validation share"),
    ("operating_point", "operating point rule"),
    ("seed", "seed"),
)
# Plot files are shown in this order (first matching word of the file name), then the rest.
_FIRST_PLOTS = ("roc", "calibration")
_PLOT_ORDER = ("roc", "confusion", "agatston", "calibration", "decision", "error_by_band", "band", "scatter", "loss")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #1d2433; line-height: 1.45; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #d6dbe4; }
.subtitle { color: #5a6478; margin-top: 0; }
.headline { display: flex; gap: 2.5rem; align-items: baseline; flex-wrap: wrap; background: #f3f6fb;
            border-radius: 8px; padding: 1rem 1.5rem; }
.big { font-size: 3rem; font-weight: 700; } .ci { font-size: 1.3rem; color: #3b4a66; }
.secondary { font-size: 1.2rem; } .method { color: #5a6478; font-size: 0.85rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #d6dbe4; padding: 0.3rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eef1f7; } tr.pooled td { font-weight: 700; } tr.baseline td { font-style: italic; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: 0.6rem 1rem; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; border: 1px solid #e3e7ee; }
figcaption { color: #5a6478; font-size: 0.9rem; }
footer { margin-top: 3rem; color: #8a93a6; font-size: 0.85rem; }
"""


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``run_dir/report.html`` from the run folder's files.

    Args:
        run_dir: a run folder (or an evaluation folder) with metrics.json; config.json,
            ingest/ingest.json and plots/*.png are used when present.

    Returns:
        The path of report.html.

    Raises:
        CacxrError: the folder or metrics.json is missing, or a JSON file cannot be read.
    """
    from cacxr.runs import folder as runfolder

    run = Path(run_dir)
    if not run.is_dir():
        raise CacxrError(f"{run}: not a run folder (it does not exist)")
    metrics = runfolder.read_metrics(run)
    config = runfolder.read_config(run, required=False) or {}
    if not config and isinstance(metrics.get("evaluation"), dict):
        # An evaluation folder (cacxr evaluate): its settings are in metrics.json.
        config = {k: v for k, v in metrics["evaluation"].items() if _is_scalar(v)}
    ingest = config.get("ingest") if isinstance(config.get("ingest"), dict) else None
    if ingest is None:
        path = run / runfolder.INGEST_DIR / SUMMARY_FILE
        ingest = read_json_object(path) if path.is_file() else _manifest_formats(config)
    plots_dir = run / runfolder.PLOTS_DIR
    plots = (
        sorted(plots_dir.rglob("*.png"), key=lambda p: _plot_rank(p, plots_dir)) if plots_dir.is_dir() else []
    )
    page = render_report(
        metrics, config, plots=[(p.relative_to(plots_dir).as_posix(), p) for p in plots], ingest=ingest
    )
    out = run / runfolder.REPORT_FILE
    write_text(out, page)
    return out


def render_report(
    metrics: dict,
    config: dict | None = None,
    plots: Iterable[tuple[str, Path]] = (),
    ingest: dict | None = None,
) -> str:
    """The report page as an HTML string.

    Args:
        metrics: metrics.json content (``cacxr.stats.metrics.build_metrics``).
        config: config.json content (may be empty).
        plots: ``(caption name, PNG path)`` pairs, embedded in this order.
        ingest: ingest summary fields (ingest.json content), shown when given.

    Returns:
        A complete HTML document.
    """
    config = config or {}
    task = str(metrics.get("task") or config.get("task") or "classification")
    threshold = metrics.get("threshold", config.get("threshold", 0.0))
    pooled = metrics.get("pooled") or {}
    folds = metrics.get("folds") or []
    plots = list(plots)
    # The ROC and calibration pictures come right under the headline; the other plots stay at the end.
    first = [(name, path) for name, path in plots if any(word in name.lower() for word in _FIRST_PLOTS)]
    rest = [item for item in plots if item not in first]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>cacxr report: {_e(task)}</title><style>{_CSS}</style></head><body>",
        f"<h1>CAC from chest radiographs: {_e(task)}</h1>",
        f'<p class="subtitle">Positive = CAC &gt; {_e(_number(threshold))} (Agatston){_e(guideline_wording(threshold))}. '
        f"{_e(_cohort_sentence(pooled))}</p>",
        headline(task, metrics, "evaluation data" if "evaluation" in metrics else "pooled out-of-fold"),
        _plots_section(first, _first_title(first)),
        "<h2>How it was evaluated</h2>",
        f"<p>{_e(_evaluation_text(metrics, config))}</p>",
        _final_note(config.get("final")),
        "<h2>Results</h2>",
        _metrics_table(_BINARY_COLUMNS, pooled, folds, metrics, with_ci=True),
        _thresholds_sentence(task, threshold, folds),
        _comparison(metrics.get("comparison")),
        baseline_note(metrics.get("clinical_baseline")),
        operating_point_section(metrics.get("operating_point"), threshold),
        calibration_section(metrics.get("calibration")),
        endpoints_section(metrics.get("endpoints")),
    ]
    if task == "regression":
        parts += [
            "<h3>Regression of log CAC</h3>",
            _metrics_table(_REGRESSION_COLUMNS, pooled, folds, metrics, with_ci=False),
        ]
    parts.append(_confusion_tables(task, pooled))
    parts.append(_settings_section(config, ingest))
    parts.append(_plots_section(rest))
    parts.append(f"<footer>Written by cacxr {_e(__version__)}. This page is self-contained.</footer>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"


# ----------------------------------------------------------------------------------------------
# Sections


def _cohort_sentence(pooled: dict) -> str:
    n, n_pos = pooled.get("n"), pooled.get("n_pos")
    if n is None:
        return ""
    text = f"{n} patients evaluated"
    if n_pos is not None:
        text += f", {n_pos} positive and {n - n_pos} negative"
    return text + "."


def _evaluation_text(metrics: dict, config: dict) -> str:
    folds = metrics.get("folds") or []
    ci = metrics.get("ci") or {}
    boot = (
        f"95 % confidence intervals are percentile bootstrap intervals ({ci['n_boot']} resamples, stratified by class)."
        if "n_boot" in ci
        else "95 % confidence intervals are bootstrap intervals."
    )
    if len(folds) > 1:
        k = config.get("kfold", len(folds))
        val = config.get("val_fraction")
        val_text = f"{float(val):.0%} of" if isinstance(val, int | float) else "part of"
        seed = f" (seed {config['seed']})" if "seed" in config else ""
        return (
            f"Patient-level, class-stratified {k}-fold cross-validation{seed}: every patient is in exactly one "
            f"test fold, and no patient is in two roles of a fold. Inside each fold, {val_text} the training "
            "patients were held out for validation; the best epoch and the decision threshold were chosen on "
            "that validation part only. Each test fold was scored once, with the selected model. Pooled "
            "figures use all out-of-fold predictions together, each thresholded at its own fold's decision "
            f"threshold; mean ± std are over folds. {boot}"
        )
    return (
        "The trained model was applied once to these patients, with the decision threshold chosen on the "
        f"training run's validation data, unchanged. {boot}"
    )


def _final_note(final: Any) -> str:
    if not final:
        return ""
    details = ""
    if isinstance(final, dict):
        details = " " + "; ".join(f"{k}: {_setting(v)}" for k, v in final.items() if _is_scalar(v)) + "."
    return (
        '<p class="note"><strong>Final model.</strong> A final model was trained on the patients of this run '
        "after cross-validation (a stratified share held out to fit its calibration) and is the one used by "
        "predict, evaluate and serve. It has no held-out "
        "estimate of its own: the cross-validated figures on this page are the estimate of its performance."
        f"{_e(details)}</p>"
    )


def _metrics_table(
    columns: tuple[tuple[str, str], ...], pooled: dict, folds: list[dict], metrics: dict, with_ci: bool
) -> str:
    head = "".join(f"<th>{_e(title)}</th>" for _, title in columns)
    rows = [f"<table><thead><tr><th></th>{head}<th>n (positive)</th></tr></thead><tbody>"]

    def row(label: str, values: dict, css: str = "") -> None:
        cells = []
        for key, _ in columns:
            text = _fmt(values.get(key))
            ci = values.get(f"{key}_ci")
            if with_ci and key == "auc" and ci and None not in ci:
                text += f" ({_fmt(ci[0])}–{_fmt(ci[1])})"
            cells.append(f"<td>{_e(text)}</td>")
        n = f"{_fmt(values.get('n'))} ({_fmt(values.get('n_pos'))})" if values.get("n") is not None else ""
        attr = f' class="{css}"' if css else ""
        rows.append(f"<tr{attr}><td>{_e(label)}</td>{''.join(cells)}<td>{_e(n)}</td></tr>")

    row("pooled (all out-of-fold)" if len(folds) > 1 else "all patients", pooled, "pooled")
    mean, std = metrics.get("mean") or {}, metrics.get("std") or {}
    if len(folds) > 1 and mean:
        cells = "".join(f"<td>{_e(_mean_std(mean.get(key), std.get(key)))}</td>" for key, _ in columns)
        rows.append(f"<tr><td>mean ± std over folds</td>{cells}<td></td></tr>")
    for fold in folds:
        row(f"fold {fold.get('fold', '?')}", fold)
    baseline = metrics.get("clinical_baseline")
    if isinstance(baseline, dict):
        values = baseline.get("pooled") if isinstance(baseline.get("pooled"), dict) else baseline
        if not any(values.get(key) is not None for key, _ in columns):
            rows.append("</tbody></table>")
            return "\n".join(rows)
        name = baseline.get("name") or baseline.get("features") or "age, sex"
        if isinstance(name, list):
            name = ", ".join(map(str, name))
        row(f"clinical baseline ({name})", values, "baseline")
    rows.append("</tbody></table>")
    return "\n".join(rows)


def _thresholds_sentence(task: str, threshold: Any, folds: list[dict]) -> str:
    cuts = [
        (f.get("fold", "?"), f["decision_threshold"])
        for f in folds
        if f.get("decision_threshold") is not None
    ]
    if not cuts:
        return ""
    scale = "predicted CAC" if task == "regression" else "predicted probability"
    listed = (
        ", ".join(f"fold {fold}: {_setting(cut)}" for fold, cut in cuts)
        if len(cuts) > 1
        else _setting(cuts[0][1])
    )
    return (
        f"<p>A patient is called positive (CAC &gt; {_e(_number(threshold))}) when the {scale} reaches the "
        f"decision threshold chosen on validation data ({_e(listed)}).</p>"
    )


def _comparison(comparison: Any) -> str:
    if not isinstance(comparison, dict):
        return ""
    ci = comparison.get("ci") or [None, None]
    other = comparison.get("run_b") or comparison.get("other") or "the other run"
    return (
        f"<p>Paired comparison with {_e(str(other))} on the same patients (DeLong): AUC "
        f"{_e(_fmt(comparison.get('auc_a')))} vs {_e(_fmt(comparison.get('auc_b')))}, difference "
        f"{_e(_fmt(comparison.get('diff')))} (95 % CI {_e(_fmt(ci[0]))} – {_e(_fmt(ci[1]))}), "
        f"{_e(p_text(comparison.get('p_value'), comparison.get('note')))}.</p>"
    )


def _confusion_tables(task: str, pooled: dict) -> str:
    parts = []
    cm = pooled.get("confusion_matrix")
    if cm:
        parts.append("<h3>Pooled confusion matrix (rows: truth, columns: prediction)</h3>")
        parts.append(_matrix_table(cm, ["negative", "positive"]))
    agatston = pooled.get("agatston_confusion")
    if task == "regression" and agatston:
        parts.append("<h3>Agatston bands, pooled (rows: true band, columns: predicted band)</h3>")
        parts.append(_matrix_table(agatston, list(AGATSTON_BANDS)))
    return "\n".join(parts)


def _matrix_table(matrix: list[list[Any]], labels: list[str]) -> str:
    head = "".join(f"<th>{_e(label)}</th>" for label in labels)
    body = "".join(
        f"<tr><th>{_e(label)}</th>{''.join(f'<td>{_e(_fmt(v))}</td>' for v in values)}</tr>"
        for label, values in zip(labels, matrix, strict=False)
    )
    return f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>"


def _settings_section(config: dict, ingest: dict | None) -> str:
    parts = ["<h2>Model and data</h2>"]
    summary = [(label, config[key]) for key, label in _SUMMARY_SETTINGS if key in config]
    if summary:
        parts.append(_key_value_table(summary))
    if ingest:
        parts.append("<h3>Data cleaning (ingest)</h3>")
        parts.append(_key_value_table(_flatten(ingest)))
    if config:
        parts.append("<details><summary>All settings (config.json)</summary>")
        parts.append(_key_value_table([(k, v) for k, v in config.items() if k != "ingest"]))
        parts.append("</details>")
    return "\n".join(parts) if len(parts) > 1 else ""


def _first_title(plots: list[tuple[str, Path]]) -> str:
    """'ROC and calibration', or the one of them the run has."""
    names = {"roc": "ROC", "calibration": "calibration"}
    shown = [names[word] for word in _FIRST_PLOTS if any(word in name.lower() for name, _ in plots)]
    title = " and ".join(shown)
    return title[:1].upper() + title[1:]


def _plots_section(plots: Iterable[tuple[str, Path]], title: str = "Plots") -> str:
    figures = []
    for name, path in plots:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        caption = Path(name).with_suffix("").as_posix().replace("_", " ")
        figures.append(
            f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    return f"<h2>{_e(title)}</h2>\n" + "\n".join(figures) if figures else ""


# ----------------------------------------------------------------------------------------------
# Helpers


def _plot_rank(path: Path, root: Path) -> tuple[int, str]:
    name = path.relative_to(root).as_posix().lower()
    rank = next((i for i, word in enumerate(_PLOT_ORDER) if word in name), len(_PLOT_ORDER))
    return rank, name


def _key_value_table(items: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{_e(str(k))}</td><td>{_e(_setting(v))}</td></tr>" for k, v in items)
    return f"<table><tbody>{rows}</tbody></table>"


def _flatten(values: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar fields of a (nested) dict as ``a.b`` keys; lists are summarised by their length."""
    items: list[tuple[str, Any]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items.extend(_flatten(value, f"{name}."))
        elif isinstance(value, list):
            items.append((name, f"{len(value)} entries"))
        else:
            items.append((name, value))
    return items


def _setting(value: Any) -> str:
    """A setting as text: floats as written (3e-4 stays 0.0003, not 0.000)."""
    return _number(value) if isinstance(value, float) else _fmt(value)


def _mean_std(mean: Any, std: Any) -> str:
    if mean is None:
        return "n/a"
    return _fmt(mean) if std is None else f"{_fmt(mean)} ± {_fmt(std)}"


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _manifest_formats(config: dict) -> dict | None:
    """For a run trained on a manifest (no ingest.json of its own): how many images came from each format."""
    from collections import Counter

    try:
        rows = read_manifest(config["manifest"])
    except (KeyError, TypeError, CacxrError):
        return None
    return {"formats": {"kept": dict(sorted(Counter(row.source_format or "unknown" for row in rows).items()))}}
