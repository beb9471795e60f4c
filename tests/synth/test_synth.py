"""Tests of the synthetic cohort: layout, faults, truth, determinism, signal, command line."""

from __future__ import annotations

import math
import re
import sqlite3
import warnings
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless
from scipy.stats import spearmanr

from cacxr.cli import main
from cacxr.core import CacxrError
from cacxr.synth import FAULTS, TRUTH_FILE, make_cohort, plan_cohort, read_truth
from cacxr.synth.encoding import ENCODINGS, DicomStyle, Header, encode, radiograph_dataset
from cacxr.synth.phantom import render_frontal, sample_anatomy, sample_pose
from cacxr.synth.truth import SITES, id_key

FRONTAL = {"PA", "AP", "NN"}


# --- helpers ---------------------------------------------------------------------------------------


def _read(path: Path) -> pydicom.Dataset:
    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:  # a bare data set: implicit VR little endian
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _display(ds: pydicom.Dataset) -> np.ndarray:
    """Pixels as a viewer shows them (modality LUT, VOI, MONOCHROME1 inverted), scaled to [0, 1]."""
    values = apply_modality_lut(ds.pixel_array, ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on float input to the VOI LUT
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            values = apply_voi_lut(values, ds, prefer_lut=True)
    values = values.astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        values = values.max() - values
    return (values - values.min()) / (values.max() - values.min())


def _labels(root: Path) -> list[tuple]:
    with sqlite3.connect(root / "site.db") as con:
        return con.execute(
            "SELECT rowid, id, cac_score, sex, birth, rx_date FROM patient ORDER BY rowid"
        ).fetchall()


def _parse_date(text: str, two_digit_birth: bool = False) -> date:
    if re.fullmatch(r"\d{4}-\d\d-\d\d", text):
        return date.fromisoformat(text)
    day, month, year = re.split(r"[./]", text)
    year_n = int(year)
    if len(year) == 2:
        year_n += 2000 if 2000 + year_n <= date.today().year else 1900
    return date(year_n, int(month), int(day))


def _dicom_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.dcm")}


@pytest.fixture(scope="module")
def cohort40(tmp_path_factory):
    """40 internal + 10 external patients at 64 px, with every fault."""
    root = tmp_path_factory.mktemp("synth") / "cohort"
    truth = make_cohort(root, 40, external=10, seed=3, size=64, progress=False, workers=1)
    return root, truth


# --- layout and truth ------------------------------------------------------------------------------


def test_layout_and_truth_file_agree(cohort40):
    root, truth = cohort40
    assert sorted(p.name for p in root.iterdir() if p.is_dir())[:2] == ["CAC_001", "CAC_002"]
    assert sum(1 for p in root.iterdir() if p.is_dir() and p.name.startswith("XYZ_")) == 10
    assert _dicom_files(root) == {f.path for f in truth.files}
    assert read_truth(root) == truth  # synth_truth.json holds the returned truth
    rows = _labels(root)
    assert [r[0] for r in rows] == [label.row for label in truth.labels]
    assert [r[1] for r in rows] == [label.label_id for label in truth.labels]


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_every_fault_is_in_the_files(cohort40, fault):
    root, truth = cohort40
    carriers = truth.with_fault(fault)
    assert carriers, f"no patient with {fault}"
    rows = _labels(root)
    for patient in carriers:
        pid = patient.patient_id
        paths = sorted((root / pid).rglob("*.dcm"))
        headers = [_read(p) for p in paths]
        views = [ds.get("ViewPosition") for ds in headers]
        own_rows = [r for r in rows if id_key(r[1]) == id_key(pid)]
        if fault == "missing_label":
            assert own_rows == []
        elif fault == "padded_id":
            assert [r[1] for r in own_rows] != [pid] and len(own_rows) == 1
        elif fault == "corrected_label":
            wrong, corr = own_rows
            assert (wrong[1], corr[1]) == (pid, f"{pid}_corr") and wrong[2] != corr[2]
            assert patient.cac_score == corr[2]
        elif fault.startswith("lateral_"):
            view = fault.removeprefix("lateral_")
            if view == "description":
                assert any(
                    v == "" and "LATERAL" in ds.SeriesDescription
                    for v, ds in zip(views, headers, strict=True)
                )
            else:
                assert view in views
            assert FRONTAL & set(views)
        elif fault == "metadata_file":
            bare = [p for p, ds in zip(paths, headers, strict=True) if "PixelData" not in ds]
            assert bare and all(p.stat().st_size < 1_000_000 for p in bare)
        elif fault == "ct_folder":
            ct = [ds for p, ds in zip(paths, headers, strict=True) if p.parent.name == "ct"]
            assert ct and {ds.Modality for ds in ct} == {"CT"} and (root / pid / "rx").is_dir()
        elif fault == "two_frontals":
            assert sum(v in FRONTAL for v in views) == 2
        elif fault == "empty_view_only":
            assert views == [""]
        elif fault == "empty_view_with_frontal":
            assert "" in views and FRONTAL & set(views)
        elif fault == "header_id_mismatch":
            assert any(ds.PatientID != pid for ds in headers)
        elif fault == "two_digit_year":
            assert re.fullmatch(r"\d\d\.\d\d\.\d\d", own_rows[0][5])
        elif fault == "truncated_file":
            broken = 0
            for ds in headers:
                try:
                    ds.pixel_array  # noqa: B018 - decoding is the check
                except ValueError:
                    broken += 1
            assert broken == 1
        elif fault == "duplicate_label":
            assert [r[1] for r in own_rows] == [pid, pid] and patient.cac_score == own_rows[0][2]
        elif fault == "multi_frame":
            assert any(int(ds.get("NumberOfFrames", 1)) == 2 for ds in headers)
        else:
            pytest.fail(f"no check for fault {fault}")


def test_storage_variety_and_invalid_rows(cohort40):
    root, truth = cohort40
    headers = {f.path: _read(root / f.path) for f in truth.files if f.kind == "frontal"}
    syntaxes = {ds.file_meta.TransferSyntaxUID for ds in headers.values()}
    assert {RLELossless, JPEG2000Lossless} <= syntaxes
    assert {ds.PhotometricInterpretation for ds in headers.values()} == {"MONOCHROME1", "MONOCHROME2"}
    assert {int(ds.BitsStored) for ds in headers.values()} == {10, 12, 14, 16}
    assert {int(ds.BitsAllocated) for ds in headers.values()} == {16}
    assert {ds.Modality for ds in headers.values()} == {"CR", "DX"}
    assert any("VOILUTSequence" in ds for ds in headers.values())
    assert any("WindowCenter" in ds for ds in headers.values())
    assert any("RescaleSlope" in ds for ds in headers.values())
    assert any("PatientAge" in ds for ds in headers.values())
    preambles = [(root / p).read_bytes()[128:132] == b"DICM" for p in headers]
    assert any(preambles) and not all(preambles)
    compressed = sum(
        ds.file_meta.TransferSyntaxUID in (RLELossless, JPEG2000Lossless) for ds in headers.values()
    )
    assert 0 < compressed < 0.35 * len(headers)  # a minority
    rows = _labels(root)
    assert [r for r in rows if r[2] is None], "an empty cac_score row"
    folders = {id_key(p.name) for p in root.iterdir() if p.is_dir()}
    assert [r for r in rows if id_key(r[1]) not in folders], "label rows without images"


# Designed outcome per fault: (which file, reason with --site internal, with --site all)
_DESIGNED = [
    ("lateral_LL", "lateral", "lateral_view", "lateral_view"),
    ("lateral_description", "lateral", "lateral_view", "lateral_view"),
    ("metadata_file", "metadata", "no_pixel_data", "no_pixel_data"),
    ("ct_folder", "ct", "not_radiograph", "not_radiograph"),
    ("truncated_file", "truncated", "unreadable", "unreadable"),
    ("multi_frame", "multi_frame", "multi_frame", "multi_frame"),
    ("missing_label", "main", "no_label", "no_label"),
    ("empty_view_with_frontal", "other", "unknown_view", "unknown_view"),
    ("two_frontals", "other", "extra_frontal", "extra_frontal"),
    ("empty_view_only", "main", "", ""),
    ("header_id_mismatch", "main", "", ""),
]


# reasons decided before the site rule, so --site external gives them to internal files too
_BEFORE_SITE = {"multi_frame", "lateral_view", "no_pixel_data", "not_radiograph"}


@pytest.mark.parametrize(("fault", "which", "internal", "everyone"), _DESIGNED)
def test_truth_gives_the_designed_reasons(cohort40, fault, which, internal, everyone):
    _, truth = cohort40
    for patient in truth.with_fault(fault):
        files = [f for f in truth.files if f.patient_id == patient.patient_id]
        if which == "main":
            chosen = [f for f in files if f.path == patient.main_image]
        elif which == "other":
            chosen = [f for f in files if f.path != patient.main_image]
        else:
            chosen = [f for f in files if f.kind == which]
        assert chosen
        for f in chosen:
            assert (f.expected_reason_internal, f.expected_reason_all) == (internal, everyone), f.path
            assert f.expected_reason_external == (internal if internal in _BEFORE_SITE else "other_site")
    if fault == "empty_view_only":
        kept = truth.file(truth.with_fault(fault)[0].main_image)
        assert kept.view_flag == "view_assumed_frontal"


def test_label_reasons(cohort40):
    _, truth = cohort40
    reasons = {(row.label_id, row.cac_score): row for row in truth.labels}
    corr = truth.with_fault("corrected_label")[0]
    wrong = next(r for r in truth.labels if r.label_id == corr.patient_id)
    assert wrong.expected_reason_all == "superseded_label"
    assert reasons[(f"{corr.patient_id}_corr", corr.cac_score)].expected_reason_all == ""
    dup = truth.with_fault("duplicate_label")[0]
    first, second = [r for r in truth.labels if r.label_id == dup.patient_id]
    assert (first.expected_reason_all, second.expected_reason_all) == ("", "duplicate_label")
    invalid = [r for r in truth.labels if r.cac_score is None]
    assert [r.expected_reason_all for r in invalid] == ["invalid_label"]
    orphans = [r for r in truth.labels if not r.patient_id and r.cac_score is not None]
    assert orphans and {r.expected_reason_all for r in orphans} == {"label_without_image"}
    external = [r for r in truth.labels if r.site == "external"]
    assert {r.expected_reason_all for r in external} == {""}
    assert {r.expected_reason_internal for r in external} == {"label_without_image"}
    assert {fix["fix"] for fix in truth.id_fixes} == {"padding", "corr"}


def test_patient_truth_scores_ages_and_headers(cohort40):
    root, truth = cohort40
    by_key = {}
    for row in _labels(root):
        if row[2] is not None and not row[1].endswith("_corr"):
            by_key.setdefault(id_key(row[1]), row)  # the first plain row
    for row in _labels(root):
        if row[1].endswith("_corr"):
            by_key[id_key(row[1])] = row
    for patient in truth.patient_truth:
        row = by_key.get(id_key(patient.patient_id))
        if "missing_label" in patient.faults:
            assert patient.cac_score is None and row is None
            continue
        birth, rx = _parse_date(row[4]), _parse_date(row[5])
        assert patient.cac_score == row[2]
        assert patient.age == rx.year - birth.year - ((rx.month, rx.day) < (birth.month, birth.day))
        assert 40 <= patient.age <= 80
        ds = _read(root / patient.main_image)
        assert ds.StudyDate == rx.strftime("%Y%m%d") and ds.PatientBirthDate == birth.strftime("%Y%m%d")
        assert ds.PatientSex == patient.sex == row[3]


def test_truth_never_holds_identifying_header_values(cohort40):
    root, truth = cohort40
    text = (root / TRUTH_FILE).read_text()
    for f in truth.files:
        if f.kind == "truncated":
            continue
        ds = _read(root / f.path)
        assert str(ds.PatientName) not in text
        if f.header_id_mismatch:
            assert ds.PatientID not in text


@pytest.mark.parametrize(
    ("fault", "kind", "internal", "external", "everyone"),
    [
        ("missing_label", "frontal", "other_site", "no_label", "no_label"),
        ("lateral_LAT", "lateral", "lateral_view", "lateral_view", "lateral_view"),
        ("metadata_file", "metadata", "no_pixel_data", "no_pixel_data", "no_pixel_data"),
        ("two_frontals", "frontal", "other_site", "", ""),
    ],
)
def test_rule_order_for_the_external_site(fault, kind, internal, external, everyone):
    """Site is decided after the view and pixel rules and before the label rule."""
    truth = plan_cohort(20, external=60, seed=9, size=64).truth()
    carriers = [p for p in truth.with_fault(fault) if p.site == "external"]
    assert carriers
    for patient in carriers:
        files = [f for f in truth.files if f.patient_id == patient.patient_id and f.kind == kind]
        if fault == "two_frontals":
            files = [truth.file(patient.main_image)]
        for f in files:
            assert (f.expected_reason_internal, f.expected_reason_external, f.expected_reason_all) == (
                internal,
                external,
                everyone,
            )


def test_one_kept_image_per_usable_patient_and_it_is_the_main_one():
    """On a large plan (no drawing): the rule engine keeps exactly the image the generator meant."""
    truth = plan_cohort(400, external=60, seed=9, size=64).truth()
    variants = Counter()
    for site in SITES:
        kept = Counter(f.patient_id for f in truth.files if f.expected_reason(site) == "")
        for patient in truth.patient_truth:
            usable = patient.cac_score is not None and site in ("all", patient.site)
            if usable:
                assert (
                    kept[patient.patient_id] == 1
                    and truth.manifest(site)[patient.patient_id] == patient.main_image
                )
            else:
                assert kept[patient.patient_id] == 0
    for patient in truth.with_fault("two_frontals"):
        main = truth.file(patient.main_image)
        (other,) = [f for f in truth.files if f.patient_id == patient.patient_id and f.path != main.path]
        variants[(main.view == other.view, main.rows == other.rows, main.path < other.path)] += 1
    # PA over an AP that sorts first; a larger image over a smaller one; then path order
    assert set(variants) == {(False, True, False), (True, False, False), (True, True, True)}


# --- labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cac_distribution_looks_like_a_cohort(seed):
    plan = plan_cohort(300, seed=seed, faults=False)
    cac = np.array([p.cac for p in plan.patients])
    assert 0.32 <= np.mean(cac == 0) <= 0.48
    positives = cac[cac > 0]
    assert 40 <= np.median(positives) <= 250
    assert 1000 <= positives.max() <= 9000 and positives.min() >= 1
    assert 0.4 <= np.mean([p.sex == "M" for p in plan.patients]) <= 0.6
    ages = np.array([p.age for p in plan.patients])
    assert ages.min() >= 40 and ages.max() <= 80 and ages.std() > 8
    assert spearmanr(ages, cac).statistic > 0  # older patients calcify more


# --- determinism, faults off, signal ----------------------------------------------------------------


def test_same_seed_same_cohort_any_workers_other_seed_differs(tmp_path):
    a = make_cohort(tmp_path / "a", 8, external=2, seed=5, size=64, progress=False, workers=1)
    b = make_cohort(tmp_path / "b", 8, external=2, seed=5, size=64, progress=False, workers=2)
    c = make_cohort(tmp_path / "c", 8, external=2, seed=6, size=64, progress=False, workers=1)
    assert a == b and _labels(tmp_path / "a") == _labels(tmp_path / "b")
    for f in a.files:
        assert (tmp_path / "a" / f.path).read_bytes() == (tmp_path / "b" / f.path).read_bytes(), f.path
    assert [p.cac_score for p in a.patient_truth] != [p.cac_score for p in c.patient_truth]
    pid = "CAC_001/rx/IM-0001-0001.dcm"
    if (tmp_path / "c" / pid).exists() and (tmp_path / "a" / pid).exists():
        assert not np.array_equal(
            _read(tmp_path / "a" / pid).pixel_array, _read(tmp_path / "c" / pid).pixel_array
        )


def test_no_faults_is_clean(tmp_path):
    truth = make_cohort(tmp_path / "c", 10, external=3, seed=1, size=64, faults=False, progress=False)
    rows = _labels(tmp_path / "c")
    folders = sorted(p.name for p in (tmp_path / "c").iterdir() if p.is_dir())
    assert sorted(r[1] for r in rows) == folders and len(folders) == 13
    for row in rows:
        assert row[2] is not None and date.fromisoformat(row[4]) and date.fromisoformat(row[5])
    for folder in folders:
        (path,) = [p for p in (tmp_path / "c" / folder).rglob("*") if p.is_file()]
        assert path.parent.name == "rx"
        raw = path.read_bytes()
        assert raw[128:132] == b"DICM"
        ds = _read(path)
        assert ds.ViewPosition in ("PA", "AP") and ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.PatientID == folder and not ds.file_meta.TransferSyntaxUID.is_compressed
    assert truth.reason_counts("all") == {}
    assert len(truth.manifest("all")) == 13 and len(truth.manifest("internal")) == 10
    assert all(not p.faults for p in truth.patient_truth)


def test_no_signal_draws_no_plaques_and_burden_grows_with_cac(tmp_path):
    kw = dict(patients=24, seed=11, size=128, faults=False, progress=False)
    with_signal = make_cohort(tmp_path / "s", **kw)
    without = make_cohort(tmp_path / "n", signal=False, **kw)
    assert [p.cac_score for p in with_signal.patient_truth] == [p.cac_score for p in without.patient_truth]
    assert all(p.n_plaques == 0 and p.plaque_pixels == 0 for p in without.patient_truth)
    cac, changed, centres = [], [], []
    for patient in with_signal.patient_truth:
        a = _read(tmp_path / "s" / patient.main_image).pixel_array.astype(np.int32)
        b = _read(tmp_path / "n" / patient.main_image).pixel_array.astype(np.int32)
        diff = a != b
        if patient.cac_score == 0:
            assert not diff.any() and patient.plaque_pixels == 0
            continue
        assert diff.any() and patient.plaque_pixels > 0
        cac.append(patient.cac_score)
        changed.append(diff.sum())
        ys, xs = np.nonzero(diff)
        centres.append((xs.mean() / 128, ys.mean() / 128))
    assert len(cac) >= 8
    assert spearmanr(np.log1p(cac), changed).statistic > 0.6
    plaque_px = [p.plaque_pixels for p in with_signal.patient_truth if p.cac_score]
    assert spearmanr(np.log1p(cac), plaque_px).statistic > 0.6
    # plaques lie over the heart: right of the spine (patient's left), mid-low chest
    x, y = np.mean(centres, axis=0)
    assert 0.45 < x < 0.7 and 0.4 < y < 0.75


# --- encoding --------------------------------------------------------------------------------------


_STYLES = [
    DicomStyle("explicit", 12, "MONOCHROME2", "window"),
    DicomStyle("implicit", 10, "MONOCHROME1", "none"),
    DicomStyle("no_preamble", 14, "MONOCHROME2", "lut"),
    DicomStyle("no_meta", 16, "MONOCHROME1", "window", rescale=(2.0, 100.0)),
    DicomStyle("rle", 16, "MONOCHROME1", "lut"),
    DicomStyle("j2k", 10, "MONOCHROME2", "window", rescale=(1.0, -1024.0)),
]


@pytest.fixture(scope="module")
def drawn():
    rng = np.random.default_rng(0)
    anat = sample_anatomy(rng, "F")
    return render_frontal(anat, sample_pose(rng), 96, rng).image


@pytest.mark.parametrize(
    "style", _STYLES, ids=lambda s: f"{s.encoding}-{s.bits_stored}-{s.photometric}-{s.voi}"
)
def test_every_storage_style_decodes_to_the_drawn_image(tmp_path, drawn, style):
    header = Header(
        "CAC_001", "ROSSI^ANNA", date(1950, 1, 2), "F", date(2019, 3, 4), "1.2.3", "1.2.3.4", "1.2.3.4.5"
    )
    raw = encode(radiograph_dataset(drawn, style, header), style.encoding)
    path = tmp_path / "x.dcm"
    path.write_bytes(raw)
    assert (raw[128:132] == b"DICM") == (style.encoding not in ("no_preamble", "no_meta"))
    ds = _read(path)
    if ENCODINGS[style.encoding] is not None:
        assert ds.file_meta.TransferSyntaxUID == ENCODINGS[style.encoding]
    assert int(ds.BitsStored) == style.bits_stored and ds.PhotometricInterpretation == style.photometric
    assert ds.pixel_array.max() < 2**style.bits_stored
    shown = _display(ds)
    assert np.corrcoef(shown.ravel(), drawn.ravel())[0, 1] > 0.97  # bone bright, whatever the storage


# --- refusals and the command line ------------------------------------------------------------------


def test_refuses_a_non_empty_folder_and_leaves_it_alone(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(CacxrError, match=r"mine: folder exists and is not empty"):
        make_cohort(out, 3, size=64, progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacxrError, match="not a folder"):
        make_cohort(tmp_path / "file", 3, size=64, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patients": 0}, "at least one patient"),
        ({"patients": 3, "external": -1}, "no negative counts"),
        ({"patients": 3, "size": 16}, "--size 16"),
        ({"patients": 3, "seed": -2}, "--seed -2"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(CacxrError, match=re.escape(message)):
        make_cohort(tmp_path / "c", progress=False, **kwargs)
    assert not (tmp_path / "c").exists()


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "synth",
        str(out),
        "--patients",
        "4",
        "--external",
        "1",
        "--size",
        "64",
        "--no-faults",
        "--seed",
        "2",
    ]
    code = main([*argv, "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"cacxr synth: {out}: 4 internal + 1 external patients, 5 DICOM files")
    assert len(_dicom_files(out)) == 5 and len(_labels(out)) == 5
    assert read_truth(out).signal is True and read_truth(out).seed == 2
    assert main(["synth", str(out), "--patients", "2"]) == 2
    assert "folder exists and is not empty" in capsys.readouterr().err


def test_cli_no_signal_flag(tmp_path):
    assert (
        main(
            ["synth", str(tmp_path / "n"), "--patients", "2", "--size", "64", "--no-signal", "--no-progress"]
        )
        == 0
    )
    truth = read_truth(tmp_path / "n")
    assert truth.signal is False and math.fsum(p.plaque_pixels for p in truth.patient_truth) == 0


def test_plaque_scale_draws_larger_plaques_on_the_same_patients(tmp_path):
    kw = dict(patients=12, seed=3, size=64, faults=False, progress=False, workers=1)
    standard = make_cohort(tmp_path / "s", **kw)
    larger = make_cohort(tmp_path / "l", plaque_scale=3.0, **kw)
    pairs = list(zip(standard.patient_truth, larger.patient_truth, strict=True))
    assert [a.cac_score for a, _ in pairs] == [b.cac_score for _, b in pairs]
    assert [a.n_plaques for a, _ in pairs] == [b.n_plaques for _, b in pairs]  # same plaques, only larger
    positives = [(a, b) for a, b in pairs if a.cac_score > 0]
    assert positives and all(b.plaque_pixels > 2 * a.plaque_pixels for a, b in positives)
    with pytest.raises(CacxrError, match="--plaque-scale 0.0: must be in"):
        make_cohort(tmp_path / "x", plaque_scale=0.0, **kw)
