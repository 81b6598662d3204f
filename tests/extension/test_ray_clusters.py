"""The server extension against real Ray clusters: found, watched over REST, started and stopped.

The session's Ray head (`ray_support.ray_cluster`) stands for a cluster someone
else started on this machine; one test starts and stops a head of its own through
the API (with a token of its own, without the session's head). The Jupyter server never imports Ray's driver API: everything it shows
comes from the dashboard's REST API with the token the fixture exported.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from lab_client import call, kernels_join

from ray_support import RayHead, requires_ray

pytestmark = [requires_ray, pytest.mark.processes, pytest.mark.timeout(600)]

DRIVER = textwrap.dedent("""
    import sys, ray
    ray.init(address=sys.argv[1], log_to_driver=False)

    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0
        def add(self):
            self.n += 1
            return self.n

    assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
    c = Counter.options(name="panel-counter", namespace="carme-lab-test").remote()
    assert ray.get(c.add.remote()) == 1
    ray.kill(c)
    print("ok", flush=True)
""")


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"carme_lab": True}},
            "CarmeLabApp": {"interval": 0.2, "call_timeout": 30.0}}


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    d = tmp_path / "carme-state"
    monkeypatch.setenv("CARME_STATE_DIR", str(d))
    yield d




@pytest.fixture
def ray_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A Ray auth token of this test only, where Ray's tools (and the server) look for it."""
    path = tmp_path / "ray_auth_token"
    token = secrets.token_hex(32)
    path.write_text(token)
    path.chmod(0o600)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    return token


async def test_start_and_stop_a_ray_head_from_the_server(
    jp_fetch: Any, state_dir: Path, ray_token: str
) -> None:
    """Needs no other Ray head (one Ray start is enough for a 2-core machine)."""
    code, info = await call(jp_fetch, "clusters", method="POST",
                            body={"engine": "ray", "num_cpus": 1, "resources": {"panel": 2}})
    assert code == 201, info
    rid = info["id"]
    assert rid.startswith("ray:127.0.0.1:")
    assert info["origin"] == "started" and info["stoppable"] and info["selected"]
    assert kernels_join() == rid
    [record] = os.listdir(state_dir / "ray")
    ray_start = json.loads((state_dir / "ray" / record).read_text())["pid"]
    tree = [psutil.Process(ray_start), *psutil.Process(ray_start).children(recursive=True)]
    assert len(tree) > 3

    code, snap = await call(jp_fetch, "snapshot")
    assert code == 200, snap
    assert snap["address"] == rid and snap["resources"]["total"]["panel"] == 2.0
    assert snap["resources"]["total"]["CPU"] == 1.0
    _, listing = await call(jp_fetch, "clusters")
    assert [c["id"] for c in listing["clusters"]].count(rid) == 1

    code, data = await call(jp_fetch, "clusters", rid, method="DELETE")
    assert code == 200 and data == {"id": rid, "stopped": True, "selected": None}
    assert kernels_join() is None
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert os.listdir(state_dir / "ray") == []
    _, listing = await call(jp_fetch, "clusters")
    assert rid not in [c["id"] for c in listing["clusters"]]


async def test_a_ray_cluster_on_this_machine_is_found_and_watched(
    jp_fetch: Any, ray_cluster: RayHead, state_dir: Path
) -> None:
    rid = f"ray:{ray_cluster.gcs_address}"
    _, listing = await call(jp_fetch, "clusters")
    [entry] = [c for c in listing["clusters"] if c["id"] == rid]
    assert entry["engine"] == "ray" and entry["origin"] == "local" and entry["alive"]
    assert entry["dashboard"] == ray_cluster.dashboard_url
    assert not entry["stoppable"], "a Ray head this server did not start"
    code, data = await call(jp_fetch, "clusters", rid, method="DELETE")
    assert code == 409 and "ray stop" in data["message"]

    out = subprocess.run([sys.executable, "-c", DRIVER, ray_cluster.gcs_address],
                         env={**os.environ, **ray_cluster.env()}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]

    # Ray's state API reports task states seconds late: ask until it has them all
    while True:
        code, snap = await call(jp_fetch, "snapshot", params={"cluster": rid})
        assert code == 200, snap
        if snap["tasks"]["finished"] >= 6:  # 4 tasks, the actor's creation and its call
            break
        await asyncio.sleep(0.5)
    assert snap["engine"] == "ray" and snap["version"]
    [node] = snap["nodes"]
    assert node["resources_total"]["CPU"] == 2.0 and node["is_head"]
    assert node["memory_total"] and node["cpu_percent"] is not None  # reporter figures
    assert node["object_store"]["capacity"]
    assert any(a["class_name"] == "Counter" for a in snap["actors"])
    assert {e["name"] for e in snap["events"]} >= {"square", "Counter.add"}
    assert snap["capabilities"]["node_metrics"] and not snap["capabilities"]["live_state"]
    assert "seconds" in snap["notes"]["live_state"]

    code, events = await call(jp_fetch, "timeline", params={"cluster": rid})
    assert code == 200
    spans = [e for e in events if e.get("ph") == "X"]
    assert sum(1 for e in spans if e["name"] == "square") == 4
    assert all(e["dur"] >= 0 for e in spans)

    # connecting selects it for kernels started from now on
    code, data = await call(jp_fetch, "connect", method="POST", body={"address": rid})
    assert code == 200 and kernels_join() == rid

    # an address not found on this machine: its dashboard is taken to be HOST:8265 unless
    # the user names it (127.0.0.2 stands for another host; the dashboard listens on .1)
    other = "ray:127.0.0.2:" + ray_cluster.gcs_address.rsplit(":", 1)[1]
    code, data = await call(jp_fetch, "connect", method="POST", body={"address": other})
    assert code == 200
    code, data = await call(jp_fetch, "snapshot")
    assert code == 503 and "http://127.0.0.2:8265" in data["message"]
    code, data = await call(jp_fetch, "connect", method="POST",
                            body={"address": other, "dashboard": ray_cluster.dashboard_url})
    assert code == 200
    code, snap = await call(jp_fetch, "snapshot")
    assert code == 200 and snap["address"] == other and snap["nodes"][0]["resources_total"]["CPU"] == 2.0
    _, listing = await call(jp_fetch, "clusters")
    [given] = [c for c in listing["clusters"] if c["id"] == other]
    assert given["origin"] == "connected" and given["dashboard"] == ray_cluster.dashboard_url


async def test_a_wrong_token_is_reported_not_hidden(
    jp_fetch: Any, ray_cluster: RayHead, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    code, data = await call(jp_fetch, "snapshot", params={"cluster": f"ray:{ray_cluster.gcs_address}"})
    assert code == 503 and "auth token was refused" in data["message"]
