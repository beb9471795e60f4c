"""Layer 0: errors, atomic writes, safe paths, package faces and the task's definitions (targets, bands, label rules, age)."""

from cacxr.core.faces import lazy_face

# public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "atomic_path": "atomic",
    "read_json_object": "atomic",
    "write_bytes": "atomic",
    "write_json": "atomic",
    "write_text": "atomic",
    "FORMULA_STARTS": "csvcells",
    "csv_cell": "csvcells",
    "csv_text": "csvcells",
    "csv_uncell": "csvcells",
    "read_csv_rows": "csvcells",
    "CacxrError": "errors",
    "missing_dependency": "errors",
    "lazy_face": "faces",
    "MOVED": "moved",
    "install_old_paths": "moved",
    "worker_context": "processes",
    "one_thread_per_worker": "processes",
    "data_roots": "safepaths",
    "file_kind": "safepaths",
    "refuse_inside": "safepaths",
    "refuse_overwrite": "safepaths",
    "is_safetensors": "tensorfiles",
    "read_safetensors": "tensorfiles",
    "require_writable": "safepaths",
    "AGATSTON_BANDS": "task",
    "TASKS": "task",
    "agatston_band": "task",
    "age_in_years": "task",
    "cac_to_target": "task",
    "predicted_label": "task",
    "target_to_cac": "task",
    "true_label": "task",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
