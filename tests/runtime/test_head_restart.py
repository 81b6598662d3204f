"""carme-only: a head killed with SIGKILL and started again on the same port.

Real processes on 127.0.0.1: a head, a node, a driver joined to the node. The node
notices the dead head (its row DEAD, with a message), keeps serving local work and its
detached actor; the head started again from its state file is rejoined by the node and
the driver, and the detached actor is found by name again. A SIGKILLed head or node
leaves no shared-memory store or session directory behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _store_of(info: dict) -> str:
    from carme._store import store_path
    return store_path(os.path.basename(info["session_dir"])[6:])


def _gone(info: dict) -> bool:
    return not os.path.exists(_store_of(info)) and not os.path.exists(info["session_dir"])


@pytest.fixture
def cluster_on_port(state_dir: Path, wait_for: Any) -> Iterator[dict[str, Any]]:
    """A head on a fixed free port and one node with resource "a"; torn down whatever
    the test killed or restarted (`started` collects every head started on the port)."""
    import carme
    from carme import cluster
    port = _free_port()
    head = cluster.start_head(num_cpus=1, resources={"head": 1}, port=port)
    node = cluster.start_node(head["address"], num_cpus=1, resources={"a": 1})
    c: dict[str, Any] = {"port": port, "head": head, "node": node, "started": [head]}
    try:
        wait_for(lambda: _alive_nodes(head["address"]) == {head["node_id"], node["node_id"]}, timeout=60)
        yield c
    finally:
        if carme.is_initialized():
            carme.shutdown()
        cluster.stop_node(node)
        cluster.stop(head["address"])
        for h in c["started"]:  # a head killed by the test: its files, if any were left
            if os.path.exists(_store_of(h)):
                os.unlink(_store_of(h))
            shutil.rmtree(h["session_dir"], ignore_errors=True)


def _alive_nodes(address: str) -> set[str]:
    from carme import cluster
    with cluster.connect(address) as client:
        return {n["node_id"] for n in client.rows("nodes") if n["state"] == "ALIVE"}


def _head_row(carme: Any, head_id: str) -> dict:
    from carme.util.state import list_nodes
    return next(dict(r) for r in list_nodes() if r["node_id"] == head_id)


def test_killed_head_is_noticed_and_restarted_head_is_rejoined(cluster_on_port, state_dir, wait_for) -> None:
    import carme
    from carme import _head_state as hs
    from carme import cluster
    c = cluster_on_port
    head, node, port = c["head"], c["node"], c["port"]
    token = json.loads(Path(head["token_file"]).read_text())["token"]
    os.environ["CARME_CLUSTER_TOKEN"] = token  # a driver joined to the node, not to the head
    try:
        carme.init(address=node["address"])
    finally:
        del os.environ["CARME_CLUSTER_TOKEN"]

    @carme.remote(num_cpus=0, resources={"a": 1})
    class Keeper:
        def __init__(self) -> None:
            self.calls = 0

        def ping(self) -> tuple[int, int]:
            self.calls += 1
            return os.getpid(), self.calls

    @carme.remote
    def where() -> str:
        return carme.get_runtime_context().get_node_id()

    keeper = Keeper.options(name="keeper", lifetime="detached").remote()
    pid, _ = carme.get(keeper.ping.remote(), timeout=60)
    from carme.util.placement_group import get_placement_group, placement_group
    pg = placement_group([{"a": 0.5}], strategy="PACK", name="kept-pg")
    assert pg.wait(60)

    # the head writes its state: 0600 in a 0700 directory, naming the actor and its node
    path = hs.state_file(str(state_dir), port)

    def saved() -> hs.HeadRecord | None:
        rec = hs.load(path)
        return (rec if rec is not None and rec.actors and rec.placement_groups
                and node["node_id"] in rec.nodes else None)
    rec = wait_for(saved, timeout=30)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert (rec.token, rec.port, rec.node_id) == (token, port, head["node_id"])
    assert [(a["name"], a["node_id"], a["detached"]) for a in rec.actors] == [("keeper", node["node_id"], True)]

    os.kill(head["pid"], signal.SIGKILL)
    # the node says the head is gone, and why; its own work goes on
    wait_for(lambda: not next(n for n in carme.nodes() if n["NodeID"] == head["node_id"])["Alive"], timeout=60)
    row = _head_row(carme, head["node_id"])
    assert row["state"] == "DEAD" and head["address"] in row["state_message"]
    assert "carme start --head --port" in row["state_message"]
    assert next(n for n in carme.nodes() if n["NodeID"] == node["node_id"])["Alive"]
    with pytest.raises(carme.exceptions.RaySystemError, match="unreachable") as err:
        carme.get_actor("keeper")
    assert head["address"] in str(err.value) and "ConnectionRefused" not in str(err.value)
    assert carme.get(where.remote(), timeout=60) == node["node_id"]
    assert carme.get(keeper.ping.remote(), timeout=60) == (pid, 2)
    wait_for(lambda: _gone(head), timeout=30)  # the killed head's store and session directory

    # started again on the same port (by the CLI): same token, ports and node id, from its state file
    out = subprocess.run([sys.executable, "-m", "carme", "start", "--head", "--port", str(port),
                          "--num-cpus", "1", "--resources", '{"head": 1}'],
                         capture_output=True, text=True, timeout=120, env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert f"carme cluster head restarted at {head['address']}" in out.stdout
    again = cluster._read(head["address"])
    assert again is not None
    c["started"].append(again)
    assert again["restarted"] and again["address"] == head["address"]
    assert again["node_id"] == head["node_id"] and again["grpc_address"] == head["grpc_address"]
    assert again["token"] == token

    def found() -> Any:
        try:
            return carme.get_actor("keeper")
        except carme.exceptions.RaySystemError:
            return None
    handle = wait_for(found, timeout=60)
    assert carme.get(handle.ping.remote(), timeout=60) == (pid, 3)  # the same actor, kept running
    wait_for(lambda: all(n["Alive"] for n in carme.nodes()), timeout=60)
    assert {n["NodeID"] for n in carme.nodes()} == {head["node_id"], node["node_id"]}
    assert _head_row(carme, head["node_id"]).get("state_message") is None
    # the placement group is back by name, its bundle placed again
    kept = get_placement_group("kept-pg")
    assert kept.id == pg.id and kept.wait(60) and kept.bundle_specs == [{"a": 0.5}]
    # the restarted head runs work again (its "head" resource is only there)
    assert carme.get(where.options(resources={"head": 1}).remote(), timeout=60) == head["node_id"]
    carme.kill(handle)


def test_a_driver_of_a_killed_head_is_not_left_hanging(cluster_on_port) -> None:
    import carme
    c = cluster_on_port
    carme.init(address=c["head"]["address"])

    @carme.remote(resources={"head": 1})
    def slow() -> int:
        import time
        time.sleep(60)
        return 1

    ref = slow.remote()
    import time
    time.sleep(1.0)  # (not a timing assertion: the task is likely running, or still queued)
    os.kill(c["head"]["pid"], signal.SIGKILL)
    with pytest.raises(carme.exceptions.RayError) as err:
        carme.get(ref, timeout=50)
    assert not isinstance(err.value, carme.exceptions.GetTimeoutError)
    carme.shutdown()
    # `carme status` says how to bring the head back
    out = subprocess.run([sys.executable, "-m", "carme", "status", "--address", c["head"]["address"]],
                         capture_output=True, text=True, timeout=60, env={**os.environ})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"no carme cluster answers at {c['head']['address']}" in out.stderr
    assert f"carme start --head --port {c['port']}" in out.stderr
    # started again, the head takes drivers at the same address with the same token
    from carme import cluster
    again = cluster.start_head(num_cpus=1, resources={"head": 1}, port=c["port"])
    c["started"].append(again)
    carme.init(address=c["head"]["address"])

    @carme.remote(resources={"head": 1})
    def quick() -> str:
        return carme.get_runtime_context().get_node_id()
    assert carme.get(quick.remote(), timeout=60) == c["head"]["node_id"]
    carme.shutdown()


def test_a_killed_node_leaves_nothing_behind(cluster_on_port, wait_for) -> None:
    from carme import cluster
    c = cluster_on_port
    node = c["node"]
    assert os.path.exists(_store_of(node)) and os.path.isdir(node["session_dir"])
    os.kill(node["pid"], signal.SIGKILL)
    wait_for(lambda: _gone(node), timeout=30)

    def dead() -> bool:
        with cluster.connect(c["head"]["address"]) as client:
            return any(n["node_id"] == node["node_id"] and n["state"] == "DEAD" for n in client.rows("nodes"))
    wait_for(dead, timeout=60)


def test_a_bad_state_file_is_refused_with_its_name(state_dir: Path) -> None:
    from carme import _head_state as hs
    from carme import cluster
    port = _free_port()
    path = Path(hs.state_file(str(state_dir), port))
    path.parent.mkdir(parents=True)
    path.write_text('{"format": 1, "port": "oops"}')
    with pytest.raises(hs.HeadStateError, match=str(path)):
        cluster.start_head(num_cpus=1, port=port)
    out = subprocess.run([sys.executable, "-m", "carme", "start", "--head", "--port", str(port)],
                         capture_output=True, text=True, timeout=60, env={**os.environ})
    assert out.returncode == 1
    assert str(path) in out.stderr and "Traceback" not in out.stderr
    assert path.read_text() == '{"format": 1, "port": "oops"}'  # nothing stored is lost


def test_a_saved_head_is_not_restarted_on_another_host(state_dir: Path) -> None:
    from carme import _head_state as hs
    from carme import cluster
    port = _free_port()
    path = hs.state_file(str(state_dir), port)
    hs.save(path, hs.HeadRecord(port=port, grpc_port=port, token="00" * 32, node_id="ab" * 28,
                                job_id="01020304", host="127.0.0.9"))
    with pytest.raises(ValueError, match=r"listened on 127\.0\.0\.9:.*--host 127\.0\.0\.9"):
        cluster.start_head(num_cpus=1, port=port, host="127.0.0.1")
    assert os.path.exists(path)


def test_a_running_head_is_not_started_twice(cluster_on_port, state_dir, wait_for) -> None:
    from carme import _head_state as hs
    from carme import cluster
    c = cluster_on_port
    wait_for(lambda: hs.load(hs.state_file(str(state_dir), c["port"])), timeout=30)
    with pytest.raises(OSError, match=f"already runs on port {c['port']}"):
        cluster.start_head(num_cpus=1, port=c["port"])


def test_a_head_killed_with_its_whole_group_is_cleaned_at_restart(cluster_on_port, wait_for) -> None:
    """SIGKILL to the head's process group takes its zygote (the cleaner) too: the
    store and session directory stay until the head is started again, which removes them."""
    import psutil

    from carme import cluster
    c = cluster_on_port
    head = c["head"]
    group = [p.pid for p in psutil.process_iter() if _pgid(p.pid) == head["pid"]]
    assert len(group) >= 2  # the daemon, its zygote (and workers)
    os.killpg(head["pid"], signal.SIGKILL)
    wait_for(lambda: not any(_running(pid) for pid in group), timeout=30)
    assert os.path.exists(_store_of(head))  # nobody was left to clean
    again = cluster.start_head(num_cpus=1, resources={"head": 1}, port=c["port"])
    c["started"].append(again)
    assert again["restarted"] and _gone(head)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _running(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_an_actor_whose_node_died_with_the_head_away_is_dead_after_restart(cluster_on_port, state_dir,
                                                                          wait_for) -> None:
    import carme
    from carme import _head_state as hs
    from carme import cluster
    c = cluster_on_port
    head, node, port = c["head"], c["node"], c["port"]
    carme.init(address=head["address"])

    @carme.remote(num_cpus=0, resources={"a": 1})
    class Keeper:
        def ping(self) -> int:
            return os.getpid()

    keeper = Keeper.options(name="keeper", lifetime="detached").remote()
    carme.get(keeper.ping.remote(), timeout=60)
    path = hs.state_file(str(state_dir), port)
    wait_for(lambda: (rec := hs.load(path)) is not None and rec.actors, timeout=30)  # saved
    carme.shutdown()
    os.kill(head["pid"], signal.SIGKILL)
    os.kill(node["pid"], signal.SIGKILL)  # its node goes while the head is away
    wait_for(lambda: _gone(node), timeout=30)
    again = cluster.start_head(num_cpus=1, resources={"head": 1}, port=port)
    c["started"].append(again)
    carme.init(address=head["address"])
    # the persisted node never beats again: DEAD after the grace, and its actor with it
    # (the head lists only itself until its first heartbeat's view)
    wait_for(lambda: any(n["NodeID"] == node["node_id"] and not n["Alive"] for n in carme.nodes()), timeout=60)

    def gone() -> bool:
        try:
            carme.get_actor("keeper")
        except ValueError as e:
            return "no live actor" in str(e)
        return False
    wait_for(gone, timeout=30)
    from carme.util.state import list_actors
    (row,) = [r for r in list_actors(detail=True) if r["name"] == "keeper"]
    assert row["state"] == "DEAD" and node["node_id"][:8] in row["death_cause"]
