"""The FastAPI application: routes, answers, error handling and the worker threads.

Imported only through :func:`cacxr.serving.create_app`, which checks first that the optional ``serve``
dependencies are installed.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.to_thread
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from cacxr.core import CacxrError
from cacxr.serving.model import ServedModel, png_bytes
from cacxr.serving.uploads import (
    UPLOAD_FIELD,
    Upload,
    UploadError,
    check_dimensions,
    receive_upload,
    refusal,
    sniff_format,
)

if TYPE_CHECKING:
    import numpy as np

    from cacxr.imaging import ImageMeta

__all__ = ["build_app", "Limits", "Prediction", "ModelInfo", "Health", "ErrorAnswer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """The service's safety limits and concurrency.

    Attributes:
        max_upload_bytes: the largest accepted upload, enforced while reading the body.
        max_image_pixels: the largest accepted rows x columns, checked from the header before decoding.
        worker_threads: uploads decoded and scored at once (more wait in a queue); the model itself
            runs one request at a time.
        explain_steps: default integrated-gradients steps of ``/explain``.
        read_timeout_s: seconds an upload may stall before it is answered 408 (a Content-Length larger
            than the body would otherwise hold the connection until the client gives up).
        request_timeout_s: seconds the whole upload may take before it is answered 408, however steadily it
            trickles in (one byte every few seconds never stalls, yet holds a worker for hours).
    """

    max_upload_bytes: int = 50 * 2**20
    max_image_pixels: int = 50_000_000
    worker_threads: int = 2
    explain_steps: int = 32
    read_timeout_s: float = 30.0
    request_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_image_pixels", "worker_threads", "explain_steps"):
            if getattr(self, name) < 1:
                raise CacxrError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("read_timeout_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise CacxrError(f"{name} must be positive (got {getattr(self, name)})")


class ModelInfo(BaseModel):
    """The model's name and version."""

    run_name: str = Field(description="the run folder's name")
    run_id: str = Field(description="identifier of the trained run (empty when the run has none)")
    arch: str
    task: Literal["classification", "regression"]
    threshold: float = Field(description="a patient is positive when CAC > threshold")
    decision_threshold: float = Field(
        description="score (probability; regression without an operating point: predicted CAC) at or above "
        "which label is 1 (chosen on validation)"
    )
    profile: str = Field(description="preprocessing profile")
    image_size: int = Field(description="side of the model's square input, in pixels")
    folds: list[int] = Field(description="the folds whose models are averaged ([-1]: the final model)")
    model: str = Field("", description="final, ensemble or fold K")
    calibration: list[str] = Field(default_factory=list, description="calibration methods of the models")
    cacxr_version: str = Field(description="version of the serving package")
    trained_with: str = Field(description="package version recorded when the run was trained")


class Prediction(BaseModel):
    """The answer of ``POST /predict``."""

    file: str = Field(description="the uploaded file's name, as sent")
    format: Literal["dicom", "png", "jpeg"] = Field(description="format found from the file's bytes")
    rows: int
    cols: int
    view: str = Field(description="DICOM ViewPosition ('' for PNG/JPEG or when absent)")
    task: Literal["classification", "regression"]
    probability: float | None = Field(description="calibrated P(CAC > threshold)")
    label: int = Field(description="1 when the score is above the decision threshold, else 0")
    predicted_cac: float | None = Field(description="predicted CAC score (regression runs)")
    agatston_band: str | None = Field(description="Agatston band of the predicted CAC (regression runs)")
    warnings: list[str] = Field(description="reasons to be careful: view read from the image, small image, ...")
    gate: str = Field(description="the view gate's verdict on the pixels, e.g. 'frontal (p 0.97)'")
    seconds: float = Field(description="server time spent decoding and scoring")
    model: ModelInfo


class Health(BaseModel):
    """The answer of ``GET /health``."""

    status: Literal["ok"]
    in_progress: int = Field(description="uploads being decoded or scored now")
    queued: int = Field(description="uploads waiting for a worker thread")
    max_upload_bytes: int
    max_image_pixels: int
    model: ModelInfo


class ErrorAnswer(BaseModel):
    """Every refusal: the HTTP status and a readable message naming the file and the reason."""

    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorAnswer, "description": "malformed upload, no file field or empty file"},
    408: {
        "model": ErrorAnswer,
        "description": "the upload stopped arriving (shorter than its Content-Length)",
    },
    413: {"model": ErrorAnswer, "description": "upload or image dimensions above the limits"},
    415: {"model": ErrorAnswer, "description": "not a DICOM, PNG or JPEG file (judged by its bytes)"},
    422: {"model": ErrorAnswer, "description": "corrupt image, or not a usable radiograph"},
}
# The routes read the body themselves (streaming, size-limited), so the schema is declared here.
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [UPLOAD_FIELD],
                    "properties": {
                        UPLOAD_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "a DICOM, PNG or JPEG chest radiograph",
                        }
                    },
                }
            }
        },
    }
}
_PNG_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "a PNG image"}
}


@dataclass(frozen=True)
class _Decoded:
    image: np.ndarray
    meta: ImageMeta
    fmt: str
    warnings: list[str]
    gate: str


def _decode(upload: Upload, max_pixels: int, info: ModelInfo) -> _Decoded:
    """Sniff, check the dimensions, decode, let the view gate read the pixels: every failure is an
    :class:`UploadError` (never a 500); a lateral or a non-radiograph is refused as ingest excludes it."""
    from cacxr.use import image_warnings, judge_image, read_bounded

    fmt = sniff_format(upload.path, upload.name)
    check_dimensions(upload.path, fmt, upload.name, max_pixels)
    # Decoded in the bounded pool (a decoder that aborts or loops costs this upload a 4xx, never the server)
    # and no larger than the run needs, as predict and the image store decode it.
    result = read_bounded(upload.path, info.profile, info.image_size, max_pixels=max_pixels)
    if not result.ok or result.image is None or result.meta is None:
        raise refusal(upload.name, upload.path, result.reason, result.detail)
    meta = result.meta
    verdict, decision = judge_image(result.image, meta)  # the rule predict and ingest follow
    if decision.reason:
        raise refusal(upload.name, upload.path, decision.reason, decision.detail)
    image = 1.0 - result.image if decision.invert else result.image
    return _Decoded(image, meta, fmt, image_warnings(meta, decision), verdict.describe())


def build_app(model: ServedModel, limits: Limits) -> FastAPI:
    """The FastAPI app serving ``model`` (see :func:`cacxr.serving.create_app`)."""
    from cacxr import __version__

    info = ModelInfo(**model.describe())
    limiter = anyio.CapacityLimiter(limits.worker_threads)
    app = FastAPI(
        title="cacxr",
        version=__version__,
        summary="Coronary artery calcium from chest radiographs",
        description=(
            f"Model: {info.arch} {info.task} (run {info.run_name}). Upload a DICOM, PNG or JPEG chest "
            f"radiograph as multipart field '{UPLOAD_FIELD}'. Research use only, not a medical device."
        ),
    )
    app.mount("/static", StaticFiles(packages=[("cacxr", "static")]), name="static")

    @app.exception_handler(UploadError)
    async def _refused(request: Request, exc: UploadError) -> JSONResponse:
        logger.info("%s %s refused: HTTP %d", request.method, request.url.path, exc.status)
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    async def in_worker(func, upload: Upload, *args):
        """Run blocking work on an upload in a worker thread: beyond ``worker_threads``, uploads queue."""
        try:
            return await anyio.to_thread.run_sync(partial(func, upload, *args), limiter=limiter)
        except CacxrError as exc:  # e.g. preprocessing refusing a degenerate image
            raise UploadError(422, f"{upload.name}: {exc}") from None

    def predict_upload(upload: Upload) -> Prediction:
        start = time.perf_counter()
        decoded = _decode(upload, limits.max_image_pixels, info)
        scores = model.predict(decoded.image, decoded.meta)
        seconds = time.perf_counter() - start
        logger.info(
            "predict: %s %dx%d scored in %.2f s", decoded.fmt, decoded.meta.cols, decoded.meta.rows, seconds
        )
        regression = scores["task"] == "regression"
        return Prediction(
            file=upload.name,
            format=decoded.fmt,
            rows=decoded.meta.rows,
            cols=decoded.meta.cols,
            view=decoded.meta.view,
            task=scores["task"],
            probability=scores.get("probability"),
            label=int(scores["label"]),
            predicted_cac=scores.get("predicted_cac") if regression else None,
            agatston_band=scores.get("agatston_band") if regression else None,
            warnings=decoded.warnings + ([scores["warning"]] if scores.get("warning") else []),
            gate=decoded.gate,
            seconds=round(seconds, 4),
            model=info,
        )

    def preview_upload(upload: Upload) -> bytes:
        decoded = _decode(upload, limits.max_image_pixels, info)
        return png_bytes(model.prepare(decoded.image, decoded.meta))

    def explain_upload(upload: Upload, method: str, steps: int) -> tuple[bytes, float]:
        start = time.perf_counter()
        decoded = _decode(upload, limits.max_image_pixels, info)
        png, score = model.explain(decoded.image, method, steps, decoded.meta)
        logger.info("explain: %s (%s) in %.2f s", decoded.fmt, method, time.perf_counter() - start)
        return png, score

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        from importlib.resources import files

        return HTMLResponse(files("cacxr").joinpath("static", "index.html").read_text(encoding="utf-8"))

    @app.get("/health", response_model=Health, summary="Liveness, load and the model served")
    async def health() -> Health:
        stats = limiter.statistics()
        return Health(
            status="ok",
            in_progress=stats.borrowed_tokens,
            queued=stats.tasks_waiting,
            max_upload_bytes=limits.max_upload_bytes,
            max_image_pixels=limits.max_image_pixels,
            model=info,
        )

    @app.post(
        "/predict",
        response_model=Prediction,
        responses=_ERRORS,
        openapi_extra=_UPLOAD_BODY,
        summary="Score one radiograph",
    )
    async def predict(request: Request) -> Prediction:
        with tempfile.TemporaryDirectory(prefix="cacxr-upload-") as folder:
            upload = await receive_upload(
                request, folder, limits.max_upload_bytes, limits.read_timeout_s, limits.request_timeout_s
            )
            return await in_worker(predict_upload, upload)

    @app.post(
        "/preview",
        response_class=Response,
        responses={**_PNG_ANSWER, **_ERRORS},
        openapi_extra=_UPLOAD_BODY,
        summary="The preprocessed image the model sees, as PNG",
    )
    async def preview(request: Request) -> Response:
        with tempfile.TemporaryDirectory(prefix="cacxr-upload-") as folder:
            upload = await receive_upload(
                request, folder, limits.max_upload_bytes, limits.read_timeout_s, limits.request_timeout_s
            )
            return Response(await in_worker(preview_upload, upload), media_type="image/png")

    @app.post(
        "/explain",
        response_class=Response,
        responses={**_PNG_ANSWER, **_ERRORS, 501: {"model": ErrorAnswer, "description": "captum missing"}},
        openapi_extra=_UPLOAD_BODY,
        summary="Saliency overlay (heat map over the preprocessed radiograph), as PNG",
    )
    async def explain(
        request: Request,
        method: Literal["integrated-gradients", "gradcam"] = "integrated-gradients",
        steps: int | None = Query(None, ge=1, le=256, description="integrated-gradients steps"),
    ) -> Response:
        if importlib.util.find_spec("captum") is None:
            raise UploadError(
                501, "explanations need the optional package 'captum': pip install 'cacxr[explain]'"
            )
        with tempfile.TemporaryDirectory(prefix="cacxr-upload-") as folder:
            upload = await receive_upload(
                request, folder, limits.max_upload_bytes, limits.read_timeout_s, limits.request_timeout_s
            )
            png, score = await in_worker(explain_upload, upload, method, steps or limits.explain_steps)
        return Response(png, media_type="image/png", headers={"X-Cacxr-Score": f"{score:.6g}"})

    return app
