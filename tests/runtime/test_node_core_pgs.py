"""A node asked for a bundle of a group it does not know (`_node_core_pgs.py`): it asks
the head, sends the request to the bundle's node, and fails it only on the head's word.
Synchronous, no processes."""

from __future__ import annotations

from typing import Any

from carme import _messages as M
from carme import exceptions as exc
from carme._node_actors import ActorDirectory
from carme._node_core import (
    ActorCreation,
    Client,
    ClusterView,
    LeaseRequested,
    NodeCore,
    PeerFailed,
    PeerRequest,
    ToPeer,
)
from carme._node_core_pgs import LOOKUP_VIEWS
from carme._node_leases import LeaseTable, Refuse, Spill
from carme._node_objects import ObjectTable
from carme._node_workers import WorkerPool
from carme._scheduler import BundleStrategy, ClusterScheduler, LeaseRequest, bundle_target
from carme._store import Arena

HEAD, B, C, D = "h" * 56, "b" * 56, "c" * 56, "d" * 56
DRIVER = Client("drv", "d1", 1)
FROM_HEAD = Client("head-conn", "node:" + HEAD, 2, peer=HEAD)


def _row(nid: str, cpus: float = 1.0, head: bool = False, state: str = "ALIVE") -> dict[str, Any]:
    return {"node_id": nid, "state": state, "total": {"CPU": cpus}, "available": {"CPU": cpus},
            "labels": {}, "address": f"addr-{nid[0]}", "grpc_address": "g", "is_head": head}


def _node_d() -> NodeCore:
    """Node d (0 CPU, where the driver is) in a cluster of the head, b and c."""
    s = ClusterScheduler()
    s.add_node(D, {"CPU": 0})
    core = NodeCore(ObjectTable(Arena(1 << 16), D), LeaseTable(s, D), WorkerPool(2),
                    ActorDirectory(""), node_id=D, linked=True)
    core.handle(None, ClusterView([_row(HEAD, head=True), _row(B), _row(C)]))
    return core


def _lease(req: int, index: int = 0, cpus: float = 1.0, pg: str = "pg") -> LeaseRequested:
    return LeaseRequested(req, "", LeaseRequest(f"r{req}", {"CPU": cpus}, BundleStrategy(pg, index),
                                                D, "task f"))


def _placed(state: str = "CREATED", on: dict[int, str] | None = None) -> dict[str, Any]:
    on = {0: B} if on is None else on
    return {"placement_group_id": "pg", "state": state, "bundles": {i: {"CPU": 1.0} for i in on},
            "bundles_to_node_id": on if state == "CREATED" else {}}


def _lookup(out: list[Any]) -> int:
    (ask,) = [e for e in out if isinstance(e, PeerRequest)]
    assert ask.node_id == HEAD and ask.msg[0] == M.PG_INFO and ask.msg[2] == "pg"
    return ask.req


def _refusal(out: list[Any]) -> str:
    (refused,) = [e for e in out if isinstance(e, Refuse)]
    assert isinstance(refused.error, exc.TaskUnschedulableError)
    return str(refused.error)


def test_the_head_is_asked_once_and_the_leases_go_to_the_bundles_node() -> None:
    core = _node_d()
    req = _lookup(core.handle(DRIVER, _lease(1)))
    assert core.handle(DRIVER, _lease(2, index=-1)) == []  # the same group: one lookup
    out = core.handle(FROM_HEAD, M.Reply(req, True, _placed()))
    assert out == [Spill("drv", 1, B), Spill("drv", 2, B)]
    # its answer is kept: the next lease goes there at once
    assert core.handle(DRIVER, _lease(3)) == [Spill("drv", 3, B)]


def test_an_answer_from_another_node_is_not_the_heads() -> None:
    core = _node_d()
    req = _lookup(core.handle(DRIVER, _lease(1)))
    assert core.handle(Client("b-conn", "node:" + B, 3, peer=B), M.Reply(req, True, _placed(on={0: C}))) == []
    assert core.handle(FROM_HEAD, M.Reply(req, True, _placed())) == [Spill("drv", 1, B)]


def test_any_bundle_takes_turns_over_the_nodes_holding_one() -> None:
    core = _node_d()
    req = _lookup(core.handle(DRIVER, _lease(1, index=-1)))
    first = core.handle(FROM_HEAD, M.Reply(req, True, _placed(on={0: B, 1: C})))
    second = core.handle(DRIVER, _lease(2, index=-1))
    assert {first[0].node_id, second[0].node_id} == {B, C}


def test_only_the_heads_answer_fails_a_request() -> None:
    core = _node_d()
    req = _lookup(core.handle(DRIVER, _lease(1)))
    out = core.handle(FROM_HEAD, M.Reply(req, False, ValueError("no placement group 'pg'")))
    assert "removed or never existed" in _refusal(out)
    # an index out of range, a request bigger than its bundle: the head's record says so
    req = _lookup(core.handle(DRIVER, _lease(2, index=3)))
    core.handle(DRIVER, _lease(3, cpus=2))
    out = core.handle(FROM_HEAD, M.Reply(req, True, _placed()))
    assert len(out) == 2  # both refused, in order
    assert "asks for bundle 3 of placement group pg, which has 1 bundles" in _refusal(out[:1])
    assert "more than bundle 0 of placement group pg reserve" in _refusal(out[1:])
    core = _node_d()  # (the first core keeps the answer it got)
    req = _lookup(core.handle(DRIVER, _lease(4)))
    assert "removed or never existed" in _refusal(core.handle(FROM_HEAD, M.Reply(req, True, _placed("REMOVED"))))


def test_a_group_not_placed_yet_is_asked_about_again_at_the_next_view() -> None:
    core = _node_d()
    req = _lookup(core.handle(DRIVER, _lease(1)))
    assert core.handle(FROM_HEAD, M.Reply(req, True, _placed("PENDING"))) == []
    again = _lookup(core.handle(None, ClusterView([_row(HEAD, head=True), _row(B), _row(C)])))
    assert core.handle(FROM_HEAD, M.Reply(again, True, _placed())) == [Spill("drv", 1, B)]


def test_a_head_that_does_not_answer_or_is_gone_fails_the_request_with_a_reason() -> None:
    core = _node_d()
    _lookup(core.handle(DRIVER, _lease(1)))
    view = ClusterView([_row(HEAD, head=True), _row(B), _row(C)])
    for _ in range(LOOKUP_VIEWS - 1):
        assert not [e for e in core.handle(None, view) if isinstance(e, Refuse)]
    assert "did not answer" in _refusal(core.handle(None, view))
    req = _lookup(core.handle(DRIVER, _lease(2)))
    out = core.handle(None, PeerFailed(req, exc.NodeDiedError("node hhhhhhhh is unreachable")))
    assert "could not ask the head" in _refusal(out)


def test_the_answer_is_forgotten_when_the_group_changes_or_its_node_dies() -> None:
    core = _node_d()
    req = _lookup(core.handle(DRIVER, _lease(1)))
    core.handle(FROM_HEAD, M.Reply(req, True, _placed()))
    # the head says the group changed (this node holds none of it): asked again
    core.handle(FROM_HEAD, M.decode((M.PG_RESERVE, "pg", {})))
    req = _lookup(core.handle(DRIVER, _lease(2)))
    core.handle(FROM_HEAD, M.Reply(req, True, _placed()))
    core.handle(None, ClusterView([_row(HEAD, head=True), _row(B, state="DEAD"), _row(C)]))
    _lookup(core.handle(DRIVER, _lease(3)))


def test_the_head_tells_the_nodes_that_asked_when_the_group_changes() -> None:
    s = ClusterScheduler()
    s.add_node(HEAD, {"CPU": 1})
    head = NodeCore(ObjectTable(Arena(1 << 16), HEAD), LeaseTable(s, HEAD), WorkerPool(2),
                    ActorDirectory(""), node_id=HEAD, linked=True)
    head.handle(None, ClusterView([_row(B), _row(D, cpus=0)]))
    head.handle(DRIVER, M.decode((M.PG_CREATE, 1, "pg", [{"CPU": 1}], "PACK", None)))
    (info,) = head.handle(Client("d-conn", "node:" + D, 4, peer=D), M.decode((M.PG_INFO, 7, "pg", None)))
    assert info.ok and info.value["state"] == "CREATED"
    out = head.handle(DRIVER, M.decode((M.PG_REMOVE, 2, "pg")))
    assert ToPeer(D, (M.PG_RESERVE, "pg", {})) in out
    # the head itself knows its groups: a removed one fails there at once
    assert "removed or never existed" in _refusal(head.handle(DRIVER, _lease(3)))


def test_a_bundle_here_not_yet_reserved_waits_for_its_reservation() -> None:
    s = ClusterScheduler()
    s.add_node(B, {"CPU": 1})
    core = NodeCore(ObjectTable(Arena(1 << 16), B), LeaseTable(s, B), WorkerPool(2),
                    ActorDirectory(""), node_id=B, linked=True)
    core.handle(None, ClusterView([_row(HEAD, head=True)]))
    req = _lookup(core.handle(DRIVER, _lease(1)))
    assert core.handle(FROM_HEAD, M.Reply(req, True, _placed())) == []  # the head says: here
    out = core.handle(FROM_HEAD, M.decode((M.PG_RESERVE, "pg", {0: {"CPU": 1}})))
    assert not [e for e in out if isinstance(e, (Spill, Refuse, PeerRequest))]
    assert s.available(B) == {"CPU": 0.0} and "r1" not in [r.request_id for r in s.pending()]
    assert core.leases is not None and len(core.leases.leases) == 1  # granted here, from the bundle


def test_an_actor_in_a_group_this_node_does_not_know_is_created_on_the_bundles_node() -> None:
    core = _node_d()
    spec = {"class_name": "Where", "placement_shape": {"CPU": 1}, "strategy": BundleStrategy("pg", 0),
            "env_key": ""}
    out = core.handle(DRIVER, ActorCreation(1, b"a" * 16, spec))
    req = _lookup(out)
    out = core.handle(FROM_HEAD, M.Reply(req, True, _placed()))
    (create,) = [e for e in out if isinstance(e, PeerRequest)]
    assert create.node_id == B and create.msg[0] == M.CREATE_ACTOR
    assert create.msg[3]["strategy"] == BundleStrategy("pg", 0)  # b leases it from the bundle
    # the group is gone at the head: the actor dies with the head's reason
    out = core.handle(DRIVER, ActorCreation(2, b"z" * 16, dict(spec, strategy=BundleStrategy("gone", 0))))
    req = [e for e in out if isinstance(e, PeerRequest)][0].req
    core.handle(FROM_HEAD, M.Reply(req, False, ValueError("no placement group 'gone'")))
    dead = core.actors.get(b"z" * 16) if core.actors else None
    assert dead is not None and dead.state == "DEAD" and "removed or never existed" in str(dead.death)


def test_bundle_target_reads_the_heads_record() -> None:
    req = LeaseRequest("r", {"CPU": 1}, BundleStrategy("pg", -1), D, "task f")
    assert bundle_target(_placed(on={0: B, 1: C}), req, 1) == [C, B]
    assert bundle_target(_placed("RESCHEDULING", on={0: B}), req) is None
    assert "removed or never existed" in str(bundle_target(None, req))


def test_an_actor_whose_bundle_node_died_asks_the_head_again_on_restart() -> None:
    core = _node_d()
    spec = {"class_name": "Where", "placement_shape": {"CPU": 1}, "strategy": BundleStrategy("pg", 0),
            "env_key": "", "max_restarts": 1}
    req = _lookup(core.handle(DRIVER, ActorCreation(1, b"a" * 16, spec)))
    core.handle(FROM_HEAD, M.Reply(req, True, _placed()))
    out = core.handle(None, ClusterView([_row(HEAD, head=True), _row(B, state="DEAD"), _row(C)]))
    asks = [e for e in out if isinstance(e, PeerRequest)]
    assert [(e.node_id, e.msg[0]) for e in asks] == [(HEAD, M.PG_INFO)]  # not b, which is dead
    out = core.handle(FROM_HEAD, M.Reply(asks[0].req, True, _placed(on={0: C})))
    (create,) = [e for e in out if isinstance(e, PeerRequest)]
    assert create.node_id == C and create.msg[0] == M.CREATE_ACTOR
