"""Bundles placed by another node's scheduler, reserved by this node's own
(`ClusterScheduler.mirror_bundles`), and what the placing node tells them
(`NodeCore` `PgReserve`): synchronous, no processes."""

from __future__ import annotations

from carme import _messages as M
from carme._node_actors import ActorDirectory
from carme._node_core import Client, ClusterView, NodeCore, ToPeer
from carme._node_leases import LeaseTable
from carme._node_objects import ObjectTable
from carme._node_workers import WorkerPool
from carme._scheduler import BundleStrategy, ClusterScheduler, Grant, LeaseRequest
from carme._store import Arena

HEAD, B = "h" * 56, "b" * 56


def _grants(s: ClusterScheduler) -> list[str]:
    return [d.request_id for d in s.poll() if isinstance(d, Grant)]


def test_a_mirrored_bundle_keeps_its_resources_from_other_leases() -> None:
    s = ClusterScheduler()
    s.add_node(B, {"CPU": 1})
    s.add_node(HEAD, {"CPU": 1})
    assert s.mirror_bundles("pg", {0: {"CPU": 1}}, B) == []
    assert s.available(B) == {"CPU": 0.0}
    assert s.placement_groups() == []  # (the placing node lists it, not this one)
    s.submit(LeaseRequest("plain", {"CPU": 1}, local_node=B))
    s.submit(LeaseRequest("inside", {"CPU": 1}, BundleStrategy("pg", 0), local_node=B))
    got = {d.request_id: d.node_id for d in s.poll() if isinstance(d, Grant)}
    assert got == {"plain": HEAD, "inside": B}
    # the group goes: the bundle's lease is void, the CPU is the node's again
    s.mirror_bundles("pg", {}, B)
    assert s.available(B) == {"CPU": 1.0} and not s.has_mirror("pg")


def test_a_bundle_that_does_not_fit_yet_is_reserved_once_the_node_frees_it() -> None:
    s = ClusterScheduler()
    s.add_node(B, {"CPU": 1})
    s.submit(LeaseRequest("busy", {"CPU": 1}, local_node=B))
    (lease,) = [d for d in s.poll() if isinstance(d, Grant)]
    s.mirror_bundles("pg", {1: {"CPU": 1}}, B)
    s.submit(LeaseRequest("inside", {"CPU": 1}, BundleStrategy("pg", 1), local_node=B))
    s.submit(LeaseRequest("plain", {"CPU": 1}, local_node=B))
    assert _grants(s) == []
    s.release(lease.lease_id)
    assert _grants(s) == ["inside"]  # the bundle first; the plain lease still waits


def test_the_placing_node_tells_bundle_nodes_and_counts_them_once() -> None:
    s = ClusterScheduler()
    s.add_node(HEAD, {"CPU": 1})
    core = NodeCore(ObjectTable(Arena(1 << 16), HEAD), LeaseTable(s, HEAD), WorkerPool(2),
                    ActorDirectory(""), node_id=HEAD, linked=True)
    row = {"node_id": B, "state": "ALIVE", "total": {"CPU": 4.0}, "available": {"CPU": 4.0},
           "labels": {}, "address": "x", "grpc_address": "g"}
    core.handle(None, ClusterView([row]))
    driver = Client("d", "d1", 1)
    out = core.handle(driver, M.decode((M.PG_CREATE, 1, "pg", [{"CPU": 2}], "STRICT_PACK", None)))
    assert ToPeer(B, (M.PG_RESERVE, "pg", {0: {"CPU": 2.0}})) in out
    # b now reports the bundle as used: the head's view does not count it twice
    core.handle(None, ClusterView([dict(row, available={"CPU": 2.0})]))
    assert s.available(B) == {"CPU": 2.0}
    out = core.handle(driver, M.decode((M.PG_REMOVE, 2, "pg")))
    assert ToPeer(B, (M.PG_RESERVE, "pg", {})) in out


def test_only_a_node_may_reserve_bundles() -> None:
    s = ClusterScheduler()
    s.add_node(B, {"CPU": 1})
    core = NodeCore(ObjectTable(Arena(1 << 16), B), LeaseTable(s, B), WorkerPool(2),
                    ActorDirectory(""), node_id=B)
    out = core.handle(Client("w", "w1", 1), M.decode((M.PG_RESERVE, "pg", {0: {"CPU": 1}})))
    assert "refused" in out[0].text and s.available(B) == {"CPU": 1.0}
    core.handle(Client("p", "node:" + HEAD, 1), M.decode((M.PG_RESERVE, "pg", {0: {"CPU": 1}})))
    assert s.available(B) == {"CPU": 0.0}


def test_told_again_the_same_bundles_keeps_the_leases_inside() -> None:
    s = ClusterScheduler()
    s.add_node(B, {"CPU": 2})
    s.mirror_bundles("pg", {0: {"CPU": 1}}, B)
    s.submit(LeaseRequest("inside", {"CPU": 1}, BundleStrategy("pg", 0), local_node=B))
    assert _grants(s) == ["inside"]
    assert s.mirror_bundles("pg", {0: {"CPU": 1}}, B) == []
    assert s.available(B) == {"CPU": 1.0}
    assert len(s.mirror_bundles("pg", {}, B)) == 1  # the group went: its lease is void
