"""The switch-step widget works in a real JupyterLab, in headless Chromium: the slider moves, the image changes.

What the widget tests cannot see: that ipywidgets' front end is installed and renders our Image/slider models, and
that a slider moved in the browser reaches the kernel and sends a new image back. This test starts `jupyter lab` on a
free localhost port (token-protected, in a temporary folder), opens a small notebook that builds a
`SwitchExplorer` on the tiny pipeline, runs it from the Run menu, presses keys on the slider and compares the image.

Needs Debian's chromium (`apt-get install -y chromium`) and the playwright Python package; skipped otherwise.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                     "(apt-get install -y chromium)"),  # fmt: skip
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package")

# The kernel imports torch and diffusers; on a busy 2-core machine that alone can take a minute.
KERNEL_TIMEOUT_MS = 240_000

NOTEBOOK_CELLS = [
    "import torch\ntorch.set_num_threads(1)\nimport disentkit as dk\nfrom disentkit import widgets\n"
    "from disentkit.testing import tiny_pipeline",
    "pipe = tiny_pipeline('sd1', seed=0)\n"
    "cond = dk.encode(pipe, 'a photo of a face', 'a photo of a face, smiling')\n"
    "tape = dk.NoiseTape.from_seed(pipe, 0, steps=3)\n"
    "explorer = widgets.SwitchExplorer(pipe, cond, tape)\n"
    "explorer",
    "print('switch now', explorer.switch)",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A running JupyterLab serving ``tmp_path`` (holding widget.ipynb); yields (base url, token)."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in NOTEBOOK_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "widget.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / ".jupyter"), "OMP_NUM_THREADS": "1",
           "JUPYTER_RUNTIME_DIR": str(tmp_path / ".runtime")}  # fmt: skip
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--ServerApp.open_browser=False",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI often run as root; jupyter refuses that unless told
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.flush()
                    pytest.fail(f"jupyter lab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_switch_slider_changes_the_image_in_jupyterlab(lab, tmp_path):
    base, token = lab
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/widget.ipynb?token={token}", timeout=120_000)
            # The kernel is ready when the status bar says so; then Run > Run All Cells, as a user would.
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=KERNEL_TIMEOUT_MS)
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.click("li[data-command='runmenu:run-all']")

            image = page.locator(".jp-OutputArea-output img.widget-image").first
            image.wait_for(state="visible", timeout=KERNEL_TIMEOUT_MS)
            page.wait_for_function("() => document.querySelector('img.widget-image').naturalWidth > 0")
            readout = page.locator(".widget-readout").first
            before_src, before_readout = image.get_attribute("src"), readout.inner_text()
            before_png = image.screenshot()

            # Keyboard on the slider handle: Home goes to the first switch step (k = 0, pure c1).
            handle = page.locator(".widget-slider .noUi-handle").first
            handle.focus()
            handle.press("Home")
            page.wait_for_function(
                "(old) => document.querySelector('img.widget-image').src !== old", arg=before_src, timeout=60_000
            )
            assert readout.inner_text() != before_readout
            assert readout.inner_text().strip() == "0"
            page.wait_for_function("() => document.querySelector('img.widget-image').complete")
            after_png = image.screenshot()
            assert after_png != before_png, "the slider moved but the image looks the same"
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))  # kept in pytest's tmp folder to see what happened
            raise
        finally:
            browser.close()
