"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by Playwright.

CI installs the browser with ``apt-get install chromium``; where it is absent, the tests that need it are
skipped with that reason. The flags keep the browser from reaching the network on its own (no updates,
sync or background requests), so a test only talks to the loopback server it started.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium_page(width: int = 1200, height: int = 900) -> Iterator[object]:
    """A Playwright page in headless Chromium; skips the test when the browser is not installed.

    Args:
        width: viewport width in CSS pixels.
        height: viewport height in CSS pixels.

    Yields:
        A ``playwright.sync_api.Page``; the browser closes when the block ends.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (install it with: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()
