"""The plan of a synthetic cohort: every patient, label row, fault and file, decided from the seed alone.

:func:`plan_cohort` touches no disk (:func:`cacxr.synth.cohort.make_cohort` renders and writes the plan).
Random streams are keyed by (seed, purpose, patient), so the labels of a seed are the same with or without
faults and plaques, whatever the number of workers. ``CohortPlan.truth`` applies the ingest rules to the
plan: what ingest must make of every file and label row.

Why one module of ~560 lines: the plan's records, the fault table and the draws that fill them share the
seed's random streams; split apart, the rules deciding a fault would be spread over modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import date, timedelta

import numpy as np

from cacxr.core import age_in_years
from cacxr.synth.encoding import (
    DicomStyle,
)
from cacxr.synth.truth import (
    SITES,
    FileTruth,
    LabelTruth,
    PatientTruth,
    SynthTruth,
    file_reasons,
    id_key,
    label_reasons,
)

__all__ = ["FAULTS", "IMAGE_STREAM", "PLAQUE_STREAM", "FilePlan", "PatientPlan", "CohortPlan", "plan_cohort"]



# Random streams of the seed, one per purpose (a patient's streams add its index).
LABEL_STREAM, FAULT_STREAM, STYLE_STREAM, IMAGE_STREAM, PLAQUE_STREAM = 1, 2, 3, 4, 5
_FIRST_RX, _LAST_RX = date(2014, 1, 1), date(2023, 12, 31)

# Faults of the original cohort (docs/DESIGN.md) and a few more the ingest rules name. Each one is
# given to its own patients, at least once per cohort of internal patients when there is room.
FAULTS: dict[str, str] = {
    "missing_label": "images but no row in site.db",
    "padded_id": "site.db spells the id with other zero padding or case (CAC_30 for CAC_030)",
    "corrected_label": "a wrong row plus a <id>_corr row that holds the right CAC",
    "lateral_LL": "an extra lateral view with ViewPosition LL",
    "lateral_LAT": "an extra lateral view with ViewPosition LAT",
    "lateral_LATERALE": "an extra lateral view with ViewPosition LATERALE",
    "lateral_description": "an extra lateral view with an empty ViewPosition and 'LATERAL' in SeriesDescription",
    "metadata_file": "an extra DICOM object without pixel data (a small SR)",
    "ct_folder": "a ct/ folder of CT slices beside rx/",
    "two_frontals": "two frontal images (PA beats AP; else more pixels; else path order)",
    "empty_view_only": "the only image has an empty ViewPosition (kept, flagged view_assumed_frontal)",
    "empty_view_with_frontal": "an extra image with an empty ViewPosition beside a frontal (unknown_view)",
    "header_id_mismatch": "the header's PatientID is a hospital number, not the folder name",
    "two_digit_year": "rx_date written with a two-digit year (DD.MM.YY)",
    "truncated_file": "an extra frontal file cut off inside its pixel data (unreadable)",
    "duplicate_label": "a second plain row for the same id, with another CAC (the first wins)",
    "multi_frame": "an extra two-frame DX file",
}
# share of internal patients per fault (at least one each while patients remain)
_INTERNAL_RATES: dict[str, float] = {
    "missing_label": 0.03,
    "padded_id": 0.03,
    "corrected_label": 0.02,
    "lateral_LL": 0.02,
    "lateral_LAT": 0.02,
    "lateral_LATERALE": 0.015,
    "lateral_description": 0.01,
    "metadata_file": 0.04,
    "ct_folder": 0.03,
    "two_frontals": 0.03,
    "empty_view_only": 0.01,
    "empty_view_with_frontal": 0.01,
    "header_id_mismatch": 0.02,
    "two_digit_year": 0.02,
    "truncated_file": 0.005,
    "duplicate_label": 0.01,
    "multi_frame": 0.01,
}
# the other hospital gets a few faults too, only in proportion (none in a small external set)
_EXTERNAL_RATES: dict[str, float] = {
    "missing_label": 0.05,
    "lateral_LAT": 0.05,
    "two_frontals": 0.05,
    "metadata_file": 0.03,
}
_ORPHAN_RATE = 0.03  # label rows for ids without a folder
_LATERAL_VIEW = {
    "lateral_LL": "LL",
    "lateral_LAT": "LAT",
    "lateral_LATERALE": "LATERALE",
    "lateral_description": "",
}
_SURNAMES = (
    "MUSTERMANN", "ROSSI", "MARTIN", "NOVAK", "JANSSEN", "GARCIA", "MUELLER", "BERNARD",
    "KOWALSKI", "SILVA", "NILSSON", "DUBOIS", "HANSEN", "FISCHER", "COSTA", "SMITH",
)  # fmt: skip
_GIVEN = {
    "F": ("ANNA", "MARIA", "ELENA", "SOFIA", "CLARA", "INGRID", "LUCIA", "GRETA"),
    "M": ("PETER", "MARCO", "JAN", "LUKAS", "PIERRE", "TOMAS", "ERIK", "JOHN"),
}


@dataclass
class FilePlan:
    """One file to write under a patient folder."""

    path: str  # relative to the cohort folder
    kind: str  # frontal | lateral | metadata | ct | multi_frame | truncated
    view: str | None
    description: str
    modality: str
    style: DicomStyle
    rows: int
    cols: int
    acquisition: int  # 0: the patient's main exposure; others get their own pose
    header_patient_id: str
    frames: int = 1
    with_age: bool = False
    view_locked: bool = False  # a fault fixed the view: style coverage must not change it


@dataclass
class PatientPlan:
    """One patient folder: demographics, true CAC, faults and files."""

    index: int  # keys the patient's random streams
    patient_id: str
    site: str
    sex: str
    birth: date
    rx_date: date
    cac: float
    name: str
    faults: list[str] = field(default_factory=list)
    files: list[FilePlan] = field(default_factory=list)

    @property
    def age(self) -> int:
        """Whole years from birth to the radiograph."""
        return age_in_years(self.birth, self.rx_date)


@dataclass
class CohortPlan:
    """Everything :func:`make_cohort` will write, decided from the seed."""

    seed: int
    size: int
    n_internal: int
    n_external: int
    faults: bool
    patients: list[PatientPlan]
    labels: list[LabelTruth]

    def truth(self, signal: bool = True, plaques: dict[str, tuple[int, int]] | None = None) -> SynthTruth:
        """Apply the ingest rules to this plan.

        Args:
            signal: whether plaques are drawn (recorded in the truth).
            plaques: patient id -> (number of plaques, plaque pixels) of its main image.

        Returns:
            The truth, with expected reasons for every file and label row and for every site.
        """
        files = [_file_truth(p, f) for p in self.patients for f in p.files]
        # which folders have a usable label does not depend on the site
        _, winners = label_reasons(self.labels, kept_patients=set())
        labelled = set(winners)
        labels = [replace(row) for row in self.labels]
        for site in SITES:
            decided = file_reasons(files, labelled, site)
            for f in files:
                reason, flag = decided[f.path]
                setattr(f, f"expected_reason_{site}", reason)
                if site == "all":
                    f.view_flag = flag
            kept = {f.patient_id for f in files if decided[f.path][0] == ""}
            row_reasons, _ = label_reasons(self.labels, kept)
            for row in labels:
                setattr(row, f"expected_reason_{site}", row_reasons[row.row])
        patients = []
        for p in self.patients:
            win = winners.get(p.patient_id)
            n, pixels = (plaques or {}).get(p.patient_id, (0, 0))
            main = next(f.path for f in p.files if f.acquisition == 0)
            patients.append(
                PatientTruth(
                    patient_id=p.patient_id,
                    site=p.site,
                    cac_score=None if win is None else win.cac_score,
                    sex=p.sex if win is not None else "",
                    age=p.age if win is not None else None,
                    n_plaques=n,
                    plaque_pixels=pixels,
                    main_image=main,
                    faults=list(p.faults),
                )
            )
        return SynthTruth(
            seed=self.seed,
            size=self.size,
            patients=self.n_internal,
            external=self.n_external,
            faults=self.faults,
            signal=signal,
            files=files,
            labels=labels,
            patient_truth=patients,
            id_fixes=_id_fixes(labels),
        )


def _file_truth(p: PatientPlan, f: FilePlan) -> FileTruth:
    return FileTruth(
        path=f.path,
        patient_id=p.patient_id,
        site=p.site,
        kind=f.kind,
        view=f.view,
        description=f.description,
        modality=f.modality,
        has_pixels=f.kind != "metadata",
        decodable=f.kind != "truncated",
        frames=f.frames,
        rows=f.rows,
        cols=f.cols,
        photometric="" if f.kind == "metadata" else f.style.photometric,
        bits_stored=0 if f.kind == "metadata" else f.style.bits_stored,
        encoding=f.style.encoding,
        header_id_mismatch=f.header_patient_id != p.patient_id,
    )


def _id_fixes(labels: list[LabelTruth]) -> list[dict[str, str]]:
    fixes = []
    for row in labels:
        if not row.patient_id or row.label_id == row.patient_id:
            continue
        fix = "corr" if row.label_id.lower().endswith("_corr") else "padding"
        fixes.append({"label_id": row.label_id, "patient_id": row.patient_id, "fix": fix})
    return fixes



def _demographics(rng: np.random.Generator) -> tuple[str, int, date, date, float]:
    """Sex, age, birth, rx_date and CAC of one patient (CAC > 0 more likely when older and male)."""
    sex = "M" if rng.random() < 0.5 else "F"
    age = int(rng.integers(40, 81))
    rx = _FIRST_RX + timedelta(days=int(rng.integers(0, (_LAST_RX - _FIRST_RX).days + 1)))
    anniversary = date(rx.year - age, rx.month, min(rx.day, 28))
    birth = anniversary - timedelta(days=int(rng.integers(0, 365)))
    # logit of P(CAC > 0): 0.6 on average, rising with age and for men
    logit = math.log(0.6 / 0.4) + 0.06 * (age - 60) + 0.5 * (0.5 if sex == "M" else -0.5)
    positive = rng.random() < 1 / (1 + math.exp(-logit))
    # positives: log-normal, median ~100, a tail into the thousands
    cac = float(np.clip(np.round(math.exp(rng.normal(math.log(100), 1.45)), 1), 1.0, 9000.0))
    return sex, age, birth, rx, cac if positive else 0.0


def _date_text(d: date, rng: np.random.Generator, varied: bool) -> str:
    """ISO mostly; the formats of the ingest rules now and then."""
    if not varied:
        return d.isoformat()
    pick = rng.random()
    if pick < 0.1:
        return d.strftime("%d.%m.%Y")
    if pick < 0.2:
        return d.strftime("%d/%m/%Y")
    return d.isoformat()


def _draw_style(rng: np.random.Generator, site: str, clean: bool) -> DicomStyle:
    external = site == "external"
    if clean:
        encoding = str(rng.choice(["explicit", "implicit"], p=[0.85, 0.15]))
        photometric = "MONOCHROME2"
    else:
        encoding = str(
            rng.choice(
                ["explicit", "implicit", "no_preamble", "no_meta", "rle", "j2k"],
                p=[0.62, 0.13, 0.06, 0.04, 0.07, 0.08],
            )
        )
        photometric = "MONOCHROME1" if rng.random() < (0.3 if external else 0.15) else "MONOCHROME2"
    bits_p = [0.05, 0.25, 0.3, 0.4] if external else [0.15, 0.45, 0.25, 0.15]
    bits = int(rng.choice([10, 12, 14, 16], p=bits_p))
    voi = str(rng.choice(["window", "lut", "none"], p=[0.6, 0.15, 0.25]))
    rescale = None
    if voi != "lut" and rng.random() < 0.2:
        rescale = [(1.0, -1024.0), (0.5, 0.0), (2.0, 100.0), (1.0, 0.0)][int(rng.integers(0, 4))]
    return DicomStyle(
        encoding=encoding,
        bits_stored=bits,
        photometric=photometric,
        voi=voi,
        rescale=rescale,
        low=float(rng.uniform(0.0, 0.06)),
        high=float(rng.uniform(0.85, 0.98)),
    )


def _draw_view(rng: np.random.Generator, clean: bool) -> str:
    if clean:
        return "PA" if rng.random() < 0.75 else "AP"
    return str(rng.choice(["PA", "AP", "NN"], p=[0.7, 0.22, 0.08]))


def _frontal_description(view: str) -> str:
    return {"PA": "THORAX PA", "AP": "THORAX AP LIEGEND", "NN": "THORAX"}.get(view, "THORAX")


def _assign_faults(n: int, rates: dict[str, float], rng: np.random.Generator, minimum: int) -> dict[int, str]:
    """Patient position -> fault, each fault on its own patients, in the order of ``rates``."""
    order = rng.permutation(n)
    assigned: dict[int, str] = {}
    cursor = 0
    for fault, rate in rates.items():
        for _ in range(max(minimum, round(n * rate))):
            if cursor >= n:
                return assigned
            assigned[int(order[cursor])] = fault
            cursor += 1
    return assigned


def _patient_files(
    p: PatientPlan, fault: str, size: int, rng: np.random.Generator, clean: bool
) -> list[FilePlan]:
    """The files of one patient: a main frontal image plus whatever its fault adds."""
    rx = f"{p.patient_id}/rx"
    view = _draw_view(rng, clean)

    def radiograph(name: str, kind: str, view_: str | None, acquisition: int, **kw) -> FilePlan:
        style = _draw_style(rng, p.site, clean)
        if kind in ("truncated", "multi_frame"):
            style = replace(style, encoding="explicit")  # cut / multi-frame files stay uncompressed
        rows = kw.pop("rows", size)
        desc = kw.pop("description", _frontal_description(view_ or ""))
        return FilePlan(
            path=f"{rx}/{name}",
            kind=kind,
            view=view_,
            description=desc,
            modality=str(rng.choice(["DX", "CR"], p=[0.6, 0.4])),
            style=style,
            rows=rows,
            cols=rows,
            acquisition=acquisition,
            header_patient_id=p.patient_id,
            with_age=bool(rng.random() < 0.5),
            **kw,
        )

    main = radiograph("IM-0001-0001.dcm", "frontal", view, 0)
    files = [main]
    if fault in _LATERAL_VIEW:
        lat_view = _LATERAL_VIEW[fault]
        files.append(radiograph("IM-0002-0001.dcm", "lateral", lat_view, 1, description="THORAX LATERAL"))
    elif fault == "metadata_file":
        files.append(_plain(p, f"{rx}/IM-0003-0001.dcm", "metadata", "SR", 0, 1))
    elif fault == "ct_folder":
        ct_size = min(size, 512)
        files += [
            _plain(p, f"{p.patient_id}/ct/IM-0001-{k:04d}.dcm", "ct", "CT", ct_size, k) for k in (1, 2, 3)
        ]
    elif fault == "two_frontals":
        variant = int(rng.integers(0, 3))
        main.view_locked = True
        if variant == 0:  # PA beats AP, though the AP file sorts first
            main.view, main.description = "PA", _frontal_description("PA")
            main.path = f"{rx}/IM-0002-0001.dcm"
            files.insert(0, radiograph("IM-0001-0001.dcm", "frontal", "AP", 1, view_locked=True))
        elif variant == 1:  # same view: the larger image wins, though the smaller sorts first
            main.path = f"{rx}/IM-0002-0001.dcm"
            small = radiograph("IM-0001-0001.dcm", "frontal", main.view, 1, rows=max(32, round(size * 0.75)))
            small.view_locked = True
            files.insert(0, small)
        else:  # same view and size: the first path wins
            files.append(radiograph("IM-0002-0001.dcm", "frontal", main.view, 1, view_locked=True))
    elif fault == "empty_view_only":
        main.view, main.description, main.view_locked = "", "THORAX", True
    elif fault == "empty_view_with_frontal":
        files.append(radiograph("IM-0002-0001.dcm", "frontal", "", 1, description="THORAX", view_locked=True))
    elif fault == "header_id_mismatch":
        main.header_patient_id = f"{int(rng.integers(10_000_000, 99_999_999))}"
    elif fault == "truncated_file":
        files.append(radiograph("IM-0002-0001.dcm", "truncated", "PA", 1, view_locked=True))
    elif fault == "multi_frame":
        half = max(32, size // 2)
        files.append(
            radiograph("IM-0002-0001.dcm", "multi_frame", "PA", 1, rows=half, frames=2, view_locked=True)
        )
    return files


def _plain(p: PatientPlan, path: str, kind: str, modality: str, size: int, acquisition: int) -> FilePlan:
    """A file without a radiograph style of its own (metadata object, CT slice)."""
    return FilePlan(
        path=path,
        kind=kind,
        view=None,
        description="CT THORAX" if kind == "ct" else "EXPOSURE RECORD",
        modality=modality,
        style=DicomStyle(encoding="explicit", bits_stored=12),
        rows=size,
        cols=size,
        acquisition=acquisition,
        header_patient_id=p.patient_id,
        view_locked=True,
    )


def _ensure_variety(patients: list[PatientPlan], rng: np.random.Generator) -> None:
    """Give every storage variant to at least one main image (cohorts of >= 30 patients have room)."""
    mains = [f for p in patients for f in p.files if f.acquisition == 0 and f.kind == "frontal"]
    if not mains:
        return
    order = [mains[i] for i in rng.permutation(len(mains))]
    cursor = 0
    wanted = [
        ("encoding", ["explicit", "implicit", "no_preamble", "no_meta", "rle", "j2k"]),
        ("bits_stored", [10, 12, 14, 16]),
        ("photometric", ["MONOCHROME1", "MONOCHROME2"]),
        ("voi", ["window", "lut", "none"]),
        ("rescale", [(2.0, 100.0)]),
    ]
    for attr, values in wanted:
        present = {getattr(f.style, attr) for f in mains}
        for value in values:
            if value in present:
                continue
            target = order[cursor % len(order)]
            cursor += 1
            style = replace(target.style, **{attr: value})
            if attr == "voi" and value == "lut":
                style = replace(style, rescale=None)
            if attr == "rescale":
                style = replace(style, voi="window")
            target.style = style
    for attr, values in (
        ("modality", ["CR", "DX"]),
        ("view", ["PA", "AP", "NN"]),
        ("with_age", [True, False]),
    ):
        present = {getattr(f, attr) for f in mains}
        for value in values:
            free = [f for f in order if not f.view_locked] if attr == "view" else order
            if value in present or not free:
                continue
            target = free[cursor % len(free)]
            cursor += 1
            setattr(target, attr, value)
            if attr == "view":
                target.description = _frontal_description(value)


def _padded_variant(patient_id: str, k: int) -> str:
    """Another spelling of ``patient_id`` that matches it by (prefix, number)."""
    prefix, number = id_key(patient_id) or (patient_id, 0)
    digits = patient_id[len(prefix) :]
    candidates = [f"{prefix}{number}", f"{prefix}0{digits}", f"{prefix.lower()}0{digits}"]
    candidates = [c for c in candidates if c != patient_id]
    return candidates[k % len(candidates)]


def plan_cohort(
    patients: int, external: int = 0, seed: int = 0, size: int = 512, faults: bool = True
) -> CohortPlan:
    """Decide a cohort's labels, faults, files and storage styles (no disk access).

    Args:
        patients: internal patients (folders ``CAC_001``...).
        external: external patients (folders ``XYZ_101``...), labelled in the same site.db.
        seed: the cohort seed.
        size: rows and columns of the main radiographs.
        faults: add the archive's faults; without them every patient has exactly one clean,
            labelled frontal image and one label row.

    Returns:
        The plan.
    """
    label_rng = np.random.default_rng([seed, LABEL_STREAM])
    fault_rng = np.random.default_rng([seed, FAULT_STREAM])
    style_rng = np.random.default_rng([seed, STYLE_STREAM])
    width = max(3, len(str(patients)))
    ids = [f"CAC_{i:0{width}d}" for i in range(1, patients + 1)]
    ids += [f"XYZ_{100 + i:03d}" for i in range(1, external + 1)]
    plans: list[PatientPlan] = []
    for index, pid in enumerate(ids):
        sex, _, birth, rx, cac = _demographics(label_rng)
        name = f"{label_rng.choice(_SURNAMES)}^{label_rng.choice(_GIVEN[sex])}"
        site = "internal" if "CAC" in pid else "external"
        plans.append(PatientPlan(index, pid, site, sex, birth, rx, cac, name))
    internal, outside = plans[:patients], plans[patients:]
    fault_of: dict[str, str] = {}
    if faults:
        for group, rates, minimum in ((internal, _INTERNAL_RATES, 1), (outside, _EXTERNAL_RATES, 0)):
            for pos, fault in _assign_faults(len(group), rates, fault_rng, minimum).items():
                fault_of[group[pos].patient_id] = fault
    for p in plans:
        fault = fault_of.get(p.patient_id, "")
        if fault:
            p.faults.append(fault)
        p.files = _patient_files(p, fault, size, style_rng, clean=not faults)
    if faults:
        _ensure_variety(internal, style_rng)
    labels = _plan_labels(plans, patients, width, faults, label_rng)
    return CohortPlan(seed, size, patients, external, faults, plans, labels)


def _plan_labels(
    plans: list[PatientPlan], n_internal: int, width: int, faults: bool, rng: np.random.Generator
) -> list[LabelTruth]:
    """site.db rows: one per labelled patient, then orphans, corrections and duplicates."""
    rows: list[dict] = []
    appended: list[dict] = []
    padded = 0
    for p in plans:
        fault = p.faults[0] if p.faults else ""
        if fault == "missing_label":
            continue
        base = {
            "cac_score": p.cac,
            "sex": p.sex,
            "birth": _date_text(p.birth, rng, faults),
            "rx_date": _date_text(p.rx_date, rng, faults),
            "patient_id": p.patient_id,
            "site": p.site,
            "label_id": p.patient_id,
        }
        if fault == "two_digit_year":
            base["rx_date"] = p.rx_date.strftime("%d.%m.%y")
        if fault == "padded_id":
            base["label_id"] = _padded_variant(p.patient_id, padded)
            padded += 1
        if fault == "corrected_label":
            wrong = 0.0 if p.cac > 0 else float(np.round(math.exp(rng.normal(math.log(150), 1.0)), 1))
            rows.append({**base, "cac_score": wrong})
            appended.append({**base, "label_id": f"{p.patient_id}_corr"})
            continue
        if fault == "duplicate_label":
            other = float(np.round(p.cac * rng.uniform(1.5, 3.0) + rng.uniform(5, 50), 1))
            appended.append({**base, "cac_score": other})
        rows.append(base)
    if faults and n_internal > 0:
        n_orphans = max(1, round(n_internal * _ORPHAN_RATE))
        for k in range(n_orphans + 1):
            sex, _, birth, rx, cac = _demographics(rng)
            orphan = {
                "label_id": f"CAC_{n_internal + 1 + k:0{width}d}",
                "cac_score": None if k == n_orphans else cac,  # the last one: an empty score
                "sex": sex,
                "birth": birth.isoformat(),
                "rx_date": rx.isoformat(),
                "patient_id": "",
                "site": "internal",
            }
            rows.insert(int(rng.integers(0, len(rows) + 1)), orphan)
    return [LabelTruth(row=i, **r) for i, r in enumerate(rows + appended, start=1)]
