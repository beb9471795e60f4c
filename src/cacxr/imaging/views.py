"""The view of a radiograph from its header: frontal (PA, AP, NN), lateral, or unknown."""

from __future__ import annotations

from cacxr.imaging.meta import ImageMeta

__all__ = ["FRONTAL_VIEWS", "LATERAL_VIEWS", "LATERAL_WORDS", "FRONTAL_WORDS", "is_lateral", "is_frontal"]

FRONTAL_VIEWS = frozenset({"PA", "AP", "NN", "FRONTAL"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LATERALE", "RLAT", "LLAT"})
# Word tokens in SeriesDescription / ProtocolName / ViewCodeSequence meanings.
LATERAL_WORDS = LATERAL_VIEWS | {"LATERO", "LATEROMEDIAL", "MEDIOLATERAL"}
FRONTAL_WORDS = frozenset({"PA", "AP", "FRONTAL", "POSTERO", "ANTERO", "POSTEROANTERIOR", "ANTEROPOSTERIOR"})


def is_lateral(meta: ImageMeta) -> bool:
    """Whether the image is a lateral view: ViewPosition lateral, or empty with a lateral description.

    Args:
        meta: the file's metadata.

    Returns:
        True for LL, RL, LAT, LATERAL, LATERALE, RLAT, LLAT, or an empty ViewPosition whose
        ``view_hint`` is "lateral".
    """
    return meta.view in LATERAL_VIEWS or (meta.view == "" and meta.view_hint == "lateral")


def is_frontal(meta: ImageMeta) -> bool:
    """Whether ViewPosition names a frontal view (PA, AP, NN, FRONTAL).

    An empty ViewPosition is an unknown view even when ``view_hint`` says "frontal" (the ingest rules
    decide what to do with unknown views); callers that want the hint can read ``meta.view_hint``.

    Args:
        meta: the file's metadata.

    Returns:
        True when ``meta.view`` is in :data:`FRONTAL_VIEWS`.
    """
    return meta.view in FRONTAL_VIEWS
