"""`cacxr compare`: table, forest plot, paired DeLong tests, settings that differ, cohort groups."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _tiny_run import tiny_run
from cacxr.cli import main
from cacxr.config import TrainConfig
from cacxr.core import CacxrError
from cacxr.runs import compare_runs
from cacxr.runs.compare import METRIC_COLUMNS
from cacxr.stats import build_metrics, fold_paired_test, holm_adjust

# CAC of patient i: a fixed cohort whatever the run (about half positive at threshold 0).
_CAC_CYCLE = (0.0, 3.0, 0.0, 40.0, 0.0, 250.0, 0.0, 900.0, 12.0, 0.0)


def _fake_run(
    path: Path,
    *,
    task: str = "classification",
    n: int = 40,
    seed: int = 0,
    noise: float = 1.0,
    threshold: float = 0.0,
    cac_scale: float = 1.0,
    predictions: bool = True,
    **settings,
) -> Path:
    """A finished run folder as train_run writes it (config, metrics, predictions), without training.

    Scores are the true label plus Gaussian noise of sd ``noise`` drawn from ``seed`` (so a smaller noise
    gives a better run); regression scores are a predicted CAC.
    """
    ids = [f"CAC_{i:03d}" for i in range(n)]
    cac = np.array([_CAC_CYCLE[i % len(_CAC_CYCLE)] * cac_scale for i in range(n)])
    labels = (cac > threshold).astype(int)
    rng = np.random.default_rng(seed)
    signal = labels + rng.normal(0.0, noise, n)
    score = np.exp(2.0 + 3.0 * signal) if task == "regression" else 1 / (1 + np.exp(-3 * (signal - 0.5)))
    fold = np.arange(n) % 2
    per_fold = [
        {
            "fold": k,
            "score": score[fold == k],
            "y_true": labels[fold == k],
            "cac_true": cac[fold == k],
            "decision_threshold": 0.5 if task == "classification" else threshold + 0.5,
        }
        for k in (0, 1)
    ]
    metrics = build_metrics(task, threshold, per_fold, n_boot=200)
    config = {
        **TrainConfig(task=task, threshold=threshold, seed=seed, kfold=2, **settings).resolved().to_dict(True),
        "out": str(path),
        "manifest_sha256": "0" * 64,
        "cacxr_version": "0.1.0",
    }
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.json").write_text(json.dumps(metrics))
    if predictions:
        rows = ["patient_id,fold,cac_score,label,score"]
        rows += [f"{i},{f},{float(c)!r},{y},{float(s)!r}" for i, f, c, y, s in zip(ids, fold, cac, labels, score, strict=True)]
        (path / "predictions.csv").write_text("\n".join(rows) + "\n")
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 300 and image.height > 100


# ---- real tiny runs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return [tiny_run(tmp_path_factory, "classification"), tiny_run(tmp_path_factory, "regression")]


def test_real_runs_numbers_equal_metrics_json(real_runs: list[Path], tmp_path: Path) -> None:
    result = compare_runs(real_runs, tmp_path / "cmp")
    table = _read_csv(tmp_path / "cmp" / "compare.csv")
    assert [r["name"] for r in result["runs"]] == [p.name for p in real_runs]
    assert len(result["groups"]) == 1 and all("stability warning" in note for note in result["notes"])
    for run_dir, entry, row in zip(real_runs, result["runs"], table, strict=True):
        pooled = json.loads((run_dir / "metrics.json").read_text())["pooled"]
        regression = entry["task"] == "regression"
        for key, _ in METRIC_COLUMNS:
            expected = pooled[key] if regression or key not in ("mae_log", "spearman") else None
            assert entry[key] == expected, key
            assert row[key] == ("" if expected is None else repr(expected)), key
            if expected is not None:
                assert float(row[key]) == expected  # the CSV reads back exactly
        assert entry["auc_ci"] == pooled["auc_ci"]
        assert [float(row["auc_ci_low"]), float(row["auc_ci_high"])] == pooled["auc_ci"]
        assert (entry["n"], entry["n_pos"]) == (pooled["n"], pooled["n_pos"])
    best = next(e for e in result["runs"] if e["best"])
    other = next(e for e in result["runs"] if not e["best"])
    # The folds record their inner-validation AUC, so the reference is chosen on it, never on the test folds.
    assert best["val_auc"] is not None and best["val_auc"] >= other["val_auc"]
    assert not result["groups"][0]["exploratory"]
    paired = other["paired"]
    assert paired["against"] == best["name"] and paired["n"] == best["n"]
    assert 0.0 <= paired["p_value"] <= 1.0
    # Same folds: the test is fold-stratified, on the runs' own per-fold AUCs (regression: of log CAC).
    assert paired["stratified"] and paired["n_folds"] == 2
    assert paired["p_holm"] == paired["p_value"]  # one test: Holm changes nothing
    for entry, run_dir in zip(result["runs"], real_runs, strict=True):
        fold_level = json.loads((run_dir / "metrics.json").read_text())["fold_level"]
        assert entry["auc_mean_folds"] == fold_level["auc_mean"]
        assert entry["auc_mean_ci"] == fold_level["auc_ci"]
    assert paired["auc_a"] == pytest.approx(best["auc_mean_folds"], abs=1e-12)
    assert paired["auc_b"] == pytest.approx(other["auc_mean_folds"], abs=1e-12)
    # The tiny runs' folds hold no inner-validation AUC: the ranking says it is exploratory.
    assert result["groups"][0]["exploratory"] == (best["val_auc"] is None)
    assert {"task", "lr", "milestones"} <= set(result["settings_differ"])
    assert "out" not in result["settings_differ"] and "data" not in result["settings_differ"]
    markdown = (tmp_path / "cmp" / "compare.md").read_text()
    for entry in result["runs"]:
        assert f"{entry['auc']:.3f} ({entry['auc_ci'][0]:.3f}–{entry['auc_ci'][1]:.3f})" in markdown
    assert "| task | classification | regression |" in markdown
    regression = next(e for e in result["runs"] if e["task"] == "regression")
    assert f"| {regression['mae_log']:.3f} | {regression['spearman']:.3f} |" in markdown
    _assert_png(tmp_path / "cmp" / "forest.png")
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"][0]["auc"] == result["runs"][0]["auc"]


def test_cli_prints_each_run(real_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", *map(str, real_runs), "--out", str(tmp_path / "c"), "--no-viz"]) == 0
    out = capsys.readouterr().out
    for run_dir in real_runs:
        assert run_dir.name in out
    assert "best of its group" in out and "DeLong p =" in out and "mean per-fold AUC" in out
    assert (tmp_path / "c" / "compare.md").is_file() and not (tmp_path / "c" / "forest.png").exists()
    # A second comparison into the same folder is refused (one line naming the file), unless --overwrite.
    before = (tmp_path / "c" / "compare.md").read_bytes()
    assert main(["compare", *map(str, real_runs), "--out", str(tmp_path / "c"), "--no-viz"]) == 2
    assert "compare.md: already exists" in capsys.readouterr().err
    assert (tmp_path / "c" / "compare.md").read_bytes() == before
    assert main(["compare", *map(str, real_runs), "--out", str(tmp_path / "c"), "--no-viz", "--overwrite"]) == 0


# ---- constructed runs ----------------------------------------------------------------------------------


def test_three_runs_paired_against_best_and_settings_diff(tmp_path: Path) -> None:
    runs = [
        _fake_run(tmp_path / "a", seed=1, noise=1.5, arch="resnet18"),
        _fake_run(tmp_path / "b", seed=2, noise=0.3, arch="densenet121"),
        _fake_run(tmp_path / "c", seed=3, noise=1.5, arch="resnet18", lr=1e-3),
    ]
    result = compare_runs(runs, tmp_path / "out")
    by_name = {r["name"]: r for r in result["runs"]}
    assert [r["name"] for r in result["runs"] if r["best"]] == ["b"]
    assert result["settings_differ"] == ["lr", "arch", "seed"]
    assert by_name["c"]["settings"] == {"lr": 1e-3, "arch": "resnet18", "seed": 3}
    preds = {name: _read_csv(tmp_path / name / "predictions.csv") for name in "abc"}
    labels = np.array([int(r["label"]) for r in preds["b"]])
    folds = np.array([int(r["fold"]) for r in preds["b"]])
    raw = []
    for name in "ac":
        best_s = np.array([float(r["score"]) for r in preds["b"]])
        other_s = np.array([float(r["score"]) for r in preds[name]])
        expected = fold_paired_test([(k, labels[folds == k], best_s[folds == k], other_s[folds == k]) for k in (0, 1)])
        paired = by_name[name]["paired"]
        assert paired["stratified"] and "fold-stratified" in paired["method"]
        assert paired["p_value"] == pytest.approx(expected["p_value"])
        assert paired["diff"] == pytest.approx(expected["diff"]) and paired["diff"] > 0
        assert 0.0 <= paired["p_value"] < 0.05  # noise 0.3 vs 1.5 on 40 patients: clearly better
        raw.append(paired["p_value"])
    # Holm across the two tests.
    assert [by_name[n]["paired"]["p_holm"] for n in "ac"] == pytest.approx(holm_adjust(raw))
    assert result["groups"][0]["exploratory"] is True  # no fold.json val_auc in these runs
    table = _read_csv(tmp_path / "out" / "compare.csv")
    assert [row["arch"] for row in table] == ["resnet18", "densenet121", "resnet18"]
    assert [row["best"] for row in table] == ["0", "1", "0"]
    markdown = (tmp_path / "out" / "compare.md").read_text()
    assert "| arch | resnet18 | densenet121 | resnet18 |" in markdown
    assert "| **b** |" in markdown
    for name in "ac":
        p = by_name[name]["paired"]["p_value"]
        assert ("< 0.001" if p < 0.001 else f"{p:.3f}") in markdown
    assert "exploratory" in markdown


def test_identical_scores_give_p_one(tmp_path: Path) -> None:
    runs = [_fake_run(tmp_path / "x", seed=5), _fake_run(tmp_path / "y", seed=5)]
    result = compare_runs(runs, tmp_path / "out", viz=False)
    paired = result["runs"][1]["paired"]
    assert (paired["diff"], paired["p_value"]) == (0.0, 1.0)
    assert result["settings_differ"] == []
    assert "All compared settings are the same" in (tmp_path / "out" / "compare.md").read_text()


@pytest.mark.parametrize(
    ("second", "groups", "why"),
    [
        ({"threshold": 10.0}, 2, "threshold"),
        ({"n": 30}, 2, "patients"),
        ({"cac_scale": 2.0}, 2, "CAC scores"),
        ({"task": "regression"}, 1, "same cohort, other task"),
        ({"seed": 9}, 1, "same cohort, other seed"),
    ],
)
def test_runs_on_other_cohorts_or_thresholds_shown_apart(
    tmp_path: Path, second: dict, groups: int, why: str
) -> None:
    first = _fake_run(tmp_path / "first", seed=1)
    other = _fake_run(tmp_path / "second", **{"seed": 2, **second})
    result = compare_runs([first, other], tmp_path / "out")
    assert len(result["groups"]) == groups, why
    markdown = (tmp_path / "out" / "compare.md").read_text()
    if groups == 1:
        assert result["notes"] == []
        assert sum(r["paired"] is not None for r in result["runs"]) == 1
    else:
        # Each run is the best of its own group; nothing is paired across groups.
        assert [r["group"] for r in result["runs"]] == ["A", "B"]
        assert all(r["best"] and r["paired"] is None for r in result["runs"])
        assert "shown apart in 2 groups" in result["notes"][0]
        assert "not comparable" in markdown and "## Group A" in markdown and "## Group B" in markdown
        _assert_png(tmp_path / "out" / "forest.png")


def test_run_without_predictions_has_no_paired_test(tmp_path: Path) -> None:
    runs = [_fake_run(tmp_path / "p", seed=1, noise=0.2), _fake_run(tmp_path / "q", seed=2, predictions=False)]
    result = compare_runs(runs, tmp_path / "out")
    assert len(result["groups"]) == 2  # patients unknown: only the manifest hash is known
    assert any("predictions.csv: missing" in note for note in result["notes"])


def test_same_name_in_two_folders_is_disambiguated(tmp_path: Path) -> None:
    runs = [_fake_run(tmp_path / "site1" / "run", seed=1), _fake_run(tmp_path / "site2" / "run", seed=2)]
    result = compare_runs(runs, tmp_path / "out", viz=False)
    assert [r["name"] for r in result["runs"]] == ["site1/run", "site2/run"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("one", "at least two run folders"),
        ("twice", "given twice"),
        ("no_metrics", "metrics.json: missing"),
        ("absent", "no such run folder"),
        ("bad_json", "metrics.json: unreadable"),
    ],
)
def test_refusals_name_the_folder_and_reason(tmp_path: Path, setup: str, message: str) -> None:
    good = _fake_run(tmp_path / "good", seed=1)
    bad = tmp_path / "bad"
    if setup == "one":
        runs = [good]
    elif setup == "twice":
        runs = [good, tmp_path / "." / "good"]
    else:
        if setup != "absent":
            _fake_run(bad, seed=2)
            if setup == "no_metrics":
                (bad / "metrics.json").unlink()
            else:
                (bad / "metrics.json").write_text("{not json")
        runs = [good, bad]
    with pytest.raises(CacxrError, match=message) as info:
        compare_runs(runs, tmp_path / "out")
    if setup in ("no_metrics", "absent", "bad_json"):
        assert str(bad) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_demo_ends_with_both_approaches_compared(tmp_path: Path) -> None:
    from cacxr.demo import DemoSettings, run_demo

    settings = DemoSettings(patients=30, synth_size=64, image_size=32, epochs=1, kfold=2)
    metrics = run_demo(tmp_path / "demo", settings, progress=False, num_threads=1)
    comparison = metrics["compare"]
    assert [(r["name"], r["task"]) for r in comparison["runs"]] == [("run", "classification"), ("run_regression", "regression")]
    assert len(comparison["groups"]) == 1  # the same patients and threshold: compared directly
    assert comparison["settings_differ"][0] == "task"
    for entry in comparison["runs"]:
        pooled = json.loads((tmp_path / "demo" / entry["name"] / "metrics.json").read_text())["pooled"]
        assert entry["auc"] == pooled["auc"]
    assert sum(r["paired"] is not None for r in comparison["runs"]) == 1
    assert metrics["pooled"] == json.loads((tmp_path / "demo" / "run" / "metrics.json").read_text())["pooled"]
    _assert_png(tmp_path / "demo" / "compare" / "forest.png")
    with pytest.raises(CacxrError, match="already holds a finished demo"):
        run_demo(tmp_path / "demo", settings, progress=False)


def test_reference_is_chosen_on_validation_not_test(tmp_path: Path) -> None:
    """Run b is far better on its test folds, but a has the higher inner-validation AUC: a is the reference."""
    runs = [_fake_run(tmp_path / "a", seed=1, noise=1.5), _fake_run(tmp_path / "b", seed=2, noise=0.3)]
    for run, val_aucs in zip(runs, ([0.80, 0.82], [0.70, 0.71]), strict=True):
        for k, value in enumerate(val_aucs):
            (run / f"fold_{k}").mkdir()
            (run / f"fold_{k}" / "fold.json").write_text(json.dumps({"fold": k, "val_auc": value}))
    result = compare_runs(runs, tmp_path / "out", viz=False)
    by_name = {r["name"]: r for r in result["runs"]}
    assert by_name["a"]["best"] and not by_name["b"]["best"]
    assert by_name["a"]["val_auc"] == pytest.approx(0.81)
    assert result["groups"][0]["exploratory"] is False
    assert "inner-validation" in result["groups"][0]["ranked_by"]
    assert by_name["b"]["paired"]["diff"] < 0  # the reference minus the run: b is better on test
    assert "Ranked by inner-validation AUC" in (tmp_path / "out" / "compare.md").read_text()


def test_runs_with_different_folds_fall_back_to_a_pooled_test(tmp_path: Path) -> None:
    runs = [_fake_run(tmp_path / "a", seed=1), _fake_run(tmp_path / "b", seed=2)]
    lines = (runs[1] / "predictions.csv").read_text().splitlines()
    swapped = [lines[0]] + [",".join([*r.split(",")[:1], str(1 - int(r.split(",")[1])), *r.split(",")[2:]]) for r in lines[1:]]
    (runs[1] / "predictions.csv").write_text("\n".join(swapped) + "\n")
    paired = compare_runs(runs, tmp_path / "out", viz=False)["runs"][1]["paired"]
    assert paired["stratified"] is False and "pooled" in paired["method"]


def test_a_run_with_fold_drift_carries_its_stability_warning(tmp_path: Path) -> None:
    runs = [_fake_run(tmp_path / "a", seed=1), _fake_run(tmp_path / "b", seed=2)]
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    metrics["stability_warning"] = "The pooled out-of-fold AUC (0.690) differs from the mean per-fold AUC (0.840)"
    (runs[1] / "metrics.json").write_text(json.dumps(metrics))
    result = compare_runs(runs, tmp_path / "out", viz=False)
    assert result["notes"] == [f"b: stability warning: {metrics['stability_warning']}"]
    assert "stability warning" in (tmp_path / "out" / "compare.md").read_text()
