"""Which decoder pydicom uses for each compressed transfer syntax: the fastest well-kept one installed.

Measured on one 2048 x 2048 12-bit radiograph (2-core machine, best of 3; ``benchmarks/bench_preprocess.py
--codecs`` repeats the measurement):

=================  ==============================================  ======================================
syntax             chosen (first available)                        alternatives measured
=================  ==============================================  ======================================
JPEG-LS            ``pyjpegls`` (CharLS): 86 ms                    pylibjpeg-libjpeg 339 ms, imagecodecs
                                                                   96 ms
JPEG 2000          ``imagecodecs`` (OpenJPEG, threaded): 272 ms    pylibjpeg-openjpeg 495 ms, Pillow
                   with 2 threads, 574 ms with one                 527 ms (neither has threads)
RLE                ``pylibjpeg`` (pylibjpeg-rle): 12 ms            pydicom's own decoder 159 ms
=================  ==============================================  ======================================

Without a preference pydicom takes the first installed plugin in its own order, which for JPEG-LS is
the slow pylibjpeg-libjpeg. :func:`decoding_plugin` names the plugin to pass to
``Dataset.pixel_array_options(decoding_plugin=...)``; it falls back along the list when a package is
missing, and to pydicom's own choice ("") when none of the preferred ones is installed.

The imagecodecs JPEG 2000 decoder is not one of pydicom's plugins: this module is also that plugin
(``is_available``, ``DECODER_DEPENDENCIES`` and ``decode_frame``, pydicom's decoder plugin interface),
registered on first use. It uses OpenJPEG's threads in a main process (predict, serve, a one-process
store build) and one thread in pool workers (the store and ingest already run one process per core).
"""

from __future__ import annotations

import os
import threading
from typing import Any

__all__ = [
    "DECODER_DEPENDENCIES",
    "PREFERENCES",
    "decode_frame",
    "decoding_plugin",
    "is_available",
]

_JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
_JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
_RLE = "1.2.840.10008.1.2.5"

# Transfer syntax UID -> plugin labels, fastest first (see the module docstring for the figures).
PREFERENCES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(_JPEG_LS, ("pyjpegls", "pylibjpeg")),
    **dict.fromkeys(_JPEG_2000, ("imagecodecs", "pylibjpeg", "pillow")),
    _RLE: ("pylibjpeg", "pydicom"),
}
# pydicom's plugin interface: what the imagecodecs plugin needs, per syntax.
DECODER_DEPENDENCIES: dict[str, tuple[str, ...]] = dict.fromkeys(_JPEG_2000, ("numpy", "imagecodecs"))
_MAX_THREADS = 4  # OpenJPEG's gain flattens beyond a few threads on one radiograph
_registered: dict[str, bool] = {}  # pydicom's plugin lists are process-wide: register once per process
_lock = threading.Lock()


def is_available(uid: str) -> bool:
    """pydicom plugin interface: whether imagecodecs can decode ``uid`` here."""
    import importlib.util

    return uid in DECODER_DEPENDENCIES and importlib.util.find_spec("imagecodecs") is not None


def decode_frame(src: bytes, runner: Any) -> bytes:
    """pydicom plugin interface: one JPEG 2000 frame decoded by imagecodecs, with OpenJPEG's threads.

    Args:
        src: the frame's codestream (already checked by ``cacxr.imaging.codestream``).
        runner: pydicom's ``DecodeRunner`` (its options are updated to describe the returned bytes).

    Returns:
        The decoded pixels, colour-by-pixel, in a container sized by the codestream's precision.
    """
    import imagecodecs

    frame = imagecodecs.jpeg2k_decode(src, numthreads=_threads())
    runner.set_option("bits_allocated", frame.dtype.itemsize * 8)
    if frame.ndim == 3:
        runner.set_option("planar_configuration", 0)
        # OpenJPEG applies the inverse multi-component transform: YBR_ICT / YBR_RCT come out as RGB.
        if runner.photometric_interpretation in ("YBR_ICT", "YBR_RCT"):
            runner.set_option("photometric_interpretation", "RGB")
    return frame.tobytes()


def _threads() -> int:
    """OpenJPEG threads: the cores, up to 4, in a main process; 1 in a pool worker (one per core already)."""
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(_MAX_THREADS, cores))


def decoding_plugin(transfer_syntax: str) -> str:
    """The pydicom decoding plugin to use for ``transfer_syntax``: the first preferred one installed.

    Args:
        transfer_syntax: the data set's transfer syntax UID.

    Returns:
        A plugin label for ``pixel_array_options(decoding_plugin=...)``, or "" to let pydicom choose
        (uncompressed data, or none of the preferred plugins installed).
    """
    preferred = PREFERENCES.get(str(transfer_syntax))
    if not preferred:
        return ""
    from pydicom.pixels.decoders.base import get_decoder

    decoder = get_decoder(str(transfer_syntax))
    if "imagecodecs" in preferred:
        _register(decoder)
    available = decoder.available_plugins
    return next((label for label in preferred if label in available), "")


def _register(decoder: Any) -> None:
    """Add this module as the ``imagecodecs`` plugin of ``decoder`` (once per process and syntax)."""
    uid = str(decoder.UID)
    with _lock:
        if uid in _registered:
            return
        _registered[uid] = True
        if "imagecodecs" not in decoder.available_plugins and is_available(uid):
            decoder.add_plugin("imagecodecs", (__name__, "decode_frame"))
