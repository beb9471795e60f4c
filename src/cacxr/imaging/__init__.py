"""One file to a float image: the reader (DICOM, PNG, JPEG), header and views, grey levels, codestream limits, decoders."""

from cacxr.imaging.codestream import DEFAULT_MAX_PIXELS
from cacxr.imaging.header import first_data_tag
from cacxr.imaging.meta import RADIOGRAPH_MODALITIES, REASONS, ImageMeta, ReadResult
from cacxr.imaging.reader import read_header, read_image
from cacxr.imaging.views import FRONTAL_VIEWS, LATERAL_VIEWS, is_frontal, is_lateral

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FRONTAL_VIEWS",
    "LATERAL_VIEWS",
    "RADIOGRAPH_MODALITIES",
    "REASONS",
    "ImageMeta",
    "ReadResult",
    "first_data_tag",
    "is_frontal",
    "is_lateral",
    "read_header",
    "read_image",
]
