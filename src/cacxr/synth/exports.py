"""A synthetic cohort exported as images (MIMIC-CXR-JPG / CheXpert style): PNG or JPEG files and labels.csv.

:func:`write_export` takes the plan of a clean cohort (``plan_cohort(..., faults=False)``: the same patients,
labels and anatomy as the DICOM cohort of the seed) and writes ``OUT/<patient>/<8 hex digits>.png|jpg``,
``OUT/labels.csv`` and ``OUT/synth_truth.json`` (:class:`cacxr.synth.export_truth.ExportTruth`).

Per patient, the CT date is the plan's radiograph date (so ``age`` is the plan's age) and the images are:
one frontal (PA or AP) within 60 days of the CT; other frontals 120 to 900 days before or after it (2 to 4
radiographs in all, at different dates); for about 30 % of patients a lateral within 30 days of the CT;
for about 10 % a CT slice saved as an image (dated on the CT day, no view); for about 5 % one extra frontal
120 to 900 days away, saved with inverted grey levels (bone dark). labels.csv shows the view of about half
the images. PNG files are 8-bit grey, about a quarter 16-bit grey; JPEG files 8-bit grey, about a tenth RGB.
Random streams are keyed by (seed, purpose, patient): which patients get a lateral, a CT slice or an
inverted frontal is drawn from the cohort's export stream, everything else from the patient's.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cacxr.core import write_bytes, write_text
from cacxr.synth.export_truth import (
    EXPORT_FORMATS,
    LABEL_COLUMNS,
    LABELS_FILE,
    MAX_DAYS,
    ExportImage,
    ExportPatient,
    ExportTruth,
    expected_kept,
)
from cacxr.synth.phantom import (
    render_ct_slice,
    render_frontal,
    render_lateral,
    sample_anatomy,
    sample_plaques,
    sample_pose,
)
from cacxr.synth.plan import IMAGE_STREAM, PLAQUE_STREAM, CohortPlan, PatientPlan

__all__ = ["EXPORT_STREAM", "write_export", "export_summary"]

EXPORT_STREAM = 6  # the seed's random stream for the export layout (plan.py uses 1 to 5)
_LATERAL_RATE, _CT_RATE, _INVERTED_RATE = 0.3, 0.1, 0.05
_NEAR_DAYS, _LATERAL_DAYS, _FAR_DAYS = MAX_DAYS, 30, (120, 900)
_VIEW_SHOWN = 0.5  # share of labels.csv rows whose view is filled
_WIDE_PNG, _RGB_JPEG = 0.25, 0.1
_SUFFIX = {"png": ".png", "jpeg": ".jpg"}
_CT_WINDOW = (-1000.0, 1000.0)  # HU mapped to black .. white for a CT slice saved as an image


@dataclass(frozen=True)
class _Shot:
    """One image of a patient as planned (before rendering)."""

    path: str
    kind: str  # frontal | lateral | ct
    true_view: str
    view: str  # as written in labels.csv
    gap_days: int
    inverted: bool
    mode: str  # L | I;16 | RGB


def _chosen(n: int, rate: float, rng: np.random.Generator) -> set[int]:
    """Positions of the patients that get a feature: round(n * rate) of them, at least one."""
    if n == 0:
        return set()
    return {int(i) for i in rng.permutation(n)[: max(1, round(n * rate))]}


def _name(seed: int, patient_id: str, k: int, taken: set[str]) -> str:
    """An 8-hex-digit file name from (seed, patient, k) that says nothing about the view."""
    salt = 0
    while True:
        digest = hashlib.sha256(f"{seed}:{patient_id}:{k}:{salt}".encode()).hexdigest()[:8]
        if digest not in taken:
            taken.add(digest)
            return digest
        salt += 1


def _plan_shots(
    p: PatientPlan, seed: int, image_format: str, lateral: bool, ct: bool, inverted: bool
) -> list[_Shot]:
    """The images of one patient, sorted by path (the order of labels.csv)."""
    rng = np.random.default_rng([seed, EXPORT_STREAM, p.index])
    radiographs = int(rng.integers(2, 5))
    far = max(0, radiographs - 1 - int(lateral) - int(inverted))
    used: set[int] = set()

    def gap(low: int, high: int, signed_far: bool) -> int:
        while True:  # radiographs at different dates
            days = int(rng.integers(low, high + 1))
            if signed_far and rng.random() < 0.5:
                days = -days
            if days not in used:
                used.add(days)
                return days

    def view() -> str:
        return "PA" if rng.random() < 0.75 else "AP"

    # (kind, true view, gap, inverted)
    planned = [("frontal", view(), gap(-_NEAR_DAYS, _NEAR_DAYS, False), False)]
    planned += [("frontal", view(), gap(*_FAR_DAYS, True), False) for _ in range(far)]
    if lateral:
        planned.append(("lateral", "LATERAL", gap(-_LATERAL_DAYS, _LATERAL_DAYS, False), False))
    if inverted:
        planned.append(("frontal", view(), gap(*_FAR_DAYS, True), True))
    if ct:
        planned.append(("ct", "", 0, False))
    taken: set[str] = set()
    shots = []
    for k, (kind, true_view, days, flipped) in enumerate(planned):
        shown = kind != "ct" and rng.random() < _VIEW_SHOWN
        if image_format == "png":
            mode = "I;16" if rng.random() < _WIDE_PNG else "L"
        else:
            mode = "RGB" if rng.random() < _RGB_JPEG else "L"
        name = _name(seed, p.patient_id, k, taken) + _SUFFIX[image_format]
        shots.append(
            _Shot(f"{p.patient_id}/{name}", kind, true_view, true_view if shown else "", days, flipped, mode)
        )
    return shots


def _encode(image: np.ndarray, mode: str, image_format: str) -> bytes:
    """A float image in [0, 1] as PNG or JPEG bytes, stored as ``mode``."""
    from PIL import Image

    image = np.clip(image, 0.0, 1.0)
    if mode == "I;16":
        pil = Image.fromarray(np.round(image * 65535).astype(np.uint16))
    else:
        grey = np.round(image * 255).astype(np.uint8)
        pil = Image.fromarray(np.stack([grey] * 3, axis=-1) if mode == "RGB" else grey)
    buffer = io.BytesIO()
    if image_format == "png":
        pil.save(buffer, format="PNG")
    else:
        pil.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@dataclass(frozen=True)
class _Job:
    out: str
    seed: int
    image_format: str
    signal: bool
    plaque_scale: float
    size: int
    patient: PatientPlan
    shots: tuple[_Shot, ...]


def _render_patient(job: _Job) -> tuple[str, int]:
    """Draw and write one patient's images; returns (id, plaques drawn on each frontal)."""
    p, out, size = job.patient, Path(job.out), job.size
    rng = np.random.default_rng([job.seed, IMAGE_STREAM, p.index])
    anat = sample_anatomy(rng, p.sex)
    plaques = sample_plaques(
        np.random.default_rng([job.seed, PLAQUE_STREAM, p.index]), p.cac, job.plaque_scale
    )
    drawn = plaques if job.signal else []
    domain = 1.0 if p.site == "external" else 0.0
    for shot in job.shots:
        if shot.kind == "frontal":
            image = render_frontal(anat, sample_pose(rng, shot.true_view, domain), size, rng, drawn).image
        elif shot.kind == "lateral":
            image = render_lateral(anat, sample_pose(rng, "LAT", domain), size, rng)
        else:
            low, high = _CT_WINDOW
            hu = render_ct_slice(size, 0.7, rng).astype(np.float32)
            image = (hu - low) / (high - low)
        if shot.inverted:
            image = 1.0 - image
        write_bytes(out / shot.path, _encode(image, shot.mode, job.image_format))
    return p.patient_id, len(drawn)


def _render_all(jobs: list[_Job], n_workers: int, bar: tqdm) -> dict[str, int]:
    """Render every patient (in worker threads, like the DICOM cohort); patient id -> plaques drawn."""
    n_plaques: dict[str, int] = {}
    if n_workers <= 1:
        for pid, count in map(_render_patient, jobs):
            n_plaques[pid] = count
            bar.update()
        return n_plaques
    with ThreadPoolExecutor(n_workers) as pool:
        for pid, count in pool.map(_render_patient, jobs):
            n_plaques[pid] = count
            bar.update()
    return n_plaques


def _labels_csv(plan: CohortPlan, shots: dict[str, list[_Shot]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS)
    for p in plan.patients:
        for s in shots[p.patient_id]:
            study = p.rx_date + timedelta(days=s.gap_days)
            writer.writerow(
                [p.patient_id, s.path, p.cac, p.sex, p.age, study.isoformat(), p.rx_date.isoformat(), s.view]
            )
    return buffer.getvalue()


def write_export(
    out: str | os.PathLike[str],
    plan: CohortPlan,
    image_format: str,
    signal: bool = True,
    progress: bool = True,
    workers: int | None = None,
    plaque_scale: float = 1.0,
) -> ExportTruth:
    """Write ``plan``'s patients as an image export: images, labels.csv, synth_truth.json.

    Args:
        out: the cohort folder (created; the caller checks that it is new or empty).
        plan: a clean plan (``plan_cohort(..., faults=False)``); its ``rx_date`` is each patient's CT date.
        image_format: ``"png"`` or ``"jpeg"``.
        signal: draw calcified plaques on the frontal images.
        progress: show a progress bar.
        workers: drawing threads (None: automatic; results do not depend on it).
        plaque_scale: plaque length and width relative to the standard cohort.

    Returns:
        The truth, also written to ``out/synth_truth.json``.
    """
    if image_format not in EXPORT_FORMATS:
        raise ValueError(f"image_format must be one of {EXPORT_FORMATS}, not {image_format!r}")
    out = Path(out)
    cohort_rng = np.random.default_rng([plan.seed, EXPORT_STREAM])
    n = len(plan.patients)
    lateral, ct, inverted = (
        _chosen(n, rate, cohort_rng) for rate in (_LATERAL_RATE, _CT_RATE, _INVERTED_RATE)
    )
    shots = {
        p.patient_id: sorted(
            _plan_shots(p, plan.seed, image_format, i in lateral, i in ct, i in inverted),
            key=lambda s: s.path,
        )
        for i, p in enumerate(plan.patients)
    }
    out.mkdir(parents=True, exist_ok=True)
    for p in plan.patients:
        (out / p.patient_id).mkdir(exist_ok=True)
    jobs = [
        _Job(
            str(out), plan.seed, image_format, signal, plaque_scale, plan.size, p, tuple(shots[p.patient_id])
        )
        for p in plan.patients
    ]
    n_workers = workers or min(os.cpu_count() or 1, 8, len(jobs))
    with tqdm(total=len(jobs), desc="synth", unit="patient", disable=not progress) as bar:
        n_plaques = _render_all(jobs, n_workers, bar)
    write_text(out / LABELS_FILE, _labels_csv(plan, shots))
    truth = _truth(plan, shots, image_format, signal, n_plaques)
    truth.write(out)
    return truth


def _truth(
    plan: CohortPlan,
    shots: dict[str, list[_Shot]],
    image_format: str,
    signal: bool,
    n_plaques: dict[str, int],
) -> ExportTruth:
    images: list[ExportImage] = []
    patients: list[ExportPatient] = []
    for p in plan.patients:
        mine = [
            ExportImage(
                path=s.path,
                patient_id=p.patient_id,
                site=p.site,
                kind=s.kind,
                view=s.view,
                true_view=s.true_view,
                study_date=(p.rx_date + timedelta(days=s.gap_days)).isoformat(),
                gap_days=s.gap_days,
                inverted=s.inverted,
                rows=plan.size,
                cols=plan.size,
                mode=s.mode,
            )
            for s in shots[p.patient_id]
        ]
        images += mine
        patients.append(
            ExportPatient(
                patient_id=p.patient_id,
                site=p.site,
                cac_score=p.cac,
                sex=p.sex,
                age=p.age,
                ct_date=p.rx_date.isoformat(),
                expected_kept_within_60_days=expected_kept(mine, MAX_DAYS),
                n_plaques=n_plaques.get(p.patient_id, 0),
                images=[img.path for img in mine],
            )
        )
    return ExportTruth(
        format=image_format,
        seed=plan.seed,
        size=plan.size,
        patients=plan.n_internal,
        external=plan.n_external,
        signal=signal,
        max_days=MAX_DAYS,
        images=images,
        patient_truth=patients,
    )


def export_summary(truth: ExportTruth) -> str:
    """One line describing an export cohort (for the command line)."""
    kinds = [img.kind for img in truth.images]
    cac = [p.cac_score for p in truth.patient_truth]
    return (
        f"{truth.patients} internal + {truth.external} external patients, {len(truth.images)} "
        f"{truth.format.upper()} images ({kinds.count('frontal')} frontal, {kinds.count('lateral')} lateral, "
        f"{kinds.count('ct')} CT slices, {sum(img.inverted for img in truth.images)} inverted) in "
        f"{LABELS_FILE}; {sum(1 for c in cac if c == 0)} of {len(cac)} patients with CAC 0; "
        f"{len(truth.kept())} patients with a frontal within {truth.max_days} days of the CT; "
        f"plaques {'drawn' if truth.signal else 'not drawn'}"
    )
