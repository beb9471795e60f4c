"""Tests of the image-export cohort (``cacxr synth --format png|jpeg``): layout, labels.csv, dates, truth."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cacxr.cli import main
from cacxr.core import CacxrError
from cacxr.imaging import read_image
from cacxr.synth import (
    LABELS_FILE,
    TRUTH_FILE,
    ExportImage,
    expected_kept,
    make_cohort,
    plan_cohort,
    read_export_truth,
    read_truth,
)

COLUMNS = ["patient_id", "path", "cac_score", "sex", "age", "study_date", "ct_date", "view"]
SIZE = 64


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / LABELS_FILE, newline="", encoding="utf-8") as fp:
        return list(csv.DictReader(fp))


def _header(root: Path) -> list[str]:
    with open(root / LABELS_FILE, newline="", encoding="utf-8") as fp:
        return next(csv.reader(fp))


def _by_patient(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        groups[row["patient_id"]].append(row)
    return groups


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def png40(tmp_path_factory):
    """40 internal + 10 external patients exported as PNG at 64 px."""
    root = tmp_path_factory.mktemp("export") / "png"
    truth = make_cohort(root, 40, external=10, seed=3, size=SIZE, progress=False, image_format="png")
    return root, truth


@pytest.fixture(scope="module")
def jpeg20(tmp_path_factory):
    """20 internal patients exported as JPEG at 64 px."""
    root = tmp_path_factory.mktemp("export") / "jpeg"
    truth = make_cohort(root, 20, seed=5, size=SIZE, progress=False, workers=1, image_format="jpeg")
    return root, truth


# --- layout and labels.csv ---------------------------------------------------------------------------


@pytest.mark.parametrize("cohort, suffix", [("png40", "png"), ("jpeg20", "jpg")])
def test_layout_is_one_folder_per_patient_and_one_csv_row_per_image(request, cohort, suffix) -> None:
    root, truth = request.getfixturevalue(cohort)
    assert _header(root) == COLUMNS
    rows = _rows(root)
    images = {p for p in _files(root) if p not in (LABELS_FILE, TRUTH_FILE)}
    assert sorted(images) == sorted(row["path"] for row in rows)  # every image listed once
    assert [row["path"] for row in rows] == [img.path for img in truth.images]
    for row in rows:
        assert re.fullmatch(rf"(CAC_\d{{3}}|XYZ_\d{{3}})/[0-9a-f]{{8}}\.{suffix}", row["path"]), row["path"]
        assert row["path"].split("/")[0] == row["patient_id"]
    assert sorted(root.iterdir()) == sorted(
        [root / LABELS_FILE, root / TRUTH_FILE] + [root / p.patient_id for p in truth.patient_truth]
    )


def test_patients_are_named_like_the_dicom_cohort(png40) -> None:
    _, truth = png40
    ids = [p.patient_id for p in truth.patient_truth]
    assert ids == [f"CAC_{i:03d}" for i in range(1, 41)] + [f"XYZ_{100 + i}" for i in range(1, 11)]
    assert {p.site for p in truth.patient_truth if p.patient_id.startswith("CAC")} == {"internal"}
    assert {p.site for p in truth.patient_truth if p.patient_id.startswith("XYZ")} == {"external"}


def test_patient_fields_agree_on_every_row_and_with_the_seed_labels(png40) -> None:
    root, truth = png40
    plan = {p.patient_id: p for p in plan_cohort(40, 10, seed=3, size=SIZE, faults=False).patients}
    for pid, rows in _by_patient(_rows(root)).items():
        fields = {(r["cac_score"], r["sex"], r["age"], r["ct_date"]) for r in rows}
        assert len(fields) == 1, pid
        cac, sex, age, ct_date = fields.pop()
        p = truth.patient(pid)
        assert (float(cac), sex, int(age), ct_date) == (p.cac_score, p.sex, p.age, p.ct_date)
        # the same patients as the DICOM cohort of the seed
        assert (p.cac_score, p.sex, p.age) == (plan[pid].cac, plan[pid].sex, plan[pid].age)
        assert p.ct_date == plan[pid].rx_date.isoformat()
        assert p.images == [r["path"] for r in rows]
    assert any(p.cac_score == 0 for p in truth.patient_truth)
    assert any(p.cac_score > 0 for p in truth.patient_truth)


def test_dates_and_gaps_follow_the_contract(png40) -> None:
    root, truth = png40
    for pid, rows in _by_patient(_rows(root)).items():
        ct_date = date.fromisoformat(rows[0]["ct_date"])
        images = [truth.image(r["path"]) for r in rows]
        for row, img in zip(rows, images, strict=True):
            assert (date.fromisoformat(row["study_date"]) - ct_date).days == img.gap_days
            assert row["study_date"] == img.study_date
        radiographs = [img for img in images if img.kind != "ct"]
        assert 2 <= len(radiographs) <= 4, pid
        assert len({img.gap_days for img in radiographs}) == len(radiographs), "radiographs on one date"
        frontal = [img for img in images if img.kind == "frontal"]
        near = [img for img in frontal if abs(img.gap_days) <= 60]
        assert len(near) == 1 and not near[0].inverted, pid
        assert all(120 <= abs(img.gap_days) <= 900 for img in frontal if img not in near)
        assert all(abs(img.gap_days) <= 60 for img in images if img.kind == "lateral")
        assert all(img.gap_days == 0 for img in images if img.kind == "ct")
        assert sum(img.kind == "lateral" for img in images) <= 1
        assert sum(img.kind == "ct" for img in images) <= 1
        assert sum(img.inverted for img in images) <= 1


def test_views_are_written_on_about_half_the_rows(png40) -> None:
    root, truth = png40
    rows = _rows(root)
    for row in rows:
        img = truth.image(row["path"])
        assert row["view"] == img.view
        assert img.view in ("", img.true_view)
        expected = {"frontal": {"PA", "AP"}, "lateral": {"LATERAL"}, "ct": {""}}[img.kind]
        assert img.true_view in expected
    assert all(r["view"] == "" for r in rows if truth.image(r["path"]).kind == "ct")
    radiographs = [r for r in rows if truth.image(r["path"]).kind != "ct"]
    shown = sum(r["view"] != "" for r in radiographs) / len(radiographs)
    assert 0.35 <= shown <= 0.65
    assert {r["view"] for r in rows} == {"", "PA", "AP", "LATERAL"}


def test_laterals_ct_slices_and_inverted_frontals_in_proportion(png40) -> None:
    _, truth = png40
    n = len(truth.patient_truth)
    with_kind = Counter()
    for p in truth.patient_truth:
        mine = truth.images_of(p.patient_id)
        with_kind["lateral"] += any(img.kind == "lateral" for img in mine)
        with_kind["ct"] += any(img.kind == "ct" for img in mine)
        with_kind["inverted"] += any(img.inverted for img in mine)
    assert 0.2 <= with_kind["lateral"] / n <= 0.4
    assert 1 <= with_kind["ct"] <= 0.2 * n
    assert 1 <= with_kind["inverted"] <= 0.1 * n
    assert all(img.kind == "frontal" for img in truth.images if img.inverted)


# --- pixels ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cohort, modes", [("png40", {"L", "I;16"}), ("jpeg20", {"L", "RGB"})])
def test_formats_and_bit_depths_are_readable(request, cohort, modes) -> None:
    root, truth = request.getfixturevalue(cohort)
    seen = Counter()
    for img in truth.images:
        with Image.open(root / img.path) as pil:
            assert pil.format == ("PNG" if truth.format == "png" else "JPEG")
            assert pil.mode == img.mode
            assert pil.size == (img.cols, img.rows) == (SIZE, SIZE)
        seen[img.mode] += 1
        result = read_image(root / img.path, img.patient_id)
        assert result.reason == "", result.detail
        assert result.image.shape == (SIZE, SIZE)
        assert result.meta.bits_stored == (16 if img.mode == "I;16" else 8)
        assert result.meta.photometric == ("RGB" if img.mode == "RGB" else "MONOCHROME2")
        assert float(result.image.std()) > 0.05  # a drawn image, not a flat one
    assert set(seen) == modes
    assert seen["L"] > max(seen[m] for m in modes - {"L"})  # 8-bit grey for most


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_inverted_frontals_have_bone_dark(png40, jpeg20) -> None:
    checked = 0
    for root, truth in (png40, jpeg20):
        for p in truth.patient_truth:
            mine = truth.images_of(p.patient_id)
            if not any(img.inverted for img in mine):
                continue
            reference = read_image(root / p.expected_kept_within_60_days).image
            for img in mine:
                if img.kind != "frontal" or img.path == p.expected_kept_within_60_days:
                    continue
                r = _corr(read_image(root / img.path).image, reference)
                assert (r < -0.3) if img.inverted else (r > 0.3), (img.path, img.inverted, r)
                checked += img.inverted
    assert checked >= 2


def test_frontals_carry_the_patients_plaques(png40) -> None:
    _, truth = png40
    for p in truth.patient_truth:
        assert (p.n_plaques > 0) == (p.cac_score > 0), p.patient_id


# --- the pairing rule --------------------------------------------------------------------------------


def _img(path: str, kind: str = "frontal", view: str = "PA", gap: int = 0, size: int = 64) -> ExportImage:
    return ExportImage(
        path=path, patient_id="CAC_001", site="internal", kind=kind, view=view, true_view=view,
        study_date="2020-01-01", gap_days=gap, inverted=False, rows=size, cols=size, mode="L",
    )  # fmt: skip


def test_expected_kept_rule_order() -> None:
    assert expected_kept([_img("a", gap=30), _img("b", gap=-10)]) == "b"  # smallest |gap|
    assert expected_kept([_img("a", view="AP", gap=5), _img("b", view="PA", gap=-5)]) == "b"  # PA > AP
    assert expected_kept([_img("a", view="", gap=5), _img("b", view="AP", gap=5)]) == "b"  # AP > unknown
    assert expected_kept([_img("a", size=48), _img("b", size=64)]) == "b"  # most pixels
    assert expected_kept([_img("b"), _img("a")]) == "a"  # then path order
    # laterals and CT slices never win, whatever their view or date; 60 days is inclusive
    near_non_frontal = [_img("a", kind="lateral", view="", gap=0), _img("b", kind="ct", view="", gap=0)]
    assert expected_kept([*near_non_frontal, _img("c", gap=60)]) == "c"
    assert expected_kept([*near_non_frontal, _img("c", gap=-61)]) == ""
    assert expected_kept([_img("c", gap=-61)], max_days=90) == "c"


def test_expected_kept_in_the_truth_follows_the_rule_from_the_files(png40) -> None:
    root, truth = png40
    for pid, rows in _by_patient(_rows(root)).items():
        ct_date = date.fromisoformat(rows[0]["ct_date"])
        pool = []
        for row in rows:
            img = truth.image(row["path"])
            gap = (date.fromisoformat(row["study_date"]) - ct_date).days
            if img.kind == "frontal" and abs(gap) <= 60:
                pixels = int(np.prod(read_image(root / row["path"]).image.shape))
                pool.append((abs(gap), {"PA": 0, "AP": 1}.get(row["view"], 2), -pixels, row["path"]))
        assert truth.patient(pid).expected_kept_within_60_days == min(pool)[3]
    assert truth.kept() == {p.patient_id: p.expected_kept_within_60_days for p in truth.patient_truth}


# --- truth file, determinism, command line -----------------------------------------------------------


def test_truth_file_round_trips_and_says_its_format(png40) -> None:
    root, truth = png40
    data = json.loads((root / TRUTH_FILE).read_text(encoding="utf-8"))
    assert data["format"] == "png"
    assert set(data["images"][0]) >= {
        "path",
        "patient_id",
        "kind",
        "view",
        "study_date",
        "gap_days",
        "inverted",
    }
    assert set(data["patient_truth"][0]) >= {
        "patient_id",
        "cac_score",
        "ct_date",
        "expected_kept_within_60_days",
    }
    assert read_export_truth(root) == truth
    with pytest.raises(CacxrError, match="read_export_truth"):
        read_truth(root)


def test_read_export_truth_refuses_a_dicom_truth(tmp_path) -> None:
    (tmp_path / TRUTH_FILE).write_text(json.dumps({"seed": 0, "files": []}), encoding="utf-8")
    with pytest.raises(CacxrError, match="DICOM cohort"):
        read_export_truth(tmp_path)
    with pytest.raises(CacxrError, match="no such file"):
        read_export_truth(tmp_path / "missing")


def test_same_seed_same_files_whatever_the_workers(tmp_path) -> None:
    one = make_cohort(
        tmp_path / "a", 6, external=2, seed=11, size=48, progress=False, workers=1, image_format="jpeg"
    )
    two = make_cohort(
        tmp_path / "b", 6, external=2, seed=11, size=48, progress=False, workers=3, image_format="jpeg"
    )
    assert one == two
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    other = make_cohort(tmp_path / "c", 6, external=2, seed=12, size=48, progress=False, image_format="jpeg")
    assert _files(tmp_path / "c") != _files(tmp_path / "a")
    assert other.images != one.images


def test_faults_flag_does_not_change_an_export(tmp_path) -> None:
    make_cohort(tmp_path / "a", 5, seed=2, size=40, progress=False, image_format="png")
    make_cohort(tmp_path / "b", 5, seed=2, size=40, progress=False, faults=False, image_format="png")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_bad_format_is_refused(tmp_path) -> None:
    with pytest.raises(CacxrError, match="--format"):
        make_cohort(tmp_path / "x", 3, size=40, progress=False, image_format="tiff")


def test_cli_writes_a_jpeg_export(tmp_path, capsys) -> None:
    out = tmp_path / "cohort"
    assert main(["synth", str(out), "--patients", "6", "--format", "jpeg", "--no-progress"]) == 0
    assert "JPEG images" in capsys.readouterr().out
    assert _header(out) == COLUMNS
    assert {r["patient_id"] for r in _rows(out)} == {f"CAC_{i:03d}" for i in range(1, 7)}
    assert all(p.suffix == ".jpg" for p in out.glob("CAC_*/*"))
    assert not (out / "site.db").exists()
    assert read_export_truth(out).size == 512
