"""Hostile files of issue 21 (items 7, 8, 12, 13), each a few KB, built into a folder by the tests.

Adapted from the issue's groundwork (hostile_files.py beside NOTES.md): corrupt codestreams whose headers
pass every check, grey-level values that overflow or flatten the image, and a small file declaring a 2 GB
element.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def dataset(rows: int = 64, cols: int = 64, syntax: str = ExplicitVRLittleEndian, bits: int = 8,
            patient_id: str = "") -> Dataset:  # fmt: skip
    """A minimal DX frontal image data set (no pixel data yet)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = DX
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = DX, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition = "DX", "PA"
    if patient_id:
        ds.PatientID = patient_id
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def native_dicom(path: Path, rows: int = 64, cols: int = 64, patient_id: str = "") -> Path:
    """An ordinary, readable 8-bit native DICOM (a gradient): the control file."""
    ds = dataset(rows, cols, patient_id=patient_id)
    ds.PixelData = (np.arange(rows * cols) % 251).astype(np.uint8).tobytes()
    return save(ds, path)


def encapsulated(path: Path, syntax: str, fragment: bytes, patient_id: str = "") -> Path:
    ds = dataset(64, 64, syntax, patient_id=patient_id)
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    return save(ds, path)


# ------------------------------------------------------------------------ 12. corrupt codestreams


def corrupt_j2k(folder: Path, patient_id: str = "") -> Path:
    """A valid 64x64 SIZ (passes every header check) followed by scrambled tile data."""
    import imagecodecs

    good = bytearray(imagecodecs.jpeg2k_encode((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64),
                                               level=0, codecformat="J2K"))  # fmt: skip
    sod = good.find(b"\xff\x93")
    good[sod + 2 :] = bytes((i * 37 + 11) % 256 for i in range(len(good) - sod - 2))
    return encapsulated(folder / "corrupt_j2k.dcm", JPEG2000Lossless, bytes(good), patient_id)


def corrupt_jpeg_ls(folder: Path) -> Path:
    """A valid 64x64 SOF55, then a garbage scan."""
    sof55 = b"\xff\xf7" + struct.pack(">HBHHB", 11, 8, 64, 64, 1) + b"\x01\x11\x00"
    stream = b"\xff\xd8" + sof55 + b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00" + bytes(range(256)) * 2 + b"\xff\xd9"
    return encapsulated(folder / "corrupt_jpegls.dcm", JPEGLSLossless, stream)


def corrupt_rle(folder: Path) -> Path:
    """An RLE segment shorter than Rows x Columns."""
    frame = struct.pack("<16I", 1, 64, *([0] * 14)) + b"\x7f" + bytes(3)
    return encapsulated(folder / "corrupt_rle.dcm", RLELossless, frame)


# ------------------------------------------------------------------------------------- 7. values


def values_dicom(path: Path, **attrs) -> Path:
    """A 12-bit native image with extra attributes (e.g. RescaleSlope, VOILUTSequence)."""
    ds = dataset(64, 64, bits=16)
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = ((np.arange(64 * 64) * 7) % 4096).astype(np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return save(ds, path)


def slope(folder: Path, text: str) -> Path:
    """RescaleSlope written as ``text`` (rewritten in the file: pydicom refuses NaN/inf on assignment)."""
    path = values_dicom(folder / f"slope_{text}.dcm", RescaleSlope="7.777777", RescaleIntercept="0")
    data = path.read_bytes()
    assert data.count(b"7.777777") == 1
    path.write_bytes(data.replace(b"7.777777", text.encode().ljust(8)))
    return path


def voi_lut_huge_first(folder: Path) -> Path:
    """A VOI LUT whose first entry is 65535 while the others are <= 255: one entry sets the LUT's range."""
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    data = np.arange(4096, dtype=np.uint16) // 16
    data[0] = 65535
    lut.LUTData = data.tobytes()
    lut["LUTData"].VR = "OW"
    return values_dicom(folder / "voi_lut_huge.dcm", VOILUTSequence=[lut])


# --------------------------------------------------------------------------- 8. a 2 GB declaration


def declares_2gb(folder: Path, length: int = 0x7FFFFFF0) -> Path:
    """A ~700-byte file whose private OB element declares ``length`` bytes; the file ends inside it."""
    ds = dataset()
    ds.PixelData = bytes(64 * 64)
    path = save(ds, folder / "declares_2gb.dcm")
    data = path.read_bytes()
    at = data.find(struct.pack("<HH", 0x0018, 0x5101))  # ViewPosition: the first element after group 8
    assert at > 0
    element = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 4) + b"ACME"
    element += struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, length) + bytes(200)
    path.write_bytes(data[:at] + element)
    return path


# -------------------------------------------------------------------------------- 4. RLE allocation


def rle_bomb_header(folder: Path, size: int = 7000) -> Path:
    """RLE Lossless declaring size x size x 3 samples x 32 bits (12 segments); the pixel data is a stub."""
    ds = dataset(size, size, RLELossless, bits=32)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 1
    header = struct.pack("<16I", 12, *[64 + i for i in range(12)], 0, 0, 0)
    ds.PixelData = encapsulate([header + bytes([0x81, 0]) * 12])
    ds["PixelData"].VR = "OB"
    return save(ds, folder / "rle_bomb.dcm")


# --------------------------------------------------------------------- 1. deflate bombs past the cap


def deflate_bomb(path: Path, inflated: int, preamble: bool = True, meta_padding: int = 0) -> Path:
    """A deflated DICOM inflating to ``inflated`` bytes (zero padding), a few hundred times smaller on disk.

    ``meta_padding`` grows FileMetaInformationVersion so the TransferSyntaxUID lies beyond the first 4 KB;
    without ``preamble`` the file meta group starts at byte 0.
    """
    import io
    import zlib

    import pydicom
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = dataset(syntax=DeflatedExplicitVRLittleEndian)
    ds.PixelData = (np.arange(64 * 64) % 251).astype(np.uint8).tobytes()
    meta = FileMetaDataset(ds.file_meta)
    meta.FileMetaInformationVersion = b"\x00\x01" + bytes(meta_padding)
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    head = io.BytesIO()
    write_file_meta_info(head, meta, enforce_standard=True)
    body = io.BytesIO()
    plain = Dataset(ds)
    plain.file_meta = FileMetaDataset()
    pydicom.dcmwrite(body, plain, implicit_vr=False, little_endian=True, enforce_file_format=False)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(body.getvalue())]
    parts.append(deflater.compress(struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, inflated)))
    chunk = bytes(1 << 22)
    for start in range(0, inflated, len(chunk)):
        parts.append(deflater.compress(chunk[: min(len(chunk), inflated - start)]))
    parts.append(deflater.flush())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((bytes(128) + b"DICM" if preamble else b"") + head.getvalue() + b"".join(parts))
    return path


# --------------------------------------------------------------- 2. offset tables, 3. tiles x components


def j2k_header_only(size: int, tile: int, components: int) -> bytes:
    """SOC, SIZ (size x size, tile x tile tiles, ``components`` 8-bit components), COD, QCD, one empty
    tile-part, EOC: a few hundred bytes declaring size**2 * components samples."""
    siz = struct.pack(">HIIIIIIIIH", 0, size, size, 0, 0, tile, tile, 0, 0, components) + b"\x07\x01\x01" * components
    siz = b"\xff\x51" + struct.pack(">H", len(siz) + 2) + siz
    cod_body = bytes([0, 0]) + struct.pack(">H", 1) + bytes([0, 0, 4, 4, 0, 1])
    cod = b"\xff\x52" + struct.pack(">H", len(cod_body) + 2) + cod_body
    qcd = b"\xff\x5c" + struct.pack(">H", 4) + bytes([0x40, 0x40])
    tile_data = bytes(components)
    sot = b"\xff\x90" + struct.pack(">HHIBB", 10, 0, 12 + 2 + len(tile_data), 0, 1)
    return b"\xff\x4f" + siz + cod + qcd + sot + b"\xff\x93" + tile_data + b"\xff\xd9"


def j2k_components_bomb(folder: Path, size: int = 7000, tile: int = 28, components: int = 64) -> Path:
    """Rows x Columns agree with the SIZ (7000 x 7000, below 50 MP), but 64 components in 62,500 tiles."""
    ds = dataset(size, size, JPEG2000Lossless)
    ds.PixelData = encapsulate([j2k_header_only(size, tile, components)])
    ds["PixelData"].VR = "OB"
    return save(ds, folder / "j2k_components.dcm")


def extended_offset_table_bypass(folder: Path, huge: int = 30000) -> Path:
    """Fragment 1 a valid 64x64 J2K; the Extended Offset Table sends the decoder to fragment 2 (huge x huge)."""
    import imagecodecs

    good = bytes(imagecodecs.jpeg2k_encode((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64),
                                           level=0, codecformat="J2K"))  # fmt: skip
    good += b"\x00" * (len(good) % 2)
    bomb = j2k_header_only(huge, huge, 1)
    ds = dataset(64, 64, JPEG2000Lossless)
    ds.PixelData = encapsulate([good, bomb], has_bot=False)
    ds["PixelData"].VR = "OB"
    ds.ExtendedOffsetTable = struct.pack("<Q", len(good) + 8)
    ds.ExtendedOffsetTableLengths = struct.pack("<Q", len(bomb))
    return save(ds, folder / "eot_bypass.dcm")


# ------------------------------------------------------------------------------------ 5. CPU bombs


def progressive_jpeg(size: int = 512, scans: int = 200) -> bytes:
    """A grey progressive JPEG of size x size whose AC scan is repeated ``scans`` times.

    Each AC scan is a few bytes (EOBRUN symbols) but makes libjpeg visit every block: the work is
    blocks x scans while the file stays small (4096 x 4096 with 10,000 scans: 373 KB, 15 s of CPU).
    """
    blocks = (size // 8) ** 2
    dqt = b"\xff\xdb" + struct.pack(">HB", 67, 0) + bytes([1] * 64)
    sof2 = b"\xff\xc2" + struct.pack(">HBHHB", 11, 8, size, size, 1) + bytes([1, 0x11, 0])
    dht_dc = b"\xff\xc4" + struct.pack(">HB", 2 + 1 + 16 + 1, 0x00) + bytes([1] + [0] * 15) + bytes([0])
    dht_ac = b"\xff\xc4" + struct.pack(">HB", 2 + 1 + 16 + 1, 0x10) + bytes([1] + [0] * 15) + bytes([0xE0])

    def sos(ss: int, se: int) -> bytes:
        return b"\xff\xda" + struct.pack(">HB", 8, 1) + bytes([1, 0, ss, se, 0])

    def pack_bits(bits: str) -> bytes:
        bits += "1" * (-len(bits) % 8)
        return int(bits, 2).to_bytes(len(bits) // 8, "big").replace(b"\xff", b"\xff\x00")

    dc_scan = sos(0, 0) + pack_bits("0" * blocks)
    runs, bits = blocks, ""
    while runs > 0:
        run = min(runs, 32767)
        bits += "0" + format(max(run - 16384, 0), "014b")
        runs -= run
    ac_scan = sos(1, 63) + pack_bits(bits)
    return b"\xff\xd8" + dqt + sof2 + dht_dc + dht_ac + dc_scan + ac_scan * scans + b"\xff\xd9"


def progressive_jpeg_dicom(folder: Path, size: int = 512, scans: int = 200) -> Path:
    """The same codestream in a JPEG Baseline DICOM (Rows/Columns agreeing)."""
    from pydicom.uid import JPEGBaseline8Bit

    ds = dataset(size, size, JPEGBaseline8Bit)
    ds.PixelData = encapsulate([progressive_jpeg(size, scans)])
    ds["PixelData"].VR = "OB"
    return save(ds, folder / "scans_jpeg.dcm")


# ------------------------------------------------- 3, 4. frame headers and segment tables that lie


def jpeg_frame(precision: int = 8, components: int = 1, length: int | None = None, size: int = 64) -> bytes:
    """A JPEG codestream whose SOF0 declares ``components`` components of ``precision`` bits (``length``:
    the segment length the header claims; the true one is 8 + 3 x components), then a stub scan."""
    body = struct.pack(">BHHB", precision, size, size, components) + b"".join(
        bytes([i + 1, 0x11, 0]) for i in range(components)
    )
    sof = b"\xff\xc0" + struct.pack(">H", length if length is not None else 2 + len(body)) + body
    return b"\xff\xd8" + sof + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + bytes(16) + b"\xff\xd9"


def jpeg_frame_dicom(folder: Path, name: str, **frame) -> Path:
    from pydicom.uid import JPEGBaseline8Bit

    return encapsulated(folder / f"{name}.dcm", JPEGBaseline8Bit, jpeg_frame(**frame))


def rle_segment_mismatch(folder: Path, declared: int = 12) -> Path:
    """A 16-bit grey RLE data set (2 segments expected) whose frame header declares ``declared`` segments."""
    ds = dataset(64, 64, RLELossless, bits=16)
    header = struct.pack("<16I", declared, *[64 + 2 * i for i in range(declared)], *([0] * (15 - declared)))
    ds.PixelData = encapsulate([header + bytes([0x81, 0]) * declared])
    ds["PixelData"].VR = "OB"
    return save(ds, folder / f"rle_{declared}_segments.dcm")


def big_native(path: Path, size: int = 4000) -> Path:
    """An ordinary 16-bit native image of size x size: 32 MB stored, 64 MB as float32 (over a 48 MiB worker cap)."""
    ds = dataset(size, size, bits=16)
    ds.PixelData = (np.arange(size * size, dtype=np.uint32) % 4096).astype(np.uint16).tobytes()
    return save(ds, path)
