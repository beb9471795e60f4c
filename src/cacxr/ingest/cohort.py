"""`cacxr stats`: describe a cohort (patients, sex, age, CAC distribution) as tables and plots.

The source is an ingest output (a folder holding manifest.csv, or a manifest.csv path), which describes
the patients whose images are used, or a DATA folder / label file, which describes the label table.
Outputs in the chosen folder: stats.md (Markdown table), stats.csv (one row per group), stats.json and
PNG histograms (CAC clipped at 2000, log(CAC + 1), age). Groups are ``all`` plus one per site when the
cohort has several.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cacxr.core import (
    AGATSTON_BANDS,
    CacxrError,
    agatston_band,
    csv_text,
    write_bytes,
    write_json,
    write_text,
)
from cacxr.ingest.inventory import DEFAULT_LABELS
from cacxr.ingest.labels import load_labels
from cacxr.ingest.manifest import read_manifest
from cacxr.ingest.rules import site_of
from cacxr.ingest.summary import distribution

__all__ = ["cohort_stats", "CohortPatient", "load_cohort", "describe", "MEASURES", "CAC_PLOT_CLIP"]

logger = logging.getLogger(__name__)

CAC_PLOT_CLIP = 2000.0  # the linear CAC histogram clips here (a few scores in the thousands flatten it)
_BAND_KEYS = ("band_0", "band_1_10", "band_11_100", "band_101_400", "band_gt400")

# measure key -> label in stats.md, in table order
MEASURES: dict[str, str] = {
    "n_patients": "patients",
    "n_male": "sex M",
    "n_female": "sex F",
    "n_sex_unknown": "sex unknown",
    "age_n": "patients with age",
    "age_mean": "age mean (years)",
    "age_min": "age min",
    "age_max": "age max",
    "cac_n": "patients with CAC",
    "cac_mean": "CAC mean",
    "cac_median": "CAC median",
    "cac_std": "CAC std (sample)",
    "cac_max": "CAC max",
    "share_cac_zero": "share CAC = 0",
    **{key: f"CAC band {band}" for key, band in zip(_BAND_KEYS, AGATSTON_BANDS, strict=True)},
}


@dataclass
class CohortPatient:
    """One patient as described by stats (no image, no identifying field)."""

    patient_id: str
    site: str
    sex: str
    age: float
    cac_score: float


def _is_manifest_csv(path: Path) -> bool:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), [])
    names = {h.strip().lower() for h in header}
    return {"patient_id", "path", "view_flag"} <= names  # a path table has patient_id and path too


def load_cohort(source: str | os.PathLike[str]) -> tuple[str, str, list[CohortPatient]]:
    """Read the patients to describe.

    Args:
        source: an ingest output folder (with manifest.csv), a manifest.csv, a DATA folder (with
            site.db) or a label file (site.db or labels CSV).

    Returns:
        ``(kind, description, patients)`` where kind is ``manifest`` or ``labels``.

    Raises:
        CacxrError: the source is missing or holds neither a manifest nor a label table.
    """
    path = Path(source)
    if not path.exists():
        raise CacxrError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "manifest.csv").is_file():
            path = path / "manifest.csv"
        elif (path / DEFAULT_LABELS).is_file():
            path = path / DEFAULT_LABELS
        else:
            raise CacxrError(
                f"{path}: neither an ingest output (manifest.csv) nor a DATA folder ({DEFAULT_LABELS})"
            )
    if path.suffix.lower() == ".csv" and _is_manifest_csv(path):
        rows = read_manifest(path)
        patients = [
            CohortPatient(r.patient_id, r.site or site_of(r.patient_id), r.sex, r.age, r.cac_score)
            for r in rows
        ]
        return "manifest", f"the {len(patients)} patients of {path} (images used after ingest)", patients
    table = load_labels(path)
    patients = [CohortPatient(r.patient_id, site_of(r.patient_id), r.sex, r.age, r.cac_score) for r in table]
    description = (
        f"the label table {path} ({len(patients)} usable rows of {len(table.rows)}); "
        "it describes the labels, not the ingested images (run `cacxr ingest` and describe its output for those)"
    )
    return "labels", description, patients


def _finite(values: list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def _number(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def describe(patients: list[CohortPatient]) -> dict[str, Any]:
    """The measures of ``MEASURES`` for one group of patients (undefined values are None).

    Args:
        patients: the group.

    Returns:
        measure key -> value; CAC measures over the patients with a known score, the standard deviation
        with ddof=1, bands as in ``cacxr.stats.metrics.agatston_band``.
    """
    ages = _finite([p.age for p in patients])
    cac = _finite([p.cac_score for p in patients])
    bands = np.bincount(agatston_band(cac), minlength=len(AGATSTON_BANDS)) if cac.size else np.zeros(5, int)
    result: dict[str, Any] = {
        "n_patients": len(patients),
        "n_male": sum(p.sex == "M" for p in patients),
        "n_female": sum(p.sex == "F" for p in patients),
        "n_sex_unknown": sum(p.sex not in ("M", "F") for p in patients),
        "age_n": int(ages.size),
        "age_mean": _number(ages.mean()) if ages.size else None,
        "age_min": _number(ages.min()) if ages.size else None,
        "age_max": _number(ages.max()) if ages.size else None,
        "cac_n": int(cac.size),
        "cac_mean": _number(cac.mean()) if cac.size else None,
        "cac_median": _number(float(np.median(cac))) if cac.size else None,
        "cac_std": _number(cac.std(ddof=1)) if cac.size > 1 else None,
        "cac_max": _number(cac.max()) if cac.size else None,
        "share_cac_zero": _number(bands[0] / cac.size) if cac.size else None,
    }
    result.update({key: int(n) for key, n in zip(_BAND_KEYS, bands, strict=True)})
    return result


def _format(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def _markdown(description: str, groups: dict[str, dict[str, Any]]) -> str:
    names = list(groups)
    lines = [
        "# Cohort statistics",
        "",
        f"Describes {description}.",
        "",
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for key, label in MEASURES.items():
        lines.append(f"| {label} | " + " | ".join(_format(groups[g][key]) for g in names) + " |")
    lines += [
        "",
        "Plots: cac_hist.png (CAC clipped at 2000), log_cac_hist.png (log(CAC + 1)), age_hist.png.",
        "",
    ]
    return "\n".join(lines)


def _csv(groups: dict[str, dict[str, Any]]) -> str:
    return csv_text(
        ["group", *MEASURES],
        ({"group": name, **{k: "" if values[k] is None else values[k] for k in MEASURES}} for name, values in groups.items()),
    )


def _histogram(path: Path, series: dict[str, np.ndarray], title: str, xlabel: str, bins: int = 30) -> None:
    """One PNG histogram, one overlaid series per group, written atomically (Agg, no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    filled = {name: values for name, values in series.items() if values.size}
    if filled:
        edges = np.histogram_bin_edges(np.concatenate(list(filled.values())), bins=bins)
        for name, values in filled.items():
            ax.hist(
                values, bins=edges, alpha=0.6 if len(filled) > 1 else 0.9, label=f"{name} (n={values.size})"
            )
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("patients")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes(path, buf.getvalue())


def cohort_stats(source: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a cohort into ``out``: stats.md, stats.csv, stats.json and PNG histograms.

    Args:
        source: an ingest output folder or manifest.csv (the patients used), or a DATA folder or label
            file (the label table).
        out: the folder to write into (created).

    Returns:
        The content of stats.json: ``kind``, ``description``, ``groups`` (``all`` and one per site when
        there are several; each as in ``describe``), ``files`` written.

    Raises:
        CacxrError: the source cannot be read (see ``load_cohort``) or holds no patient.
    """
    kind, description, patients = load_cohort(source)
    if not patients:
        raise CacxrError(f"{source}: no patients to describe")
    images = _image_origins(source) if kind == "manifest" else None
    out = Path(out)
    sites = sorted({p.site for p in patients})
    members = {"all": patients}
    if len(sites) > 1:
        members.update({site: [p for p in patients if p.site == site] for site in sites})
    groups = {name: describe(group) for name, group in members.items()}

    plot_groups = {name: group for name, group in members.items() if name != "all"} or members
    cac_of = {name: _finite([p.cac_score for p in group]) for name, group in plot_groups.items()}
    _histogram(
        out / "cac_hist.png",
        {n: np.minimum(v, CAC_PLOT_CLIP) for n, v in cac_of.items()},
        "CAC score (clipped at 2000)",
        "Agatston score",
    )
    _histogram(
        out / "log_cac_hist.png", {n: np.log1p(v) for n, v in cac_of.items()}, "log(CAC + 1)", "log(CAC + 1)"
    )
    _histogram(
        out / "age_hist.png",
        {n: _finite([p.age for p in group]) for n, group in plot_groups.items()},
        "Age at the radiograph",
        "years",
        bins=20,
    )
    markdown = _markdown(description, groups)
    if images is not None:
        gaps = images["ct_gap_days"]
        markdown += (
            "\n## Images\n\n"
            + "".join(f"- {fmt}: {n}\n" for fmt, n in images["formats"].items())
            + (f"- days from the CT: n {gaps['n']}, median {gaps['median']:g}, IQR {gaps['q1']:g} to {gaps['q3']:g}, "
               f"range {gaps['min']:g} to {gaps['max']:g}\n" if gaps["n"] else "- days from the CT: no dates\n")
        )  # fmt: skip
    write_text(out / "stats.md", markdown)
    write_text(out / "stats.csv", _csv(groups))
    files = ["stats.md", "stats.csv", "stats.json", "cac_hist.png", "log_cac_hist.png", "age_hist.png"]
    result = {
        "source": str(Path(source).absolute()),
        "kind": kind,
        "description": description,
        "bands": list(AGATSTON_BANDS),
        "groups": groups,
        **({"images": images} if images is not None else {}),
        "files": [str((out / f).absolute()) for f in files],
    }
    write_json(out / "stats.json", result)
    logger.info("stats: %d patients described into %s", len(patients), out)
    return result


def _image_origins(source: str | os.PathLike[str]) -> dict[str, Any]:
    """The kept images' formats and their distances to the CT (manifest columns source_format, ct_gap_days)."""
    path = Path(source)
    rows = read_manifest(path / "manifest.csv" if path.is_dir() else path)
    gaps = [row.ct_gap_days for row in rows if math.isfinite(row.ct_gap_days)]
    return {
        "formats": dict(sorted(Counter(row.source_format or "unknown" for row in rows).items())),
        "ct_gap_days": distribution(gaps),
    }
