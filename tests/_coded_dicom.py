"""Test helper: small grey DICOM files in a chosen transfer syntax (JPEG 2000, HTJ2K, JPEG baseline, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    generate_uid,
)

HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"


def radiograph_like(rows: int, cols: int, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A smooth chest-like picture with mild noise: stored values in ``bits`` bits (uint16 or uint8)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    y /= rows
    x /= cols
    body = np.exp(-(((x - 0.5) / 0.35) ** 2 + ((y - 0.55) / 0.45) ** 2))
    lungs = np.exp(-(((x - 0.32) / 0.1) ** 2 + ((y - 0.5) / 0.25) ** 2)) + np.exp(
        -(((x - 0.68) / 0.1) ** 2 + ((y - 0.5) / 0.25) ** 2)
    )
    ribs = 0.08 * (np.sin(y * 60.0) > 0.7)
    picture = 0.15 + 0.6 * body - 0.35 * lungs + ribs + rng.normal(0, 0.01, (rows, cols))
    top = (1 << bits) - 1
    values = np.clip(picture, 0, 1) * top
    return values.astype(np.uint8 if bits <= 8 else np.uint16)


def write_coded_dicom(path: Path, pixels: np.ndarray, syntax: str, **attrs: Any) -> Path:
    """Write grey ``pixels`` as a CR DICOM in ``syntax`` (uncompressed, J2K lossless/lossy, HTJ2K, JPEG baseline).

    ``BitsStored`` defaults to the container size (pass ``BitsStored=12`` for 12-bit data); other keyword
    arguments become data elements.
    """
    import imagecodecs

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = int(attrs.pop("BitsStored", ds.BitsAllocated))
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    if syntax == ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = pixels.tobytes()
    elif syntax in (JPEG2000Lossless, JPEG2000):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = pixels.tobytes()
        kwargs = {} if syntax == JPEG2000Lossless else {"j2k_cr": [10]}
        ds.compress(syntax, pixels, **kwargs)
    elif syntax == HTJ2K_LOSSLESS:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([imagecodecs.htj2k_encode(pixels, level=0)])
    elif syntax == JPEGBaseline8Bit:
        assert pixels.dtype == np.uint8
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(pixels, level=92)])
    else:
        raise ValueError(f"no encoder for {syntax} in this helper")
    if syntax != ExplicitVRLittleEndian:
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path
