"""What a view-gate verdict means for an image: the one rule ingest, predict and serve follow (no torch here).

What the file records wins, and the pixels decide what it does not record: a view in the DICOM header or
the path table decides the view, and a radiograph Modality (CR, DX, DR, RG, PX) decides that the file is a
radiograph; a verdict that contradicts them is flagged for review rather than obeyed, because the header
was written at acquisition while the gate is a statistical model (docs/viewgate.md gives its error rates).
Without them (image exports; DICOM with Modality OT or none, or no view) the gate's verdict is used. An export (PNG/JPEG) the gate finds
inverted is inverted back; a DICOM never is, since its PhotometricInterpretation already says how to show it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "HEADER_CONTRADICTS_IMAGE",
    "PROJECTION_MODALITIES",
    "VIEW_FROM_IMAGE",
    "GateDecision",
    "GateVerdict",
    "decide",
]


@dataclass(frozen=True)
class GateVerdict:
    """What the gate says of one image.

    Attributes:
        content: one of :data:`CONTENTS`.
        inverted: the grey scale looks inverted (bone dark).
        probabilities: per content class (they sum to 1).
        inverted_probability: the inverted flag's probability.
        version: the gate that decided (``viewgate-1+<hash of weights and rule>``).
    """

    content: str
    inverted: bool
    probabilities: dict[str, float]
    inverted_probability: float
    version: str

    def describe(self) -> str:
        """``frontal (p 0.98)``, ``lateral (p 0.91), inverted``: for messages and CSV cells."""
        text = f"{self.content} (p {self.probabilities[self.content]:.2f})"
        return text + (", inverted" if self.inverted else "")


VIEW_FROM_IMAGE = "view_from_image"  # no recorded view: the gate read it from the pixels
HEADER_CONTRADICTS_IMAGE = "header_contradicts_image"  # the recorded view or modality wins; flagged for review
# Modalities whose header establishes a projection radiograph (OT and an empty Modality do not).
PROJECTION_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "PX"})


@dataclass(frozen=True)
class GateDecision:
    """What ingest, predict and serve do with a verdict (one rule for all of them).

    Attributes:
        reason: "" (usable), ``not_radiograph`` or ``lateral_view``.
        detail: why, naming the gate's verdict and version.
        frontal: the image is used as a frontal radiograph.
        flag: "", :data:`VIEW_FROM_IMAGE` or :data:`HEADER_CONTRADICTS_IMAGE`.
        invert: the grey scale must be inverted back before preprocessing (exports only).
    """

    reason: str
    detail: str
    frontal: bool
    flag: str
    invert: bool


def decide(verdict: GateVerdict, recorded_view: str, source_format: str, modality: str = "") -> GateDecision:
    """The documented rule: what the file records wins; the pixels decide what it does not record.

    Args:
        verdict: the gate's verdict on the image.
        recorded_view: ``frontal``, ``lateral`` or "" from the DICOM header or the path table's ``view``.
        source_format: ``dicom``, ``png`` or ``jpeg``: only an export is inverted back (a DICOM's
            PhotometricInterpretation already says how to display it).
        modality: the DICOM Modality ("" for exports); CR, DX, DR, RG or PX records a radiograph.

    Returns:
        The decision: a recorded lateral, or no recorded view and a lateral verdict -> ``lateral_view``;
        a not-a-radiograph verdict on a file that records no radiograph modality -> ``not_radiograph``;
        a recorded frontal stays frontal; no recorded view and a frontal verdict -> frontal from the image.
        A verdict that contradicts what the file records is flagged (:data:`HEADER_CONTRADICTS_IMAGE`).
    """
    described = f"{verdict.describe()}, {verdict.version}"
    invert = verdict.inverted and source_format != "dicom"
    recorded_radiograph = modality in PROJECTION_MODALITIES
    if recorded_view == "lateral":
        return GateDecision("lateral_view", f"recorded view: lateral (gate: {described})", False, "", False)
    if verdict.content == "not_radiograph" and not recorded_radiograph:
        return GateDecision("not_radiograph", f"image: not a chest radiograph by the view gate ({described})",
                            False, "", False)  # fmt: skip
    if recorded_view == "frontal":
        flag = HEADER_CONTRADICTS_IMAGE if verdict.content != "frontal" else ""
        return GateDecision("", "", True, flag, invert)
    if verdict.content == "lateral":
        return GateDecision("lateral_view", f"image: lateral by the view gate ({described})", False, "", False)
    if verdict.content == "not_radiograph":  # a recorded radiograph modality without a view: unknown view
        return GateDecision("", "", False, HEADER_CONTRADICTS_IMAGE, invert)
    return GateDecision("", "", True, VIEW_FROM_IMAGE, invert)
