"""Layer 3: a manifest to an image store: preprocessing profiles (intensity contracts) and the cached uint8 store."""

from cacxr.core import lazy_face

# public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "DEFAULT_PROFILE": "profiles",
    "PROFILES": "profiles",
    "Profile": "profiles",
    "get_profile": "profiles",
    "normalise": "profiles",
    "per_level_for": "profiles",
    "preprocess_image": "profiles",
    "preprocess_read": "profiles",
    "decode_side": "profiles",
    "read_for_profile": "profiles",
    "ImageStore": "store",
    "build_store": "build",
    "default_workers": "build",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
