"""cacxr: coronary artery calcium from chest radiographs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cacxr")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
