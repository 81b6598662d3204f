"""The widgets in a real JupyterLab: Playwright drives Debian's Chromium.

Starts ``jupyter lab`` on 127.0.0.1 with a token (Jupyter and Chromium write
only under temporary directories), opens notebooks/widgets.ipynb, runs all its
cells on the carme kernel, and checks that every widget rendered live: node
cards, the GPU pane, the sortable objects table with the arrays just put, a
finished progress bar and the timeline canvas with a tooltip on hover. A
screenshot is kept in the test's tmp dir (``CARME_SCREENSHOT_DIR`` names a
folder to copy it to, such as docs/screenshots).

Skipped, with the reason, where Chromium, Playwright or JupyterLab is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import CHROMIUM, CHROMIUM_ARGS, LAB_OVERRIDES, free_port, stop_server

pytestmark = [pytest.mark.processes, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "widgets.ipynb"


def _requirements() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install -y chromium)"
    for mod in ("playwright", "jupyterlab", "anywidget"):
        try:
            __import__(mod)
        except ImportError:
            return f"python package {mod} not installed (pip install '.[lab]' playwright)"
    return None


@pytest.fixture
def lab(jupyter_dirs: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A running JupyterLab serving a copy of the widgets notebook: (base url, token)."""
    why = _requirements()
    if why:
        pytest.skip(why)
    settings = tmp_path / "lab-settings"
    settings.mkdir()
    (settings / "overrides.json").write_text(json.dumps(LAB_OVERRIDES))
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    token = secrets.token_hex(16)
    port = free_port()
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--allow-root",
           f"--LabApp.app_settings_dir={settings}", f"--LabApp.user_settings_dir={tmp_path / 'user-settings'}",
           f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"]
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, HOME=str(tmp_path)), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield url, token
    finally:
        stop_server(proc)
        log.close()


def _start_session(url: str, token: str) -> None:
    """Start the notebook's carme kernel through the REST API, so the page attaches to it.

    (Left to the page, JupyterLab sometimes starts two kernels and asks which to keep.)
    """
    body = json.dumps({"path": NOTEBOOK.name, "type": "notebook", "name": NOTEBOOK.name,
                       "kernel": {"name": "carme"}}).encode()
    req = urllib.request.Request(f"{url}/api/sessions", data=body, method="POST",
                                 headers={"Authorization": f"token {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert json.load(resp)["kernel"]["name"] == "carme"


def _widget(page: Any, title: str) -> Any:
    return page.locator(f".carme-w[data-carme-widget='{title}']").first


def test_widgets_render_live_in_jupyterlab(lab: tuple[str, str], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    url, token = lab
    shot = tmp_path / "widgets.png"
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 3200}, accept_downloads=True,
        )
        try:
            _start_session(url, token)
            page = ctx.new_page()
            page.goto(f"{url}/lab/tree/{NOTEBOOK.name}?token={token}", timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            page.wait_for_timeout(3000)  # let the page settle on its kernel
            _run_all(page, tmp_path)

            if not _finished(page):
                # JupyterLab replaced the kernel while the first cells ran: start over once
                _menu(page, "Kernel", r"^Restart Kernel and Run All Cells")
                _accept_kernel_dialog(page)
                assert _finished(page, give_up_on_error=False), "the notebook did not run to its end in JupyterLab"
            cluster = _widget(page, "carme cluster")
            cluster.locator(".carme-card[data-node-id]").first.wait_for(timeout=30_000)
            assert cluster.locator(".carme-card[data-node-id]").count() == 1
            assert "2 cores" in cluster.inner_text() or "of 2" in cluster.inner_text()

            gpus = _widget(page, "carme GPUs")
            gpus.wait_for(timeout=30_000)
            assert gpus.locator(".carme-gpu").count() > 0 or "No GPUs" in gpus.inner_text()

            objects = _widget(page, "carme object store")
            rows = objects.locator("table.carme-objects tbody tr")
            rows.first.wait_for(timeout=30_000)
            first = rows.first.inner_text()
            assert "4.0 MiB" in first and "ndarray" in first, first
            objects.locator("th[data-sort='size']").click()  # ascending now
            page.wait_for_function(
                "() => document.querySelector(\"th[data-sort='size']\").textContent.includes('▲')",
                timeout=10_000)

            bar = _widget(page, "carme progress")
            page.wait_for_function(
                "(el) => el.innerText.includes('8/8 done')", arg=bar.element_handle(), timeout=30_000)

            timeline = _widget(page, "carme timeline")
            canvas = timeline.locator("canvas.carme-timeline-canvas")
            canvas.wait_for(timeout=30_000)
            assert "spans on" in timeline.inner_text()
            assert "work" in timeline.locator(".carme-legend").inner_text()
            box = canvas.bounding_box()
            assert box and box["width"] > 300 and box["height"] > 30
            _hover_a_bar(page, canvas, box)
            for title in ("carme cluster", "carme timeline"):
                assert "live" in _widget(page, title).locator(".carme-badge").inner_text()
            page.screenshot(path=str(shot), full_page=True)
        except Exception:
            with contextlib.suppress(Exception):
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        finally:
            ctx.close()
    assert shot.stat().st_size > 10_000
    target = os.environ.get("CARME_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / "widgets.png")


def _finished(page: Any, give_up_on_error: bool = True) -> bool:
    """Wait for the last cell's output; False as soon as a cell shows an error instead."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if page.locator(r"text=/wrote \/.*carme-timeline\.json: \d+ spans/").count():
            return True
        errors = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        if give_up_on_error and page.locator(errors).count():
            return False
        time.sleep(0.5)
    return False


def _menu(page: Any, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).first.click()
    entry = page.locator(".lm-Menu-itemLabel", has_text=re.compile(item))
    entry.first.wait_for(timeout=10_000)
    entry.first.click()


def _run_all(page: Any, tmp_path: Path) -> None:
    """Run > Run All Cells, from the menu bar; again while no cell has started.

    A run asked for before the kernel's connection is ready is dropped by the
    frontend (every prompt stays ``[ ]``), so the test asks until one starts.
    """
    prompts = page.locator(".jp-CodeCell .jp-InputPrompt")
    for _ in range(12):
        _accept_kernel_dialog(page)
        _menu(page, "Run", r"^Run All Cells$")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            _accept_kernel_dialog(page)
            if any(re.search(r"\[(\*|\d+)\]", t) for t in prompts.all_inner_texts()):
                return
            time.sleep(0.25)
    page.screenshot(path=str(tmp_path / "not-started.png"), full_page=True)
    pytest.fail("Run All Cells started no cell within a minute")


def _accept_kernel_dialog(page: Any) -> None:
    """JupyterLab sometimes asks which kernel to start: take the one it offers (the notebook's)."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count() and dialog.first.is_visible():
        text = dialog.first.inner_text()
        assert "carme" in text or "Restart" in text, f"unexpected dialog: {text}"
        for _ in range(10):
            if not dialog.count():
                break
            with contextlib.suppress(Exception):
                dialog.locator(".jp-Dialog-button.jp-mod-accept").first.click(timeout=2_000)
            time.sleep(0.5)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)


def _hover_a_bar(page: Any, canvas: Any, box: dict[str, float]) -> None:
    """Sweep the first lane until the tooltip names a function."""
    y = box["y"] + 18 + 10  # axis, then the middle of lane 0
    tip = page.locator(".carme-tip")
    for i in range(120):
        page.mouse.move(box["x"] + 200 + i * (box["width"] - 200) / 120, y)
        if tip.is_visible() and tip.inner_text().strip():
            text = tip.inner_text()
            assert any(s in text for s in ("FINISHED", "RUNNING", "FAILED")), text
            return
    pytest.fail("no tooltip appeared over the timeline's first lane")
