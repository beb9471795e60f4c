"""`cacxr explain`: captum attributions of a tiny run drawn over the radiograph."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _tiny_run import IMAGE_SIZE, tiny_cohort, tiny_run
from cacxr.cli import main
from cacxr.core import CacxrError
from cacxr.imaging import read_image
from cacxr.use import METHODS, explain_paths, load_run, score_image
from cacxr.use.explain import explain_image, overlay_title, png_names, render_overlay


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    cohort = tiny_cohort(tmp_path_factory)
    return sorted(p for p in cohort.rglob("*.dcm") if not p.relative_to(cohort).parts[0].startswith("CAC"))[
        :2
    ]


def _png_pixels(data: bytes) -> np.ndarray:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=float)


@pytest.mark.parametrize("method", METHODS)
def test_heat_map_is_a_non_uniform_map_of_the_input(run, files: list[Path], method: str) -> None:
    image = read_image(files[0]).image
    heat, score = explain_image(run, image, method, steps=8)
    assert heat.shape == (IMAGE_SIZE, IMAGE_SIZE) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.std() > 0.01
    assert score == pytest.approx(score_image(run, image)["probability"], abs=1e-5)


def test_integrated_gradients_is_deterministic(run, files: list[Path]) -> None:
    image = read_image(files[0]).image
    first, _ = explain_image(run, image, "integrated-gradients", steps=8)
    second, _ = explain_image(run, image, "integrated-gradients", steps=8)
    np.testing.assert_array_equal(first, second)


def test_single_input_writes_the_named_png(run_dir: Path, files: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "overlay.png"
    argv = ["explain", str(run_dir), str(files[0]), "--out", str(out), "--steps", "8", "--no-progress"]
    assert main(argv) == 0
    pixels = _png_pixels(out.read_bytes())
    assert pixels.shape[0] > IMAGE_SIZE and pixels.std() > 0
    assert str(out) in capsys.readouterr().out


def test_several_inputs_write_a_folder_and_skip_unreadable_ones(
    run_dir: Path, files: list[Path], tmp_path: Path, capsys
) -> None:
    bad = tmp_path / "broken.dcm"
    bad.write_text("not DICOM")
    out = tmp_path / "overlays"
    argv = ["explain", str(run_dir), *map(str, files), str(bad), "--out", str(out), "--method", "gradcam"]
    assert main([*argv, "--no-progress"]) == 0
    # the synthetic files share their name, so the PNGs are named after their folders too
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.parts[-3]}_rx_{p.stem}.png" for p in files)
    err = capsys.readouterr().err
    assert f"{bad}: unreadable" in err and "2 of 3 images explained" in err


def test_same_stem_in_two_folders_gets_distinct_names(run, files: list[Path], tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "IM-1.dcm").write_bytes(files[0].read_bytes())
    (tmp_path / "b" / "other.dcm").write_bytes(files[1].read_bytes())
    rows = explain_paths(run, [tmp_path / "a", tmp_path / "b"], tmp_path / "out", "gradcam", progress=False)
    assert [Path(r.output).name for r in rows] == ["a_IM-1.png", "b_IM-1.png", "other.png"]
    assert png_names([str(files[0])] * 2) == [f"{files[0].stem}.png", f"{files[0].stem}_2.png"]


@pytest.mark.parametrize(
    ("task", "expected"),
    [("classification", "P(CAC > 0) = 0.73 · integrated gradients"), ("regression", "predicted CAC = 120")],
)
def test_title_carries_the_score(task: str, expected: str) -> None:
    class Run:  # only the attributes overlay_title reads
        threshold = 0.0

    Run.task = task
    score = 0.7301 if task == "classification" else 120.4
    assert overlay_title(Run(), score, "integrated-gradients").startswith(expected)


def test_regression_explains_the_predicted_cac(
    tmp_path_factory: pytest.TempPathFactory, files: list[Path]
) -> None:
    reg = load_run(tiny_run(tmp_path_factory, "regression"))
    image = read_image(files[0]).image
    heat, score = explain_image(reg, image, "integrated-gradients", steps=8)
    assert heat.std() > 0
    assert score == pytest.approx(score_image(reg, image)["predicted_cac"], rel=1e-4, abs=1e-3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda run, f, t: explain_image(run, np.zeros((8, 8)), "saliency"), "unknown explanation method"),
        (lambda run, f, t: render_overlay(np.zeros((4, 4)), np.zeros((5, 5)), "x"), "differ in shape"),
        (lambda run, f, t: explain_paths(run, f, t / "one.png", progress=False), "names one PNG but"),
    ],
)
def test_bad_requests_are_refused(run, files: list[Path], tmp_path: Path, call, message: str) -> None:
    with pytest.raises(CacxrError, match=message):
        call(run, files, tmp_path)


def test_missing_captum_gives_the_install_hint(run, files: list[Path], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "captum", None)  # makes `import captum` fail
    with pytest.raises(CacxrError, match=r"pip install 'cacxr\[explain\]'"):
        explain_paths(run, files[:1], tmp_path / "x.png", progress=False)


def test_nothing_explained_is_an_error(run_dir: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "broken.dcm"
    bad.write_text("not DICOM")
    assert main(["explain", str(run_dir), str(bad), "--out", str(tmp_path / "x.png"), "--no-progress"]) == 2
    assert "none of the 1 inputs could be explained" in capsys.readouterr().err
