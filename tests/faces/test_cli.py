"""The command line: every command is listed, importable, and errors are one readable line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cacxr.cli import COMMANDS, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for name in COMMANDS:
        assert name in listed


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_its_own_help(name: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"cacxr {name}" in capsys.readouterr().out


def test_python_dash_m_runs_the_same_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "cacxr", "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("cacxr ")


def test_a_user_error_is_one_line_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no-such-folder"
    assert main(["ingest", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    assert err.startswith("cacxr ingest: error:")


@pytest.mark.parametrize(("value", "expected"), [("final", "final"), ("ensemble", "ensemble"), ("2", 2)])
def test_fold_flag_accepts_final_ensemble_or_a_number(value: str, expected: object) -> None:
    from cacxr.cli import build_parser

    args = build_parser("predict").parse_args(["predict", "RUN", "x.dcm", "--fold", value])
    assert args.fold == expected


def test_fold_flag_refuses_other_words(capsys: pytest.CaptureFixture) -> None:
    from cacxr.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser("predict").parse_args(["predict", "RUN", "x.dcm", "--fold", "best"])
    assert "expected 'final', 'ensemble' or a fold number" in capsys.readouterr().err
