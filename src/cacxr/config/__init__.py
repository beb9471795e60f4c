"""Layer 6: a run's settings: the TrainConfig object and config files (TOML, YAML, JSON)."""

from cacxr.core import lazy_face

# public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "read_config_file": "files",
    "EXECUTION_FIELDS": "settings",
    "FINETUNE_MODES": "settings",
    "LOCATION_FIELDS": "settings",
    "LOSSES": "settings",
    "TASKS": "settings",
    "TrainConfig": "settings",
    "resolve_device": "settings",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
