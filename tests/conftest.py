"""Shared fixtures: paths to the real radiographs beside the project."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_CXR_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_cxr"


@pytest.fixture(scope="session")
def real_cxr_dir() -> Path:
    """The folder of real radiographs (../shared/data/real_cxr); skips when absent."""
    if not REAL_CXR_DIR.is_dir():
        pytest.skip(f"real radiographs not found at {REAL_CXR_DIR}")
    return REAL_CXR_DIR


# The tiny trained run shared by the tests of everything that uses a run (built once per session).


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classification run (tests/_tiny_run.py)."""
    from _tiny_run import tiny_run

    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic cohort the tiny runs were trained on."""
    from _tiny_run import tiny_cohort

    return tiny_cohort(tmp_path_factory)


@pytest.fixture(scope="session")
def run(run_dir: Path):
    """The tiny run, loaded (cacxr.use.loaded_run.load_run)."""
    from cacxr.use import load_run

    return load_run(run_dir)
