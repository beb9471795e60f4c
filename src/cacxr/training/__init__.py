"""Layer 8: cross-validated training: splits, datasets and feature cache, the fold loop and checkpoints, the final model, accelerators, distributed runs, what a rerun must reuse."""

from cacxr.core import lazy_face

# public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "merge_folds": "crossval",
    "train_run": "crossval",
    "launch_rank": "distributed",
    "fit_final": "final",
    "make_folds": "splits",
    "current_environment": "reproducibility",
    "environment_differences": "reproducibility",
    "torch_settings": "reproducibility",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
