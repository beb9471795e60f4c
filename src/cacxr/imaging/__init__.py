"""Layer 1: one file to a float image: the reader (DICOM, PNG, JPEG), header and views, grey levels, codestream limits, decoders, the bounded decode pool."""

from cacxr.core import lazy_face

# public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "DEFAULT_MAX_PIXELS": "codestream",
    "is_deflated": "codestream",
    "first_data_tag": "header",
    "ImageMeta": "meta",
    "RADIOGRAPH_MODALITIES": "meta",
    "REASONS": "meta",
    "ReadResult": "meta",
    "read_header": "reader",
    "read_image": "reader",
    "DecodePool": "sandbox",
    "READER_MODULES": "sandbox",
    "bounded_pool": "sandbox",
    "TaskResult": "sandbox",
    "run_isolated": "sandbox",
    "FRONTAL_VIEWS": "views",
    "LATERAL_VIEWS": "views",
    "is_frontal": "views",
    "is_lateral": "views",
    "classify": "viewgate",
    "classify_many": "viewgate",
    "gate_version": "viewgate",
    "load_gate": "viewgate",
    "HEADER_CONTRADICTS_IMAGE": "viewrule",
    "PROJECTION_MODALITIES": "viewrule",
    "VIEW_FROM_IMAGE": "viewrule",
    "GateDecision": "viewrule",
    "GateVerdict": "viewrule",
    "decide": "viewrule",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
