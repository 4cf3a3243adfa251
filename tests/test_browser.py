"""The image tester clicked for real: JupyterLab on localhost, the notebook run, an image uploaded."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import papermill
import pytest
from browser import browser_page

ROOT = Path(__file__).resolve().parents[1]
TESTER = ROOT / "notebooks" / "06_image_tester.ipynb"
SCREENSHOT = os.environ.get("CLASSIFIER_SCREENSHOT_DIR")  # e.g. docs/ to refresh the README's picture


@contextmanager
def screenshot_on_failure(page, path: Path):
    """When a step fails, keep what the browser showed (its path is in the failure message)."""
    try:
        yield
    except Exception as error:
        page.screenshot(path=str(path), full_page=True)
        raise AssertionError(f"{error}\nscreenshot of the page: {path}") from error


def accept_kernel_dialog(page) -> None:
    """JupyterLab sometimes asks which kernel to start (a fresh settings folder): take the proposed one."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    accept = page.locator(".jp-Dialog .jp-mod-accept")
    try:
        accept.wait_for(timeout=10_000)
    except PlaywrightTimeoutError:  # no dialog: the notebook's kernel started by itself
        return
    accept.click()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """JupyterLab serving tmp_path on a free localhost port with a one-off token; yields its base URL and token."""
    port, token = free_port(), secrets.token_hex(16)
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp_path}",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env=os.environ
        | {
            name: str(tmp_path / "jupyter" / name.lower())
            for name in ("JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR")
        },
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"JupyterLab exited: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url, token
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_image_tester_in_jupyterlab_predicts_an_uploaded_image(trained_run, jupyterlab, tmp_path):
    result, data_dir = trained_run
    url, token = jupyterlab
    papermill.execute_notebook(
        str(TESTER),
        str(tmp_path / "tester.ipynb"),
        prepare_only=True,
        parameters={"data_dir": str(data_dir), "runs_dir": str(result.run_dir.parent)},
    )
    image = next((data_dir / "Valid" / "panda").iterdir())
    with browser_page() as page, screenshot_on_failure(page, tmp_path / "failure.png"):
        page.goto(f"{url}/lab/tree/tester.ipynb?token={token}")
        page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
        accept_kernel_dialog(page)
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=120_000)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        upload = page.locator("button.widget-upload")
        upload.wait_for(timeout=120_000)
        page.get_by_text("loaded ").first.wait_for(timeout=60_000)
        with page.expect_file_chooser() as chooser:  # the widget makes its file input only on a click
            upload.click()
        chooser.value.set_files(str(image))
        label = page.locator(".widget-html h3")
        label.wait_for(timeout=60_000)
        pictures = page.locator(".jp-OutputArea-output img")
        pictures.nth(1).wait_for(timeout=60_000)  # Grad-CAM overlay and probability bars
        page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-OutputArea-output img')]"
            ".every(img => img.complete && img.naturalWidth > 100)",
            timeout=30_000,
        )
        assert label.inner_text().split(" (")[0] in ("cat", "dog", "panda")
        assert pictures.count() == 2
        if SCREENSHOT:
            page.screenshot(path=str(Path(SCREENSHOT) / "image_tester.png"), full_page=True)


def test_report_index_sorts_by_a_clicked_column(tmp_path):
    from classifier_lib.report.index import write_index

    for number, accuracy in enumerate((0.5, 0.9, 0.7)):
        run = tmp_path / "runs" / f"version_{number}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(f'{{"final_valid_acc": {accuracy}, "best_valid_acc": {accuracy}}}')
    index = write_index(tmp_path / "runs", tmp_path / "reports")
    with browser_page() as page:
        page.goto(index.as_uri())
        names = lambda: page.locator("#runs tbody tr td:first-child").all_inner_texts()  # noqa: E731
        assert names() == ["version_2", "version_1", "version_0"]  # newest first
        page.locator("th", has_text="last valid acc").click()
        assert names() == ["version_0", "version_2", "version_1"]
        page.locator("th", has_text="last valid acc").click()
        assert names() == ["version_1", "version_2", "version_0"]
        page.locator("th", has_text="run").first.click()
        assert names() == ["version_0", "version_1", "version_2"]
        assert page.errors == []
