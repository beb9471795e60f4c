"""Layer 2: an archive to a manifest: label tables, the per-file inventory and its rules, manifest.csv / excluded.csv, the cohort's description."""

from cacxr.core import lazy_face

# public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "cohort_stats": "cohort",
    "SITES": "inventory",
    "ingest": "inventory",
    "load_labels": "labels",
    "MANIFEST_FILE": "manifest",
    "ManifestRow": "manifest",
    "SUMMARY_FILE": "manifest",
    "labelled_rows": "manifest",
    "manifest_hash": "manifest",
    "read_manifest": "manifest",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
