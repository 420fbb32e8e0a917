"""The explorers of notebooks/06_explorers.ipynb in a real browser: JupyterLab driven by Playwright
in Debian's Chromium (Playwright's own browser download does not work on these machines).

The test starts JupyterLab on a free port (``BLIPTK_MODEL=tiny``, no token), runs the notebook,
checks that the three explorers render as widgets, drives their controls (a prompt acts on Enter, a
busy indicator shows, beams disable the sampling controls), and checks the layout at 1024 x 768 with
the file browser open; and that integrated gradients on ViT-B/16 (random weights) shows its progress, stops,
and leaves the kernel free for the next control at once. Screenshots go to ``BLIPTK_SCREENSHOTS`` (default: the test's temporary folder); the
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


# Every slider readout and control label of the explorers, whole: its text not clipped by its box.
CLIPPED_READOUTS = """() => [...document.querySelectorAll('.jp-OutputArea-output .widget-readout, .jp-OutputArea-output .widget-label')]
  .filter(e => e.offsetParent !== null && (e.scrollWidth > e.clientWidth + 1 || e.getBoundingClientRect().width < 12))
  .map(e => e.textContent)"""
# Whether the busy indicator has shown since this was installed (a caption of the tiny net is quick).
WATCH_BUSY = """() => {
  window.bliptkBusySeen = false;
  new MutationObserver(() => { if (document.querySelector('.bliptk-busy')) window.bliptkBusySeen = true; })
    .observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def _screenshots(tmp_path) -> Path:
    """Where a browser test keeps its screenshots (BLIPTK_SCREENSHOTS, to look at them afterwards)."""
    shots = Path(os.environ.get("BLIPTK_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {shots}")
    return shots


def _notebook_page(browser, url: str, viewport: dict, timeout_ms: int):
    """A page of JupyterLab with a notebook open and its kernel ready."""
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(timeout_ms)
    page.goto(url)
    page.wait_for_function("() => typeof window.jupyterapp !== 'undefined'")
    page.wait_for_function(KERNEL_READY)
    return page


def test_the_explorers_render_and_respond_in_jupyterlab(lab, tmp_path):
    pytest.importorskip("playwright")
    from playwright.sync_api import expect, sync_playwright

    shots = _screenshots(tmp_path)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            # A small laptop's screen, with JupyterLab's file browser open beside the notebook.
            page = _notebook_page(browser, f"{lab}/lab/tree/06_explorers.ipynb", {"width": 1024, "height": 768}, 120_000)
            page.evaluate("() => window.jupyterapp.commands.execute('filebrowser:activate')")
            page.wait_for_function("() => !window.jupyterapp.shell.leftCollapsed")
            # The command's promise resolves when the last cell has run.
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(EVERY_CELL_RAN)
            page.wait_for_function(KERNEL_READY)
            explorers = page.locator(".jp-OutputArea-executeResult:has(.jupyter-widgets)")
            expect(explorers).to_have_count(3)
            page.wait_for_function("() => document.querySelectorAll('.jp-OutputArea-output .widget-image[src^=\"blob:\"]').length >= 3")
            text = page.inner_text(".jp-NotebookPanel .jp-Notebook")
            assert "Error displaying widget" not in text and "display it in JupyterLab" not in text and "Traceback" not in text
            stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
            assert stderr == [], stderr  # random weights are said in a plain line; no warning box, no missing glyph
            caption_view, attention_view, stepper_view = explorers.nth(0), explorers.nth(1), explorers.nth(2)
            notebook = page.locator(".jp-NotebookPanel").bounding_box()
            assert page.locator(".jp-SideBar.jp-mod-left + .jp-SidePanel, #jp-left-stack").first.bounding_box()["width"] > 150

            def show(view, name):
                view.evaluate("element => element.scrollIntoView({block: 'start'})")
                time.sleep(0.3)
                page.screenshot(path=str(shots / name))

            # Every control and readout whole; the output, too narrow for a column beside the controls,
            # goes below them, and stays within the notebook.
            show(caption_view, "1-caption-explorer.png")
            assert page.evaluate(CLIPPED_READOUTS) == []
            controls, output = caption_view.locator(".widget-hbox").first.locator(":scope > .widget-vbox").all()
            left, right = controls.bounding_box(), output.bounding_box()
            beside = left["x"] + left["width"] <= right["x"] + 1
            below = right["y"] >= left["y"] + left["height"] - 1
            assert (beside or below) and right["width"] >= 359 and right["x"] + right["width"] <= notebook["x"] + notebook["width"]
            for readout in controls.locator(".widget-readout").all():
                box = readout.bounding_box()
                assert box["width"] > 10 and box["x"] + box["width"] <= left["x"] + left["width"] + 1
            chart = caption_view.locator(".widget-image").last
            assert 359 <= chart.bounding_box()["width"] <= 481

            def slider(name):
                return caption_view.locator(".widget-slider").filter(has=page.locator(f".widget-label:text-is('{name}')"))

            def set_slider(name, value):
                readout = slider(name).locator(".widget-readout")
                readout.click()
                readout.fill(str(value))
                readout.press("Enter")

            # Fewer tokens: fewer token rows, with a busy indicator while the model works.
            tokens = caption_view.locator("span[title^='token ']")
            before = tokens.count()
            page.evaluate(WATCH_BUSY)
            set_slider("max new tokens", 5)
            expect(tokens).to_have_count(5)
            assert before == 25 and page.evaluate("() => window.bliptkBusySeen")
            expect(caption_view.locator(".bliptk-busy")).to_have_count(0)
            # A prompt typed without Enter starts no caption; Enter does.
            caption = caption_view.locator(".widget-html-content b").first
            shown = caption.inner_text()
            prompt = caption_view.locator(".widget-text").filter(has=page.locator(".widget-label:text-is('prompt')")).locator("input")
            page.evaluate(WATCH_BUSY)
            prompt.fill("a picture of")
            time.sleep(2)
            assert caption.inner_text() == shown and not page.evaluate("() => window.bliptkBusySeen")
            prompt.press("Enter")
            expect(caption).to_have_text(re.compile(r"^a picture of"))
            show(caption_view, "2-after-prompt-and-max-tokens.png")
            # Beams make the sampling controls (and the temperature) inapplicable: disabled.
            sampling = ["temperature", "top k", "top p"]
            set_slider("temperature", 0.8)
            expect(slider("top k").locator(".noUi-target[disabled]")).to_have_count(0)
            set_slider("num beams", 3)
            for name in sampling:
                expect(slider(name).locator(".noUi-target[disabled]")).to_have_count(1)
            seed = caption_view.locator(".widget-inline-hbox").filter(has=page.locator(".widget-label:text-is('seed')")).locator("input")
            expect(seed).to_be_disabled()
            show(caption_view, "3-beams-disable-sampling.png")

            # The token slider moves the attention overlay's label.
            label = attention_view.locator(".widget-html-content").filter(has_text=re.compile(r"^token \d+:"))
            expect(label).to_have_text(re.compile(r"^token 0:"))
            handle = attention_view.locator(".widget-slider .noUi-handle").first
            handle.focus()
            handle.press("ArrowRight")
            expect(label).to_have_text(re.compile(r"^token 1:"))
            overlay = attention_view.locator(".widget-image").bounding_box()
            assert overlay["width"] <= 481 and overlay["height"] <= 481
            show(attention_view, "4-attention-explorer.png")

            # The method selector: Grad-CAM at the chosen layer, a new picture; the heads selector,
            # which only raw attention uses, disabled; relevance disables the layer too.
            def selector(name):
                return attention_view.locator(".widget-dropdown").filter(has=page.locator(f"label:text-is('{name}')")).locator("select")

            picture = attention_view.locator(".widget-image")
            shown = picture.get_attribute("src")
            selector("method").select_option(label="Grad-CAM")
            expect(label).to_have_text(re.compile(r"^token 1: .*\(Grad-CAM, layer \d+\)$"))
            expect(picture).not_to_have_attribute("src", shown)  # the new picture arrives after the label
            expect(selector("heads")).to_be_disabled()
            expect(selector("layer")).to_be_enabled()
            selector("method").select_option(label="relevance (slow: tens of seconds)")  # a slow method says so
            expect(label).to_have_text(re.compile(r"^token 1: .*\(relevance\)$"))
            expect(selector("layer")).to_be_disabled()
            handle.focus()
            handle.press("ArrowRight")
            expect(label).to_have_text(re.compile(r"^token 2: .*\(relevance\)$"))
            show(attention_view, "4b-attention-explorer-relevance.png")
            selector("method").select_option(label="cross-attention")
            expect(selector("heads")).to_be_enabled()

            # The step button adds a step; at the end the stepper says why it stopped.
            state = stepper_view.locator(".widget-html-content").filter(has_text=re.compile(r"^step \d+:"))
            for step in range(3):
                stepper_view.locator(".jupyter-button:text-is('next token')").click()
                expect(state).to_have_text(re.compile(rf"^step {step}:"))
            assert "KV cache 6 positions" in state.inner_text()
            assert page.evaluate(CLIPPED_READOUTS) == []
            show(stepper_view, "5-step-through.png")
        finally:
            browser.close()


# A notebook of one attention explorer on the full-size ViT-B/16 (random weights: the time is the
# architecture's), where integrated gradients takes many minutes on a CPU.
SLOW_NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "metadata": {},
            "outputs": [],
            "source": [
                "import bliptk\n",
                "from bliptk.notebook.widgets import AttentionExplorer\n",
                "\n",
                'captioner = bliptk.load("ViT-B/16", pretrained=False)\n',
                'view = AttentionExplorer(captioner, bliptk.example_path("images/woman-with-cake.jpg"), max_new_tokens=8)\n',
                "view.widget",
            ],
        }
    ],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}


def test_integrated_gradients_shows_progress_and_stops_at_once(lab, tmp_path):
    pytest.importorskip("playwright")
    import json

    from playwright.sync_api import expect, sync_playwright

    (tmp_path / "root" / "slow.ipynb").write_text(json.dumps(SLOW_NOTEBOOK))
    shots = _screenshots(tmp_path)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = _notebook_page(browser, f"{lab}/lab/tree/slow.ipynb", {"width": 1280, "height": 900}, 180_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(EVERY_CELL_RAN)
            view = page.locator(".jp-OutputArea-executeResult:has(.jupyter-widgets)")
            label = view.locator(".widget-html-content").filter(has_text=re.compile(r"^token \d+:"))
            expect(label).to_have_text(re.compile(r"^token 0: .*\(cross-attention\)$"))
            progress, stop = view.locator(".bliptk-progress"), view.locator(".jupyter-button:text-is('Stop')")
            expect(progress).to_be_hidden()

            view.locator(".widget-dropdown").filter(has=page.locator("label:text-is('method')")).locator("select").select_option(
                label="integrated gradients (slow: minutes)"
            )
            # The map faded and said to be computing; the bar counts the path's steps and says the time left.
            expect(label).to_have_text(re.compile(r"\(computing integrated gradients…\)$"))
            expect(progress).to_be_visible()
            expect(
                view.locator(".widget-html-content").filter(has_text=re.compile(r"^integrated gradients: \d+ of \d+ steps, .* left$"))
            ).to_have_count(1, timeout=180_000)
            view.evaluate("element => element.scrollIntoView({block: 'start'})")
            page.screenshot(path=str(shots / "6-integrated-gradients-progress.png"))

            stop.click()
            expect(view.locator(".bliptk-stopped")).to_have_text(re.compile(r"^integrated gradients stopped after \d+ of \d+ steps$"))
            expect(progress).to_be_hidden()
            expect(label).to_have_text(re.compile(r"^token 0: .*\(cross-attention\)$"))
            # The kernel is free: the next control is answered within 2 s, though the worker's last step may still run.
            handle = view.locator(".widget-slider .noUi-handle").first
            handle.focus()
            start = time.monotonic()
            handle.press("ArrowRight")
            expect(label).to_have_text(re.compile(r"^token 1: .*\(cross-attention\)$"), timeout=10_000)
            answered = time.monotonic() - start
            print(f"slider answered {answered:.2f} s after Stop")
            assert answered < 2.0
            page.screenshot(path=str(shots / "7-after-stop.png"))
        finally:
            browser.close()
