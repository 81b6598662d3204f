"""The carme side panel in a real JupyterLab: Playwright drives Debian's Chromium.

Starts ``jupyter lab`` on 127.0.0.1 with the carme_lab server extension (enabled
by the repository's jupyter-config file) and the prebuilt panel (built first if
missing or older than its sources), every Jupyter, carme and Chromium path under the test's tmp dir. Then,
as a user would: open the panel (it says no cluster runs), start a cluster from
it, open a notebook whose carme kernel, started now, inherits the selected address
(``%carme status`` names it),
run cells that launch tasks and an actor, and watch the panel's counts and live
timeline change; open the full timeline; insert the connection code into the
notebook; restart the server and see the panel reconnect to the same cluster;
stop the cluster from the panel. A second test watches a kernel's embedded
cluster with nothing selected, then picks a Ray head of this machine in the
selector (engine and capability flags shown). Screenshots stay in the tmp dir; the one of the
live panel is copied to ``$CARME_SCREENSHOT_DIR`` when that is set (e.g.
docs/screenshots, to refresh the picture there).

Skipped, with the reason, where Chromium, Playwright, JupyterLab or (to build
the panel) npm is missing.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_support import CHROMIUM, CHROMIUM_ARGS, LAB_OVERRIDES, free_port, stop_server

from ray_support import RayHead, requires_ray

pytestmark = [pytest.mark.processes, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
LABEXT = ROOT / "extension" / "carme_lab" / "labextension"
SERVER_CONFIG = ROOT / "jupyter-config" / "jupyter_server_config.d" / "carme_lab.json"
N_TASKS = 12
# nothing shown; Ray heads of other programs of this user on this machine are listed, not shown
NO_CLUSTER = r"No cluster is (running here|selected \(\d+ running)"
NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": "%carme status"},
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": ("from carme.notebook import default_address\n"
                    "print('kernel joins', default_address().address or 'nothing')")},
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": (
             "import time\nimport carme\n"
             "carme.init()  # the panel's selection, read now\n\n"
             "@carme.remote\ndef work(i):\n    time.sleep(0.5)\n    return i\n\n"
             "@carme.remote\nclass Tally:\n    def __init__(self):\n        self.n = 0\n"
             "    def add(self, k):\n        self.n += k\n        return self.n\n\n"
             "tally = Tally.options(name='tally').remote()\n"
             "blob = carme.put(bytes(3_000_000))\n"
             f"total = sum(carme.get([work.remote(i) for i in range({N_TASKS})]))\n"
             "print('total', total, 'tally', carme.get(tally.add.remote(total)))")},
        # a %%remote namespace (an actor with a long name), then dropped: it leaves the list
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": "%%remote --actor scratch\nkept = 1"},
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": "%carme drop scratch\nprint('dropped', 'scratch')"},
    ],
    "metadata": {"kernelspec": {"name": "carme", "display_name": "carme", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}
# a kernel with no cluster selected: it runs its tasks in an embedded cluster of its own
EMBEDDED_NOTEBOOK = {
    "cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
               "source": (
                   "import carme\ncarme.init(ignore_reinit_error=True)\n\n"
                   "@carme.remote\ndef work(i):\n    return i\n\n"
                   f"print('sum', sum(carme.get([work.remote(i) for i in range({N_TASKS})])))")}],
    "metadata": NOTEBOOK["metadata"], "nbformat": 4, "nbformat_minor": 5,
}


def _requirements() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install -y chromium)"
    for mod in ("playwright", "jupyterlab"):
        try:
            __import__(mod)
        except ImportError:
            return f"python package {mod} not installed (pip install '.[lab,test]')"
    if not (LABEXT / "package.json").exists() and shutil.which("npm") is None:
        return f"the panel is not built ({LABEXT}) and npm is missing to build it"
    return None


def _stale() -> bool:
    """The panel's build is missing or incomplete, or a source changed after it was made
    (the rule the wheel's build hook follows)."""
    sys.path.insert(0, str(ROOT))
    try:
        from hatch_build import is_stale, missing_parts
    finally:
        sys.path.remove(str(ROOT))
    return bool(missing_parts(LABEXT)) or is_stale(ROOT)


def _ensure_built() -> None:
    if not _stale():
        return
    if shutil.which("npm") is None:
        pytest.fail(f"the panel in {LABEXT} is missing or older than its sources, and npm is "
                    f"not installed to rebuild it (scripts/build-labextension)")
    out = subprocess.run([str(ROOT / "scripts" / "build-labextension")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, f"building the panel failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"


@dataclass
class Lab:
    url: str
    token: str
    tmp: Path
    env: dict[str, str]
    cmd: list[str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.tmp / "lab.log").open("a")
        self.proc = subprocess.Popen(self.cmd, cwd=self.tmp / "work", stdout=log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not start: {self.log()[-3000:]}")
                time.sleep(0.3)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_server(proc)

    def log(self) -> str:
        return (self.tmp / "lab.log").read_text(errors="replace")


def make_lab(tmp_path: Path, args: tuple[str, ...] = ()) -> Lab:
    """A `Lab` (not started) with the panel built and every path under `tmp_path`; skips
    the test where Chromium, Playwright or JupyterLab is missing. `args` go to jupyter lab;
    notebooks go into ``tmp_path / "work"``, carme's state into ``tmp_path / "carme-state"``."""
    why = _requirements()
    if why:
        pytest.skip(why)
    _ensure_built()
    # the panel: found on JUPYTER_PATH (as an installed wheel would put it in share/jupyter)
    share = tmp_path / "share" / "jupyter"
    (share / "labextensions").mkdir(parents=True)
    (share / "labextensions" / "carme-lab").symlink_to(LABEXT, target_is_directory=True)
    # the server extension: enabled by the same file the wheel installs
    config = tmp_path / "config"
    (config / "jupyter_server_config.d").mkdir(parents=True)
    shutil.copy(SERVER_CONFIG, config / "jupyter_server_config.d" / SERVER_CONFIG.name)
    settings = tmp_path / "lab-settings"
    settings.mkdir()
    (settings / "overrides.json").write_text(json.dumps(LAB_OVERRIDES))
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(tmp_path), CARME_STATE_DIR=str(tmp_path / "carme-state"),
               JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTER_PATH=os.pathsep.join([str(share), os.environ.get("JUPYTER_PATH", "")]))
    env.pop("CARME_ADDRESS", None)
    token = secrets.token_hex(16)
    port = free_port()
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--allow-root",
           f"--LabApp.app_settings_dir={settings}", f"--LabApp.user_settings_dir={tmp_path / 'user-settings'}",
           f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", *args]
    return Lab(f"http://127.0.0.1:{port}", token, tmp_path, env, cmd)


@pytest.fixture
def lab(jupyter_dirs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    work = tmp_path / "work"
    work.mkdir()
    (work / "tasks.ipynb").write_text(json.dumps(NOTEBOOK))
    (work / "embedded.ipynb").write_text(json.dumps(EMBEDDED_NOTEBOOK))
    state = tmp_path / "carme-state"
    monkeypatch.setenv("CARME_STATE_DIR", str(state))  # this process stops the clusters afterwards
    server = make_lab(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        from carme import cluster

        cluster.stop_all()


def _text(page: Any, testid: str) -> str:
    return str(page.locator(f"[data-testid='{testid}']").first.inner_text())


def _count(page: Any, bucket: str) -> int:
    return int(_text(page, f"carme-count-{bucket}") or 0)


def _open_panel(page: Any) -> Any:
    tab = page.locator(".jp-SideBar [data-id='carme-side-panel']").first
    tab.wait_for(timeout=60_000)
    panel = page.locator("#carme-side-panel")
    if not panel.is_visible():
        tab.click()
    panel.wait_for(state="visible", timeout=10_000)
    return panel


def _wait_text(page: Any, testid: str, pattern: str, timeout: float = 30_000) -> str:
    page.wait_for_function(
        "([id, pat]) => { const el = document.querySelector(`[data-testid='${id}']`);"
        " return el !== null && new RegExp(pat).test(el.textContent); }",
        arg=[testid, pattern], timeout=timeout)
    return _text(page, testid)


def _dismiss_dialogs(page: Any) -> None:
    """Close Lab's own dialogs (e.g. "Server Connection Error" while the server was away)."""
    dialogs = page.locator(".jp-Dialog")
    for _ in range(5):
        if dialogs.count() == 0:
            return
        buttons = dialogs.first.locator(".jp-Dialog-button")
        if buttons.count():
            buttons.last.click()
        else:
            page.keyboard.press("Escape")
        page.wait_for_timeout(200)


def _run_all(page: Any) -> None:
    """Run > Run All Cells on the focused notebook; once more if no cell started within 15 s.

    (A click that lands while Lab is still wiring the new kernel's session is sometimes lost.)
    """
    first_prompt = page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first
    for _ in range(2):
        # on a loaded machine Lab sometimes asks "Select Kernel" for the kernel it has just
        # started; its default button keeps that kernel
        _dismiss_dialogs(page)
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).first.click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if re.search(r"\[[*0-9]+\]", first_prompt.inner_text()):
                return
            time.sleep(0.2)
    pytest.fail("Run All Cells did not start the notebook's cells (twice)")


def _assert_states_whole(page: Any) -> None:
    """Every actor's state cell shows all of its text, inside the panel."""
    cut = page.evaluate(
        "() => { const panel = document.querySelector('#carme-side-panel').getBoundingClientRect();"
        " return [...document.querySelectorAll('.clab-actors td.clab-state')]"
        ".filter(td => td.getClientRects().length > 0)"
        ".filter(td => td.scrollWidth > td.clientWidth || td.getBoundingClientRect().right > panel.right + 0.5)"
        ".map(td => td.textContent); }")
    assert page.locator(".clab-actors td.clab-state").count() >= 2
    assert cut == [], f"actor states cut off: {cut}"


@contextlib.contextmanager
def _browser_page(lab: Lab, shots: Path) -> Iterator[Any]:
    """A Chromium page (fresh profile under the test's tmp dir); on failure a screenshot and
    the server log's end."""
    from playwright.sync_api import sync_playwright

    shots.mkdir()
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(lab.tmp / "chromium"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1500, "height": 1300},
        )
        page = ctx.new_page()
        try:
            yield page
        except BaseException:
            with contextlib.suppress(Exception):
                page.screenshot(path=str(shots / "failure.png"))
            print(f"screenshots in {shots}; server log:\n{lab.log()[-4000:]}")
            raise
        finally:
            ctx.close()


def test_side_panel_starts_watches_and_stops_a_cluster(lab: Lab, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    with _browser_page(lab, shots) as page:
        page.goto(f"{lab.url}/lab?token={lab.token}", timeout=60_000)
        _open_panel(page)
        _wait_text(page, "carme-status", NO_CLUSTER)
        page.screenshot(path=str(shots / "01-no-cluster.png"))

        # start a cluster from the panel: it is selected and shown live
        page.locator("[data-testid='carme-start']").click()
        status = _wait_text(page, "carme-status", r"Connected to 127\.0\.0\.1:\d+")
        address = re.search(r"127\.0\.0\.1:\d+", status).group(0)  # type: ignore[union-attr]
        assert page.locator(".clab-node").count() == 1
        assert _count(page, "finished") == 0
        assert page.locator("[data-testid='carme-cluster-select']").input_value() == address
        # no task ran yet: the title and the line under it speak of the same window
        title = page.locator(".clab-timeline-section h3").inner_text()
        window = re.fullmatch(r"Timeline \((the last \d+ s)\)", title)
        assert window, title
        assert _text(page, "carme-timeline-summary") == f"No task ran in {window.group(1)}."
        page.screenshot(path=str(shots / "02-started.png"))

        # a notebook opened now starts a kernel that joins the selected cluster
        page.goto(f"{lab.url}/lab/tree/tasks.ipynb?token={lab.token}", timeout=60_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
        _open_panel(page)
        _wait_text(page, "carme-status", f"Connected to {re.escape(address)}")
        _run_all(page)
        # watch the counts move: tasks in flight, then finished, live (not only at the end)
        in_flight, finished_seen = 0, set()
        deadline = time.monotonic() + 120
        while (done := _count(page, "finished")) < N_TASKS:
            finished_seen.add(done)
            in_flight = max(in_flight, _count(page, "pending") + _count(page, "running"))
            assert time.monotonic() < deadline, f"counts stuck: {done} finished"
            time.sleep(0.1)
        assert in_flight > 0, "the panel never showed a pending or running task"
        assert finished_seen - {0}, "the finished count jumped straight to the end: not live"
        page.wait_for_selector(f"text=kernel joins {address}", timeout=30_000)
        # the carme kernel says where it will join: the address the panel shows
        status_out = page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-OutputArea").inner_text()
        assert address in status_out, status_out
        page.wait_for_selector(f"text=total {sum(range(N_TASKS))} tally", timeout=60_000)
        timeline = page.locator("[data-testid='carme-timeline']")
        page.wait_for_function(
            "() => Number(document.querySelector(\"[data-testid='carme-timeline']\")"
            ".getAttribute('data-events')) > 0", timeout=15_000)
        assert int(timeline.get_attribute("data-events") or 0) >= 1
        page.wait_for_selector("text=dropped scratch", timeout=60_000)
        # the dropped namespace leaves the live list; it is folded under "1 ended", its state whole
        ended = page.locator("[data-testid='carme-actors-ended']")
        ended.wait_for(timeout=30_000)
        live = page.locator("[data-testid='carme-actors-live']").inner_text()
        assert "Tally" in live and "ALIVE" in live and "DEAD" not in live, live
        assert "1 ended" in ended.inner_text()
        ended.locator("summary").click()
        _assert_states_whole(page)
        count = _text(page, "carme-object-count")
        assert re.fullmatch(r"\d+ objects? in the object store", count), count
        ids = page.locator("[data-testid='carme-objects'] td.clab-object-id")
        assert ids.count() >= 1
        shown = [ids.nth(i).inner_text() for i in range(ids.count())]
        full = [ids.nth(i).get_attribute("title") or "" for i in range(ids.count())]
        assert len(set(shown)) == len(shown) and all(len(f) == 40 for f in full), (shown, full)
        assert _count(page, "failed") == 0
        page.locator("#carme-side-panel").screenshot(path=str(shots / "side-panel.png"))
        page.screenshot(path=str(shots / "03-tasks-ran.png"))

        # the full timeline in the main area
        page.locator("[data-testid='carme-open-timeline']").click()
        full = page.locator("[data-testid='carme-full-timeline'] svg")
        full.wait_for(timeout=30_000)
        assert int(full.get_attribute("data-events") or 0) >= N_TASKS
        page.screenshot(path=str(shots / "04-full-timeline.png"))

        # "Insert connection code" puts carme.init(address=...) into the notebook
        page.locator(".lm-TabBar-tab", has_text="tasks.ipynb").first.click()
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.locator("[data-testid='carme-insert-code']").click()
        page.wait_for_selector(f"text=carme.init(address=\"{address}\")", timeout=15_000)

        # the server restarts; the cluster outlives it; the panel reconnects to it
        lab.stop()
        _wait_text(page, "carme-status", "reconnecting", timeout=30_000)
        page.screenshot(path=str(shots / "05-server-gone.png"))
        lab.start()
        _wait_text(page, "carme-status", f"Connected to {re.escape(address)}", timeout=60_000)
        assert _count(page, "finished") >= N_TASKS
        _dismiss_dialogs(page)

        # stop it from the panel: it says so plainly
        page.locator("[data-testid='carme-stop']").click()
        _wait_text(page, "carme-status", NO_CLUSTER)
        page.screenshot(path=str(shots / "06-stopped.png"))
    from carme import cluster

    assert cluster.list_local() == []
    shot = shots / "side-panel.png"
    assert shot.stat().st_size > 5_000
    if os.environ.get("CARME_SCREENSHOT_DIR"):  # e.g. docs/screenshots, to refresh the picture
        target = Path(os.environ["CARME_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "side-panel.png")


@requires_ray
def test_side_panel_watches_a_kernels_embedded_cluster_and_a_ray_cluster(
    ray_cluster: RayHead, lab: Lab, tmp_path: Path
) -> None:
    """No cluster selected: the panel shows the kernel's own cluster; then a Ray head of
    this machine, picked in the selector, with its engine and what Ray cannot show."""
    rid = f"ray:{ray_cluster.gcs_address}"
    shots = tmp_path / "screenshots"
    with _browser_page(lab, shots) as page:
        page.goto(f"{lab.url}/lab/tree/embedded.ipynb?token={lab.token}", timeout=60_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
        _open_panel(page)
        _wait_text(page, "carme-status", "No cluster is selected")  # the Ray head is listed
        _run_all(page)
        page.wait_for_selector(f"text=sum {sum(range(N_TASKS))}", timeout=60_000)
        _wait_text(page, "carme-status", r"Watching the embedded cluster of \S*embedded\.ipynb",
                   timeout=30_000)
        page.wait_for_function(
            f"() => Number(document.querySelector(\"[data-testid='carme-count-finished']\")"
            f"?.textContent) >= {N_TASKS}", timeout=30_000)
        assert page.locator("[data-testid='carme-stop']").is_disabled()
        page.screenshot(path=str(shots / "01-embedded.png"))

        # pick the Ray head: selected for new kernels, shown with Ray's gaps named
        page.locator("[data-testid='carme-cluster-select']").select_option(value=rid)
        _wait_text(page, "carme-status", rf"Connected to {re.escape(rid)} \(Ray \d", timeout=60_000)
        caps = page.locator("[data-testid='carme-capabilities']")
        assert caps.get_attribute("data-engine") == "ray"
        assert "live_state" in (caps.get_attribute("data-off") or "")
        assert page.locator(".clab-node").count() == 1
        assert page.locator("[data-testid='carme-stop']").is_disabled(), "not started here"
        page.locator("#carme-side-panel").screenshot(path=str(shots / "side-panel-ray.png"))

        # selecting none shows the kernel's cluster again
        page.locator("[data-testid='carme-cluster-select']").select_option(value="")
        _wait_text(page, "carme-status", "Watching the embedded cluster", timeout=30_000)
        page.locator("#carme-side-panel").screenshot(path=str(shots / "side-panel-embedded.png"))
    if os.environ.get("CARME_SCREENSHOT_DIR"):
        target = Path(os.environ["CARME_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        for name in ("side-panel-ray.png", "side-panel-embedded.png"):
            shutil.copy(shots / name, target / name)
