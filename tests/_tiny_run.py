"""Tiny trained runs shared by the predict, evaluate, explain and export tests.

A synthetic cohort (40 internal + 12 external patients at 64 px, no faults) and runs trained on its
internal patients (resnet18 with only its head trained, 2 folds, 2 epochs, 64 px) are built once per pytest session, whichever of
those test files asks first: the cache below is keyed by the session's base temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

COHORT_PATIENTS, COHORT_EXTERNAL, COHORT_SIZE = 40, 12, 64
IMAGE_SIZE = 64

_CACHE: dict[tuple[str, str], Path] = {}


def _root(factory: pytest.TempPathFactory) -> Path:
    return factory.getbasetemp() / "tiny_runs"


def tiny_cohort(factory: pytest.TempPathFactory) -> Path:
    """The synthetic cohort folder (site.db + CAC_xxx/ internal + external folders)."""
    from cacxr.synth import make_cohort

    # One thread: on this shared 2-core machine, two OpenMP threads make small convolutions ~30x slower.
    torch.set_num_threads(1)
    key = (str(factory.getbasetemp()), "cohort")
    if key not in _CACHE:
        out = _root(factory) / "cohort"
        make_cohort(
            out,
            COHORT_PATIENTS,
            external=COHORT_EXTERNAL,
            seed=0,
            size=COHORT_SIZE,
            faults=False,
            progress=False,
            workers=1,
        )
        _CACHE[key] = out
    return _CACHE[key]


def tiny_run(factory: pytest.TempPathFactory, name: str = "classification") -> Path:
    """A trained run folder: ``classification``, ``regression`` or ``clinical`` (classification with
    ``--clinical age,sex``); same cohort, folds and settings."""
    from cacxr.config import TrainConfig
    from cacxr.training import train_run

    key = (str(factory.getbasetemp()), name)
    if key not in _CACHE:
        out = _root(factory) / f"run_{name}"
        config = TrainConfig(
            task="regression" if name == "regression" else "classification",
            data=str(tiny_cohort(factory)),
            out=str(out),
            arch="resnet18",
            finetune="head",  # a frozen random trunk with cached features: seconds on a shared 2-core CPU
            epochs=2,
            kfold=2,
            image_size=IMAGE_SIZE,
            seed=1,
            batchsize=8,
            viz=False,
            workers=1,
            num_threads=1,
            progress=False,
            store=str(_root(factory) / "store"),
            clinical=["age", "sex"] if name == "clinical" else [],
        )
        train_run(config)
        _CACHE[key] = out
    return _CACHE[key]


def tiny_final_run(factory: pytest.TempPathFactory, name: str = "classification") -> Path:
    """A copy of :func:`tiny_run` ``name`` with its final model (``cacxr fit-final``)."""
    import shutil

    from cacxr.training import fit_final

    key = (str(factory.getbasetemp()), f"{name}+final")
    if key not in _CACHE:
        out = _root(factory) / f"run_{name}_final"
        shutil.copytree(tiny_run(factory, name), out)
        fit_final(out, device="cpu", progress=False, num_threads=1)
        _CACHE[key] = out
    return _CACHE[key]
