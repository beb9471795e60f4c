"""Run settings in files: `cacxr train --config FILE`, flags over the file, and a run's config.json as a rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cacxr.cli import build_parser
from cacxr.cli import main as cli_main
from cacxr.commands.train import config_from_args
from cacxr.config import read_config_file
from cacxr.core import CacxrError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _config(*argv: str):
    args = build_parser("train").parse_args(["train", *argv])
    return config_from_args(args)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("run.toml", 'task = "regression"\nepochs = 3\nlr = 1\nclinical = "age,sex"\nmilestones = [2]\nviz = false\n'),
        ("run.yaml", "task: regression\nepochs: 3\nlr: 1\nclinical: [age, sex]\nmilestones: [2]\nviz: false\n"),
        ("run.json", '{"task": "regression", "epochs": 3, "lr": 1, "clinical": ["age", "sex"], "milestones": [2], "viz": false}'),
    ],
)
def test_each_format_sets_the_config(tmp_path, name, text):
    (tmp_path / name).write_text(text, encoding="utf-8")
    cfg = _config("DATA", "--out", "RUN", "--config", str(tmp_path / name)).resolved()
    assert (cfg.task, cfg.epochs, cfg.lr, cfg.clinical, cfg.milestones, cfg.viz) == (
        "regression", 3, 1.0, ["age", "sex"], [2], False
    )
    assert isinstance(cfg.lr, float)


def test_flags_given_override_the_file_even_at_their_default(tmp_path):
    (tmp_path / "c.toml").write_text('task = "regression"\nepochs = 3\nseed = 7\nviz = false\nkfold = 3\n')
    cfg = _config("DATA", "--config", str(tmp_path / "c.toml"), "--epochs", "50", "--viz", "--out", "RUN")
    assert (cfg.epochs, cfg.viz) == (50, True)  # given on the command line, although equal to the defaults
    assert (cfg.task, cfg.seed, cfg.kfold) == ("regression", 7, 3)  # from the file
    assert (cfg.data, cfg.out, cfg.batchsize) == ("DATA", "RUN", 4)  # flags, and a default neither set


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('epoch = 5\n', r"c.toml: unknown setting 'epoch' \(did you mean 'epochs'\?\)"),
        ('image-size = 64\n', r"c.toml: unknown setting 'image-size' \(did you mean 'image_size'\?\)"),
        ('zzz = 1\n', r"c.toml: unknown setting 'zzz' \(valid keys: task, data, out, epochs"),
        ('epochs = "five"\n', r"c.toml: setting 'epochs' must be int, got 'five'"),
        ('augment = 1\n', r"c.toml: setting 'augment' must be bool, got 1"),
        ('lr = [1]\n', r"c.toml: setting 'lr' must be float \| null, got \[1\]"),
        ('epochs = \n', r"c.toml: not valid TOML"),
    ],
)
def test_bad_files_are_refused_naming_the_key(tmp_path, text, message):
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(CacxrError, match=message):
        read_config_file(tmp_path / "c.toml")


def test_a_missing_or_odd_file_is_one_line_on_the_command_line(tmp_path, capsys):
    assert cli_main(["train", "DATA", "--out", str(tmp_path / "r"), "--config", str(tmp_path / "no.toml")]) == 2
    assert f"{tmp_path / 'no.toml'}: no such configuration file" in capsys.readouterr().err
    (tmp_path / "c.ini").write_text("[x]\n")
    with pytest.raises(CacxrError, match=r"c.ini: a configuration file must end in .toml, .yaml, .yml, .json"):
        read_config_file(tmp_path / "c.ini")


@pytest.mark.parametrize(("name", "task", "lr"), [("classification.toml", "classification", 3e-4), ("regression.yaml", "regression", 1e-3)])
def test_shipped_examples_are_the_original_recipe(name, task, lr):
    cfg = _config("DATA", "--out", "RUN", "--config", str(EXAMPLES / name)).resolved()
    assert (cfg.task, cfg.arch, cfg.image_size, cfg.epochs, cfg.lr, cfg.kfold, cfg.seed) == (
        task, "densenet121", 1024, 50, lr, 5, 42
    )


def test_a_finished_runs_config_json_reruns_it_with_the_same_numbers(run_dir: Path, tmp_path: Path, capsys):
    record = json.loads((run_dir / "config.json").read_text())
    new = tmp_path / "rerun"
    # The thread count comes from config.json (one thread, as the tiny run had).
    code = cli_main(["train", "--config", str(run_dir / "config.json"), "--out", str(new), "--no-progress",
                     "--workers", "1"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rerun = json.loads((new / "config.json").read_text())
    same = {k: v for k, v in record.items() if k not in ("out", "manifest")}  # where it wrote, and its own ingest
    assert {k: rerun.get(k) for k in same} == same
    assert json.loads((new / "metrics.json").read_text()) == json.loads((run_dir / "metrics.json").read_text())
    assert (new / "predictions.csv").read_text() == (run_dir / "predictions.csv").read_text()


def test_a_runs_config_json_refuses_other_data(run_dir: Path, tmp_path: Path):
    record = json.loads((run_dir / "config.json").read_text())
    record["manifest_sha256"] = "0" * 64
    (tmp_path / "old.json").write_text(json.dumps(record))
    with pytest.raises(CacxrError, match=r"manifest.csv: not the data of the run this configuration comes from"):
        cli_main_raising(["train", "--config", str(tmp_path / "old.json"), "--out", str(tmp_path / "new"),
                          "--no-progress", "--workers", "1"])  # fmt: skip


def cli_main_raising(argv: list[str]) -> None:
    """Run `cacxr train` as the command line does, but let its CacxrError through."""
    from cacxr.commands.train import run

    run(build_parser("train").parse_args(argv))


def test_a_shipped_example_trains_with_flags_over_it(cohort: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    tiny = ["--arch", "resnet18", "--finetune", "head", "--epochs", "1", "--kfold", "2", "--image-size", "64",
            "--batchsize", "8", "--no-viz", "--no-progress", "--num-threads", "1", "--workers", "1"]  # fmt: skip
    code = cli_main(["train", str(cohort), "--config", str(EXAMPLES / "classification.toml"), "--out", str(out), *tiny])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "config.json").read_text())
    assert (record["arch"], record["epochs"], record["kfold"], record["image_size"]) == ("resnet18", 1, 2, 64)
    assert (record["lr"], record["milestones"], record["seed"], record["wd"]) == (3e-4, [20, 35], 42, 1e-4)
    assert len(json.loads((out / "metrics.json").read_text())["folds"]) == 2
