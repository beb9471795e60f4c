"""Experiment tracking: the logged run, read back with MLflow's own client (and TensorBoard's reader), equals
the run folder's files; a tracking failure warns and never fails the run."""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from pathlib import Path

import pytest

from cacxr.cli import main as cli_main
from cacxr.runs import track_run


@pytest.fixture
def run_copy(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the session's tiny run (tracking writes beside it), with a plot to log as an artifact."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "plots").mkdir(exist_ok=True)
    (copy / "plots" / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return copy


def _numbers(obj, path=()):
    """(path, value) of every number in a JSON object, written independently of cacxr.runs.tracking."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _numbers(value, (*path, str(key)))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            label = str(value["fold"]) if isinstance(value, dict) and "fold" in value else str(i)
            yield from _numbers(value, (*path, label))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield ".".join(path), float(obj)


def test_mlflow_run_read_back_equals_the_run_folder(run_copy, tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow", reason="mlflow-skinny is not installed (pip install 'cacxr[track]')")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    # Through the command line: merging the run's folds again logs it, as a finished training does.
    assert cli_main(["train", str(run_copy), "--merge", "--track", "mlflow"]) == 0
    out = capsys.readouterr().out
    assert "tracked: mlflow run" in out and (tmp_path / "mlruns").is_dir()
    assert "MLFLOW_ALLOW_FILE_STORE" not in __import__("os").environ  # allowed for the call only

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    experiment = client.get_experiment_by_name("cacxr")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"

    metrics = json.loads((run_copy / "metrics.json").read_text())
    expected = dict(_numbers(metrics))
    assert expected["pooled.auc"] == metrics["pooled"]["auc"]
    # Everything but the per-epoch curves ("fold_<k>/<curve>"); metrics.json's own "fold_level" stays.
    logged = {k: v for k, v in run.data.metrics.items() if not re.match(r"fold_\d+/", k)}
    assert logged == pytest.approx(expected, abs=0, rel=1e-12)

    config = json.loads((run_copy / "config.json").read_text())
    assert run.data.params["task"] == config["task"] and run.data.params["seed"] == str(config["seed"])
    assert set(run.data.params) == set(config)

    fold0 = json.loads((run_copy / "fold_0" / "fold.json").read_text())
    history = client.get_metric_history(run.info.run_id, "fold_0/val_loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (row["epoch"], row["val_loss"]) for row in fold0["history"]
    ]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "metrics.json", "config.json", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/roc.png"]


def test_tensorboard_curves_read_back(run_copy):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'cacxr[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert track_run(run_copy, "tensorboard") == str(run_copy / "tensorboard")
    events = EventAccumulator(str(run_copy / "tensorboard"))
    events.Reload()
    fold1 = json.loads((run_copy / "fold_1" / "fold.json").read_text())
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("fold_1/train_loss")] == [
        (row["epoch"], row["train_loss"]) for row in fold1["history"]
    ]
    auc = json.loads((run_copy / "metrics.json").read_text())["pooled"]["auc"]
    assert events.Scalars("final/pooled.auc")[0].value == pytest.approx(auc)


def test_a_tracking_failure_warns_and_the_run_goes_on(run_copy, tmp_path, monkeypatch, caplog):
    pytest.importorskip("mlflow", reason="mlflow-skinny is not installed (pip install 'cacxr[track]')")
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", blocker.as_uri() + "/mlruns")  # a store that cannot be made
    with caplog.at_level(logging.WARNING, logger="cacxr.runs.tracking"):
        assert cli_main(["train", str(run_copy), "--merge", "--track", "mlflow"]) == 0
    assert "--track mlflow: not logged (" in caplog.text and "the run is complete" in caplog.text
    assert (run_copy / "metrics.json").is_file()


def test_a_missing_tracking_package_says_how_to_install_it(run_copy, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    with caplog.at_level(logging.WARNING, logger="cacxr.runs.tracking"):
        assert track_run(run_copy, "mlflow") is None
    assert "pip install 'cacxr[track]'" in caplog.text
