"""carme-only: a cluster across real network boundaries.

Each host (head, nodes `a` and `b`, and the driver's host `drv`) is a network namespace
of its own with its own address from 198.51.100.0/24, joined to the others through a
bridge in a further namespace, and a mount namespace of its own with fresh tmpfs mounts
on /tmp and /dev/shm (`netns_hosts.Hosts`): no host sees another's Unix sockets, session
directories or shared memory, so everything between hosts crosses TCP between two
network stacks. As on a real machine, the driver's host runs a node of its own (0 CPUs)
and the driver connects to it; its tasks run on the other hosts.

The driver runs as a script on `drv` and prints one JSON line of what it saw; the test
checks that. Root is needed (CI runs as root); elsewhere the tests skip saying why.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from netns_hosts import Hosts, unavailable

pytestmark = pytest.mark.processes

PY = sys.executable
PORT = 6380


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    why = unavailable()
    if why:
        pytest.skip(f"multi-host tests need network namespaces: {why}")
    with Hosts(["head", "a", "b", "drv"]) as h:
        yield h


class Cluster:
    """carme started on the hosts with the CLI, as an operator would."""

    def __init__(self, h: Hosts, nodes: dict[str, dict]) -> None:
        self.h = h
        self.pids: dict[str, int] = {}
        self.ids: dict[str, str] = {}
        head = nodes.pop("head")
        out = self._ok("head", [PY, "-m", "carme", "start", "--head", "--host", h.ip["head"],
                                "--port", str(PORT), *self._args(head)])
        self.pids["head"] = int(re.search(r"\(pid (\d+)\)", out).group(1))  # type: ignore[union-attr]
        info = json.loads(self._ok("head", ["cat", f"/tmp/carme-state/clusters/{PORT}.json"]))
        self.ids["head"] = info["node_id"]
        # the token travels as an operator passes it: in the environment, not in a shared file
        self.env = {"CARME_CLUSTER_TOKEN": info["token"]}
        self.head = f"{h.ip['head']}:{PORT}"
        self.address: dict[str, str] = {"head": self.head}
        for host, args in nodes.items():
            # a joining node listens on the address it reaches the head from, unless told
            where = ["--host", args["host"]] if "host" in args else []
            out = self._ok(host, [PY, "-m", "carme", "start", "--address", self.head, *where,
                                  *self._args(args)])
            m = re.search(r"node (\w+) joined .* \(listening on (\S+), pid (\d+)\)", out)
            assert m, out
            self.address[host], self.pids[host] = m.group(2), int(m.group(3))
            self.ids[host] = m.group(1)

    @staticmethod
    def _args(spec: dict) -> list[str]:
        return ["--num-cpus", str(spec.get("num_cpus", 1)), "--resources", json.dumps(spec.get("resources", {}))]

    def _ok(self, host: str, argv: list[str]) -> str:
        r = self.h.run(host, argv, env=getattr(self, "env", None), timeout=120)
        assert r.returncode == 0, f"{' '.join(argv[:4])} on {host} failed:\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def prelude(self) -> str:
        """Driver code on `drv`: connect to its own node, wait until all hosts are in."""
        ips = self.h.ip
        return f"""
import json, time
import carme
carme.init(address={self.address['drv']!r}, namespace="mh")
deadline = time.monotonic() + 60
while len([n for n in carme.nodes() if n["Alive"]]) < {len(self.address)}:
    assert time.monotonic() < deadline, carme.nodes()
    time.sleep(0.1)
def node_id():
    return carme.get_runtime_context().get_node_id()
IDS = {{host: n["NodeID"] for n in carme.nodes() for host, ip in {ips!r}.items()
       if n["NodeManagerAddress"] == ip}}

@carme.remote(resources={{"head": 1}})
class Recorder:  # where tasks ran, kept on the head (which outlives the hosts killed)
    def __init__(self):
        self.seen = []
    def add(self, what):
        self.seen.append(what)
    def get(self):
        return self.seen
"""

    def drive(self, code: str, timeout: float = 240) -> dict:
        r = self.h.python("drv", self.prelude() + code, env=self.env, timeout=timeout)
        assert r.returncode == 0, f"the driver failed:\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}"
        return self.check_ids(json.loads(r.stdout.strip().splitlines()[-1]))

    def drive_and_kill(self, code: str, host: str, timeout: float = 300) -> dict:
        """Run `code` on `drv`; when it prints STARTED, kill every process of `host` (the
        machine dies) and tell it so on its stdin; its last line is JSON."""
        proc = subprocess.Popen(self.h.cmd("drv", [PY, "-c", self.prelude() + code]),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd="/", env={**_env(), **self.env})
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() == "STARTED":
            self.h.kill_host(host)
        out, err = proc.communicate("killed\n", timeout=timeout)
        assert line.strip() == "STARTED", f"the driver failed:\n{line}{out}\n{err[-8000:]}"
        assert proc.returncode == 0, f"the driver failed:\n{out}\n{err[-8000:]}"
        return self.check_ids(json.loads(out.strip().splitlines()[-1]))

    def check_ids(self, seen: dict) -> dict:
        """The driver's host -> node id map (`IDS`), checked against what the CLI printed."""
        assert sorted(seen["ids"]) == sorted(self.address), seen["ids"]
        for host, nid in seen["ids"].items():
            assert nid.startswith(self.ids[host]), (host, nid, self.ids[host])
        return seen


def test_tasks_objects_and_actors_cross_hosts(hosts: Hosts) -> None:
    c = Cluster(hosts, {"head": {"num_cpus": 1, "resources": {"head": 1}},
                        "a": {"num_cpus": 2, "resources": {"a": 2}},
                        "b": {"num_cpus": 2, "resources": {"b": 2}},
                        "drv": {"num_cpus": 0}})
    seen = c.drive("""
import numpy as np
from carme.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity
out = {"ids": IDS, "nodes": sorted((n["NodeID"], n["NodeManagerAddress"]) for n in carme.nodes() if n["Alive"])}

@carme.remote
def where(delay=0.0):
    time.sleep(delay)
    return node_id()

# a resource only one host has: the lease spills there and the driver pushes over TCP
out["on_a"] = carme.get(where.options(resources={"a": 1}).remote(), timeout=60)
out["on_b"] = carme.get(where.options(resources={"b": 1}).remote(), timeout=60)
out["spread"] = sorted(set(carme.get(
    [where.options(scheduling_strategy="SPREAD").remote(0.3) for _ in range(9)], timeout=120)))

# a 64 MB array made on a, read by a task on b (pulled a -> b), then by the driver (-> drv)
@carme.remote(resources={"a": 1})
def make():
    return np.arange(8 << 20, dtype=np.int64)

@carme.remote(resources={"b": 1})
def total(x):
    return int(x.sum()), node_id()

ref = make.remote()
out["total"] = carme.get(total.remote(ref), timeout=120)
arr = carme.get(ref, timeout=120)
out["driver_sum"] = int(arr.sum())
out["expected"] = int(np.arange(8 << 20, dtype=np.int64).sum())
del arr

# an actor pinned to b, called from the driver, found by name, and called by a task on a
@carme.remote
class Counter:
    def __init__(self):
        self.n = 0
    def add(self, k):
        self.n += k
        return self.n, node_id()

counter = Counter.options(name="counter", scheduling_strategy=Affinity(IDS["b"], soft=False)).remote()
out["actor_first"] = carme.get(counter.add.remote(1), timeout=60)
out["by_name"] = carme.get(carme.get_actor("counter").add.remote(10), timeout=60)

@carme.remote(resources={"a": 1})
def call_actor(h):
    n, actor_node = carme.get(h.add.remote(100))
    return n, actor_node, node_id()

out["from_a"] = carme.get(call_actor.remote(counter), timeout=60)
print(json.dumps(out))
""")
    ids, ip = seen["ids"], hosts.ip
    assert seen["nodes"] == sorted([ids[n], ip[n]] for n in ("head", "a", "b", "drv"))
    assert seen["on_a"] == ids["a"] and seen["on_b"] == ids["b"]
    assert seen["spread"] == sorted(ids[n] for n in ("head", "a", "b"))  # drv has no CPU
    assert seen["total"] == [seen["expected"], ids["b"]]
    assert seen["driver_sum"] == seen["expected"]
    assert seen["actor_first"] == [1, ids["b"]]
    assert seen["by_name"] == [11, ids["b"]]
    assert seen["from_a"] == [111, ids["b"], ids["a"]]
    # a driver cannot use a node on another host directly: it is told to start one of its own
    r = hosts.python("drv", f"import carme; carme.init(address={c.head!r})", env=c.env)
    assert r.returncode != 0 and "a driver connects to a node on its own machine" in r.stderr, r.stderr


def test_host_killed_tasks_retry_on_another_host(hosts: Hosts) -> None:
    c = Cluster(hosts, {"head": {"num_cpus": 1, "resources": {"head": 1}},
                        "a": {"num_cpus": 1, "resources": {"spot": 1, "box": 1}},
                        "b": {"num_cpus": 1, "resources": {"spot": 1, "box": 1}},
                        "drv": {"num_cpus": 0}})
    script = """
import sys
from carme.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

@carme.remote
class Where:
    def __init__(self):
        self.calls = 0
    def where(self):
        self.calls += 1
        return node_id(), self.calls

# an actor that may restart once, placed on a (soft: it may move when a is gone)
movable = Where.options(resources={"box": 1}, num_cpus=0, max_restarts=1,
                        scheduling_strategy=Affinity(A_ID, soft=True)).remote()
before = carme.get(movable.where.remote(), timeout=60)

started = Recorder.remote()

@carme.remote(resources={"spot": 1}, max_retries=2)
def slow(s):
    carme.get(s.add.remote(node_id()))
    time.sleep(3)
    return node_id()

refs = [slow.remote(started) for _ in range(2)]
deadline = time.monotonic() + 60
while A_ID not in carme.get(started.get.remote(), timeout=60):
    assert time.monotonic() < deadline, "no task started on host a"
    time.sleep(0.1)
print("STARTED", flush=True)
assert sys.stdin.readline().strip() == "killed"
results = carme.get(refs, timeout=120)
deadline = time.monotonic() + 30
while any(n["NodeID"] == A_ID and n["Alive"] for n in carme.nodes()):
    assert time.monotonic() < deadline, "host a is still alive in the cluster view after 30 s"
    time.sleep(0.2)
deadline = time.monotonic() + 60
while True:  # restarted on b, with fresh state (its old worker may answer once more)
    try:
        after = carme.get(movable.where.remote(), timeout=60)
        if after[0] != A_ID:
            break
    except carme.exceptions.RayActorError:
        pass
    assert time.monotonic() < deadline, "the actor was not restarted on another host"
    time.sleep(0.2)
print(json.dumps({"ids": IDS, "results": results, "started": carme.get(started.get.remote(), timeout=60),
                  "actor": [before, after]}))
""".replace("A_ID", 'IDS["a"]')
    seen = c.drive_and_kill(script, "a")  # the machine dies: daemon, zygote, workers at once
    ids = seen["ids"]
    assert ids["a"] in seen["started"]
    assert seen["results"] == [ids["b"], ids["b"]]  # retried on b
    assert seen["actor"] == [[ids["a"], 1], [ids["b"], 1]]
    assert not hosts.pids("a")  # nothing of host a lives on


def test_objects_lost_with_a_host_are_rebuilt_on_another(hosts: Hosts) -> None:
    """Lineage across hosts: task returns whose only copy was in host a's store (its own
    /dev/shm) are made again on host b after every process of host a is killed."""
    c = Cluster(hosts, {"head": {"num_cpus": 1, "resources": {"head": 1}},
                        "a": {"num_cpus": 1, "resources": {"spot": 1}},
                        "b": {"num_cpus": 1, "resources": {"spot": 1}},
                        "drv": {"num_cpus": 0}})
    script = """
import sys
import numpy as np
from carme.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

runs = Recorder.remote()

@carme.remote(resources={"spot": 1}, max_retries=2)
def make(i, runs):
    carme.get(runs.add.remote([i, node_id()]))
    return node_id(), np.full(64 * 1024, i, dtype=np.int64)  # 512 KB: in its host's store

@carme.remote(resources={"spot": 1}, max_retries=2)
def double(pair):
    return node_id(), pair[1] * 2

on_a = Affinity(A_ID, soft=True)
made = [make.options(scheduling_strategy=on_a).remote(i, runs) for i in range(5)]
doubled = double.options(scheduling_strategy=on_a).remote(made[3])
ready, _ = carme.wait(made + [doubled], num_returns=6, timeout=120, fetch_local=False)
assert len(ready) == 6
print("STARTED", flush=True)
assert sys.stdin.readline().strip() == "killed"
values = carme.get(made, timeout=180)
d = carme.get(doubled, timeout=180)
print(json.dumps({"ids": IDS, "made": [[n, int(v[0]), len(v)] for n, v in values],
                  "doubled": [d[0], int(d[1][0])], "runs": carme.get(runs.get.remote(), timeout=60)}))
""".replace("A_ID", 'IDS["a"]')
    seen = c.drive_and_kill(script, "a")  # the only copies go with host a's /dev/shm
    ids = seen["ids"]
    runs = seen["runs"]
    assert all([i, ids["a"]] in runs for i in range(5)), runs  # first made on host a
    assert seen["made"] == [[ids["b"], i, 64 * 1024] for i in range(5)]  # made again on b
    assert seen["doubled"] == [ids["b"], 6]
    assert not hosts.pids("a")


def test_node_others_cannot_reach_fails_tasks_clearly(hosts: Hosts) -> None:
    """A node told to listen on its loopback joins (it reaches the head), but no other host
    can reach it: a task that only it can run fails saying so, after a bounded number of
    tries, instead of waiting forever."""
    c = Cluster(hosts, {"head": {"num_cpus": 1},
                        "b": {"num_cpus": 1, "resources": {"b": 1}, "host": "127.0.0.1"},
                        "drv": {"num_cpus": 0}})
    r = hosts.python("drv", c.prelude() + """
@carme.remote(resources={"b": 1})
def f():
    return 1
try:
    carme.get(f.remote(), timeout=120)
except carme.exceptions.NodeDiedError as e:
    print("ERROR", e)
""", env=c.env, timeout=240)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "ERROR" in r.stdout and "could not be reached from this process" in r.stdout, r.stdout
    assert "--host" in r.stdout


def _env() -> dict[str, str]:
    env = {**os.environ, "CARME_STATE_DIR": "/tmp/carme-state"}
    env.pop("CARME_ADDRESS", None)
    return env


def test_namespaces_are_removed(hosts: Hosts) -> None:
    """The hosts fixture leaves nothing behind (the leak guard checks it for every test)."""
    names = set(hosts.ns.values()) | {hosts.switch}
    from netns_hosts import leftover_namespaces
    assert names <= leftover_namespaces()
    hosts.close()
    assert not names & leftover_namespaces()
