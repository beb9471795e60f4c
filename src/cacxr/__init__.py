"""cacxr: coronary artery calcium from chest radiographs.

The package is layered by pipeline stage (docs/ARCHITECTURE.md): core, imaging and synth, ingest, pixels,
model, stats, config, runs, training and use, then the faces (serving, demo, commands, cli).
"""

from importlib.metadata import PackageNotFoundError, version

from cacxr.core import install_old_paths

try:
    __version__ = version("cacxr")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

install_old_paths()  # the flat package's module names (cacxr.run, cacxr.train, ...) still import

__all__ = ["__version__"]
