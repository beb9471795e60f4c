"""Package faces that import on first use: a subpackage's ``__init__`` names its public API without loading it.

``import cacxr.model`` must not load torch, nor ``import cacxr.stats`` matplotlib, just because a light
command (``cacxr weights list``, ``cacxr ingest``) touched one module of the package. A face lists each
public name with the module that defines it; :func:`lazy_face` gives the package the module-level
``__getattr__`` and ``__dir__`` (PEP 562) that import that module when the name is first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_face"]


def lazy_face(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose public names live in its modules.

    Args:
        package: the package's ``__name__``.
        exports: public name -> the module (relative to ``package``) that defines it.

    Returns:
        The package's ``__getattr__`` (imports the defining module on first use) and ``__dir__``.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
