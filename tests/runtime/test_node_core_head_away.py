"""Synchronous: a node's view of a head that does not answer (`NodeCore._head_away`).

The head's row DEAD (only this node's link marks a head so) keeps the head in the
node's scheduler with everything in use: a request only the head can serve waits (no
`Refuse`), and is spilled to the head when its row is ALIVE again. Another node that
dies is forgotten as before: what only it could run fails as infeasible.
"""

from __future__ import annotations

from carme._node_actors import ActorDirectory
from carme._node_core import Client, ClosePeer, ClusterView, LeaseRequested, NodeCore
from carme._node_leases import LeaseTable, Refuse, Spill
from carme._node_objects import ObjectTable
from carme._node_workers import WorkerPool
from carme._scheduler import ClusterScheduler, DefaultStrategy, LeaseRequest
from carme._store import Arena

NODE = "n" * 56
HEAD = "h" * 56
PEER = "p" * 56


def _core() -> NodeCore:
    s = ClusterScheduler()
    s.add_node(NODE, {"CPU": 1}, {})
    return NodeCore(ObjectTable(Arena(1 << 20), NODE), LeaseTable(s, NODE), WorkerPool(2),
                    ActorDirectory("ns"), NODE)


def _row(nid: str, total: dict, state: str = "ALIVE", is_head: bool = False) -> dict:
    metrics = {"state_message": "the head at 10.0.0.1:6380 does not answer"} if state != "ALIVE" else {}
    return {"node_id": nid, "address": f"tcp:{nid[:4]}", "grpc_address": f"grpc:{nid[:4]}",
            "host": "h", "state": state, "total": total, "available": total if state == "ALIVE" else {},
            "metrics": metrics, "is_head": is_head, "labels": {}, "start_time": 1.0,
            "store_capacity": 1}


def _ask(core: NodeCore, req: int, shape: dict) -> list:
    return core.handle(Client("driver", "d1", 10), LeaseRequested(
        req, "", LeaseRequest(f"lease-{req}", shape, DefaultStrategy(), NODE, "task f")))


def test_a_request_only_the_away_head_can_serve_waits_and_goes_there_when_it_is_back() -> None:
    core = _core()
    assert core.leases is not None
    scheduler = core.leases.scheduler
    head = {"CPU": 1, "head": 1}
    core.handle(None, ClusterView([_row(HEAD, head, is_head=True)]))
    away = core.handle(None, ClusterView([_row(HEAD, head, "DEAD", is_head=True)]))
    assert ClosePeer(HEAD) in away  # nothing is sent there any more
    assert HEAD in scheduler.nodes() and not any(scheduler.available(HEAD).values())
    assert _ask(core, 1, {"head": 1}) == []  # waits: no Refuse, no Spill
    # the same view again changes nothing; what no node ever had still fails at once
    assert core.handle(None, ClusterView([_row(HEAD, head, "DEAD", is_head=True)])) == []
    (refused,) = _ask(core, 2, {"nowhere": 1})
    assert isinstance(refused, Refuse) and "no node can ever provide" in str(refused.error)
    # back (started again with more CPUs): its own totals, and the waiting request goes there
    back = core.handle(None, ClusterView([_row(HEAD, {"CPU": 2, "head": 1}, is_head=True)]))
    assert Spill("driver", 1, HEAD) in back
    assert scheduler.total(HEAD) == {"CPU": 2.0, "head": 1.0}
    assert not core.heads_away


def test_another_node_that_dies_is_forgotten_as_before() -> None:
    core = _core()
    assert core.leases is not None
    core.handle(None, ClusterView([_row(PEER, {"CPU": 1, "b": 1})]))
    assert ClosePeer(PEER) in core.handle(None, ClusterView([_row(PEER, {"CPU": 1, "b": 1}, "DEAD")]))
    assert PEER not in core.leases.scheduler.nodes()
    (refused,) = _ask(core, 1, {"b": 1})
    assert isinstance(refused, Refuse) and "no node can ever provide b: 1" in str(refused.error)
