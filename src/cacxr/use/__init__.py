"""Layer 8: a trained run in use: loading it, inputs, predict, evaluate on other data, explain, export."""

from cacxr.core import lazy_face

# public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "DEFAULT_SITE": "evaluate",
    "SITES": "evaluate",
    "evaluate_run": "evaluate",
    "METHODS": "explain",
    "explain_paths": "explain",
    "explain_png": "explain",
    "prepare_image": "explain",
    "FORMATS": "export",
    "export_run": "export",
    "read_contract": "export",
    "LoadedRun": "loaded_run",
    "RunScores": "loaded_run",
    "load_run": "loaded_run",
    "format_table": "predict",
    "image_warnings": "inputs",
    "judge_image": "inputs",
    "read_bounded": "inputs",
    "score_image": "predict",
    "score_paths": "predict",
    "write_predictions_csv": "predict",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
