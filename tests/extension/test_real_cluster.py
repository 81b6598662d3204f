"""The server extension against real carme clusters: start from the API, run tasks, watch, stop."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_client import call, kernels_join

pytestmark = [pytest.mark.processes, pytest.mark.timeout(90)]

DRIVER = textwrap.dedent("""
    import carme
    carme.init()  # joins the panel's selection (the file named by CARME_SELECTION_FILE)

    @carme.remote
    def square(x):
        return x * x

    @carme.remote
    class Counter:
        def __init__(self):
            self.n = 0
        def add(self):
            self.n += 1
            return self.n

    assert carme.get([square.remote(i) for i in range(6)]) == [i * i for i in range(6)]
    c = Counter.options(name="panel-counter", lifetime="detached").remote()
    assert carme.get(c.add.remote()) == 1
    big = carme.put(bytes(2_000_000))
    print("ok", flush=True)
    carme.shutdown()
""")


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"carme_lab": True}},
            "CarmeLabApp": {"interval": 0.2, "stop_clusters_on_exit": True}}


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private carme state directory: only this test's clusters are listed; all stopped after."""
    d = tmp_path / "carme-state"
    monkeypatch.setenv("CARME_STATE_DIR", str(d))
    yield d
    from carme import cluster

    cluster.stop_all()




def carme_rows(listing: dict[str, Any]) -> list[dict[str, Any]]:
    """The carme clusters of a listing (Ray heads of other tests or users on this machine
    are listed too, by design)."""
    return [c for c in listing["clusters"] if c["engine"] == "carme"]


async def test_start_run_watch_stop(jp_fetch: Any, state_dir: Path) -> None:
    code, started = await call(jp_fetch, "clusters", method="POST", body={"num_cpus": 2})
    assert code == 201, started
    address = started["address"]
    assert kernels_join() == address
    _, listing = await call(jp_fetch, "clusters")
    assert listing["selected"] == address and carme_rows(listing)[0]["alive"] is True

    code, snap = await call(jp_fetch, "snapshot")
    assert code == 200, snap
    assert snap["nodes"][0]["resources_total"]["CPU"] == 2.0
    assert snap["tasks"]["finished"] == 0

    # a kernel started now inherits this server's environment: a driver process does the same
    out = subprocess.run([sys.executable, "-c", DRIVER], env=dict(os.environ), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]

    code, snap = await call(jp_fetch, "snapshot")
    assert code == 200, snap
    assert snap["tasks"]["finished"] >= 6, snap["tasks_by_state"]
    assert any(a["class_name"] == "Counter" for a in snap["actors"]), snap["actors"]
    assert any(e["name"] and e["start_ms"] for e in snap["events"])
    code, events = await call(jp_fetch, "timeline")
    assert code == 200
    assert sum(1 for e in events if e.get("ph") == "X") >= 6

    code, data = await call(jp_fetch, "clusters", address, method="DELETE")
    assert code == 200 and data["stopped"] is True and data["selected"] is None
    assert kernels_join() is None
    _, listing = await call(jp_fetch, "clusters")
    assert carme_rows(listing) == []
    code, data = await call(jp_fetch, "snapshot", params={"cluster": address})
    assert code == 503 and "did not answer" in data["message"]


EMBEDDED = textwrap.dedent("""
    import sys, carme
    carme.init(num_cpus=1)

    @carme.remote
    def inc(x):
        return x + 1

    assert carme.get([inc.remote(i) for i in range(5)]) == [1, 2, 3, 4, 5]
    print("ready", flush=True)
    sys.stdin.readline()
    carme.shutdown()
    print("done", flush=True)
""")


def start_driver() -> subprocess.Popen[str]:
    """A driver with an embedded cluster (what a notebook kernel runs), waiting on stdin."""
    env = {**os.environ, "JPY_SESSION_NAME": "work/demo.ipynb"}
    env.pop("CARME_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-c", EMBEDDED], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


async def test_a_kernels_embedded_cluster_is_listed_and_shown(
    jp_fetch: Any, jp_serverapp: Any, state_dir: Path
) -> None:
    proc = start_driver()
    try:
        _, listing = await call(jp_fetch, "clusters")
        [entry] = [c for c in listing["clusters"] if c["kind"] == "embedded"]
        assert entry["notebook"] == "work/demo.ipynb" and entry["alive"] is True
        assert not entry["stoppable"] and not entry["joinable"] and entry["engine"] == "carme"
        assert listing["showing"] == entry["id"] and listing["selected"] is None
        # the driver reports task events in batches: wait for them (bounded by the test's timeout)
        while True:
            code, snap = await call(jp_fetch, "snapshot", params={"cluster": entry["id"]})
            assert code == 200, snap
            if snap["tasks"]["finished"] == 5:
                break
            await asyncio.sleep(0.1)
        assert snap["nodes"][0]["resources_total"]["CPU"] == 1.0
        assert snap["engine"] == "carme" and all(snap["capabilities"].values())
        # the live stream shows it although no cluster is selected
        service = jp_serverapp.web_app.settings["carme_lab_service"]
        tick = await service.tick()
        assert tick["error"] is None and tick["snapshot"]["address"] == entry["id"]
        code, events = await call(jp_fetch, "timeline", params={"cluster": entry["id"]})
        assert code == 200 and sum(1 for e in events if e.get("ph") == "X") == 5
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        assert proc.stdout.read().strip() == "done"
        proc.wait(60)
        proc.stdout.close()
    _, listing = await call(jp_fetch, "clusters")
    assert carme_rows(listing) == [] and listing["showing"] is None
    assert os.listdir(state_dir / "embedded") == [], "carme.shutdown() removes its note"


async def test_a_killed_kernels_note_is_ignored_and_removed(jp_fetch: Any, state_dir: Path) -> None:
    import psutil

    proc = start_driver()
    try:
        _, listing = await call(jp_fetch, "clusters")
        [entry] = [c for c in listing["clusters"] if c["kind"] == "embedded"]
        daemon = psutil.Process(entry["pid"])
    finally:
        proc.kill()  # no carme.shutdown(): the note stays behind
        proc.wait(60)
        assert proc.stdout is not None and proc.stdin is not None
        proc.stdout.close()
        proc.stdin.close()
    daemon.wait(60)  # the embedded daemon ends with its driver
    assert len(os.listdir(state_dir / "embedded")) == 1
    _, listing = await call(jp_fetch, "clusters")
    assert carme_rows(listing) == []
    assert os.listdir(state_dir / "embedded") == [], "a stale note is removed when read"
    code, data = await call(jp_fetch, "snapshot", params={"cluster": entry["id"]})
    assert code == 503 and "has ended" in data["message"]


async def _execute(jp_serverapp: Any, kernel_id: str, code: str) -> str:
    """Run `code` in a kernel of the server; its stream output and errors, as text."""
    client = jp_serverapp.kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        content = msg["content"]
        if msg["msg_type"] == "stream":
            out.append(content["text"])
        elif msg["msg_type"] == "error":
            out.append(f"{content['ename']}: {content['evalue']}\n")

    try:
        await client.wait_for_ready(timeout=120)
        await client.execute_interactive(code, output_hook=hook, timeout=120)
    finally:
        client.stop_channels()
    return "".join(out)


JOIN = textwrap.dedent("""
    import carme
    try:
        carme.init(num_cpus=2)
    except ValueError as e:
        print("refused:", e)
    else:
        print("started:", carme.get_runtime_context().get_node_id() is not None)
        carme.shutdown()
    print("joined:", carme.init().address)
    carme.shutdown()
    print("local:", carme.init(address="local", num_cpus=1).address)
    carme.shutdown()
""")


@pytest.mark.timeout(300)
async def test_kernels_follow_the_panel_selection_also_after_a_restart(
    jp_fetch: Any, jp_serverapp: Any, state_dir: Path
) -> None:
    """A kernel learns the selection when it joins, not from a value frozen at its start:
    after Stop in the panel, Restart Kernel gives an embedded cluster again."""
    code, started = await call(jp_fetch, "clusters", method="POST", body={"num_cpus": 1})
    assert code == 201, started
    address = started["address"]
    r = await jp_fetch("api", "sessions", method="POST", body=json.dumps(
        {"path": "work/panel.ipynb", "type": "notebook", "kernel": {"name": "python3"}}))
    kernel_id = json.loads(r.body)["kernel"]["id"]
    try:
        out = await _execute(jp_serverapp, kernel_id, JOIN)
        assert f"joined: {address}" in out, out
        refused = next(line for line in out.splitlines() if line.startswith("refused:"))
        assert "side panel" in refused and 'address="local"' in refused and address in refused
        assert "local: " in out and f"local: {address}" not in out, out

        code, data = await call(jp_fetch, "clusters", address, method="DELETE")
        assert code == 200 and data["selected"] is None
        await jp_fetch("api", "kernels", kernel_id, "restart", method="POST", body="")
        out = await _execute(jp_serverapp, kernel_id, JOIN)
        assert "started: True" in out and "refused" not in out, out
        assert "joined: " in out and address not in out, out
    finally:
        await jp_serverapp.kernel_manager.shutdown_kernel(kernel_id)
