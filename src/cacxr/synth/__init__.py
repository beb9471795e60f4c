"""Layer 1: synthetic cohorts in the seed layout or as image exports, with a learnable calcium signal, the archive's faults and their ground truth."""

from cacxr.core import lazy_face

# public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "make_cohort": "cohort",
    "summary": "cohort",
    "CohortPlan": "plan",
    "FAULTS": "plan",
    "plan_cohort": "plan",
    "ExportImage": "export_truth",
    "ExportPatient": "export_truth",
    "ExportTruth": "export_truth",
    "LABELS_FILE": "export_truth",
    "expected_kept": "export_truth",
    "read_export_truth": "export_truth",
    "FileTruth": "truth",
    "LabelTruth": "truth",
    "PatientTruth": "truth",
    "SynthTruth": "truth",
    "TRUTH_FILE": "truth",
    "read_truth": "truth",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
