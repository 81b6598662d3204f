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

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from netns_hosts import (
    OWN,
    PREFIX,
    STASH_DIR,
    STASH_PREFIX,
    Hosts,
    dead_run_entries,
    sweep_dead_runs,
    unavailable,
)

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

    def prelude(self, host: str = "drv") -> str:
        """Driver code on `host`: connect to its own node, wait until all hosts are in."""
        ips = self.h.ip
        return f"""
import json, sys, time
import carme
carme.init(address={self.address[host]!r}, namespace="mh")
deadline = time.monotonic() + 60
while len([n for n in carme.nodes() if n["Alive"]]) < {len(self.address)}:
    assert time.monotonic() < deadline, carme.nodes()
    time.sleep(0.1)
def node_id():
    return carme.get_runtime_context().get_node_id()
def step():  # the test does the next of its steps (Cluster.drive_in_steps) meanwhile
    print("STEP", flush=True)
    assert sys.stdin.readline().strip() == "done"
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

    def drive_in_steps(self, code: str, steps: list[Callable[[], None]], timeout: float = 300,
                       host: str = "drv") -> dict:
        """Run `code` on `host` (a driver of its node); each time it prints STEP, run the
        next of `steps` here and answer "done" on its stdin; its last line is JSON."""
        proc = subprocess.Popen(self.h.cmd(host, [PY, "-c", self.prelude(host) + code]),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd="/", env={**_env(), **self.env})
        assert proc.stdout is not None and proc.stdin is not None
        try:
            for i, step in enumerate(steps):
                line = proc.stdout.readline()
                if line.strip() != "STEP":
                    out, err = proc.communicate(timeout=timeout)
                    raise AssertionError(f"the driver did not reach step {i + 1}:\n{line}{out}\n{err[-8000:]}")
                step()
                proc.stdin.write("done\n")
                proc.stdin.flush()
            out, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, f"the driver failed:\n{out}\n{err[-8000:]}"
        return self.check_ids(json.loads(out.strip().splitlines()[-1]))

    def drive_and_kill(self, code: str, host: str, timeout: float = 300) -> dict:
        """Run `code` on `drv`; when it prints STEP, kill every process of `host` (the
        machine dies) and tell it so on its stdin; its last line is JSON."""
        return self.drive_in_steps(code, [lambda: self.h.kill_host(host)], timeout)

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
step()  # host a is killed meanwhile
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
step()  # host a is killed meanwhile
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


STORES = """
from carme import _messages as M
from carme._api import auto_init as _core

def stores():
    # (bytes used, objects known) in each host's store, asked of each daemon over the
    # network (as test_multinode_refs._store_used does; the driver's own node directly)
    core = _core()
    out = {}
    for host, nid in IDS.items():
        conn = None if nid == core.node_id else core.peer(nid)
        stats = core.request(M.STORE_STATS, conn=conn)
        out[host] = [stats["used"], stats["objects"]]
    return out

def back_to(base):
    # every store back to `base`, or what is above it after 60 s (a leak)
    deadline = time.monotonic() + 60
    while True:
        _core().flush()
        now = stores()
        if now == base or time.monotonic() > deadline:
            return {h: [now[h][0] - base[h][0], now[h][1] - base[h][1]] for h in base if now[h] != base[h]}
        time.sleep(0.2)

BIG = 300_000  # above the inline limit: the value lives in its host's shared-memory store
"""


def test_nested_refs_are_counted_across_hosts(hosts: Hosts) -> None:
    """Refs inside values that cross hosts: no early free, no leak in any host's store."""
    c = Cluster(hosts, {"head": {"num_cpus": 1, "resources": {"head": 1}},
                        "a": {"num_cpus": 1, "resources": {"a": 1}},
                        "b": {"num_cpus": 1, "resources": {"b": 1}},
                        "drv": {"num_cpus": 0}})
    seen = c.drive(STORES + """
out = {"ids": IDS}

@carme.remote(resources={"b": 1})
def make(i):
    return bytes([i]) * BIG

@carme.remote(resources={"a": 1})
def outer(n):
    # made on host b by a task on host a, returned to the driver on drv inside a list
    refs = [make.remote(i) for i in range(n)]
    carme.wait(refs, num_returns=n, timeout=60)
    return refs

@carme.remote(resources={"b": 1})
def read_all(box):
    return [[carme.get(r, timeout=60)[0], node_id()] for r in box["refs"]]

base = stores()
inner = carme.get(outer.remote(4), timeout=120)
time.sleep(0.5)  # the task's process on a has dropped its refs; only the driver holds them
values = carme.get(inner, timeout=120)
out["returned"] = [[v[0], len(v)] for v in values]
out["held_returned"] = stores()
del values, inner
out["leak_returned"] = back_to(base)

# refs inside a put value (made on b, and put here on drv), read by a task on b; the
# value also holds a ref put by the driver
refs = [make.options(resources={"a": 1}).remote(i) for i in range(3)]
carme.wait(refs, num_returns=3, timeout=120)
local = [carme.put(bytes([9]) * BIG)]
box = carme.put({"refs": refs + local, "pad": b"x" * BIG})
del refs, local
out["held_put"] = stores()
time.sleep(0.5)
out["read_in_put"] = carme.get(read_all.remote(box), timeout=120)
del box
out["leak_put"] = back_to(base)
out["base"] = base
print(json.dumps(out))
""")
    ids, base = seen["ids"], seen["base"]
    assert seen["returned"] == [[i, 300_000] for i in range(4)]
    # the values were in b's store while held (the leak checks below are not vacuous)
    assert seen["held_returned"]["b"][1] >= base["b"][1] + 4, (base, seen["held_returned"])
    assert seen["held_put"]["a"][1] >= base["a"][1] + 3, (base, seen["held_put"])
    assert seen["leak_returned"] == {}, f"(bytes, objects) above base per host: {seen['leak_returned']}"
    assert seen["read_in_put"] == [[0, ids["b"]], [1, ids["b"]], [2, ids["b"]], [9, ids["b"]]]
    assert seen["leak_put"] == {}, f"(bytes, objects) above base per host: {seen['leak_put']}"


PG_DRIVER = """
from carme.util.placement_group import placement_group, placement_group_table, remove_placement_group
from carme.util.scheduling_strategies import PlacementGroupSchedulingStrategy

pg = placement_group([{"CPU": 1, "b": 1}])  # only host b can hold it
assert pg.wait(60), placement_group_table(pg)
out = {"ids": IDS, "placed": placement_group_table(pg)["bundles_to_node_id"][0]}

@carme.remote(num_cpus=1)
def where():
    return node_id()

in_bundle = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
try:
    out["in_bundle"] = carme.get([where.options(scheduling_strategy=in_bundle).remote() for _ in range(3)],
                                 timeout=120)
except carme.exceptions.RayError as e:
    out["in_bundle"] = type(e).__name__ + ": " + str(e)
"""


def test_a_bundle_is_reserved_by_the_host_that_holds_it(hosts: Hosts) -> None:
    """A placement-group bundle placed on host b: a driver on b (its own node) cannot take
    the bundle's CPU for a plain task while the group exists, and can after it is removed.
    The group is made by a driver on the head's host (a driver on drv: the next test)."""
    c = Cluster(hosts, {"head": {"num_cpus": 1, "resources": {"head": 1}},
                        "b": {"num_cpus": 1, "resources": {"b": 1}}})
    on_b = f"""
import json, sys, carme
from carme.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity
carme.init(address={c.address['b']!r})
me = carme.get_runtime_context().get_node_id()

@carme.remote(num_cpus=1)
def where():
    return carme.get_runtime_context().get_node_id()

out = {{"me": me}}
if sys.argv[1] == "held":
    # a plain task prefers this node when its CPU is free here
    out["plain"] = carme.get(where.remote(), timeout=60)
    try:  # asked of this node alone, failing at once if its CPU is taken
        carme.get(where.options(scheduling_strategy=Affinity(
            me, soft=False, _fail_on_unavailable=True)).remote(), timeout=60)
        out["pinned"] = "ran"
    except carme.exceptions.RayError as e:
        out["pinned"] = type(e).__name__ + ": " + str(e)
else:  # this node alone, waiting until its CPU is free (the removal reaches it)
    out["pinned"] = carme.get(where.options(scheduling_strategy=Affinity(me, soft=False)).remote(),
                              timeout=60)
print(json.dumps(out))
"""
    seen_on_b: list[dict] = []

    def driver_on_b(mode: str) -> None:
        r = hosts.run("b", [PY, "-", mode], env=c.env, input=on_b, timeout=180)
        assert r.returncode == 0, f"the driver on b failed:\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}"
        seen_on_b.append(json.loads(r.stdout.strip().splitlines()[-1]))

    seen = c.drive_in_steps(PG_DRIVER + """
step()  # a driver on b tries to take the CPU
remove_placement_group(pg)
deadline = time.monotonic() + 60
while placement_group_table(pg)["state"] != "REMOVED":
    assert time.monotonic() < deadline, placement_group_table(pg)
    time.sleep(0.1)
step()  # and again, with the group gone
print(json.dumps(out))
""", [lambda: driver_on_b("held"), lambda: driver_on_b("freed")], host="head")
    ids = seen["ids"]
    assert seen["placed"] == ids["b"]
    assert seen["in_bundle"] == [ids["b"]] * 3
    held, freed = seen_on_b
    assert held["me"] == freed["me"] == ids["b"]
    # while the group exists, b itself keeps its CPU for the bundle
    assert held["plain"] == ids["head"], f"a plain task ran on {held['plain'][:8]} (b: {ids['b'][:8]})"
    assert "cannot run now on node" in held["pinned"] and "busy" in held["pinned"], held["pinned"]
    # once the group is removed, b's CPU is its own again (the removal reaches b)
    assert freed["pinned"] == ids["b"]


def test_bundle_tasks_of_a_driver_joined_to_its_own_node(hosts: Hosts) -> None:
    """The driver on drv (a node of its own, 0 CPU) makes the group at the head, which
    places its bundle on b; drv's node knows nothing of the group: it asks the head and
    sends the bundle's tasks (bundle 0 and any bundle) and an actor in it to b."""
    c = Cluster(hosts, {"head": {"num_cpus": 1, "resources": {"head": 1}},
                        "b": {"num_cpus": 1, "resources": {"b": 1}},
                        "drv": {"num_cpus": 0}})
    seen = c.drive(PG_DRIVER + """
any_bundle = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=-1)
out["any_bundle"] = carme.get([where.options(scheduling_strategy=any_bundle).remote() for _ in range(3)],
                              timeout=120)

@carme.remote(num_cpus=1)
class Where:
    def node(self):
        return node_id()

actor = Where.options(scheduling_strategy=in_bundle).remote()
out["actor"] = carme.get(actor.node.remote(), timeout=120)
print(json.dumps(out))
""")
    b = seen["ids"]["b"]
    assert seen["placed"] == b
    assert seen["in_bundle"] == [b] * 3, seen["in_bundle"]
    assert seen["any_bundle"] == [b] * 3 and seen["actor"] == b, seen


def test_head_restarted_on_its_host_is_rejoined_across_hosts(hosts: Hosts) -> None:
    """Every carme process on the head's host is SIGKILLed; the head is started again on
    that host with the same port and state directory (the host's own /tmp, kept by its
    anchor). Nodes on the other hosts rejoin it, a detached actor on host a keeps running
    and is found by name again, and work sent during the outage finishes."""
    c = Cluster(hosts, {"head": {"num_cpus": 1, "resources": {"head": 1}},
                        "a": {"num_cpus": 1, "resources": {"a": 2}},  # the actor holds one
                        "drv": {"num_cpus": 0}})
    state = f"/tmp/carme-state/heads/{PORT}.json"  # on the head's host

    def kill_the_head() -> None:
        # the head has saved the detached actor (its beat writes the state file)
        deadline = time.monotonic() + 60
        while True:
            r = hosts.run("head", ["cat", state])
            if r.returncode == 0 and any(a.get("name") == "keeper" for a in json.loads(r.stdout)["actors"]):
                break
            assert time.monotonic() < deadline, f"the head did not save the actor: {r.stdout}{r.stderr}"
            time.sleep(0.2)
        hosts.kill_host("head")

    def start_it_again() -> None:
        out = c._ok("head", [PY, "-m", "carme", "start", "--head", "--host", hosts.ip["head"],
                             "--port", str(PORT), "--num-cpus", "1", "--resources", '{"head": 1}'])
        assert f"carme cluster head restarted at {c.head}" in out, out

    seen = c.drive_in_steps("""
from carme.util.state import list_nodes

@carme.remote(num_cpus=0, resources={"a": 1})
class Keeper:
    def __init__(self):
        self.calls = 0
    def ping(self):
        import os
        self.calls += 1
        return os.getpid(), self.calls, node_id()

@carme.remote(num_cpus=0)
def where():
    return node_id()

keeper = Keeper.options(name="keeper", lifetime="detached").remote()
out = {"ids": IDS, "first": carme.get(keeper.ping.remote(), timeout=60)}
step()  # every carme process on the head's host is killed
deadline = time.monotonic() + 60
while any(n["NodeID"] == IDS["head"] and n["Alive"] for n in carme.nodes()):
    assert time.monotonic() < deadline, "the head is still alive in the view after 60 s"
    time.sleep(0.1)
out["head_row"] = next(r["state_message"] for r in list_nodes() if r["node_id"] == IDS["head"])
try:
    carme.get_actor("keeper")
    out["lookup"] = "found"
except carme.exceptions.RayError as e:
    out["lookup"] = type(e).__name__ + ": " + str(e)
# sent during the outage: a task only the head can run (waits for it), one for host a,
# and a call to the detached actor on a
waiting = where.options(resources={"head": 1}).remote()
out["on_a"] = carme.get(where.options(resources={"a": 1}).remote(), timeout=60)
out["during"] = carme.get(keeper.ping.remote(), timeout=60)
out["pending"] = not carme.wait([waiting], timeout=0)[0]
step()  # the head is started again on its host
t0 = time.monotonic()
deadline = t0 + 60
while not (len(carme.nodes()) == len(IDS) and all(n["Alive"] for n in carme.nodes())):
    assert time.monotonic() < deadline, carme.nodes()
    time.sleep(0.1)
out["rejoined_s"] = round(time.monotonic() - t0, 2)
deadline = time.monotonic() + 60
while True:
    try:
        handle = carme.get_actor("keeper")
        break
    except carme.exceptions.RayError:
        assert time.monotonic() < deadline, "the detached actor was not found by name again"
        time.sleep(0.1)
out["after"] = carme.get(handle.ping.remote(), timeout=60)
out["waited"] = carme.get(waiting, timeout=60)
carme.kill(handle)
print(json.dumps(out))
""", [kill_the_head, start_it_again])
    ids = seen["ids"]
    pid = seen["first"][0]
    assert seen["first"] == [pid, 1, ids["a"]]
    assert c.head in seen["head_row"] and "carme start --head --port" in seen["head_row"], seen["head_row"]
    assert "unreachable" in seen["lookup"] and c.head in seen["lookup"], seen["lookup"]
    assert seen["on_a"] == ids["a"]
    assert seen["during"] == [pid, 2, ids["a"]]
    assert seen["pending"]
    assert seen["after"] == [pid, 3, ids["a"]]  # the same actor process, kept running
    assert seen["waited"] == ids["head"]  # run by the head once it was back
    print(f"all nodes alive {seen['rejoined_s']} s after `carme start --head` returned")


def test_what_a_killed_run_left_is_swept_by_the_next() -> None:
    """A test run killed before its cleanup leaves its namespaces, what runs in them and
    its stash directory; the next run removes them (only those of runs that are gone)."""
    why = unavailable()
    if why:
        pytest.skip(f"multi-host tests need network namespaces: {why}")
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid whose process is gone: the "killed run"
    ns = f"{PREFIX}{gone.pid}-{secrets.token_hex(3)}-head"
    live = f"{OWN}{secrets.token_hex(3)}-head"  # this run's: kept
    stash = tempfile.mkdtemp(prefix=f"{STASH_PREFIX}{gone.pid}-", dir=STASH_DIR)
    mine = tempfile.mkdtemp(prefix=f"{STASH_PREFIX}{os.getpid()}-", dir=STASH_DIR)  # kept
    assert dead_run_entries(STASH_DIR, STASH_PREFIX) == [stash]
    left = None
    try:
        for name in (ns, live):
            subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
        left = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"])
        deadline = time.monotonic() + 10
        while not (inside := subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                            text=True, timeout=10).stdout.split()):
            assert time.monotonic() < deadline, "the process never appeared in the namespace"
            time.sleep(0.05)
        removed = sweep_dead_runs()
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                               timeout=10).stdout
        assert ns not in names and live in names
        left.wait(timeout=10)
        assert not any(psutil.pid_exists(int(pid)) for pid in inside)  # killed by the sweep
        assert not os.path.exists(stash)
        assert any(ns in r and "sleep 600" in r for r in removed), removed
    finally:
        if left is not None and left.poll() is None:
            left.kill()
            left.wait()
        for name in (ns, live):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)
        for d in (stash, mine):
            with contextlib.suppress(OSError):
                os.rmdir(d)
