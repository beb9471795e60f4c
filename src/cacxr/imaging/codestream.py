"""The image size a compressed codestream declares, read from its header before any decoder allocates.

A decoder allocates the size written inside the codestream, not the size a DICOM header or a file name
claims: a 5 KB DICOM that says 64 x 64 can carry a JPEG codestream declaring 60000 x 60000 pixels, which
a decoder turns into gigabytes. So every codestream is read here first, a few bytes of its header only:

- JPEG (SOF0-SOF15 frame header) and JPEG-LS (SOF55, same layout): ``Y`` lines x ``X`` samples;
- JPEG 2000: the SIZ segment of a bare codestream, or of the ``jp2c`` box of a JP2 file;
- PNG: the IHDR chunk.

:func:`check_codestream` compares that declared size with a pixel limit (reason ``too_large``) and with
the size the container declares (DICOM Rows x Columns; a mismatch is ``unreadable``), and
:func:`check_dicom_pixel_data` applies it to every frame of encapsulated DICOM pixel data. Deflated DICOM
data sets are inflated with a bounded output (:func:`check_deflated`) so a zlib bomb is refused too; the
file meta group is walked here (:func:`file_meta_syntax`) and so are the top-level element lengths
(:func:`check_element_lengths`: a small file declaring a 2 GB element).

Why one module of ~500 lines: every check that reads what a file *declares* (codestream sizes, deflated
bodies, element lengths) before pydicom or a decoder allocates for it; they share the byte-level parsers.
"""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_TILES",
    "CodestreamError",
    "DeclaredSize",
    "check_codestream",
    "check_jpeg_scans",
    "check_rle_frame",
    "MAX_SCANS",
    "check_deflated",
    "check_element_lengths",
    "file_meta_syntax",
    "is_deflated",
    "check_dicom_pixel_data",
    "declared_size",
    "first_fragment_head",
]

# The largest image accepted by every reader (rows x columns x frames): 7000 x 7000, far above any
# radiograph (the largest detectors are about 4300 x 4300), and about 200 MB once decoded to float32.
DEFAULT_MAX_PIXELS = 50_000_000

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JP2_MAGIC = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_MAGIC = b"\xff\x4f\xff\x51"  # SOC then SIZ
# Frame headers: SOF0-3, 5-7, 9-11, 13-15 (C4 DHT, C8 JPG, CC DAC are not frames) and JPEG-LS SOF55.
_SOF_MARKERS = frozenset(
    {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7}
)
_SIGNATURES = (_PNG_MAGIC, b"\xff\xd8", _J2K_MAGIC, _JP2_MAGIC)
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length field
_DEFLATED = "1.2.840.10008.1.2.1.99"
# JPEG 2000: at most RGBA; tiles far above what radiographs use (1, or 512 to 1024-pixel tiles: <= ~256).
_MAX_COMPONENTS = 4
MAX_TILES = 4096
# A progressive JPEG needs about 10 scans per component for the usual progressions (libjpeg's simple
# progression: 10 for colour, 6 for grey); baseline, lossless and JPEG-LS use 1 to 4. Each scan makes the
# decoder visit every block, so 10,000 scans of 30 bytes are minutes of CPU from a 400 KB file.
MAX_SCANS = 64
_RLE = "1.2.840.10008.1.2.5"


class CodestreamError(Exception):
    """A codestream that may not be decoded: ``reason`` is ``too_large``, ``too_complex`` or ``unreadable``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DeclaredSize:
    """What a codestream header declares.

    Attributes:
        kind: ``jpeg``, ``jpeg-ls``, ``jpeg2000`` or ``png``.
        rows: image height in pixels.
        cols: image width in pixels.
        components: samples per pixel (JPEG 2000 Csiz; 1 where not read).
        tiles: JPEG 2000 tiles on the reference grid (1 elsewhere).
    """

    kind: str
    rows: int
    cols: int
    components: int = 1
    tiles: int = 1

    @property
    def pixels(self) -> int:
        """rows x columns."""
        return self.rows * self.cols


def declared_size(data: bytes | memoryview) -> DeclaredSize | None:
    """The size declared by the codestream at the start of ``data``.

    Args:
        data: the start of a JPEG, JPEG-LS, JPEG 2000 (bare or JP2) or PNG stream (the header suffices).

    Returns:
        The declared size, or None when ``data`` starts with none of these signatures.

    Raises:
        CodestreamError: ``unreadable`` for a known signature whose header is truncated or malformed.
    """
    head = bytes(data[:12])
    if head.startswith(_PNG_MAGIC):
        return _png_size(data)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if head.startswith(_J2K_MAGIC):
        return _siz_size(data, 0)
    if head.startswith(_JP2_MAGIC):
        return _jp2_size(data)
    return None


def check_codestream(
    data: bytes | memoryview, max_pixels: int, expected: tuple[int, int] | None = None, what: str = "image"
) -> DeclaredSize | None:
    """Refuse a codestream that declares more than ``max_pixels`` or another size than its container.

    Args:
        data: the start of the codestream.
        max_pixels: the largest accepted rows x columns.
        expected: (rows, columns) the container declares (DICOM Rows, Columns), or None.
        what: how to name the codestream in messages (e.g. "frame 1").

    Returns:
        The declared size (None when ``data`` is not a known codestream).

    Raises:
        CodestreamError: ``too_large`` above the limit, ``unreadable`` for a malformed header or a size
            that disagrees with ``expected``.
    """
    size = declared_size(data)
    if size is None:
        return None
    if size.pixels > max_pixels:
        raise CodestreamError(
            "too_large",
            f"{what}: the {size.kind} codestream declares {size.cols}x{size.rows} pixels, above the limit "
            f"of {max_pixels:,} pixels",
        )
    if size.components > _MAX_COMPONENTS or size.tiles > MAX_TILES or size.pixels * size.components > max_pixels:
        raise CodestreamError(
            "too_large",
            f"{what}: the {size.kind} codestream declares {size.cols}x{size.rows} pixels x {size.components} "
            f"components in {size.tiles:,} tiles (limits: {_MAX_COMPONENTS} components, {MAX_TILES:,} tiles, "
            f"{max_pixels:,} samples): the decoder would allocate per tile and component",
        )
    if expected is not None and (size.rows, size.cols) != tuple(expected):
        raise CodestreamError(
            "unreadable",
            f"{what}: the {size.kind} codestream declares {size.cols}x{size.rows} pixels but the header "
            f"says {expected[1]}x{expected[0]} (Columns x Rows)",
        )
    return size


def check_jpeg_scans(data: bytes | memoryview, what: str = "image", limit: int = MAX_SCANS) -> int:
    """Refuse a JPEG / JPEG-LS codestream with more than ``limit`` scans, before any decoder runs.

    A scan starts with an SOS marker (FF DA); inside entropy-coded data an FF byte is always followed by
    00 or a restart marker, so counting FF DA is exact for the codestream (an embedded thumbnail adds its
    own scan, well within the limit).

    Returns:
        The number of scans (0 for data that is not JPEG).

    Raises:
        CodestreamError: ``too_complex`` above the limit.
    """
    if bytes(data[:2]) != b"\xff\xd8":
        return 0
    scans = bytes(data).count(b"\xff\xda")
    if scans > limit:
        raise CodestreamError(
            "too_complex",
            f"{what}: the JPEG codestream has {scans:,} scans (at most {limit} are accepted): decoding it would "
            "take minutes of CPU",
        )
    return scans


def check_dicom_pixel_data(ds: object, max_pixels: int) -> None:
    """Check every frame of a DICOM data set's encapsulated pixel data before pydicom decodes it.

    Native and RLE pixel data decode to Rows x Columns x samples, bounded from the header by the reader
    (``cacxr.imaging.dicom.decoded_size_refusal``); of RLE only the segment table is read here
    (:func:`check_rle_frame`). Of codestream syntaxes (JPEG, JPEG-LS, JPEG 2000, ...): the first fragment of
    every frame, and every other fragment that starts a codestream (the decoder may be sent to any of them
    by an offset table).

    Args:
        ds: a fully read ``pydicom.Dataset``.
        max_pixels: the largest accepted rows x columns.

    Raises:
        CodestreamError: a frame above the limit, disagreeing with Rows x Columns, truncated, or not
            a codestream of a known kind.
    """
    from pydicom.encaps import generate_fragmented_frames, generate_fragments

    syntax = ds.file_meta.get("TransferSyntaxUID", "")  # type: ignore[attr-defined]
    if not syntax or not syntax.is_encapsulated:
        return
    pixel_data = ds.get("PixelData")  # type: ignore[attr-defined]
    if not pixel_data:
        return
    expected = (int(ds.get("Rows") or 0), int(ds.get("Columns") or 0))  # type: ignore[attr-defined]
    frames = int(ds.get("NumberOfFrames") or 1)  # type: ignore[attr-defined]
    # RLE: one segment per sample and byte of the sample (PS3.5 G.2)
    segments = int(ds.get("SamplesPerPixel") or 1) * -(-int(ds.get("BitsAllocated") or 8) // 8)  # type: ignore[attr-defined]
    seen = 0
    try:
        for index, fragments in enumerate(generate_fragmented_frames(pixel_data, number_of_frames=frames)):
            seen += 1
            what = f"frame {index + 1}" if frames > 1 else "pixel data"
            first = fragments[0] if fragments else b""
            if syntax == _RLE:
                check_rle_frame(b"".join(bytes(f) for f in fragments), segments, what)
                continue
            if check_codestream(first, max_pixels, expected, what) is None:
                raise CodestreamError("unreadable", f"{what}: not a JPEG, JPEG-LS or JPEG 2000 codestream")
            check_jpeg_scans(b"".join(bytes(f) for f in fragments) if len(fragments) > 1 else first, what)
        # The decoder may be handed any fragment (an Extended Offset Table points pydicom at fragments the
        # frame walk above never reads): every fragment that starts a codestream is checked too.
        items = generate_fragments(pixel_data) if syntax != _RLE else iter(())
        next(items, None)  # the Basic Offset Table is always the first item
        for index, fragment in enumerate(items, start=1):
            if bytes(fragment[:12]).startswith(_SIGNATURES):
                check_codestream(fragment, max_pixels, expected, f"fragment {index}")
    except CodestreamError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom's fragment parser on truncated/malformed items
        raise CodestreamError(
            "unreadable", f"encapsulated pixel data is truncated or malformed ({exc})"
        ) from exc
    if seen == 0:
        raise CodestreamError("unreadable", "encapsulated pixel data holds no frame")


def check_rle_frame(frame: bytes | memoryview, segments: int, what: str = "pixel data") -> None:
    """Refuse an RLE frame whose 64-byte header disagrees with the data set, before the decoder reads it.

    The header holds the segment count and up to 15 offsets; the decoder trusts them to size and walk its
    output. The count must be SamplesPerPixel x bytes per sample, and the offsets must rise from 64 and lie
    inside the frame.
    """
    if len(frame) < 64:
        raise CodestreamError("unreadable", f"{what}: RLE frame shorter than its 64-byte header")
    count, *offsets = struct.unpack_from("<16I", frame)
    if count != segments:
        raise CodestreamError(
            "unreadable",
            f"{what}: the RLE header declares {count} segment(s), SamplesPerPixel x BitsAllocated needs {segments}",
        )
    used = offsets[:count]
    if used[0] != 64 or any(b <= a for a, b in itertools.pairwise(used)) or used[-1] >= len(frame):
        raise CodestreamError("unreadable", f"{what}: RLE segment offsets out of order or beyond the frame")


def first_fragment_head(fp: BinaryIO, little_endian: bool = True, size: int = 1 << 16) -> bytes:
    """The start of the first fragment of encapsulated pixel data, read from an open file.

    ``fp`` must be positioned just after the pixel data element's tag, VR and length (as
    ``cacxr.imaging.reader`` leaves it after a header read). The Basic Offset Table item is skipped.

    Args:
        fp: the open file.
        little_endian: the data set's byte order.
        size: how many bytes of the fragment to read at most.

    Returns:
        Up to ``size`` bytes, or b"" when no fragment follows (native pixel data, truncated file).
    """
    order = "<" if little_endian else ">"
    for item in range(2):  # the Basic Offset Table, then the first fragment
        head = fp.read(8)
        if len(head) < 8:
            return b""
        group, element, length = struct.unpack(order + "HHI", head)
        if (group, element) != (0xFFFE, 0xE000):
            return b""
        if item == 0:
            fp.seek(length, 1)
    return fp.read(min(length, size))


def check_deflated(path: str, max_bytes: int) -> None:
    """Refuse a deflated DICOM data set that inflates to more than ``max_bytes`` (a zlib bomb).

    Args:
        path: the file.
        max_bytes: the largest accepted inflated size.

    Raises:
        CodestreamError: ``too_large`` above ``max_bytes``, ``unreadable`` for a broken stream.
    """
    if not is_deflated(path):
        return
    with open(path, "rb") as fp:
        body = _after_file_meta(fp.read())
    if body is None:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, max_bytes)
    except zlib.error as exc:
        raise CodestreamError("unreadable", f"the deflated data set cannot be inflated ({exc})") from exc
    if inflater.unconsumed_tail or len(out) >= max_bytes:
        raise CodestreamError(
            "too_large", f"the deflated data set inflates to more than {max_bytes:,} bytes (the limit)"
        )


_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_PIXEL_DATA = (0x7FE0, 0x0010)


def check_element_lengths(path: str, max_elements: int = 1 << 16) -> None:
    """Refuse a file whose top-level element declares more bytes than the file has left, before pydicom reads it.

    pydicom reads an element's value with one ``read(length)``, which allocates ``length`` bytes up front: a
    1 KB file declaring a 2 GB element either fails (MemoryError) or silently loses everything after it,
    depending on the memory available. Walking the element headers (``seek`` past each value, never reading
    one) gives one reason whatever the memory. Only part-10 files (``DICM``) are walked; the walk stops at
    the pixel data (its truncation is reported by the reader), at an undefined length (a sequence or
    encapsulated data) and at a deflated body (:func:`check_deflated`).

    Raises:
        CodestreamError: ``unreadable``, naming the element and the lengths.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fp:
        if fp.read(132)[128:132] != b"DICM":
            return  # no part-10 header: the encoding would be a guess, leave the file to pydicom
        pos, explicit, order, in_meta, syntax = 132, True, "<", True, ""
        for _ in range(max_elements):
            fp.seek(pos)
            raw = fp.read(12)
            if len(raw) < 8:
                return
            group, element = struct.unpack_from(order + "HH", raw)
            if in_meta and group != 0x0002:
                in_meta = False
                if syntax == _DEFLATED:
                    return
                order = ">" if syntax == _BIG_ENDIAN else "<"
                # As pydicom does: the first element says whether VRs are written, whatever the syntax says.
                explicit = raw[4:6].isalpha() and raw[4:6].isupper()
                group, element = struct.unpack_from(order + "HH", raw)
            if group == 0xFFFE or (group, element) == _PIXEL_DATA:
                return
            if explicit and raw[4:6] in _LONG_VRS:
                if len(raw) < 12:
                    return
                (length,), start = struct.unpack_from(order + "I", raw, 8), pos + 12
            elif explicit:
                (length,), start = struct.unpack_from(order + "H", raw, 6), pos + 8
            else:
                (length,), start = struct.unpack_from(order + "I", raw, 4), pos + 8
            if length == 0xFFFFFFFF:
                return
            if start + length > size:
                raise CodestreamError(
                    "unreadable",
                    f"element ({group:04X},{element:04X}) declares {length:,} bytes but the file has only "
                    f"{max(size - start, 0):,} left (truncated or forged)",
                )
            if in_meta and (group, element) == (0x0002, 0x0010):
                fp.seek(start)
                syntax = fp.read(length).rstrip(b"\x00 ").decode("ascii", "replace")
            pos = start + length


def file_meta_syntax(path: str | os.PathLike[str], max_elements: int = 256) -> str | None:
    """The TransferSyntaxUID of a file's meta group, read by walking it with seeks (no value but the UID read).

    The group is explicit VR little endian, after the part-10 preamble (``DICM`` at byte 128) or at byte 0
    (a data set saved without preamble). No window: the UID may follow a long (forged) element, and
    pydicom's ``read_file_meta_info`` refuses a group at byte 0 that ``dcmread(force=True)`` then reads and
    inflates whole.

    Returns:
        The UID, or None when there is no readable file meta group.
    """
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        pos = 132 if fp.read(132)[128:132] == b"DICM" else 0
        for _ in range(max_elements):
            fp.seek(pos)
            raw = fp.read(12)
            if len(raw) < 8:
                return None
            group, element = struct.unpack_from("<HH", raw)
            if group != 0x0002:
                return None
            if raw[4:6] in _LONG_VRS:
                if len(raw) < 12:
                    return None
                (length,), start = struct.unpack_from("<I", raw, 8), pos + 12
            else:
                (length,), start = struct.unpack_from("<H", raw, 6), pos + 8
            if length == 0xFFFFFFFF or start + length > size:
                return None
            if element == 0x0010:
                fp.seek(start)
                return fp.read(min(length, 64)).rstrip(b"\x00 ").decode("ascii", "replace")
            pos = start + length
    return None


def is_deflated(path: str | os.PathLike[str]) -> bool:
    """Whether the file's meta group declares the Deflated Explicit VR Little Endian syntax.

    Sniffers ask this before any ``dcmread``: pydicom inflates a deflated data set whole, even with
    ``stop_before_pixels``, so a deflated file is taken as DICOM and left to the reader's bounded inflation.
    """
    try:
        return file_meta_syntax(path) == _DEFLATED
    except OSError:
        return False


def _after_file_meta(data: bytes) -> bytes | None:
    """The bytes following the part-10 file meta group (explicit VR little endian, group 0002)."""
    pos = 132 if data[128:132] == b"DICM" else 0
    while pos + 8 <= len(data):
        group, _element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            return data[pos:]
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, pos + 8)
            pos += 12 + length
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            pos += 8 + length
    return None


# ------------------------------------------------------------------------------------------- parsers


def _png_size(data: bytes | memoryview) -> DeclaredSize:
    if len(data) < 24 or bytes(data[12:16]) != b"IHDR":
        raise CodestreamError("unreadable", "PNG without an IHDR chunk")
    width, height = struct.unpack_from(">II", data, 16)
    return DeclaredSize("png", height, width)


def _jpeg_size(data: bytes | memoryview) -> DeclaredSize:
    """Walk the JPEG marker segments up to the first frame header (SOFn or JPEG-LS SOF55)."""
    pos = 2
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise CodestreamError("unreadable", f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF_MARKERS:
            if pos + 10 > n or length < 8:
                break
            precision, rows, cols, components = struct.unpack_from(">BHHB", data, pos + 4)
            kind = "jpeg-ls" if marker == 0xF7 else "jpeg"
            if rows == 0 or cols == 0:  # rows 0 means "given later by a DNL marker": not supported
                raise CodestreamError(
                    "unreadable", f"{kind} codestream declares an empty image ({cols}x{rows})"
                )
            # T.81 / T.87: 2-16 bits per sample; the frame header lists each component in 3 bytes
            if not 2 <= precision <= 16 or not components or length != 8 + 3 * components:
                raise CodestreamError(
                    "unreadable",
                    f"{kind} frame header declares {components} component(s) of {precision} bits in a "
                    f"{length}-byte segment: not a valid frame",
                )
            return DeclaredSize(kind, rows, cols, components)
        if marker in (0xDA, 0xD9) or length < 2:  # scan or end before any frame header
            raise CodestreamError("unreadable", "JPEG codestream without a frame header")
        pos += 2 + length
    raise CodestreamError("unreadable", "JPEG codestream truncated before its frame header")


def _siz_size(data: bytes | memoryview, start: int) -> DeclaredSize:
    """JPEG 2000 SIZ: Xsiz, Ysiz (reference grid) minus the image offsets XOsiz, YOsiz."""
    if len(data) < start + 24 or bytes(data[start : start + 4]) != _J2K_MAGIC:
        raise CodestreamError("unreadable", "JPEG 2000 codestream truncated before its SIZ segment")
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", data, start + 8)
    if xosiz >= xsiz or yosiz >= ysiz:
        raise CodestreamError("unreadable", "JPEG 2000 SIZ declares an empty image")
    if len(data) < start + 42:  # the tile grid and the component count follow
        return DeclaredSize("jpeg2000", ysiz - yosiz, xsiz - xosiz)
    xtsiz, ytsiz, xtosiz, ytosiz = struct.unpack_from(">IIII", data, start + 24)
    (components,) = struct.unpack_from(">H", data, start + 40)
    if not xtsiz or not ytsiz or xtosiz > xosiz or ytosiz > yosiz or not components:
        raise CodestreamError("unreadable", "JPEG 2000 SIZ declares an impossible tile grid or no component")
    tiles = -(-(xsiz - xtosiz) // xtsiz) * -(-(ysiz - ytosiz) // ytsiz)
    return DeclaredSize("jpeg2000", ysiz - yosiz, xsiz - xosiz, components, tiles)


def _jp2_size(data: bytes | memoryview) -> DeclaredSize:
    """Walk the JP2 boxes to the contiguous codestream box (jp2c) and read its SIZ."""
    pos = 0
    n = len(data)
    while pos + 8 <= n:
        length, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1:
            if pos + 16 > n:
                break
            (length,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        if kind == b"jp2c":
            return _siz_size(data, pos + header)
        if length == 0 or length < header:
            break
        pos += length
    raise CodestreamError("unreadable", "JP2 file without a codestream box")
