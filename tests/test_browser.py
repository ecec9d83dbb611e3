"""In a real browser (the system Chromium, headless, driven over the DevTools protocol):

(a) JupyterLab from ``make lab``'s environment runs a cell that calls ``render.view3d`` on a small
    generated subject, with no network, and draws a non-blank WebGL canvas;
(b) the ``make report`` index and notebook pages open without console errors and draw their 3D view.

Skipped, with the reason, only where no Chromium is installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None,
                       reason="no Chromium here (apt-get install -y chromium): browser tests skipped"),
    pytest.mark.slow,
]
VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Browser:
    """Headless Chromium and one page, over the DevTools protocol; collects console errors."""

    def __init__(self, profile: Path) -> None:
        import websocket  # websocket-client, in the lock (jupyter_server needs it)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             "--window-size=1280,1000", f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("Chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self._id = 0
        self.errors: list[str] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def _event(self, msg: dict[str, Any]) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") == "error":
            self.errors.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                            for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            self.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def js(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise RuntimeError(f"{expression[:60]}…: {d.get('exception', {}).get('description') or d.get('text')}")
        return res["result"].get("value")

    def wait(self, expression: str, timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:  # the page is between documents
                value = None
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; console errors: {self.errors}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def pixels(self, selector: str) -> np.ndarray:
        """RGB pixels (0..1) of the element matched by ``selector``, from a screenshot."""
        from PIL import Image

        box = self.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                      " return {x: r.x, y: r.y, width: r.width, height: r.height}; })()")
        shot = self.call("Page.captureScreenshot", format="png", clip={**box, "scale": 1})
        image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
        return np.asarray(image, float) / 255.0

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "chromium-profile")
    try:
        yield b
    finally:
        b.close()


def _coloured(pixels: np.ndarray) -> int:
    """Number of clearly coloured pixels (vessel surfaces, not white background or grey axes)."""
    return int(((pixels.max(axis=2) - pixels.min(axis=2)) > 0.25).sum())


CELL = """from fetalcmr.synth import generate_subject
from fetalcmr.render import view3d

subject = generate_subject(2, seed=0, grid=48, spacing_mm=1.08)  # a small DAA subject
view3d(subject.image, subject.gt, spacing_mm=(1.08, 1.08, 1.08), title="generated DAA subject")"""


@pytest.fixture()
def lab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """JupyterLab from the virtual environment (as `make lab` starts it) on a free port with a token."""
    root = tmp_path / "lab"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(CELL)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(root / "view.ipynb"))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "jws"), "IPYTHONDIR": str(tmp_path / "ipython"),
           "MPLBACKEND": "Agg"}
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(
        [str(VENV_BIN / "jupyter"), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True", "--KernelManager.shutdown_wait_time=1",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()) from None
                time.sleep(0.3)
        yield f"{base}/lab/tree/view.ipynb?token={token}", tmp_path / "lab.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_jupyterlab_draws_the_3d_view_offline(browser: Browser, lab: tuple[str, Path]) -> None:
    url, log = lab
    browser.open(url)
    panel = "Array.from(jupyterapp.shell.widgets('main')).find(w => w.sessionContext)"
    browser.wait(f"!!(window.jupyterapp && {panel} && {panel}.sessionContext.isReady)", 120,
                 f"the notebook and its kernel (server log: {log})")
    # headless Chromium has no focus: make the notebook the current widget, then run it
    browser.js(f"(async () => {{ const p = {panel}; jupyterapp.shell.activateById(p.id);"
               " await new Promise(r => setTimeout(r, 300));"
               " await jupyterapp.commands.execute('notebook:run-all-cells'); })()")
    out = ".jp-OutputArea-output.js-plotly-plot"  # jupyterlab-plotly's renderer, from the plotly package
    browser.wait(f"!!document.querySelector('{out} .gl-container canvas')", 120,
                 f"a plotly WebGL canvas in the cell's output (server log: {log})")
    text = browser.js("document.querySelector('.jp-Cell-outputArea').innerText")
    assert "view3d: plotly (works offline" in text
    assert browser.js(f"(() => {{ const c = document.querySelector('{out} .gl-container canvas');"
                      " return !!(c.getContext('webgl') || c.getContext('webgl2')); })()")
    browser.js(f"document.querySelector('{out}').scrollIntoView()")
    deadline = time.monotonic() + 30
    while _coloured(browser.pixels(out)) < 2000 and time.monotonic() < deadline:
        time.sleep(0.5)
    pixels = browser.pixels(out)
    assert pixels.std() > 0.05 and _coloured(pixels) >= 2000, "the WebGL canvas is blank"


def test_report_index_and_pages_open_without_console_errors(browser: Browser, tmp_path: Path) -> None:
    from test_site import fake_run

    from fetalcmr import site

    report = site.build_report(fake_run(tmp_path))
    for name in ("index.html", "00_first.html", "01_second.html"):
        browser.errors.clear()
        browser.open((report.index.parent / name).as_uri())
        state = browser.wait("document.readyState === 'complete' && (document.documentElement.getAttribute"
                             "('data-rendered') || document.documentElement.getAttribute('data-error'))",
                             30, f"{name} to render")
        assert state == "ok", f"{name}: {state}"  # else the page's data-error
        assert not browser.errors, f"{name}: {browser.errors}"
    assert browser.js("document.querySelectorAll('.fc-plotly .gl-container canvas').length") >= 1
    assert _coloured(browser.pixels(".fc-plotly")) > 500
    # the table of contents leads to the pages and into the gallery
    browser.open(report.index.as_uri())
    browser.wait("document.readyState === 'complete'", 10, "the index")
    links = browser.js("Array.from(document.querySelectorAll('a')).map(a => a.getAttribute('href'))")
    assert "00_first.html" in links and "01_second.html" in links and "gallery/case_sub-000.html" in links
