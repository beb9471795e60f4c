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
