"""The upload page in headless Chromium: a real DICOM gives its score and images, a bad file its error."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from _browser import chromium_page
from _tiny_run import tiny_run
from cacxr.serving import create_app, serve_in_background
from cacxr.use import load_run

pytestmark = pytest.mark.browser

SCREENSHOT = Path("/tmp/serve_page.png")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    import torch

    torch.set_num_threads(2)
    app = create_app(load_run(tiny_run(tmp_path_factory)), explain_steps=4)
    with serve_in_background(app) as url:
        yield url


def _loaded(page, selector: str) -> bool:
    return page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0")


def test_page_scores_a_dicom_and_shows_the_radiograph_and_heat_map(server, real_cxr_dir, tmp_path) -> None:
    dicom = real_cxr_dir / "txv_siim_chest_pa.dcm"
    expected = httpx.post(f"{server}/predict", files={"file": (dicom.name, dicom.read_bytes())}).json()
    outside: list[str] = []
    console_errors: list[str] = []
    with chromium_page() as page:
        local = (server, f"blob:{server}/", "data:")  # the server, and images the page made from its answers
        page.on("request", lambda r: None if r.url.startswith(local) else outside.append(r.url))
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.goto(server + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('resnet18')")
        assert "classification" in page.text_content("#model")
        page.set_input_files("#file", str(dicom))
        page.wait_for_selector("#result:not([hidden])", timeout=30_000)
        assert page.text_content("#score") == f"{100 * expected['probability']:.1f} %"
        assert "Probability of CAC > 0" in page.text_content("#score-label")
        verdict = "likely" if expected["label"] == 1 else "unlikely"
        assert page.text_content("#verdict") == f"CAC > 0 {verdict}"
        assert dicom.name in page.text_content("#facts")
        page.wait_for_function("document.getElementById('preview').naturalWidth > 0", timeout=30_000)
        page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0", timeout=60_000)
        assert _loaded(page, "#preview") and _loaded(page, "#heatmap")
        assert page.is_hidden("#error")
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert outside == []  # nothing fetched from anywhere but the server
    assert console_errors == []


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        (
            "notes.dcm",
            b"only text, not an image\n" * 10,
            "Error 415: notes.dcm: not a DICOM, PNG or JPEG file",
        ),
        ("empty.png", b"", "Error 400: empty.png: empty file (0 bytes)"),
    ],
)
def test_page_shows_a_readable_error_for_a_bad_file(server, tmp_path, name, data, message) -> None:
    bad = tmp_path / name
    bad.write_bytes(data)
    with chromium_page() as page:
        page.goto(server + "/")
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        assert message in page.text_content("#error")
        assert page.is_hidden("#result")
