"""Playwright driving Debian's chromium (never a downloaded browser), for the browser tests."""

from __future__ import annotations

import shutil
from contextlib import contextmanager

import pytest


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return path


@contextmanager
def browser_page(width: int = 1300, height: int = 1000):
    """A fresh page; `page.errors` collects console errors, uncaught exceptions and failed loads."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency (pip install -e .[test])")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.errors = []
            page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            page.on("requestfailed", lambda request: page.errors.append(f"could not load {request.url}"))
            yield page
        finally:
            browser.close()
