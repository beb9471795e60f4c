"""A synthetic cohort in the seed layout: site.db, CAC_xxx/rx/*.dcm, with the archive's faults.

:func:`make_cohort` renders and writes the plan of :func:`cacxr.synth.plan.plan_cohort`, one patient per
task (in worker threads), and writes synth_truth.json with what ingest must make of it. With
``image_format="png"`` or ``"jpeg"`` it writes the clean plan as an image export instead
(:func:`cacxr.synth.exports.write_export`: ``<patient>/<name>.png|jpg`` and labels.csv).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cacxr.core import CacxrError, atomic_path, write_bytes
from cacxr.synth.encoding import (
    Header,
    ct_dataset,
    encode,
    metadata_dataset,
    radiograph_dataset,
    stable_uid,
    write_dataset,
)
from cacxr.synth.export_truth import EXPORT_FORMATS, ExportTruth
from cacxr.synth.exports import export_summary, write_export
from cacxr.synth.phantom import (
    render_ct_slice,
    render_frontal,
    render_lateral,
    sample_anatomy,
    sample_plaques,
    sample_pose,
)
from cacxr.synth.plan import IMAGE_STREAM, PLAQUE_STREAM, PatientPlan, plan_cohort
from cacxr.synth.truth import (
    TRUTH_FILE,
    LabelTruth,
    SynthTruth,
)

__all__ = ["COHORT_FORMATS", "make_cohort", "summary"]

COHORT_FORMATS = ("dicom", *EXPORT_FORMATS)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    out: str
    seed: int
    signal: bool
    patient: PatientPlan
    plaque_scale: float = 1.0


def _render_patient(job: _Job) -> tuple[str, int, int]:
    """Draw and write one patient's files; returns (id, plaques, plaque pixels of the main image)."""
    p, out = job.patient, Path(job.out)
    rng = np.random.default_rng([job.seed, IMAGE_STREAM, p.index])
    anat = sample_anatomy(rng, p.sex)
    plaques = sample_plaques(np.random.default_rng([job.seed, PLAQUE_STREAM, p.index]), p.cac, job.plaque_scale)
    drawn = plaques if job.signal else []
    domain = 1.0 if p.site == "external" else 0.0
    study_uid = stable_uid(job.seed, p.patient_id, "study")
    n_plaques = plaque_pixels = 0
    for series, f in sorted(enumerate(p.files, start=1), key=lambda item: item[1].acquisition):
        header = Header(
            patient_id=f.header_patient_id,
            patient_name=p.name,
            birth=p.birth,
            sex=p.sex,
            study_date=p.rx_date,
            study_uid=stable_uid(job.seed, p.patient_id, "ct-study") if f.kind == "ct" else study_uid,
            series_uid=stable_uid(job.seed, f.path, "series"),
            sop_uid=stable_uid(job.seed, f.path, "instance"),
            modality=f.modality,
            view=f.view,
            description=f.description,
            age=p.age if f.with_age else None,
            institution=f"Synthetic {p.site} hospital",
            instance_number=1 if f.kind != "ct" else f.acquisition,
            series_number=series,
        )
        target = out / f.path
        if f.kind == "metadata":
            write_dataset(metadata_dataset(header), target)
        elif f.kind == "ct":
            hu = render_ct_slice(f.rows, 0.3 + 0.2 * f.acquisition, rng)
            write_dataset(ct_dataset(hu, header, f.acquisition), target)
        elif f.kind == "lateral":
            image = render_lateral(anat, sample_pose(rng, "LAT", domain), f.rows, rng)
            write_dataset(radiograph_dataset(image, f.style, header), target, f.style.encoding)
        else:
            shot = render_frontal(anat, sample_pose(rng, f.view or "PA", domain), f.rows, rng, drawn)
            pixels = shot.image
            if f.frames > 1:  # e.g. a dual-energy pair: the same exposure processed twice
                pixels = np.stack([shot.image, shot.image**1.4])
            ds = radiograph_dataset(pixels, f.style, header, reference=shot.background)
            if f.kind == "truncated":
                data = encode(ds, f.style.encoding)
                write_bytes(target, data[: len(data) - f.rows * f.cols])  # cut halfway into the pixels
            else:
                write_dataset(ds, target, f.style.encoding)
            if f.acquisition == 0:
                n_plaques, plaque_pixels = len(drawn), int(shot.plaque_mask.sum())
    return p.patient_id, n_plaques, plaque_pixels


def _write_site_db(path: Path, labels: list[LabelTruth]) -> None:
    """site.db with the seed's schema; written beside and renamed, so it is whole or absent."""
    with atomic_path(path) as tmp:
        con = sqlite3.connect(tmp)
        try:
            con.execute("CREATE TABLE patient(id TEXT, cac_score REAL, sex TEXT, birth TEXT, rx_date TEXT)")
            con.executemany(
                "INSERT INTO patient(rowid, id, cac_score, sex, birth, rx_date) VALUES (?, ?, ?, ?, ?, ?)",
                [(r.row, r.label_id, r.cac_score, r.sex, r.birth, r.rx_date) for r in labels],
            )
            con.commit()
        finally:
            con.close()


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CacxrError(f"{out}: exists and is not a folder; give a new folder for the cohort")
    if out.is_dir() and any(out.iterdir()):
        hint = ""
        if (out / "site.db").exists() and not (out / TRUTH_FILE).exists():
            hint = " (it looks like an interrupted synth run: delete it and run again)"
        raise CacxrError(
            f"{out}: folder exists and is not empty; synth never overwrites, give a new or empty folder{hint}"
        )


def make_cohort(
    out: str | os.PathLike[str],
    patients: int,
    external: int = 0,
    seed: int = 0,
    size: int = 512,
    faults: bool = True,
    signal: bool = True,
    progress: bool = True,
    workers: int | None = None,
    plaque_scale: float = 1.0,
    image_format: str = "dicom",
) -> SynthTruth | ExportTruth:
    """Write a synthetic cohort: ``out/site.db``, ``out/<patient>/rx/*.dcm``, synth_truth.json.

    With ``image_format`` ``"png"`` or ``"jpeg"``: the same patients (as with ``faults=False``) exported as
    images, ``out/<patient>/<name>.png|jpg``, ``out/labels.csv`` and synth_truth.json (an
    :class:`~cacxr.synth.export_truth.ExportTruth`); ``faults`` is ignored (faults are DICOM-layout only).

    Args:
        out: a new or empty folder.
        patients: internal patients (``CAC_001``...).
        external: external patients (``XYZ_101``...), labelled in the same site.db.
        seed: same seed, same labels and pixels (and UIDs).
        size: rows and columns of the main radiographs (>= 32).
        faults: add the archive's faults (see :data:`FAULTS`); without them every patient has one
            clean labelled frontal image and one label row.
        signal: draw calcified plaques (``False``: the same images without any, a negative control).
        progress: show a progress bar.
        workers: threads to draw with (None: automatic; results do not depend on it).
        plaque_scale: plaque length and width relative to the standard cohort (1); the demo draws larger
            plaques so that a small CNN sees them at a low resolution. The labels do not change.
        image_format: ``"dicom"`` (the seed layout), ``"png"`` or ``"jpeg"`` (an image export).

    Returns:
        The truth, also written to ``out/synth_truth.json``.

    Raises:
        CacxrError: bad counts, size or format, or ``out`` exists and is not an empty folder.
    """
    if patients < 0 or external < 0 or patients + external < 1:
        raise CacxrError(
            f"--patients {patients} --external {external}: need at least one patient, no negative counts"
        )
    if size < 32:
        raise CacxrError(f"--size {size}: too small to draw a chest (use 32 or more pixels)")
    if seed < 0:
        raise CacxrError(f"--seed {seed}: must be 0 or more")
    if not 0 < plaque_scale <= 10:
        raise CacxrError(f"--plaque-scale {plaque_scale}: must be in (0, 10]")
    if image_format not in COHORT_FORMATS:
        raise CacxrError(f"--format {image_format}: must be one of {', '.join(COHORT_FORMATS)}")
    out = Path(out)
    _check_out(out)
    if image_format != "dicom":
        clean = plan_cohort(patients, external, seed, size, faults=False)
        return write_export(out, clean, image_format, signal, progress, workers, plaque_scale)
    plan = plan_cohort(patients, external, seed, size, faults)
    out.mkdir(parents=True, exist_ok=True)
    _write_site_db(out / "site.db", plan.labels)
    jobs = [_Job(str(out), seed, signal, p, plaque_scale) for p in plan.patients]
    n_workers = workers or min(os.cpu_count() or 1, 8, len(jobs))
    bar = tqdm(total=len(jobs), desc="synth", unit="patient", disable=not progress)
    plaques: dict[str, tuple[int, int]] = {}
    codec_log = logging.getLogger("openjpeg")  # logs every tile at INFO; quiet it while we encode
    codec_level = codec_log.level
    codec_log.setLevel(max(codec_level, logging.WARNING))
    try:
        if n_workers <= 1:
            results = map(_render_patient, jobs)
            for pid, n, pixels in results:
                plaques[pid] = (n, pixels)
                bar.update()
        else:
            # threads: OpenCV, numpy and the DICOM codecs do the heavy work outside the GIL, and
            # threads need neither a __main__ guard in the caller nor pickling
            with ThreadPoolExecutor(n_workers) as pool:
                for pid, n, pixels in pool.map(_render_patient, jobs):
                    plaques[pid] = (n, pixels)
                    bar.update()
    finally:
        bar.close()
        codec_log.setLevel(codec_level)
    truth = plan.truth(signal=signal, plaques=plaques)
    truth.write(out)
    logger.debug("synth: %s", summary(truth))
    return truth


def summary(truth: SynthTruth | ExportTruth) -> str:
    """One line describing a cohort (for the command line)."""
    if isinstance(truth, ExportTruth):
        return export_summary(truth)
    cac = [p.cac_score for p in truth.patient_truth if p.cac_score is not None]
    zero = sum(1 for c in cac if c == 0)
    kept = len(truth.manifest("internal"))
    return (
        f"{truth.patients} internal + {truth.external} external patients, {len(truth.files)} DICOM files, "
        f"{len(truth.labels)} label rows ({zero} of {len(cac)} labelled patients with CAC 0, "
        f"max CAC {max(cac, default=0):.0f}); {kept} images usable with --site internal; "
        f"faults {'on' if truth.faults else 'off'}, plaques {'drawn' if truth.signal else 'not drawn'}"
    )
