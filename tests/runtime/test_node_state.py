"""The node's state-API rows, built from its pure tables. Plain calls, no processes."""

from __future__ import annotations

from types import SimpleNamespace

from carme._events import TaskEventLog
from carme._node_actors import ActorDirectory
from carme._node_objects import ObjectTable
from carme._node_state import STATE_KINDS, NodeFacts, NodeRows, head_node, unknown_kind
from carme._node_workers import WorkerPool, WorkerRec
from carme._scheduler import ClusterScheduler
from carme._store import Arena

NODE = "n" * 56
PEER = "p" * 56


def _rows(linked: bool = False, is_head: bool = True) -> NodeRows:
    s = ClusterScheduler()
    s.add_node(NODE, {"CPU": 2}, {})
    facts = NodeFacts(NODE, "127.0.0.1", "box", "unix:/s/node.sock", "01000000", 100.0,
                      {"zone": "a"}, is_head, linked)
    driver = SimpleNamespace(meta={"pid": 42})
    return NodeRows(facts, TaskEventLog(), ObjectTable(Arena(1 << 20), NODE), ActorDirectory("ns"),
                    WorkerPool(2), s, [driver])


def _metrics() -> dict:
    return {"cpu_percent": 1.0}


def test_every_kind_has_rows_and_an_unknown_kind_names_the_known_ones():
    r = _rows()
    for kind in STATE_KINDS:
        assert unknown_kind(kind) is None
        r.rows(kind, _metrics)  # each builds without I/O
    err = unknown_kind("bogus")
    assert isinstance(err, ValueError) and "'bogus'" in str(err) and "placement_groups" in str(err)


def test_rows_of_workers_actors_jobs_store_and_objects():
    r = _rows()
    w = WorkerRec("w1", 1001, "conn", "", state="ACTOR", actor_id=b"a" * 16, started=3.0)
    r.pool.add(w)
    actor, _ = r.directory.create(b"a" * 16, {"class_name": "C", "name": "x", "tag": "cell-1"}, "o")
    actor.worker = w
    remote, _ = r.directory.create(b"b" * 16, {"class_name": "D"}, "o")
    remote.remote_node = PEER  # its node lists it
    r.table.alloc(b"o" * 28, 100, 42, "d1")
    (wrow,) = r.rows("workers", _metrics)
    assert wrow["pid"] == 1001 and wrow["actor_id"] == (b"a" * 16).hex() and wrow["start_time_ms"] == 3000
    (arow,) = r.rows("actors", _metrics)
    assert (arow["name"], arow["namespace"], arow["pid"], arow["cell"]) == ("x", "ns", 1001, "cell-1")
    assert r.rows("jobs", _metrics) == [{"job_id": "01000000", "status": "RUNNING",
                                         "start_time": 100000, "driver_pid": 42}]
    assert r.rows("store", _metrics)["used"] > 0
    (orow,) = r.rows("objects", _metrics)
    assert orow["pid"] == 42 and orow["task_status"] == "PENDING"


def test_node_rows_alone_and_from_the_cluster_view():
    r = _rows()
    (own,) = r.rows("nodes", _metrics)
    assert own["node_id"] == NODE and own["labels"] == {"zone": "a"} and own["is_head_node"]
    assert own["metrics"] == {"cpu_percent": 1.0} and own["resources_total"]["CPU"] == 2
    r = _rows(linked=True, is_head=False)
    r.view_nodes = [{"node_id": NODE}, {
        "node_id": PEER, "address": "tcp:p", "host": "h2", "state": "ALIVE", "total": {"CPU": 4},
        "available": {"CPU": 3}, "metrics": {}, "is_head": True, "labels": {}, "start_time": 1.5,
        "store_capacity": 9}]
    own, peer = r.rows("nodes", _metrics)
    assert own["node_id"] == NODE and not own["is_head_node"]
    assert peer["node_id"] == PEER and peer["start_time_ms"] == 1500
    assert peer["object_store"] == {"capacity": 9, "used": 0}


def test_the_head_node_is_this_one_or_the_live_head_in_the_view():
    r = _rows(linked=True, is_head=False)
    assert head_node(r.facts, {}) == {}
    peers = {PEER: {"is_head": True, "state": "ALIVE", "address": "tcp:p"}}
    assert head_node(r.facts, peers) == {"head_node": PEER, "head_address": "tcp:p"}
    peers[PEER]["state"] = "DEAD"
    assert head_node(r.facts, peers) == {}
    assert head_node(_rows().facts, peers)["head_node"] == NODE
