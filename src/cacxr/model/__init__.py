"""Layer 4: one model's score: networks, named weights (registry, cache, loading), covariate encoding, calibration, scoring."""

from cacxr.core import lazy_face

# public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "apply_calibration": "calibration",
    "fit_calibration": "calibration",
    "none_offset": "calibration",
    "CLINICAL_FEATURES": "covariates",
    "ClinicalEncoder": "covariates",
    "clinical_width": "covariates",
    "parse_clinical": "covariates",
    "sex_level": "covariates",
    "ARCHS": "networks",
    "CACNet": "networks",
    "build_model": "networks",
    "check_profile": "registry",
    "ModelScore": "scoring",
    "RunScorer": "scoring",
    "covariate_tensors": "scoring",
    "raw_scores": "scoring",
    "load_pretrained": "weights",
    "load_saved_model": "weights",
    "save_model": "weights",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
