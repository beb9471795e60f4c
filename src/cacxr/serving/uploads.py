"""Receiving an uploaded radiograph safely: size limit while streaming, format from the bytes, bomb caps.

An upload goes through three gates before any pixel is decoded:

1. :func:`receive_upload` streams a ``multipart/form-data`` body (field ``file``) straight into a file of
   a caller-owned temporary folder, counting bytes as they arrive: a ``Content-Length`` above the limit is
   refused before reading anything, and a body that grows past it (chunked uploads, lying lengths) is
   refused as soon as it does (HTTP 413). Nothing is buffered in memory or spooled elsewhere.
2. :func:`sniff_format` names the format from the file's bytes, never from its name or declared type:
   PNG and JPEG signatures, ``DICM`` at offset 128, or a bare DICOM dataset whose first element is a known
   DICOM tag. Anything else is not an image (HTTP 415).
3. :func:`check_dimensions` reads only the header (Pillow's lazy open, pydicom up to the pixel data) and
   refuses images whose pixel count is above a cap (HTTP 413): a tiny PNG can declare 30000 x 30000 pixels
   and would need gigabytes once decoded.

Errors are :class:`UploadError` with the HTTP status and a message naming the upload by the name the
client gave it (never by a DICOM header field, never by the server's temporary path).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from starlette.requests import Request

    from cacxr.imaging import ImageMeta

__all__ = [
    "UPLOAD_FIELD",
    "FORMATS",
    "Upload",
    "UploadError",
    "receive_upload",
    "sniff_format",
    "check_dimensions",
    "display_name",
    "refusal",
]

UPLOAD_FIELD = "file"
FORMATS = ("dicom", "png", "jpeg")
# Room for the multipart framing (boundaries, part headers) on top of the file's own size limit.
_FRAMING_SLACK = 64 * 1024
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class UploadError(Exception):
    """An upload the service refuses, with the HTTP status to answer and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Upload:
    """A received upload.

    Attributes:
        path: the file inside the request's temporary folder.
        name: the client's file name, reduced to a safe base name (for messages only).
        size: its size in bytes.
    """

    path: Path
    name: str
    size: int


def display_name(filename: str | None) -> str:
    """The client's file name made safe to echo: base name only, printable, at most 100 characters."""
    base = re.split(r"[\\/]", filename or "")[-1]
    cleaned = re.sub(r"[^\w .()+-]", "_", base).strip()
    return cleaned[:100] or "upload"


def _megabytes(n: int) -> str:
    """A byte count for people: ``1.5 MB``, ``12 KB`` or ``300 bytes``."""
    if n >= 2**20:
        return f"{n / 2**20:.1f} MB"
    return f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} bytes"


def _too_large(name: str, limit: int, seen: int) -> UploadError:
    return UploadError(
        413, f"{name}: upload above the limit of {_megabytes(limit)} (refused after {_megabytes(seen)})"
    )


async def receive_upload(
    request: Request,
    folder: str | os.PathLike[str],
    max_bytes: int,
    read_timeout: float = 30.0,
    request_timeout: float = 120.0,
) -> Upload:
    """Stream the request's ``file`` field into ``folder``, enforcing ``max_bytes`` while reading.

    Args:
        request: a ``multipart/form-data`` request with one file field named ``file``.
        folder: an existing temporary folder owned by the caller (who removes it).
        max_bytes: the largest accepted file; the whole body may exceed it by the multipart framing only.
        read_timeout: seconds to wait for the next piece of the body: a client that stops sending (a
            Content-Length larger than the body it sends) is answered 408 instead of held open.
        request_timeout: seconds the whole body may take (a client trickling a byte every few seconds
            never stalls, but is answered 408 after this long).

    Returns:
        The received :class:`Upload`.

    Raises:
        UploadError: 413 for a body or file above the limit (declared or counted), 415 for a body that is
            not multipart, 400 for malformed multipart data (a truncated body whose closing boundary never
            came included), a missing ``file`` field or an empty file, 408 for a body that stops arriving.
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    body_limit = max_bytes + _FRAMING_SLACK
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > body_limit:
        raise UploadError(
            413,
            f"upload of {_megabytes(int(declared))} is above the limit of {_megabytes(max_bytes)}"
            " (refused before reading it)",
        )
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError(
            415, f"send the image as multipart/form-data with a file field named '{UPLOAD_FIELD}'"
        )
    target = Path(folder) / "upload"
    receiver = _PartReceiver()
    parser = MultipartParser(params[b"boundary"], receiver.callbacks())
    received = 0
    async with await anyio.open_file(target, "wb") as out:
        async for chunk in _body(request, read_timeout, anyio.current_time() + request_timeout):
            received += len(chunk)
            if received > body_limit:
                raise _too_large(receiver.name, max_bytes, received)
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise UploadError(400, f"malformed multipart body: {exc}") from None
            for data in receiver.take():
                await out.write(data)
            if receiver.file_bytes > max_bytes:
                raise _too_large(receiver.name, max_bytes, received)
        try:
            parser.finalize()
        except FormParserError as exc:
            raise UploadError(400, f"malformed multipart body: {exc}") from None
    if receiver.found and not (receiver.file_complete and receiver.complete):
        # python-multipart's finalize() does not complain when the closing boundary never came.
        raise UploadError(
            400, f"{receiver.name}: malformed multipart body: the closing boundary is missing (truncated upload?)"
        )
    if not receiver.found:
        raise UploadError(400, f"no file field named '{UPLOAD_FIELD}' in the upload")
    if receiver.file_bytes == 0:
        raise UploadError(400, f"{receiver.name}: empty file (0 bytes)")
    return Upload(path=target, name=receiver.name, size=receiver.file_bytes)


async def _body(request: Request, read_timeout: float, deadline: float = math.inf):
    """The request body's chunks; a client that goes away mid-upload ends the request with a 400, one
    that stops sending for ``read_timeout`` seconds, or is still sending at ``deadline`` (anyio's clock),
    with a 408."""
    from starlette.requests import ClientDisconnect

    chunks = request.stream().__aiter__()
    while True:
        left = deadline - anyio.current_time()
        try:
            with anyio.fail_after(max(min(read_timeout, left), 0.0)):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            if left <= read_timeout:
                raise UploadError(408, "the upload took too long (over the request deadline); send it faster") from None
            raise UploadError(
                408,
                f"the upload stalled: no data for {read_timeout:g} s (the body is shorter than announced?)",
            ) from None
        except ClientDisconnect:
            raise UploadError(400, "the client disconnected before the upload was complete") from None
        yield chunk


class _PartReceiver:
    """python-multipart callbacks keeping the bytes of the ``file`` field (other fields are dropped)."""

    def __init__(self) -> None:
        self.found = False
        self.file_complete = False  # the file part's end was parsed
        self.complete = False  # the closing boundary was parsed
        self.name = "upload"
        self.file_bytes = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._in_file = False
        self._pending: list[bytes] = []

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_part,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def take(self) -> list[bytes]:
        """The file bytes parsed since the last call."""
        pending, self._pending = self._pending, []
        return pending

    def _part_begin(self) -> None:
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._disposition)
        # Only the first part named "file" is kept; a second one is ignored rather than concatenated.
        self._in_file = options.get(b"name") == UPLOAD_FIELD.encode() and not self.found
        if self._in_file:
            self.found = True
            self.name = display_name(options.get(b"filename", b"").decode("utf-8", "replace"))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.file_bytes += end - start
            self._pending.append(bytes(data[start:end]))

    def _part_end(self) -> None:
        if self._in_file:
            self.file_complete = True
        self._in_file = False

    def _end(self) -> None:
        self.complete = True


def sniff_format(path: str | os.PathLike[str], name: str) -> str:
    """The upload's format from its bytes: ``dicom``, ``png`` or ``jpeg``.

    Args:
        path: the received file.
        name: the client's file name (for the message).

    Returns:
        One of :data:`FORMATS`.

    Raises:
        UploadError: 415 when the bytes are none of these formats.
    """
    with open(path, "rb") as fp:
        head = fp.read(132)
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head[128:132] == b"DICM" or _is_bare_dicom(path):
        return "dicom"
    raise UploadError(415, f"{name}: not a DICOM, PNG or JPEG file (its bytes match none of these formats)")


def _is_bare_dicom(path: str | os.PathLike[str]) -> bool:
    """A DICOM dataset without the part-10 preamble: parses, and its first element is a known DICOM tag."""
    import pydicom
    from pydicom.datadict import dictionary_has_tag

    from cacxr.imaging import first_data_tag, is_deflated

    if is_deflated(path):  # pydicom would inflate it whole; the reader inflates it with a bound
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings may quote header values
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            tag = first_data_tag(ds)  # a leading group length (gggg,0000) is skipped
    except Exception:  # noqa: BLE001 - whatever the parser trips on, the bytes are not a dataset
        return False
    return tag is not None and dictionary_has_tag(tag) and tag.group >= 0x0008


def check_dimensions(path: str | os.PathLike[str], fmt: str, name: str, max_pixels: int) -> ImageMeta:
    """Read the image's header only and refuse images above ``max_pixels`` before decoding them.

    Args:
        path: the received file.
        fmt: its format (:func:`sniff_format`).
        name: the client's file name (for messages).
        max_pixels: the largest accepted rows x columns (x frames).

    Returns:
        The header's metadata (``cacxr.imaging.read_header``), for the view and size warnings.

    Raises:
        UploadError: 413 above the cap (or a Pillow decompression bomb), 422 for a header that cannot
            be read or a file that is not a usable radiograph (no pixel data, CT, several frames).
    """
    from PIL import Image

    from cacxr.imaging import read_header

    if fmt in ("png", "jpeg"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    width, height = img.size
        except Image.DecompressionBombError as exc:
            raise UploadError(413, f"{name}: image too large to decode safely ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a corrupt header
            raise UploadError(422, f"{name}: corrupt {fmt.upper()} image ({type(exc).__name__})") from None
        _check_pixels(name, width * height, f"{width}x{height}", max_pixels)
    header = read_header(path, max_pixels=max_pixels)
    if not header.ok or header.meta is None:
        raise refusal(name, path, header.reason, header.detail)
    meta = header.meta
    size = f"{meta.cols}x{meta.rows}" + (f"x{meta.n_frames} frames" if meta.n_frames > 1 else "")
    _check_pixels(name, meta.rows * meta.cols * max(meta.n_frames, 1), size, max_pixels)
    if meta.rows <= 0 or meta.cols <= 0:
        raise UploadError(422, f"{name}: the header declares an empty image ({size})")
    return meta


def _check_pixels(name: str, pixels: int, size: str, max_pixels: int) -> None:
    if pixels > max_pixels:
        raise UploadError(413, f"{name}: image of {size} pixels is above the limit of {max_pixels:,} pixels")


def refusal(name: str, path: str | os.PathLike[str], reason: str, detail: str) -> UploadError:
    """A reader's refusal (``cacxr.imaging`` reason code and detail) as a 4xx naming the upload.

    ``too_large`` (the header or the codestream declares more pixels than the limit) is a 413, every
    other reason a 422. The detail names the server's temporary file; that path is replaced by the
    client's file name.
    """
    from cacxr.imaging import REASONS

    where = os.fspath(path)
    text = detail.replace(f"{where}: ", "").replace(where, "the upload") or REASONS.get(reason, "")
    if reason == "too_large":  # the message says it already: "image of WxH pixels is above the limit"
        return UploadError(413, f"{name}: {text}")
    return UploadError(422, f"{name}: {reason or 'unreadable'}: {text}")
