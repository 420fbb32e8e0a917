"""The explorers of notebooks/06_explorers.ipynb in a real browser: JupyterLab driven by Playwright
in Debian's Chromium (Playwright's own browser download does not work on these machines).

The test starts JupyterLab on a free port (``BLIPTK_MODEL=tiny``, no token), runs the notebook,
checks that the three explorers render as widgets, drives their controls, and checks the layout at
1280 x 800. Screenshots go to ``BLIPTK_SCREENSHOTS`` (default: the test's temporary folder); the
test prints where. Every process it starts is stopped, the kernel included.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt-get install -y chromium)"),
]

# The kernel is connected and idle (the toolbar's indicator says "idle" even before it connects).
KERNEL_READY = """() => {
  const kernel = window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""
EVERY_CELL_RAN = """() => {
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(e => e.textContent.trim());
  return prompts.length > 0 && prompts.every(t => /^\\[\\d+\\]:$/.test(t));
}"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a free port, sealed off from the user's Jupyter settings; yields its
    URL, and stops it and every process under it (kernels run in sessions of their own)."""
    import psutil

    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir()
    shutil.copy(NOTEBOOKS / "06_explorers.ipynb", root)
    settings = home / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    env = {
        **os.environ,
        "BLIPTK_MODEL": "tiny",
        "BLIPTK_EXAMPLES": str(NOTEBOOKS),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "IPYTHONDIR": str(home / "ipython"),
    }
    env.pop("MPLBACKEND", None)  # the kernel picks matplotlib's inline backend
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.token=",
        "--ServerApp.password=",
        f"--ServerApp.root_dir={root}",
        "--allow-root",
        "--expose-app-in-browser",
        "--LabApp.news_url=None",
    ]
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115 (the server writes it until the finally below closes it)
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "lab.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "JupyterLab did not start"
                time.sleep(0.25)
        yield f"http://127.0.0.1:{port}"
    finally:
        tree = _descendants(server.pid)
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server shuts its kernels down
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(5)
        _, alive = psutil.wait_procs(tree, timeout=5)
        for process in alive:
            process.kill()
        log.close()


def test_the_explorers_render_and_respond_in_jupyterlab(lab, tmp_path):
    pytest.importorskip("playwright")
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("BLIPTK_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {shots}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(120_000)
            page.goto(f"{lab}/lab/tree/06_explorers.ipynb")
            page.wait_for_function("() => typeof window.jupyterapp !== 'undefined'")
            page.wait_for_function(KERNEL_READY)
            # The command's promise resolves when the last cell has run.
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(EVERY_CELL_RAN)
            page.wait_for_function(KERNEL_READY)
            explorers = page.locator(".jp-OutputArea-executeResult:has(.jupyter-widgets)")
            expect(explorers).to_have_count(3)
            page.wait_for_function("() => document.querySelectorAll('.jp-OutputArea-output .widget-image[src^=\"blob:\"]').length >= 2")
            text = page.inner_text(".jp-NotebookPanel .jp-Notebook")
            assert "Error displaying widget" not in text and "display it in JupyterLab" not in text and "Traceback" not in text
            stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
            assert not [text for text in stderr if "Glyph" in text], stderr  # no missing-glyph warnings
            caption_view, attention_view, stepper_view = explorers.nth(0), explorers.nth(1), explorers.nth(2)

            def show(view, name):
                view.evaluate("element => element.scrollIntoView({block: 'start'})")
                time.sleep(0.3)
                page.screenshot(path=str(shots / name))

            # The controls stay beside the output, whole, with their readouts, whatever the caption's length.
            show(caption_view, "1-caption-explorer.png")
            controls, output = caption_view.locator(".widget-hbox").first.locator(":scope > .widget-vbox").all()
            left, right = controls.bounding_box(), output.bounding_box()
            assert left["x"] + left["width"] <= right["x"] + 1 and right["x"] + right["width"] <= 1280
            for readout in controls.locator(".widget-readout").all():
                box = readout.bounding_box()
                assert box["width"] > 10 and box["x"] + box["width"] <= left["x"] + left["width"] + 1
            chart = caption_view.locator(".widget-image")
            assert chart.bounding_box()["width"] <= 481

            # Fewer tokens: fewer token rows.
            tokens = caption_view.locator("span[title^='token ']")
            before = tokens.count()
            slider = caption_view.locator(".widget-slider").filter(has=page.locator(".widget-label:text-is('max new tokens')"))
            slider.locator(".widget-readout").click()
            slider.locator(".widget-readout").fill("5")
            slider.locator(".widget-readout").press("Enter")
            expect(tokens).to_have_count(5)
            assert before == 25
            # A typed prompt starts the caption.
            caption = caption_view.locator(".widget-html-content b").first
            prompt = caption_view.locator(".widget-text").filter(has=page.locator(".widget-label:text-is('prompt')")).locator("input")
            prompt.fill("a picture of")
            prompt.press("Enter")
            expect(caption).to_have_text(re.compile(r"^a picture of"))
            show(caption_view, "2-after-prompt-and-max-tokens.png")

            # The token slider moves the attention overlay's label.
            label = attention_view.locator(".widget-html-content").filter(has_text=re.compile(r"^token \d+:"))
            expect(label).to_have_text(re.compile(r"^token 0:"))
            handle = attention_view.locator(".widget-slider .noUi-handle").first
            handle.focus()
            handle.press("ArrowRight")
            expect(label).to_have_text(re.compile(r"^token 1:"))
            overlay = attention_view.locator(".widget-image").bounding_box()
            assert overlay["width"] <= 481 and overlay["height"] <= 481
            show(attention_view, "3-attention-explorer.png")

            # The step button adds a step.
            state = stepper_view.locator(".widget-html-content").filter(has_text=re.compile(r"^step \d+:"))
            for step in range(3):
                stepper_view.locator(".jupyter-button:text-is('next token')").click()
                expect(state).to_have_text(re.compile(rf"^step {step}:"))
            assert "KV cache 6 positions" in state.inner_text()
            show(stepper_view, "4-step-through.png")
        finally:
            browser.close()
