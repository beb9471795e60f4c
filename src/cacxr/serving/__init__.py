"""The prediction service: an HTTP API and a web page for scoring uploaded chest radiographs.

Routes (``cacxr serve RUN``; schema at ``/openapi.json``, interactive docs at ``/docs``):

- ``GET /``: a page where a person drops a DICOM/PNG/JPEG file and sees the preprocessed radiograph, the
  score and a saliency heat map (plain HTML and JavaScript, nothing fetched from elsewhere);
- ``POST /predict``: multipart field ``file`` -> JSON score (probability and label, or predicted CAC and
  Agatston band), warnings and the model's name and version;
- ``POST /preview``: the preprocessed image the model sees, as PNG;
- ``POST /explain?method=integrated-gradients|gradcam``: the saliency overlay, as PNG;
- ``GET /health``: liveness, load and the model served.

Safety: the upload size is limited while the body streams in (413), formats are judged by their bytes
(415 for anything else, 422 for a corrupt image), image dimensions are capped from the header before
decoding (413), uploads live in a per-request temporary folder removed afterwards, no DICOM header field
that could identify a patient is answered or logged, and model work runs in worker threads so that
``/health`` answers while uploads queue. A request head must arrive within 10 s and at most 200 connections
are kept (the oldest idle one is closed for a new one), so slow or idle clients cannot hold the server
(``connections``).
"""

from __future__ import annotations

from cacxr.serving.model import RunModel, ServedModel
from cacxr.serving.server import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    create_app,
    serve,
    serve_in_background,
)

__all__ = [
    "create_app",
    "serve",
    "serve_in_background",
    "RunModel",
    "ServedModel",
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_HEADER_TIMEOUT_S",
    "DEFAULT_MAX_CONNECTIONS",
]
