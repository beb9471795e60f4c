"""Layer 7: the run folder: its names and readers (folder), writers, merge-time figures, report, comparison, tracking."""

from cacxr.core import lazy_face

# public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "compare_runs": "compare",
    "summary_lines": "compare",
    "add_run_figures": "figures",
    "run_clinical_baseline": "figures",
    "CHECKPOINT": "folder",
    "FINAL_DIR": "folder",
    "FINAL_FOLD": "folder",
    "FINAL_RECORD": "folder",
    "MODEL_FILE": "folder",
    "REPORT_FILE": "folder",
    "has_final": "folder",
    "write_report": "report",
    "track_run": "tracking",
    "write_run_predictions": "writers",
    "write_score_plots": "writers",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
