"""Run settings in files: ``cacxr train --config FILE`` (TOML, YAML or JSON).

The keys are the names of :class:`cacxr.config.settings.TrainConfig`'s fields, the same as in a run's config.json,
so a finished run's config.json is itself a valid configuration: its ``manifest_sha256`` then makes the
new run check that its data are the old run's. A run record (a file with ``cacxr_version`` and
``manifest_sha256``) may hold the facts cacxr wrote beside the settings (versions, counts, ...); they are
ignored. In a file written by hand, an unknown key is refused with the closest valid name.

Flags given on the command line override the file (cacxr.commands.train).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from cacxr.config.settings import TrainConfig
from cacxr.core import CacxrError

__all__ = ["read_config_file", "CONFIG_SUFFIXES"]

logger = logging.getLogger(__name__)

CONFIG_SUFFIXES = (".toml", ".yaml", ".yml", ".json")
# The Python types a value of each annotation may have (``from __future__ import annotations`` makes them
# strings); an int is accepted where a float is expected (TOML and YAML write 1e-3 as a float, 1 as an int).
_TYPES = {"int": (int,), "float": (float, int), "str": (str,), "bool": (bool,), "None": (type(None),)}


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings in a configuration file, checked against ``TrainConfig``'s fields.

    Args:
        path: a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file holding one table of settings.

    Returns:
        ``{field name: value}`` (floats where the field is a float).

    Raises:
        CacxrError: a missing or unreadable file, an unknown key (with the closest valid one), or a value
            of the wrong type; each message names the file.
    """
    path = Path(path)
    values = _parse(path)
    known = {f.name: f for f in fields(TrainConfig)}
    is_record = "cacxr_version" in values and "manifest_sha256" in values
    unknown = [key for key in values if key not in known]
    if unknown and not is_record:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(known)})"
        raise CacxrError(f"{path}: unknown setting '{key}'{hint}")
    if unknown:
        logger.debug("%s: run facts ignored as settings: %s", path, ", ".join(unknown))
    settings = {}
    for key, value in values.items():
        if key in known:
            settings[key] = _checked(path, key, value, str(known[key].type))
    return settings


def _parse(path: Path) -> dict[str, Any]:
    """The file's top-level table."""
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise CacxrError(f"{path}: a configuration file must end in {', '.join(CONFIG_SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CacxrError(f"{path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CacxrError(f"{path}: unreadable ({exc})") from None
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # tomllib, json and yaml each raise their own error type
        detail = " ".join(str(exc).split())
        raise CacxrError(f"{path}: not valid {suffix[1:].upper()} ({detail})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CacxrError(f"{path}: expected a table of settings (key = value), got a {type(data).__name__}")
    return data


def _checked(path: Path, key: str, value: Any, annotation: str) -> Any:
    """``value`` when it fits the field's annotation (e.g. ``'float | None'``, ``'list[int] | None'``)."""
    options = [part.strip() for part in annotation.split("|")]
    for option in options:
        if option.startswith("list["):
            item = option[len("list["):-1]
            if isinstance(value, list) and all(_fits(v, item) for v in value):
                return [float(v) if item == "float" else v for v in value]
            if key == "clinical" and isinstance(value, str):  # "age,sex", as on the command line
                return value
        elif _fits(value, option):
            return float(value) if option == "float" and not isinstance(value, bool) else value
    raise CacxrError(f"{path}: setting '{key}' must be {annotation.replace('None', 'null')}, got {value!r}")


def _fits(value: Any, type_name: str) -> bool:
    types = _TYPES.get(type_name)
    if types is None:
        return True  # a type this reader does not know: TrainConfig.resolved() validates it
    if isinstance(value, bool) and type_name != "bool":
        return False  # True is an int in Python, but not an epoch count
    return isinstance(value, types)
