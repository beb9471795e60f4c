"""The files of `cacxr compare`: compare.csv, compare.md and forest.png, from a ``compare_runs`` result.

Everything here reads the result dict only (cacxr.runs.compare builds it), so the files show exactly its figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cacxr.core import atomic_path
from cacxr.core import csv_text as table_text

__all__ = ["METRIC_COLUMNS", "REGRESSION_ONLY", "csv_text", "forest_plot", "markdown"]

# Pooled metrics shown for each run: (metrics.json key, title); the last two only for regression runs.
METRIC_COLUMNS = (
    ("auc", "AUC"),
    ("balanced_accuracy", "balanced accuracy"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("mae_log", "MAE (log CAC)"),
    ("spearman", "Spearman"),
)
REGRESSION_ONLY = ("mae_log", "spearman")


def csv_text(result: dict[str, Any]) -> str:
    """One row per run; floats as ``repr`` so that they read back exactly as in metrics.json."""
    base = ["group", "run", "path", "task", "threshold", "n", "n_pos"]
    metric_keys = [key for key, _ in METRIC_COLUMNS]
    settings = [key for key in result["settings_differ"] if key not in base]
    columns = [
        *base, "auc_mean_folds", "auc_mean_ci_low", "auc_mean_ci_high", "auc_folds_min", "auc_folds_max",
        "auc", "auc_ci_low", "auc_ci_high", *metric_keys[1:], "val_auc", "best",
        "paired_against", "paired_n", "paired_method", "auc_diff_best_minus_run", "diff_ci_low", "diff_ci_high",
        "p_value", "p_holm", "paired_note", *settings,
    ]
    rows = []
    for run in result["runs"]:
        ci = run["auc_ci"] or [None, None]
        paired = run["paired"] or {}
        diff_ci = paired.get("ci") or [None, None]
        mean_ci = run["auc_mean_ci"] or [None, None]
        spread = run["auc_folds_range"] or [None, None]
        row = {
            "auc_mean_folds": run["auc_mean_folds"], "auc_mean_ci_low": mean_ci[0], "auc_mean_ci_high": mean_ci[1],
            "auc_folds_min": spread[0], "auc_folds_max": spread[1], "val_auc": run["val_auc"],
            "paired_method": paired.get("method"), "p_holm": paired.get("p_holm"),
            "group": run["group"], "run": run["name"], "path": run["path"], "task": run["task"],
            "threshold": run["threshold"], "n": run["n"], "n_pos": run["n_pos"],
            "auc_ci_low": ci[0], "auc_ci_high": ci[1], "best": int(run["best"]),
            "paired_against": paired.get("against"), "paired_n": paired.get("n"),
            "auc_diff_best_minus_run": paired.get("diff"), "diff_ci_low": diff_ci[0], "diff_ci_high": diff_ci[1],
            "p_value": paired.get("p_value"), "paired_note": run["paired_note"],
        }
        row.update({key: run[key] for key in metric_keys})
        row.update({key: _csv_value(run["settings"].get(key)) for key in settings})
        rows.append({k: _csv_value(v) for k, v in row.items()})
    return table_text(columns, rows)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    lines = ["# Comparison of cacxr runs", ""]
    lines += [f"> **Note.** {note}" + "\n" for note in result["notes"]]
    lines.append(
        "Headline: each run's mean per-fold AUC with its 95 % interval (fold-averaged DeLong variance) and the "
        "range over folds. The pooled out-of-fold AUC (95 % CI: the run's bootstrap interval) includes the "
        "calibration differences between the fold models. The reference (best) run of a group is the one with "
        "the highest inner-validation AUC; when the runs' folds hold none, it is the highest mean per-fold test "
        "AUC and that ranking is exploratory. Paired test against the reference on the patients both runs "
        "share: fold-stratified DeLong (mean of within-fold paired AUC differences) when both runs use the same "
        "folds, else DeLong on pooled scores; ΔAUC = best − this run; p (Holm) is corrected across all "
        "the paired tests of this comparison."
    )
    lines.append("")
    regression = any(run["task"] == "regression" for run in runs)
    titles = [title for key, title in METRIC_COLUMNS if regression or key not in REGRESSION_ONLY]
    keys = [key for key, _ in METRIC_COLUMNS if regression or key not in REGRESSION_ONLY]
    several = len(result["groups"]) > 1
    for group in result["groups"]:
        members = [run for run in runs if run["group"] == group["id"]]
        if several:
            lines += [f"## Group {group['id']}: CAC > {_number(group['threshold'])}, {group['n_patients']} patients", ""]
        lines += [f"Ranked by {group['ranked_by']}.", ""]
        titles = ["pooled AUC" if t == "AUC" else t for t in titles]
        head = [
            "run", "task", "n (positive)", "AUC, mean of folds (95 % CI)", "fold range", *titles, "validation AUC",
            "vs best: ΔAUC (95 % CI)", "p", "p (Holm)",
        ]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|")
        for run in members:
            cells = [f"**{run['name']}**" if run["best"] else run["name"], run["task"], f"{run['n']} ({run['n_pos']})"]
            mean_ci = run["auc_mean_ci"] or [None, None]
            cells.append(
                _fmt(run["auc_mean_folds"])
                + (f" ({_fmt(mean_ci[0])}–{_fmt(mean_ci[1])})" if None not in mean_ci else "")
            )
            spread = run["auc_folds_range"] or [None, None]
            cells.append(f"{_fmt(spread[0])}–{_fmt(spread[1])}" if None not in spread else "n/a")
            for key in keys:
                text = _fmt(run[key])
                if key == "auc" and run["auc_ci"] and None not in run["auc_ci"]:
                    text += f" ({_fmt(run['auc_ci'][0])}–{_fmt(run['auc_ci'][1])})"
                cells.append(text)
            cells.append(_fmt(run["val_auc"]))
            cells += _paired_cells(run)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    lines += _settings_markdown(result)
    return "\n".join(lines).rstrip() + "\n"


def _paired_cells(run: dict[str, Any]) -> list[str]:
    if run["best"]:
        return ["best", "", ""]
    paired = run["paired"]
    if paired is None:
        return [run["paired_note"] or "n/a", "", ""]
    lo, hi = paired.get("ci") or [None, None]
    how = "fold-stratified" if paired["stratified"] else "pooled"
    interval = "no interval: DeLong variance 0" if lo is None or hi is None else f"{lo:+.3f} to {hi:+.3f}"
    return [
        f"{paired['diff']:+.3f} ({interval}), n={paired['n']}, {how}",
        _p(paired["p_value"]),
        _p(paired["p_holm"]),
    ]


def _settings_markdown(result: dict[str, Any]) -> list[str]:
    differ = result["settings_differ"]
    if not differ:
        return ["All compared settings are the same in every run.", ""]
    names = [run["name"] for run in result["runs"]]
    lines = ["## Settings that differ (config.json)", ""]
    lines.append("| setting | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for key in differ:
        values = [_setting(run["settings"].get(key)) for run in result["runs"]]
        lines.append(f"| {key} | " + " | ".join(v.replace("|", "\\|") for v in values) + " |")
    lines.append("")
    return lines


def forest_plot(result: dict[str, Any], path: Path) -> None:
    """Pooled AUC and its 95 % CI per run, one row each, groups one below the other."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = result["runs"]
    several = len(result["groups"]) > 1
    order = [run for group in result["groups"] for run in runs if run["group"] == group["id"]]
    fig = Figure(figsize=(7.5, 1.2 + 0.45 * len(order)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels, texts = [], []
    for row, run in enumerate(order):
        y = len(order) - 1 - row
        auc, ci = _forest_value(run)
        labels.append((f"[{run['group']}] " if several else "") + f"{run['name']} ({run['task']})")
        if auc is None:
            texts.append("AUC n/a")
            continue
        colour = "black" if run["best"] else "tab:blue"
        if None not in ci:
            ax.errorbar(auc, y, xerr=[[auc - ci[0]], [ci[1] - auc]], fmt="none", ecolor=colour, capsize=4)
            texts.append(f"{auc:.3f} ({ci[0]:.3f}–{ci[1]:.3f})")
        else:
            texts.append(f"{auc:.3f}")
        ax.plot([auc], [y], marker="D" if run["best"] else "o", color=colour, markersize=7)
    for row in range(1, len(order)):
        if order[row]["group"] != order[row - 1]["group"]:  # a line between groups
            ax.axhline(len(order) - row - 0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.axvline(0.5, linestyle="--", color="grey", linewidth=1)
    ax.set_yticks(range(len(order) - 1, -1, -1), labels)
    lows = [v for run in order for v in [_forest_value(run)[0], *_forest_value(run)[1]] if v is not None]
    ax.set_xlim(min([0.4, *lows]) - 0.02, 1.0)
    ax.set_ylim(-0.7, len(order) - 0.3)
    for row, text in enumerate(texts):
        ax.annotate(text, (1.0, len(order) - 1 - row), xytext=(6, 0), textcoords="offset points", va="center",
                    annotation_clip=False, fontsize=8)
    ax.set_xlabel("mean per-fold AUC (95 % CI; pooled where no folds); diamond: best of its group; dashed: chance")
    ax.set_title("Runs compared")
    ax.grid(axis="x", alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _forest_value(run: dict[str, Any]) -> tuple[float | None, list[float | None]]:
    """The headline AUC of a run and its interval: the mean per-fold AUC, else the pooled one."""
    if run["auc_mean_folds"] is not None:
        return run["auc_mean_folds"], list(run["auc_mean_ci"] or [None, None])
    return run["auc"], list(run["auc_ci"] or [None, None])


# ---- formatting ------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float | np.floating):
        return f"{value:.3f}"
    return str(value)


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _number(value: Any) -> str:
    return f"{float(value):g}"


def _setting(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)
