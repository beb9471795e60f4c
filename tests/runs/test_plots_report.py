"""Tests of cacxr.stats.plots (valid PNGs, written atomically) and cacxr.runs.report (report.html)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from cacxr.core import CacxrError, write_json
from cacxr.runs import write_report
from cacxr.stats import build_metrics, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RNG = np.random.default_rng(0)
CAC = np.where(RNG.random(90) < 0.45, 0.0, np.exp(RNG.normal(3, 2, 90)))
Y = (CAC > 0).astype(int)
PROB = np.clip(0.25 + 0.45 * Y + RNG.normal(0, 0.2, 90), 0, 1)
PRED_CAC = CAC * np.exp(RNG.normal(0, 0.8, 90))
HISTORY = {
    fold: [
        {"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 0.3 + (e - 3) ** 2 / 20, "val_metric": 0.6}
        for e in range(6)
    ]
    for fold in range(3)
}

PLOT_CASES = {
    "roc": lambda p: plots.roc_plot(
        [(f"fold {k}", Y[k::3], PROB[k::3]) for k in range(3)], p, pooled=("pooled", Y, PROB), ci=(0.7, 0.9)
    ),
    "roc_one_class_fold": lambda p: plots.roc_plot(
        [("fold 0", Y, PROB), ("fold 1", [0, 0, 0], [0.1, 0.5, 0.9])], p
    ),
    "confusion": lambda p: plots.confusion_plot([[30, 5], [8, 47]], ["CAC = 0", "CAC > 0"], p, "Confusion"),
    "agatston_confusion": lambda p: plots.confusion_plot(np.eye(5, dtype=int) * 7, list("abcde"), p, "Bands"),
    "loss": lambda p: plots.loss_plot(HISTORY, p),
    "loss_given_best": lambda p: plots.loss_plot({0: HISTORY[0]}, p, best_epochs={0: 2}),
    "error_by_band_classification": lambda p: plots.error_by_band_plot(CAC, PROB, p, "classification"),
    "error_by_band_regression": lambda p: plots.error_by_band_plot(CAC, PRED_CAC, p, "regression"),
    "calibration": lambda p: plots.calibration_plot(Y, PROB, p, n_bins=8),
    "scatter": lambda p: plots.scatter_plot(CAC, PRED_CAC, p),
}


@pytest.mark.parametrize("name", list(PLOT_CASES))
def test_each_plot_writes_a_valid_png(name: str, tmp_path: Path) -> None:
    target = tmp_path / "plots" / f"{name}.png"
    returned = PLOT_CASES[name](target)
    assert Path(returned) == target
    data = target.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(target)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image.std() > 0.01  # something was drawn
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left


def test_plots_leave_no_pyplot_figures_open(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.scatter_plot(CAC, PRED_CAC, tmp_path / "s.png")
    assert plt.get_fignums() == before


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: plots.confusion_plot([[1, 2, 3]], ["a"], p, "t"), "1x1 matrix is needed"),
        (lambda p: plots.calibration_plot([0, 1], [0.2, 1.4], p), r"probability in \[0, 1\]"),
        (lambda p: plots.loss_plot({}, p), "no training history"),
        (lambda p: plots.loss_plot({0: [{"epoch": 0, "train_loss": 1.0}]}, p), "fold 0 lacks 'val_loss'"),
        (lambda p: plots.error_by_band_plot([1, 2], [1, 2], p, "survival"), "unknown task 'survival'"),
        (lambda p: plots.scatter_plot([1, 2], [1], p), "2 true scores but 1 predictions"),
    ],
)
def test_plot_input_errors(call, message: str, tmp_path: Path) -> None:
    with pytest.raises(CacxrError, match=message):
        call(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------------------
# report

MALICIOUS = '<script>alert("owned")</script>'


def _run_folder(tmp_path: Path, task: str, with_plots: bool = True, **config_extra) -> tuple[Path, dict]:
    run = tmp_path / f"run_{task}"
    entries = []
    for fold in range(3):
        part = slice(fold, None, 3)
        if task == "classification":
            entries.append({"fold": fold, "y_true": Y[part], "score": PROB[part], "decision_threshold": 0.45})
        else:
            entries.append({"fold": fold, "cac_true": CAC[part], "score": PRED_CAC[part]})
    metrics = build_metrics(task, 0.0, entries, n_boot=200)
    write_json(run / "metrics.json", metrics)
    config = {
        "task": task,
        "threshold": 0.0,
        "arch": MALICIOUS,
        "weights": "none",
        "profile": "seed",
        "image_size": 256,
        "kfold": 3,
        "seed": 42,
        "val_fraction": 0.2,
        "lr": 3e-4,
        **config_extra,
    }
    write_json(run / "config.json", config)
    if with_plots:
        PLOT_CASES["roc"](run / "plots" / "roc.png")
        PLOT_CASES["confusion"](run / "plots" / "confusion.png")
    return run, metrics


def test_report_classification(tmp_path: Path) -> None:
    run, metrics = _run_folder(tmp_path, "classification")
    out = write_report(run)
    assert out == run / "report.html"
    page = out.read_text(encoding="utf-8")

    pooled = metrics["pooled"]
    # The headline is the mean per-fold AUC with its interval; the pooled AUC stands beside it, labelled.
    fold_level = metrics["fold_level"]
    assert f'<span class="big">{fold_level["auc_mean"]:.3f}</span>' in page
    flo, fhi = fold_level["auc_ci"]
    assert f"95 % CI {flo:.3f} – {fhi:.3f}" in page
    assert f"folds range {fold_level['auc_min']:.3f} – {fold_level['auc_max']:.3f}" in page
    assert "fold-averaged DeLong variance" in page
    lo, hi = pooled["auc_ci"]
    assert f"pooled out-of-fold AUC {pooled['auc']:.3f} (95 % CI {lo:.3f} – {hi:.3f})" in page
    assert "includes the differences in calibration" in page
    assert "Positive = CAC &gt; 0 (Agatston)" in page
    assert f"{pooled['n']} patients evaluated, {pooled['n_pos']} positive" in page
    assert "3-fold cross-validation" in page and "20% of the training" in page
    assert "Each test fold was scored once" in page
    for fold in metrics["folds"]:
        assert f"<td>fold {fold['fold']}</td><td>{fold['auc']:.3f}" in page
    assert "mean ± std over folds" in page
    # the PNGs are embedded byte for byte, in the order ROC then confusion
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(e) for e in embedded] == [
        (run / "plots" / "roc.png").read_bytes(),
        (run / "plots" / "confusion.png").read_bytes(),
    ]
    # config text is escaped; nothing is loaded from elsewhere
    assert MALICIOUS not in page and "<script" not in page
    assert "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "clinical baseline" not in page and "Final model" not in page


def test_report_regression_with_baseline_and_final_model(tmp_path: Path) -> None:
    final = {"epochs": 14, "how": "median of the folds' best epochs", "threshold": 0.5, "n_patients": 90}
    run, metrics = _run_folder(tmp_path, "regression", with_plots=False, final=final)
    write_json(
        run / "ingest" / "ingest.json", {"patients": 90, "excluded": {"lateral_view": 3}, "fixes": [1, 2]}
    )
    metrics["clinical_baseline"] = {
        "name": "age + sex",
        "auc": 0.612,
        "auc_ci": [0.5, 0.72],
        "n": 90,
        "n_pos": 50,
    }
    write_json(run / "metrics.json", metrics)
    page = write_report(run).read_text(encoding="utf-8")

    pooled = metrics["pooled"]
    assert f"MAE of log CAC {pooled['mae_log']:.3f}" in page
    assert f"Spearman ρ {pooled['spearman']:.3f}" in page
    assert "Agatston bands, pooled" in page
    first_row = "".join(f"<td>{v}</td>" for v in pooled["agatston_confusion"][0])
    assert f"<tr><th>0</th>{first_row}</tr>" in page
    assert "<td>clinical baseline (age + sex)</td><td>0.612 (0.500–0.720)</td>" in page
    assert "Final model." in page and "no held-out estimate of its own" in page
    assert "epochs: 14" in page
    # the ingest summary (RUN/ingest/ingest.json) is shown with nested counts flattened
    assert "<td>excluded.lateral_view</td><td>3</td>" in page and "<td>fixes</td><td>2 entries</td>" in page
    assert "<h2>Plots</h2>" not in page  # no plots folder: no empty section


def test_report_without_config_describes_a_single_evaluation(tmp_path: Path) -> None:
    folder = tmp_path / "external_eval"
    metrics = build_metrics(
        "classification",
        0.0,
        [{"fold": "external", "y_true": Y, "score": PROB, "decision_threshold": 0.5}],
        n_boot=100,
    )
    metrics["comparison"] = {"auc_a": 0.8, "auc_b": 0.7, "diff": 0.1, "p_value": 0.0123, "ci": [0.02, 0.18]}
    write_json(folder / "metrics.json", metrics)
    page = write_report(folder).read_text(encoding="utf-8")
    assert "applied once to these patients" in page
    assert "<td>all patients</td>" in page
    assert "p = 0.0123" in page


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda run: None, "not a run folder"),
        (lambda run: run.mkdir(), r"metrics.json: missing"),
        (lambda run: (run.mkdir(), (run / "metrics.json").write_text("{not json")), "metrics.json: unreadable"),
        (
            lambda run: (run.mkdir(), (run / "metrics.json").write_text(json.dumps([1, 2]))),
            "expected a JSON object",
        ),
    ],
)
def test_report_errors_name_the_file(setup, message: str, tmp_path: Path) -> None:
    run = tmp_path / "RUN"
    setup(run)
    with pytest.raises(CacxrError, match=message) as info:
        write_report(run)
    assert str(run) in str(info.value)
    assert not (run / "report.html").exists()


def _resolve(metrics: dict, key: str):
    value = metrics
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def _full_run(tmp_path: Path, task: str) -> tuple[Path, dict]:
    """A run folder whose metrics.json has every figure: fold level, operating point, calibration, endpoints."""
    from cacxr.runs import add_run_figures

    folds = np.arange(90) % 3
    prob = np.clip(PROB, 0.01, 0.99)
    log_cac = np.log(PRED_CAC + 0.001)
    rows = [
        {"patient_id": f"P{i:02d}", "fold": int(folds[i]), "cac_score": float(CAC[i]), "label": int(Y[i]),
         "score": float(prob[i] if task == "classification" else PRED_CAC[i]), "probability": float(prob[i]),
         "log_cac": float(log_cac[i])}
        for i in range(90)
    ]  # fmt: skip
    entries = [
        {"fold": k, "y_true": Y[folds == k], "cac_true": CAC[folds == k],
         "score": (prob if task == "classification" else PRED_CAC)[folds == k],
         "log_cac": None if task == "classification" else log_cac[folds == k]}
        for k in range(3)
    ]  # fmt: skip
    metrics = build_metrics(task, 0.0, entries, n_boot=100)
    rng = np.random.default_rng(3)
    records = {
        k: {"validation": [{"patient_id": f"V{k}{i}", "label": int(i % 2), "score": float(np.clip(0.3 + 0.4 * (i % 2)
            + rng.normal(0, 0.2), 0, 1))} for i in range(30)]}
        for k in range(3)
    }  # fmt: skip
    baseline = {row["patient_id"]: 0.5 for row in rows}
    add_run_figures(task, "sensitivity=0.90", records, rows, metrics, baseline)
    run = tmp_path / f"full_{task}"
    write_json(run / "metrics.json", metrics)
    write_json(run / "config.json", {"task": task, "threshold": 0.0, "kfold": 3})
    plots.calibration_plots(run / "plots", metrics["calibration"], rows, task)
    return run, metrics


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_every_figure_in_the_report_equals_metrics_json(tmp_path: Path, task: str) -> None:
    run, _ = _full_run(tmp_path, task)
    page = write_report(run).read_text(encoding="utf-8")
    metrics = json.loads((run / "metrics.json").read_text())  # the figures as written to the file
    tagged = re.findall(r'<span data-key="([^"]+)">([^<]*)</span>', page)
    keys = {key for key, _ in tagged}
    assert {"operating_point.threshold", "operating_point.target", "operating_point.sensitivity",
            "operating_point.npv_ci.1", "operating_point.in_sample.sensitivity",
            "calibration.pooled.brier", "calibration.folds.2.calibration_slope"} <= keys  # fmt: skip
    assert ("endpoints.1.auc_mean" in keys) == (task == "regression")
    for key, text in tagged:
        value = _resolve(metrics, key)
        if text == "n/a":
            assert value is None, key
            continue
        digits = len(text.split(".")[1])
        assert float(text) == pytest.approx(value, abs=0.5 * 10**-digits + 1e-12), key
    # The headline: mean per-fold AUC, its interval and range, the pooled AUC beside it.
    fold_level, pooled = metrics["fold_level"], metrics["pooled"]
    if None in fold_level["auc_ci"]:
        # Every fold's DeLong variance 0 (e.g. perfectly separated tiny folds): no zero-width interval.
        assert fold_level["se"] == 0.0
        big = re.search(r'<span class="big">([0-9.]+)</span> <span class="ci">95 % CI n/a</span>', page)
        assert float(big.group(1)) == pytest.approx(fold_level["auc_mean"], abs=5e-4)
    else:
        big = re.search(r'<span class="big">([0-9.]+)</span> <span class="ci">95 % CI ([0-9.]+) – ([0-9.]+)</span>', page)
        assert [float(v) for v in big.groups()] == pytest.approx(
            [fold_level["auc_mean"], *fold_level["auc_ci"]], abs=5e-4
        )
    assert "training the models again" in page
    pooled_text = re.search(r"pooled out-of-fold AUC[^0-9]* ([0-9.]+) \(95 % CI ([0-9.]+) – ([0-9.]+)\)", page)
    assert [float(v) for v in pooled_text.groups()] == pytest.approx([pooled["auc"], *pooled["auc_ci"]], abs=5e-4)
    for fold in metrics["folds"]:
        assert f"<td>fold {fold['fold']}</td><td>{fold['auc']:.3f}" in page
    assert "decision curve" in page and "calibration folds" in page  # the two new plots are embedded
    if task == "regression":
        assert "CAC ≥ 100" in page and "CAC ≥ 400" in page
        assert metrics["pooled"]["auc_on"] == "predicted log CAC (unclipped)"


def test_report_shows_roc_and_calibration_under_the_headline(tmp_path: Path) -> None:
    run, _ = _run_folder(tmp_path, "classification")
    PLOT_CASES["calibration"](run / "plots" / "calibration.png")
    page = write_report(run).read_text(encoding="utf-8")
    headline, evaluated = page.index('class="big"'), page.index("<h2>How it was evaluated</h2>")
    figures = {name: page.index(f'alt="{name}"') for name in ("roc", "calibration", "confusion")}
    assert headline < figures["roc"] < evaluated and headline < figures["calibration"] < evaluated
    assert figures["confusion"] > page.index("<h2>Plots</h2>") > evaluated
    assert "<h2>ROC and calibration</h2>" in page
