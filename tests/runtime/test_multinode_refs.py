"""carme-only: references nested inside values that cross nodes (carme.testing.Cluster).

Probes as an operator would run them: refs made on one node travel inside values to
processes on other nodes; whoever reads them after the other holders are gone must get
the value (no early free), and once every holder is gone every node's store is back to
what it used before (no leak), read through each node's STORE_STATS.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import test_multinode

pytestmark = pytest.mark.processes
cluster = test_multinode.cluster  # the same loopback cluster: a head with 1 CPU and {"head": 1}

BIG = 300_000  # above the inline limit: the value lives in a node's shared-memory store


def _store_used(carme, node_ids: list[str]) -> dict[str, tuple[int, int]]:
    """(bytes used, objects known) in each node's store, asked of each daemon (copies a
    node pulled count too: they go when the object is freed at its node)."""
    from carme import _messages as M
    from carme._api import auto_init as _core
    core = _core()
    out = {}
    for nid in node_ids:
        conn = None if nid == core.node_id else core.peer(nid)
        stats = core.request(M.STORE_STATS, conn=conn)
        out[nid] = (stats["used"], stats["objects"])
    return out


def _wait_back_to(carme, base: dict[str, tuple[int, int]], what: str, timeout: float = 30.0) -> None:
    """Poll until every node's store is back to `base` (a leak fails with the numbers)."""
    from carme._api import auto_init as _core
    deadline = time.monotonic() + timeout
    while True:
        _core().flush()
        now = _store_used(carme, list(base))
        if now == base:
            return
        if time.monotonic() > deadline:
            leaks = {nid[:8]: (now[nid][0] - base[nid][0], now[nid][1] - base[nid][1])
                     for nid in base if now[nid] != base[nid]}
            raise AssertionError(f"{what}: stores not back to base after {timeout} s; "
                                 f"(bytes, objects) above base per node: {leaks}")
        time.sleep(0.2)


def _make(carme):
    @carme.remote(resources={"c": 1})
    def make(i: int) -> bytes:
        return bytes([i]) * BIG
    return make


def _keeper(carme):
    @carme.remote(resources={"b": 1})
    class Keeper:
        def __init__(self) -> None:
            self.kept: list = []

        def keep(self, refs: list) -> int:
            self.kept = refs
            return len(refs)

        def read(self) -> list:
            return [carme.get(r, timeout=60)[:1] for r in self.kept]

        def hand_back(self) -> list:
            return self.kept

        def pass_on(self, reader) -> list:
            # the refs travel on from here to a task on a third node (a second hop)
            return carme.get(reader.remote({"refs": self.kept}), timeout=60)

        def drop(self) -> None:
            self.kept = []
    return Keeper


def _two_nodes(cluster):
    c = cluster.add_node(num_cpus=1, resources={"c": 1})
    b = cluster.add_node(num_cpus=1, resources={"b": 1})  # (joins after c: its first view has c)
    cluster.connect()
    import carme
    return carme, b, c, [cluster.head.node_id, b.node_id, c.node_id]


def test_refs_returned_from_another_node_made_on_a_third(cluster) -> None:
    carme, b, c, nodes = _two_nodes(cluster)

    make = _make(carme)
    @carme.remote(resources={"b": 1})
    def outer(n: int) -> list:
        refs = [make.remote(i) for i in range(n)]
        carme.wait(refs, num_returns=n, timeout=60)
        return refs

    base = _store_used(carme, nodes)
    inner = carme.get(outer.remote(4), timeout=60)
    # the task on b has finished and dropped its refs; only the driver holds them now
    time.sleep(0.5)
    values = carme.get(inner, timeout=60)
    assert [v[:1] for v in values] == [bytes([i]) for i in range(4)]
    assert all(len(v) == BIG for v in values)
    del values, inner
    _wait_back_to(carme, base, "after the driver dropped refs made on c via b")


def test_refs_inside_a_put_value_read_on_another_node(cluster) -> None:
    carme, b, c, nodes = _two_nodes(cluster)

    make = _make(carme)
    @carme.remote(resources={"b": 1})
    def read_all(box: dict) -> list:
        return [carme.get(r, timeout=60)[:1] for r in box["refs"]]

    base = _store_used(carme, nodes)
    refs = [make.remote(i) for i in range(3)]
    carme.wait(refs, num_returns=3, timeout=60)
    local = [carme.put(bytes([9]) * BIG)]
    box = carme.put({"refs": refs + local, "pad": b"x" * BIG})  # a stored value holding refs
    del refs, local
    time.sleep(0.5)
    assert carme.get(read_all.remote(box), timeout=60) == [bytes([0]), bytes([1]), bytes([2]), bytes([9])]
    del box
    _wait_back_to(carme, base, "after the put value holding refs was dropped")


def test_refs_kept_by_an_actor_on_another_node(cluster) -> None:
    carme, b, c, nodes = _two_nodes(cluster)

    make = _make(carme)
    Keeper = _keeper(carme)
    k = Keeper.remote()
    carme.get(k.drop.remote(), timeout=60)
    base = _store_used(carme, nodes)
    refs = [make.remote(i) for i in range(3)] + [carme.put(bytes([7]) * BIG)]
    assert carme.get(k.keep.remote(refs), timeout=60) == 4
    del refs
    time.sleep(0.5)
    assert carme.get(k.read.remote(), timeout=60) == [bytes([0]), bytes([1]), bytes([2]), bytes([7])]
    back = carme.get(k.hand_back.remote(), timeout=60)
    carme.get(k.drop.remote(), timeout=60)
    time.sleep(0.5)
    assert [v[:1] for v in carme.get(back, timeout=60)] == [bytes([0]), bytes([1]), bytes([2]), bytes([7])]
    del back
    _wait_back_to(carme, base, "after the actor and the driver dropped the refs")


def test_holds_of_a_dead_node_go(cluster) -> None:
    carme, b, c, nodes = _two_nodes(cluster)

    Keeper = _keeper(carme)
    make = _make(carme)
    survivors = [cluster.head.node_id, c.node_id]
    base = _store_used(carme, survivors)
    k = Keeper.remote()
    refs = [make.remote(i) for i in range(2)] + [carme.put(bytes([5]) * BIG)]
    assert carme.get(k.keep.remote(refs), timeout=60) == 3
    del refs
    os.kill(b.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while b.node_id in cluster.alive_node_ids():
        assert time.monotonic() < deadline, "the killed node is still alive in the view"
        time.sleep(0.2)
    cluster.nodes.remove(b)
    from carme import cluster as cl
    cl.stop_node(b)
    _wait_back_to(carme, base, "after the node holding the refs died")


def test_refs_passed_on_through_a_second_node(cluster) -> None:
    carme, b, c, nodes = _two_nodes(cluster)
    make = _make(carme)
    Keeper = _keeper(carme)

    @carme.remote(resources={"head": 1})
    def read_on_head(box: dict) -> list:
        return [carme.get(r, timeout=60)[:1] for r in box["refs"]]

    k = Keeper.remote()
    carme.get(k.drop.remote(), timeout=60)
    base = _store_used(carme, nodes)
    refs = [make.remote(i) for i in range(3)] + [carme.put(bytes([8]) * BIG)]
    assert carme.get(k.keep.remote(refs), timeout=60) == 4
    del refs
    time.sleep(0.5)
    # held on b only now: b's actor hands them to a task on the head node, which reads them
    assert carme.get(k.pass_on.remote(read_on_head), timeout=60) == [bytes([0]), bytes([1]), bytes([2]), bytes([8])]
    carme.get(k.drop.remote(), timeout=60)
    _wait_back_to(carme, base, "after refs went driver -> b -> head and were dropped")


def test_a_ref_inside_a_value_written_on_another_node(cluster) -> None:
    """A task on c returns a value in c's store that holds a ref to an object the task
    put there; the task's worker drops its own ref when it ends. The driver (on the head
    node) reads the value later: the ref inside must still resolve, and once the driver
    drops the value every store is back to its base."""
    carme, b, c, nodes = _two_nodes(cluster)

    @carme.remote(resources={"c": 1})
    def boxed(i: int) -> dict:
        return {"ref": carme.put(bytes([i]) * BIG), "pad": b"p" * BIG}

    base = _store_used(carme, nodes)
    box = boxed.remote(5)
    carme.wait([box], timeout=60)
    time.sleep(0.5)  # the worker's own ref to the put object is gone by now
    _core_flush(carme)
    inner = carme.get(box, timeout=60)["ref"]
    assert carme.get(inner, timeout=60)[:1] == bytes([5])
    del inner, box
    _wait_back_to(carme, base, "after the driver dropped a value written on c holding a ref")


def _core_flush(carme) -> None:
    from carme._api import auto_init as _core
    _core().flush()
