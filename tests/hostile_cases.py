"""Every hostile file of issue 21 as a generator: :func:`every_case` builds each case into a folder and
yields a :class:`Case` stating the one reason cacxr must give for it.

The builders come from ``hostile_files`` (beside this module); the few shapes it does not have (the deflate
bomb's meta variants, the RLE file that really decodes to 588 MB, the CPU bomb under a PNG name, the
formula file names) are built here. Nothing written is larger than ~10 MB: every bomb is a bomb because
of what it declares (an inflated size, a codestream header, an RLE run, a scan count).

The expected reason is one of ``cacxr.imaging.REASONS`` (``too_large``, ``too_complex``, ``unreadable``),
or "" for a file that must stay usable (the CSV-injection names). A grey-level bomb (item 7) is
``unreadable`` with the word ``phrase`` in its detail (``non-finite`` levels or a ``blank`` image).

Item 6 (slow clients) is tested in tests/serving; items 9 and 10 (outputs) in tests/test_hostile_outputs.py.
"""

from __future__ import annotations

import functools
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

import hostile_files as hostile

# cacxr's cap on an inflated data set is max_pixels * 4 + 16 MB (216 MB at the default 50 M pixels): the
# deflate bombs inflate to 1.5 times that, clearly above it yet harmless for a test child that fails.
DEFLATE_INFLATED = 320 * 2**20

# The first character of a cell a spreadsheet evaluates as a formula (OWASP's list).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
FORMULA_NAMES = ("=cmd|' calc'!A0.dcm", "+SUM(1,1).dcm", "-2+3.dcm", "@SUM(A1).dcm")
FORMULA_FOLDER = '=HYPERLINK("x","y")CAC_9'

HTTP_STATUS = {"too_large": 413, "too_complex": 422, "unreadable": 422, "": 200}


@dataclass(frozen=True)
class Case:
    """One hostile file and what cacxr must make of it.

    Attributes:
        id: issue item and variant, e.g. ``"1a-deflate-uid-beyond-4k"``.
        path: the file.
        reason: the one reason every command gives (``too_large``, ``too_complex``, ``unreadable``), or ""
            for a file that must stay usable.
        phrase: words the detail must contain besides the reason ("" for none).
        note: what the file is.
        corrupt: a corrupt codestream (item 12): the command may print at most one stderr line about it.
    """

    id: str
    path: Path
    reason: str
    phrase: str = ""
    note: str = ""
    corrupt: bool = False

    @property
    def status(self) -> int:
        """The service's answer: 413 for too_large, 422 for the other refusals, 200 for a usable file."""
        return HTTP_STATUS[self.reason]

    def matches(self, reason: str, detail: str) -> bool:
        """Whether a command's (reason, detail) is the one expected."""
        return reason == self.reason and self.phrase in detail


# --------------------------------------------------------------------------- 1. deflate bombs


@functools.cache
def _deflate_bomb_bytes(meta_padding: int) -> bytes:
    """A part-10 deflate bomb's bytes (built once per padding: compressing 320 MB takes seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        return hostile.deflate_bomb(
            Path(tmp) / "bomb.dcm", DEFLATE_INFLATED, meta_padding=meta_padding
        ).read_bytes()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _no_preamble() -> bytes:
    """The bomb with its file meta at byte 0: no 128-byte preamble, no "DICM"."""
    return _deflate_bomb_bytes(0)[132:]


def case_1a(folder: Path) -> Case:
    path = _write(folder / "deflate_uid_beyond_4k.dcm", _deflate_bomb_bytes(5000))
    return Case("1a-deflate-uid-beyond-4k", path, "too_large", note="TransferSyntaxUID after a 5 KB element")


def case_1b(folder: Path) -> Case:
    path = _write(folder / "deflate_no_preamble.dcm", _no_preamble())
    return Case(
        "1b-deflate-no-preamble", path, "too_large", note="file meta at byte 0 (no preamble, no DICM)"
    )


def case_1c(folder: Path) -> Case:
    data = bytearray(_deflate_bomb_bytes(0))
    assert data[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) UL, the group length, right after "DICM"
    struct.pack_into("<I", data, 132 + 8, 0xFFFFFFF0)
    path = _write(folder / "deflate_bad_group_length.dcm", bytes(data))
    return Case("1c-deflate-bad-group-length", path, "too_large", note="file-meta group length 0xFFFFFFF0")


def case_1d(folder: Path) -> Case:
    path = _write(folder / "exports" / "IM0001", _no_preamble())
    return Case("1d-deflate-no-suffix", path, "too_large", note="no preamble and no suffix, in a sub-folder")


# ------------------------------------------------------------ 2. offset tables, 3. tiles x components


def case_2(folder: Path) -> Case:
    path = hostile.extended_offset_table_bypass(folder)
    return Case("2-extended-offset-table", path, "too_large",
                note="fragment 1 a valid 64x64 J2K; the Extended Offset Table points at a 30000x30000 one")  # fmt: skip


def case_3(folder: Path) -> Case:
    path = hostile.j2k_components_bomb(folder)
    return Case("3-j2k-tiles-components", path, "too_large",
                note="J2K 7000x7000 (agreeing with Rows x Columns): 62,500 tiles x 64 components")  # fmt: skip


# -------------------------------------------------------------------------------- 4. RLE 588 MB


def rle_bomb(folder: Path, size: int = 7000) -> Path:
    """RLE Lossless size x size RGB, 32 bits per sample, that really decodes: 12 segments each one long run
    of zeros (2 bytes per 128 output bytes): ~9 MB on disk, 588 MB of output."""
    pixels = size * size
    runs, tail = divmod(pixels, 128)
    segment = b"\x81\x00" * runs + (bytes([257 - tail, 0]) if tail > 1 else b"\x00\x00" * tail)
    segment += b"\x00" * (len(segment) % 2)
    offsets = [64 + i * len(segment) for i in range(12)]
    frame = struct.pack("<16I", 12, *offsets, 0, 0, 0) + segment * 12
    ds = hostile.dataset(size, size, RLELossless, bits=32)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 1
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return hostile.save(ds, folder / "rle_bomb.dcm")


def case_4(folder: Path) -> Case:
    return Case("4-rle-588mb", rle_bomb(folder), "too_large", note="RLE 7000x7000 RGB 32-bit: 588 MB decoded")


# ------------------------------------------------------------------------------------ 5. CPU bombs

SCANS = 10_000  # 4096 x 4096: ~370 KB, 15 s of libjpeg CPU per decode on a quiet core


def case_5a(folder: Path) -> Case:
    path = folder / "scans.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(hostile.progressive_jpeg(4096, SCANS))
    return Case(
        "5a-progressive-jpeg", path, "too_complex", "scans", note=f"progressive JPEG, {SCANS:,} AC scans"
    )


def case_5b(folder: Path) -> Case:
    path = hostile.progressive_jpeg_dicom(folder, 4096, SCANS)
    return Case("5b-progressive-jpeg-dicom", path, "too_complex", "scans", note="the same in a JPEG DICOM")


def case_5c(folder: Path) -> Case:
    path = folder / "scans.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(hostile.progressive_jpeg(4096, SCANS))
    return Case("5c-progressive-jpeg-as-png", path, "too_complex", "scans", note="the same JPEG named .png")


# ----------------------------------------------------------------------------------------- 7. values


def _slope(case_id: str, text: str) -> Callable[[Path], Case]:
    def build(folder: Path) -> Case:
        return Case(case_id, hostile.slope(folder, text), "unreadable", "non-finite", f"RescaleSlope {text}")

    return build


def case_7d(folder: Path) -> Case:
    path = hostile.values_dicom(folder / "slope_0.dcm", RescaleSlope="0", RescaleIntercept="0")
    return Case("7d-slope-zero", path, "unreadable", "blank", "RescaleSlope 0: every pixel the same value")


def case_7e(folder: Path) -> Case:
    return Case("7e-voi-lut-huge-first", hostile.voi_lut_huge_first(folder), "unreadable", "blank",
                "VOI LUT whose first entry is 65535, the others <= 255")  # fmt: skip


# ----------------------------------------------------------------------- 8. a 2 GB declaration


def case_8(folder: Path) -> Case:
    return Case("8-declares-2gb", hostile.declares_2gb(folder), "unreadable", "declares",
                "a ~700-byte file whose private element declares 2 GB")  # fmt: skip


# ---------------------------------------------------------------------------- 11. formula names


def case_11(index: int) -> Callable[[Path], Case]:
    def build(folder: Path) -> Case:
        path = hostile.native_dicom(folder / FORMULA_NAMES[index])
        return Case(f"11{'abcd'[index]}-formula-name", path, "", note=f"a readable image named {path.name!r}")

    return build


# ------------------------------------------------------------------------- 12. corrupt codestreams


def case_12a(folder: Path) -> Case:
    return Case(
        "12a-corrupt-j2k", hostile.corrupt_j2k(folder), "unreadable", "cannot be decoded", corrupt=True
    )


def case_12b(folder: Path) -> Case:
    return Case("12b-corrupt-jpeg-ls", hostile.corrupt_jpeg_ls(folder), "unreadable", "cannot be decoded",
                corrupt=True)  # fmt: skip


def case_12c(folder: Path) -> Case:
    return Case(
        "12c-corrupt-rle", hostile.corrupt_rle(folder), "unreadable", "cannot be decoded", corrupt=True
    )


BUILDERS: dict[str, Callable[[Path], Case]] = {
    "1a": case_1a, "1b": case_1b, "1c": case_1c, "1d": case_1d,
    "2": case_2, "3": case_3, "4": case_4,
    "5a": case_5a, "5b": case_5b, "5c": case_5c,
    "7a": _slope("7a-slope-1e308", "1e308"), "7b": _slope("7b-slope-nan", "NaN"), "7c": _slope("7c-slope-inf", "inf"),
    "7d": case_7d, "7e": case_7e,
    "8": case_8,
    "11a": case_11(0), "11b": case_11(1), "11c": case_11(2), "11d": case_11(3),
    "12a": case_12a, "12b": case_12b, "12c": case_12c,
}  # fmt: skip


def every_case(folder: Path) -> Iterator[Case]:
    """Build every file case into its own sub-folder of ``folder`` (``folder/<key>/...``), one at a time."""
    for key, build in BUILDERS.items():
        yield build(folder / key)


# ----------------------------------------------------------------- 13. PatientID == folder (ingest)


def patient_id_is_folder(data: Path, patient: str) -> Case:
    """``data/<patient>/rx/corrupt_j2k.dcm`` whose PatientID is ``patient``: the detail must keep the path
    out without mangling it (no ``<removed>``, the phrase said once)."""
    path = hostile.corrupt_j2k(data / patient / "rx", patient_id=patient)
    return Case("13-patient-id-is-folder", path, "unreadable", "cannot be decoded", corrupt=True)
