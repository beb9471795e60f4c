"""Layer 5: arrays to figures, no files read: metrics, intervals, fold statistics, calibration figures, operating point, clinical baseline, plots."""

from cacxr.core import lazy_face

# public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "calibration_figures": "calibration",
    "decision_curve": "calibration",
    "clinical_baseline": "baseline",
    "skipped_baseline": "baseline",
    "fold_level_auc": "folds",
    "fold_paired_test": "folds",
    "holm_adjust": "folds",
    "bootstrap_ci": "intervals",
    "build_metrics": "summary",
    "choose_threshold": "metrics",
    "classification_metrics": "metrics",
    "delong_test": "intervals",
    "regression_metrics": "metrics",
    "operating_point": "decision_threshold",
    "parse_rule": "decision_threshold",
    "choose_operating_threshold": "decision_threshold",
    "nested_operating_figures": "decision_threshold",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
