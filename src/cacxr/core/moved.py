"""Old import paths of the flat package (before the layered subpackages), kept working with a warning.

``import cacxr.run`` or ``from cacxr.train import train_run`` in a user's script still works: the old
module name resolves to the module that now holds its code, and a ``DeprecationWarning`` names the new
path. New code imports from the package faces (``from cacxr.use import load_run``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

__all__ = ["MOVED", "install_old_paths"]

# old module -> the module that holds its code now (where a module was split, the one that imports the rest)
MOVED = {
    "cacxr.errors": "cacxr.core.errors",
    "cacxr.atomic": "cacxr.core.atomic",
    "cacxr.safepaths": "cacxr.core.safepaths",
    "cacxr.codestream": "cacxr.imaging.codestream",
    "cacxr.decoders": "cacxr.imaging.decoders",
    "cacxr.labels": "cacxr.ingest.labels",
    "cacxr.manifest": "cacxr.ingest.manifest",
    "cacxr.preprocess": "cacxr.pixels.profiles",
    "cacxr.store": "cacxr.pixels.build",
    "cacxr.models": "cacxr.model.networks",
    "cacxr.registry": "cacxr.model.registry",
    "cacxr.weightcache": "cacxr.model.weightcache",
    "cacxr.weights": "cacxr.model.weights",
    "cacxr.calibration": "cacxr.model.calibration",
    "cacxr.scoring": "cacxr.model.scoring",
    "cacxr.clinical": "cacxr.model.covariates",
    "cacxr.metrics": "cacxr.stats.summary",
    "cacxr.foldstats": "cacxr.stats.folds",
    "cacxr.calibration_stats": "cacxr.stats.calibration",
    "cacxr.operating_point": "cacxr.stats.decision_threshold",
    "cacxr.plots": "cacxr.stats.plots",
    "cacxr.configfile": "cacxr.config.files",
    "cacxr.runfolder": "cacxr.runs.folder",
    "cacxr.training.runfiles": "cacxr.runs.writers",
    "cacxr.runfigures": "cacxr.runs.figures",
    "cacxr.report": "cacxr.runs.report",
    "cacxr.report_figures": "cacxr.runs.report_sections",
    "cacxr.compare": "cacxr.runs.compare",
    "cacxr.compare_files": "cacxr.runs.compare_outputs",
    "cacxr.tracking": "cacxr.runs.tracking",
    "cacxr.train": "cacxr.training.crossval",
    "cacxr.final": "cacxr.training.final",
    "cacxr.data": "cacxr.training.dataset",
    "cacxr.features": "cacxr.training.features",
    "cacxr.splits": "cacxr.training.splits",
    "cacxr.accel": "cacxr.training.accel",
    "cacxr.distributed": "cacxr.training.distributed",
    "cacxr.run": "cacxr.use.loaded_run",
    "cacxr.inference": "cacxr.use.predict",
    "cacxr.evaluate": "cacxr.use.evaluate",
    "cacxr.explain": "cacxr.use.explain",
    "cacxr.export": "cacxr.use.export",
}


class _OldPathLoader(importlib.abc.Loader):
    """Loads an old module name as the module that holds its code now."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module is the new one, already imported."""


class _OldPathFinder(importlib.abc.MetaPathFinder):
    """Finds only the names in :data:`MOVED`; every other import goes on as usual."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        return None if new is None else importlib.machinery.ModuleSpec(fullname, _OldPathLoader(new))


def install_old_paths() -> None:
    """Let the old module names import (once per process; later calls change nothing)."""
    if not any(isinstance(finder, _OldPathFinder) for finder in sys.meta_path):
        sys.meta_path.append(_OldPathFinder())
