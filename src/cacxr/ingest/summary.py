"""ingest.json: what an ingest did, in counts (reasons, sites, formats, the view gate, the CT window, id fixes) and the rules it applied."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cacxr import __version__
from cacxr.ingest.labels import LabelRow, LabelTable
from cacxr.ingest.manifest import (
    EXCLUSION_REASONS,
    OUTPUTS,
    ExcludedRow,
    ManifestRow,
)
from cacxr.ingest.rules import (
    HEADER_CONTRADICTS_IMAGE,
    INVERTED_CORRECTED,
    RULES,
    VIEW_ASSUMED_FRONTAL,
    VIEW_FROM_IMAGE,
    FileRecord,
)

__all__ = ["count_values", "ingest_summary", "distribution"]



def count_values(values: Iterable[str]) -> dict[str, int]:
    counter = Counter(values)
    return {key: counter[key] for key in sorted(counter)}


def ingest_summary(
    *,
    data: Path,
    out: Path,
    label_path: Path,
    table: LabelTable,
    site: str,
    decode_check: bool,
    workers: int,
    n_candidates: int,
    ignored: int,
    records: list[FileRecord],
    manifest_rows: list[ManifestRow],
    excluded_rows: list[ExcludedRow],
    label_of: dict[str, LabelRow],
    padding_fixes: list[dict[str, Any]],
    site_rule: str,
    max_days: int | None,
    gate: bool,
) -> dict[str, Any]:
    """The content of ingest.json."""
    counts = Counter(r.reason for r in excluded_rows)
    mismatch = Counter(r.patient_id for r in records if r.header_id_matches is False)
    header_fixes = [
        {"fix": "header_patient_id_ignored", "patient_id": folder, "files": n}
        for folder, n in sorted(mismatch.items())
    ]
    folder_of = {row.raw_id: folder for folder, row in label_of.items()}
    corr_fixes = [dict(fix, patient_id=folder_of.get(fix["label_id"], "")) for fix in table.fixes]
    return {
        "cacxr_version": __version__,
        "data": str(data.absolute()),
        "out": str(out.absolute()),
        "outputs": {name: str((out / name).absolute()) for name in OUTPUTS},
        "site": site,
        "decode_check": decode_check,
        "workers": workers,
        "labels": {
            "source": str(label_path.absolute()),
            "format": table.format,
            "rows": len(table.rows),
            "usable": len(table.usable),
            "age_source": "label table" if table.has_age else "DICOM header",
        },
        "n_files": n_candidates + ignored,
        "n_candidates": n_candidates,
        "ignored_files": ignored,
        "n_manifest": len(manifest_rows),
        "n_excluded": len(excluded_rows),
        "n_patients": {
            "total": len(manifest_rows),
            **{s: sum(r.site == s for r in manifest_rows) for s in ("internal", "external")},
        },
        "counts": {reason: counts.get(reason, 0) for reason in EXCLUSION_REASONS},
        "view_assumed_frontal": sum(r.view_flag == VIEW_ASSUMED_FRONTAL for r in manifest_rows),
        "views_kept": count_values(r.view or "assumed" for r in manifest_rows),
        "header_id_mismatch": sum(mismatch.values()),
        "id_fixes": corr_fixes + padding_fixes + header_fixes,
        "layout": "path table" if table.images else "patient folders",
        "site_rule": site_rule,
        "formats": {
            "candidates": count_values(r.source_format or "unknown" for r in records),
            "kept": count_values(r.source_format or "unknown" for r in manifest_rows),
        },
        "view_gate": _gate_summary(gate, records, manifest_rows),
        "ct_window": _window_summary(max_days, records, manifest_rows, label_of),
        "rules": list(RULES),
    }


def _gate_summary(gate: bool, records: list[FileRecord], manifest_rows: list[ManifestRow]) -> dict[str, Any]:
    """ingest.json ``view_gate``: its version and what it decided."""
    if not gate:
        return {"ran": False}
    from cacxr.imaging import gate_version

    judged = [r for r in records if r.gate]
    return {
        "ran": True,
        "version": gate_version(),
        "images_judged": len(judged),
        "verdicts": count_values(r.gate.split(" ")[0] for r in judged),
        "not_radiograph": sum(r.reason == "not_radiograph" and r.detail.startswith("image:") for r in records),
        "lateral_from_image": sum(r.reason == "lateral_view" and r.detail.startswith("image:") for r in records),
        "frontal_from_image": sum(VIEW_FROM_IMAGE in r.view_flag for r in manifest_rows),
        "header_view_contradicts_image": sum(r.view_flag == HEADER_CONTRADICTS_IMAGE for r in judged),
        "inverted_corrected": sum(INVERTED_CORRECTED in r.view_flag for r in manifest_rows),
    }


def _window_summary(
    max_days: int | None, records: list[FileRecord], manifest_rows: list[ManifestRow], label_of: dict[str, LabelRow]
) -> dict[str, Any]:
    """ingest.json ``ct_window``: the window, and the distribution of the kept images' gaps to the CT."""
    gaps = [row.ct_gap_days for row in manifest_rows if not math.isnan(row.ct_gap_days)]
    dated = sum(bool(r.study_date) for r in records)
    out: dict[str, Any] = {
        "max_days": max_days,
        "patients_with_ct_date": sum(row.ct_date is not None for row in label_of.values()),
        "images_with_date": dated,
        "kept_gap_days": distribution(gaps),
    }
    if max_days is None and dated and out["patients_with_ct_date"]:
        out["note"] = (
            "radiograph and CT dates exist but no window was set: every image was eligible whatever its distance "
            "to the CT (use --max-days N to keep radiographs within N days of the CT, the closest first)"
        )
    return out


def distribution(values: list[float]) -> dict[str, Any]:
    """n, min, quartiles, max and the count per |gap| band of a list of day gaps (ingest.json, cacxr stats)."""
    if not values:
        return {"n": 0}
    import numpy as np

    q = np.percentile(values, [0, 25, 50, 75, 100])
    bands = ((0, 7), (8, 30), (31, 90), (91, 365), (366, None))
    return {
        "n": len(values),
        "min": float(q[0]), "q1": float(q[1]), "median": float(q[2]), "q3": float(q[3]), "max": float(q[4]),
        "abs_days": {
            (f"{lo}-{hi}" if hi else f">{lo - 1}"): sum(lo <= abs(v) and (hi is None or abs(v) <= hi) for v in values)
            for lo, hi in bands
        },
    }  # fmt: skip
