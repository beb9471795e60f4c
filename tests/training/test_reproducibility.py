"""A run reruns from its config.json to the same figures: the thread count is reused, the environment compared.

The runs train a whole resnet18 (no feature cache) for 2 epochs on the tiny cohort at 64 px: small enough
for seconds, and sensitive to the CPU thread count as the demo is (the issue: 0.974 vs 0.964 pooled AUC).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from _tiny_run import IMAGE_SIZE, tiny_cohort
from _torch_threads import torch_threads
from cacxr.cli import main as cli_main
from cacxr.config import TrainConfig
from cacxr.training import current_environment, environment_differences, train_run


@pytest.fixture
def two_threads_by_default():
    """A process whose torch default is 2 threads, as `cacxr train` on the issue's 2-core machine."""
    with torch_threads(2):
        yield


@pytest.fixture(scope="module")
def one_thread_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained on 1 CPU thread, as the demo trains (whole network: the thread count shows)."""
    out = tmp_path_factory.mktemp("repro") / "run"
    config = TrainConfig(
        task="classification", data=str(tiny_cohort(tmp_path_factory)), out=str(out), arch="resnet18",
        finetune="all", epochs=2, kfold=2, image_size=IMAGE_SIZE, seed=1, batchsize=8, lr=1e-3, viz=False,
        workers=1, num_threads=1, progress=False, store=str(out.parent / "store"),
    )  # fmt: skip
    train_run(config)
    return out


def figures(run: Path) -> tuple[dict, str]:
    """metrics.json (per-fold, pooled, calibration, operating point) without the rerun's notes, and the scores."""
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("environment_differences", None)
    return metrics, (run / "predictions.csv").read_text()


def rerun(config: Path, out: Path, *flags: str) -> None:
    code = cli_main(["train", "--config", str(config), "--out", str(out), "--no-progress", "--workers", "1", *flags])
    assert code == 0


def test_config_json_records_the_threads_and_the_environment(one_thread_run: Path) -> None:
    record = json.loads((one_thread_run / "config.json").read_text())
    assert record["num_threads"] == 1
    environment = record["environment"]
    assert environment["device"] == "cpu" and environment["processes"] == 1
    assert environment["deterministic_algorithms"] == "warn_only"
    assert environment["versions"]["torch"] == torch.__version__
    assert set(environment["versions"]) >= {"python", "cacxr", "torch", "numpy", "scikit-learn"}
    assert "environment_differences" not in record


def test_a_rerun_from_config_json_reuses_the_thread_count_and_gives_the_same_figures(
    one_thread_run: Path, tmp_path: Path, two_threads_by_default: None, capsys: pytest.CaptureFixture[str]
) -> None:
    rerun(one_thread_run / "config.json", tmp_path / "rerun")
    assert json.loads((tmp_path / "rerun" / "config.json").read_text())["num_threads"] == 1
    assert figures(tmp_path / "rerun") == figures(one_thread_run)
    assert "warning" not in capsys.readouterr().out

    # --num-threads on the command line wins over the file; on 2 threads the same run gives other figures
    # (what the rerun gave before the count was recorded).
    rerun(one_thread_run / "config.json", tmp_path / "two", "--num-threads", "2")
    assert json.loads((tmp_path / "two" / "config.json").read_text())["num_threads"] == 2
    assert figures(tmp_path / "two") != figures(one_thread_run)


def test_a_rerun_under_other_versions_warns_that_figures_may_differ(
    one_thread_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    record = json.loads((one_thread_run / "config.json").read_text())
    record["environment"]["versions"]["torch"] = "1.13.0"  # as if trained under an older torch
    (tmp_path / "old.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        rerun(tmp_path / "old.json", tmp_path / "rerun")
    expected = f"torch 1.13.0 recorded, {torch.__version__} here: the figures may differ"
    assert [r.getMessage() for r in caplog.records if expected in r.getMessage()]  # one warning line
    assert f"warning: {expected}" in capsys.readouterr().out  # and in the printed summary
    metrics = json.loads((tmp_path / "rerun" / "metrics.json").read_text())
    assert len(metrics["environment_differences"]) == 1 and expected in metrics["environment_differences"][0]
    assert expected in (tmp_path / "rerun" / "report.html").read_text()
    assert figures(tmp_path / "rerun") == figures(one_thread_run)  # the thread count was still reused


def test_environment_differences_name_each_changed_fact() -> None:
    here = current_environment(torch.device("cpu"))
    assert environment_differences(here, here) == []
    recorded = {**here, "device": "cuda (NVIDIA H200)", "versions": {**here["versions"], "numpy": "1.26.4"}}
    lines = environment_differences(recorded, here)
    assert len(lines) == 2
    assert lines[0].startswith("device cuda (NVIDIA H200) recorded, cpu here: the figures may differ")
    assert lines[1].startswith(f"numpy 1.26.4 recorded, {here['versions']['numpy']} here")
    # An older run's record without some facts: only what it recorded is compared.
    assert environment_differences({"versions": {"torch": here["versions"]["torch"]}}, here) == []
