"""The figure sections of report.html: headline, clinical comparison, operating point, calibration, endpoints.

Each figure taken from metrics.json is written by :func:`figure`, tagged with its key path
(``<span data-key="operating_point.sensitivity">``), so that a test can check every tagged number against
the file. Everything is HTML-escaped.
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = [
    "baseline_note",
    "calibration_section",
    "endpoints_section",
    "esc",
    "figure",
    "figure_ci",
    "fmt",
    "guideline_wording",
    "headline",
    "number",
    "operating_point_section",
    "p_text",
    "RETRAINING_CAVEAT",
]

# Said beside the fold-level interval: what it covers and what it leaves out.
RETRAINING_CAVEAT = (
    "This interval covers the chance in which patients were tested, not the chance in training: training "
    "the models again (another seed or split) can give an AUC outside it."
)


def headline(task: str, metrics: dict, scope: str = "pooled out-of-fold") -> str:
    """The mean per-fold AUC with its interval first, the pooled AUC beside it (one figure: the pooled).

    ``scope`` names the single figure shown when there are no folds (an evaluation on external data).
    """
    pooled = metrics.get("pooled") or {}
    fold_level = metrics.get("fold_level") if isinstance(metrics.get("fold_level"), dict) else None
    label = "AUC of the predicted CAC" if task == "regression" else "AUC"
    if pooled.get("auc_on"):
        label = f"AUC of the {pooled['auc_on']}"
    ci = pooled.get("auc_ci") or [None, None]
    ci_text = f"95 % CI {fmt(ci[0])} – {fmt(ci[1])}" if None not in ci else "95 % CI n/a"
    items = []
    if fold_level and fold_level.get("n_folds", 0) > 1 and fold_level.get("auc_mean") is not None:
        fci = fold_level.get("auc_ci") or [None, None]
        fci_text = f"95 % CI {fmt(fci[0])} – {fmt(fci[1])}" if None not in fci else "95 % CI n/a"
        items.append(
            f'<div><div>{esc(label)}, mean of {esc(str(fold_level["n_folds"]))} folds</div>'
            f'<span class="big">{esc(fmt(fold_level["auc_mean"]))}</span> <span class="ci">{esc(fci_text)}</span>'
            f'<div class="method">interval: {esc(fold_level.get("method", ""))}; folds range '
            f'{esc(fmt(fold_level.get("auc_min")))} – {esc(fmt(fold_level.get("auc_max")))}</div>'
            f'<div class="method">{esc(RETRAINING_CAVEAT)}</div></div>'
        )
        items.append(
            f'<div class="secondary">pooled out-of-fold {esc(label)} {esc(fmt(pooled.get("auc")))} '
            f"({esc(ci_text)})<br><small>{esc(fold_level.get('pooled_label', ''))}</small></div>"
        )
    else:
        items.append(
            f'<div><div>{esc(label)} ({esc(scope)})</div><span class="big">{esc(fmt(pooled.get("auc")))}'
            f'</span> <span class="ci">{esc(ci_text)}</span></div>'
        )
    ba_ci = pooled.get("balanced_accuracy_ci") or [None, None]
    items.append(
        f'<div class="secondary">balanced accuracy {esc(fmt(pooled.get("balanced_accuracy")))}'
        + (f" ({esc(fmt(ba_ci[0]))} – {esc(fmt(ba_ci[1]))})" if None not in ba_ci else "")
        + f"<br>sensitivity {esc(fmt(pooled.get('sensitivity')))} · specificity "
        f"{esc(fmt(pooled.get('specificity')))}</div>"
    )
    if task == "regression":
        items.append(
            f'<div class="secondary">MAE of log CAC {esc(fmt(pooled.get("mae_log")))}<br>'
            f"Spearman ρ {esc(fmt(pooled.get('spearman')))}</div>"
        )
    warning = metrics.get("stability_warning")
    note = f'<p class="note"><strong>Stability warning.</strong> {esc(warning)}</p>' if warning else ""
    for line in metrics.get("environment_differences") or ():  # a rerun in another environment
        note += f'<p class="note"><strong>Rerun elsewhere.</strong> {esc(line)}</p>'
    return f'<div class="headline">{"".join(items)}</div>{note}'


def guideline_wording(threshold: Any) -> str:
    """The endpoint in guideline wording: Agatston scores are whole numbers, so CAC > T is CAC ≥ T + 1."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        return ""
    if value == 0:
        return ": any coronary calcium"
    if not value.is_integer():
        return ""
    text = f", i.e. CAC ≥ {value + 1:g} in whole Agatston units"
    if value + 1 in (100.0, 400.0):
        return text + " (the guideline endpoint)"
    if value in (100.0, 400.0):
        return text + f" (the guideline endpoint CAC ≥ {value:g} is --threshold {value - 1:g})"
    return text


def baseline_note(baseline: Any) -> str:
    """The image model against the clinical baseline, fold by fold (pooled DeLong beside), or why skipped."""
    if not isinstance(baseline, dict):
        return ""
    if baseline.get("skipped"):
        return f'<p class="note">Clinical baseline (age + sex) not computed: {esc(str(baseline.get("note", "")))}.</p>'
    parts = []
    stratified = baseline.get("fold_stratified_test")
    if isinstance(stratified, dict) and not stratified.get("skipped"):
        ci = stratified.get("ci") or [None, None]
        parts.append(
            "Image model vs clinical baseline, fold by fold (fold-stratified DeLong: mean of the within-fold "
            f"paired AUC differences): mean AUC {fmt(stratified.get('auc_a'))} vs {fmt(stratified.get('auc_b'))}, "
            f"difference {fmt(stratified.get('diff'))} (95 % CI {fmt(ci[0])} – {fmt(ci[1])}), "
            f"{p_text(stratified.get('p_value'), stratified.get('note'))}."
        )
    test = baseline.get("delong_test")
    if isinstance(test, dict) and not test.get("skipped"):
        ci = test.get("ci") or [None, None]
        parts.append(
            ("For reference, on pooled scores " if parts else "Image model vs clinical baseline on the same patients ")
            + f"(paired DeLong): AUC {fmt(test.get('auc_a'))} vs {fmt(test.get('auc_b'))}, difference "
            f"{fmt(test.get('diff'))} (95 % CI {fmt(ci[0])} – {fmt(ci[1])}), "
            f"{p_text(test.get('p_value'), test.get('note'))}"
            + ("; it includes the calibration differences between fold models." if parts else ".")
        )
    if not parts:
        return ""
    parts.append(
        "The baseline is a logistic regression on age (cubic spline), sex and age x sex, fitted on each fold's "
        f"training patients ({baseline.get('n_known', '?')} of {baseline.get('n', '?')} patients with both known)."
    )
    return f"<p>{esc(' '.join(parts))}</p>"


def figure(key: str, value: Any, digits: int = 3) -> str:
    """A figure of metrics.json, tagged with its key path (tests check every tagged figure against the file)."""
    return f'<span data-key="{esc(key)}">{esc(fmt(value, digits))}</span>'


def figure_ci(key: str, values: dict, digits: int = 3) -> str:
    ci = values.get(f"{key.rsplit('.', 1)[-1]}_ci") or [None, None]
    text = figure(key, values.get(key.rsplit(".", 1)[-1]), digits)
    if None in ci:
        return text
    return f"{text} ({figure(key + '_ci.0', ci[0], digits)} – {figure(key + '_ci.1', ci[1], digits)})"


def operating_point_section(point: Any, threshold: Any) -> str:
    """The operating point fixed in advance: the target beside the figure expected on new patients, then the
    threshold and the leave-one-fold-out figures with intervals (in-sample figures labelled as such)."""
    if not isinstance(point, dict):
        return ""
    head = f"<h3>Operating point fixed in advance ({esc(str(point.get('rule', '')))})</h3>"
    if point.get("threshold") is None:
        return head + f'<p class="note">No operating point: {esc(str(point.get("note", "")))}.</p>'
    kind = str(point.get("rule", "")).split("=")[0].strip().lower()
    if point.get("target") is not None and kind in ("sensitivity", "specificity"):
        line = (
            f"<p><b>Target {esc(kind)} {figure('operating_point.target', point['target'], 2)}; expected on new "
            f"patients {figure_ci(f'operating_point.{kind}', point)}</b> (95 % CI).</p>"
        )
    else:
        line = f"<p><b>{esc(str(point.get('expected', '')))}</b></p>"
    rows = [
        ("rule", esc(str(point.get("rule")))),
        ("probability threshold (new patients)", figure("operating_point.threshold", point["threshold"], 4)),
        ("chosen on", esc(str(point.get("chosen_on", "")))),
        ("figures below", esc(str(point.get("estimate", "")))),
    ]
    for name, title in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ppv", "PPV"), ("npv", "NPV")):
        rows.append((f"{title} (95 % CI)", figure_ci(f"operating_point.{name}", point)))
    inside = point.get("in_sample")
    if isinstance(inside, dict):
        rows.append((
            "at the threshold, on the patients it was chosen on (not an independent estimate)",
            f"sensitivity {figure('operating_point.in_sample.sensitivity', inside.get('sensitivity'))}, "
            f"specificity {figure('operating_point.in_sample.specificity', inside.get('specificity'))}",
        ))  # fmt: skip
    table = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return (
        f"{head}{line}<p>Positive = CAC &gt; {esc(number(threshold))} when the calibrated probability reaches the "
        "threshold. The threshold is chosen on every fold's test predictions and used only for new patients; the "
        "figures are estimated on patients the threshold did not see (each fold at the threshold chosen on the "
        f"other folds). Intervals: {esc(str(point.get('ci_method', 'Wilson score')))}.</p>"
        f"<table><tbody>{table}</tbody></table>"
    )


def calibration_section(calibration: Any) -> str:
    """Brier score, calibration intercept and slope, per fold and pooled."""
    if not isinstance(calibration, dict):
        return ""
    if "pooled" not in calibration:
        return f'<h3>Calibration</h3><p class="note">{esc(str(calibration.get("note", "")))}</p>'
    head = "<tr><th></th><th>Brier score</th><th>calibration intercept (95 % CI)</th><th>calibration slope (95 % CI)</th></tr>"
    body = []
    for label, prefix, values in [
        ("pooled (all out-of-fold)", "calibration.pooled", calibration["pooled"]),
        *((f"fold {f['fold']}", f"calibration.folds.{i}", f) for i, f in enumerate(calibration.get("folds") or [])),
    ]:
        cells = [
            figure(f"{prefix}.brier", values.get("brier")),
            figure_ci(f"{prefix}.calibration_intercept", values),
            figure_ci(f"{prefix}.calibration_slope", values),
        ]
        body.append(f"<tr><td>{esc(label)}</td>{''.join(f'<td>{c}</td>' for c in cells)}</tr>")
    return (
        "<h3>Calibration</h3><p>Intercept 0 and slope 1 mean well-calibrated probabilities: a negative intercept "
        "means predicted risks too high on average, a slope below 1 predictions too extreme. "
        f"{esc(str(calibration.get('method', '')))}. The decision curve (plots) shows the net benefit of the model, "
        "the age + sex baseline, treating all and treating none.</p>"
        f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
    )


def endpoints_section(endpoints: Any) -> str:
    """A regression run's AUC for the guideline endpoints, from the same folds."""
    if not isinstance(endpoints, list) or not endpoints:
        return ""
    head = "<tr><th>endpoint</th><th>AUC, mean of folds (95 % CI)</th><th>folds range</th><th>pooled AUC (95 % CI)</th><th>n (positive)</th></tr>"
    body = []
    for i, entry in enumerate(endpoints):
        key = f"endpoints.{i}"
        if entry.get("pooled_auc") is None:
            cells = [esc(str(entry.get("note", "n/a"))), "", ""]
        else:
            mean_ci = entry.get("auc_mean_ci") or [None, None]
            pooled_ci = entry.get("pooled_auc_ci") or [None, None]
            cells = [
                f"{figure(key + '.auc_mean', entry['auc_mean'])} ({figure(key + '.auc_mean_ci.0', mean_ci[0])} – "
                f"{figure(key + '.auc_mean_ci.1', mean_ci[1])})",
                f"{figure(key + '.auc_min', entry.get('auc_min'))} – {figure(key + '.auc_max', entry.get('auc_max'))}",
                f"{figure(key + '.pooled_auc', entry.get('pooled_auc'))} ({figure(key + '.pooled_auc_ci.0', pooled_ci[0])}"
                f" – {figure(key + '.pooled_auc_ci.1', pooled_ci[1])})",
            ]
        n = f"{entry.get('n')} ({entry.get('n_pos')})"
        body.append(
            f"<tr><td>{esc(entry.get('endpoint', ''))}</td>{''.join(f'<td>{c}</td>' for c in cells)}<td>{esc(n)}</td></tr>"
        )
    return (
        "<h3>Guideline endpoints from the same folds</h3><p>The regression's out-of-fold predictions ranked "
        "against three endpoints (Agatston): any calcium, CAC ≥ 100 and CAC ≥ 400.</p>"
        f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
    )

def fmt(value: Any, digits: int = 3) -> str:
    """A value as short text: numbers rounded, None as n/a, containers as compact JSON."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def p_text(value: Any, note: Any = None) -> str:
    """``p = 0.0123``, ``p < 0.0001`` (never ``p = 0.0000``), or ``p n/a``; a test's note after it."""
    if value is None:
        text = "p n/a"
    elif isinstance(value, int | float) and value < 0.0001:
        text = "p < 0.0001"
    else:
        text = f"p = {fmt(float(value), digits=4)}"
    return f"{text} ({note})" if note else text


def number(value: Any) -> str:
    """A threshold-like number without trailing zeros (0.0 -> 0, 10.5 -> 10.5)."""
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def esc(text: str) -> str:
    return html.escape(str(text), quote=True)
