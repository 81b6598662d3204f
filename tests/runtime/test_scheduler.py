"""ClusterScheduler: strategies, placement groups, FIFO without blocking, cost."""

from __future__ import annotations

import itertools

import pytest

from carme._scheduler import (
    BundleStrategy,
    ClusterScheduler,
    Grant,
    Infeasible,
    LeaseRequest,
    NodeAffinity,
    NodeLabel,
    SpreadStrategy,
)

_ids = itertools.count()


def req(shape: dict, strategy: object = None, local: str | None = None, rid: str | None = None,
        desc: str = "") -> LeaseRequest:
    kwargs = {} if strategy is None else {"strategy": strategy}
    return LeaseRequest(rid or f"r{next(_ids)}", shape, local_node=local, description=desc, **kwargs)


def grants(decisions: list) -> dict[str, Grant]:
    return {d.request_id: d for d in decisions if isinstance(d, Grant)}


def infeasible(decisions: list) -> dict[str, Infeasible]:
    return {d.request_id: d for d in decisions if isinstance(d, Infeasible)}


def grants_of(s: ClusterScheduler, request_id: str) -> str:
    return next(lid for lid, lease in s._leases.items() if lease.request_id == request_id)


def cluster(*nodes: tuple[str, dict]) -> ClusterScheduler:
    s = ClusterScheduler()
    for node_id, total in nodes:
        s.add_node(node_id, total)
    return s


def test_grant_carries_gpu_ids_and_accounting() -> None:
    s = cluster(("n1", {"CPU": 4, "GPU": 2}))
    s.submit(req({"CPU": 1, "GPU": 0.5}, rid="a"))
    s.submit(req({"CPU": 1, "GPU": 0.5}, rid="b"))
    s.submit(req({"CPU": 1, "GPU": 1}, rid="c"))
    g = grants(s.poll())
    assert g["a"].gpu_ids == g["b"].gpu_ids == ("0",) and g["c"].gpu_ids == ("1",)
    assert g["a"].node_id == "n1" and g["a"].shape == {"CPU": 1, "GPU": 0.5}
    assert s.available("n1") == {"CPU": 1.0, "GPU": 0.0}
    s.release(g["a"].lease_id)
    s.release(g["a"].lease_id)  # twice is harmless
    assert s.available() == {"CPU": 2.0, "GPU": 0.5}
    assert s.total() == {"CPU": 4.0, "GPU": 2.0}


def test_fifo_without_blocking() -> None:
    s = cluster(("n1", {"CPU": 2, "GPU": 1}))
    s.submit(req({"GPU": 1}, rid="g1"))
    s.submit(req({"GPU": 1}, rid="g2"))
    s.submit(req({"CPU": 1}, rid="c1"))
    s.submit(req({"GPU": 1}, rid="g3"))
    first = grants(s.poll())
    assert set(first) == {"g1", "c1"}  # g2 waits, c1 is not blocked behind it
    assert [r.request_id for r in s.pending()] == ["g2", "g3"]
    s.release(first["g1"].lease_id)
    assert list(grants(s.poll())) == ["g2"]  # FIFO within a shape


def test_infeasible_reported_once_then_granted_when_a_node_joins() -> None:
    s = cluster(("n1", {"CPU": 4}))
    s.submit(req({"CPU": 16}, rid="big", desc="task f"))
    s.submit(req({"TPU": 1}, rid="tpu", desc="task g"))
    bad = infeasible(s.poll())
    assert "task f requires {CPU: 16}" in bad["big"].message
    assert "most any node has is {CPU: 4}" in bad["big"].message and "Fix:" in bad["big"].message
    assert "TPU" in bad["tpu"].message and "TPU: 0" in bad["tpu"].message
    assert s.poll() == []  # reported once
    s.submit(req({"CPU": 16}, rid="big2"))
    assert list(infeasible(s.poll())) == ["big2"]
    assert len(s.pending()) == 3
    s.add_node("n2", {"CPU": 32})
    got = grants(s.poll())
    assert set(got) == {"big", "big2"} and got["big"].node_id == "n2"


def test_cancel() -> None:
    s = cluster(("n1", {"CPU": 1}))
    s.submit(req({"CPU": 1}, rid="a"))
    s.submit(req({"CPU": 1}, rid="b"))
    s.submit(req({"CPU": 1}, rid="c"))
    assert s.cancel("b") and not s.cancel("b") and not s.cancel("zzz")
    g = grants(s.poll())
    assert list(g) == ["a"]
    s.release(g["a"].lease_id)
    assert list(grants(s.poll())) == ["c"]
    assert not s.cancel("c")  # already granted


def test_default_prefers_local_node_then_least_loaded() -> None:
    s = cluster(("n1", {"CPU": 2}), ("n2", {"CPU": 2}), ("n3", {"CPU": 8}))
    s.submit(req({"CPU": 1}, local="n2", rid="a"))
    s.submit(req({"CPU": 1}, local="n2", rid="b"))
    s.submit(req({"CPU": 1}, local="n2", rid="c"))
    g = grants(s.poll())
    assert g["a"].node_id == g["b"].node_id == "n2"
    assert g["c"].node_id == "n3"  # least utilized after n2 filled up


def test_spread_round_robins() -> None:
    s = cluster(("n1", {"CPU": 4}), ("n2", {"CPU": 4}), ("n3", {"CPU": 4}))
    for i in range(6):
        s.submit(req({"CPU": 1}, SpreadStrategy(), rid=f"s{i}"))
    nodes = [g.node_id for g in grants(s.poll()).values()]
    assert nodes == ["n1", "n2", "n3", "n1", "n2", "n3"]


def test_node_affinity_hard_and_soft() -> None:
    s = cluster(("n1", {"CPU": 1}), ("n2", {"CPU": 4}))
    s.submit(req({"CPU": 1}, NodeAffinity("n1"), rid="h1"))
    s.submit(req({"CPU": 1}, NodeAffinity("n1"), rid="h2"))
    s.submit(req({"CPU": 1}, NodeAffinity("gone"), rid="dead", desc="task f"))
    s.submit(req({"CPU": 2}, NodeAffinity("n1"), rid="never"))
    s.submit(req({"CPU": 1}, NodeAffinity("gone", soft=True), rid="soft_dead"))
    s.submit(req({"CPU": 1}, NodeAffinity("n1", soft=True), rid="soft_busy"))
    s.submit(req({"CPU": 1}, NodeAffinity("n1", soft=True, spill_on_unavailable=True), rid="spill"))
    out = s.poll()
    g, bad = grants(out), infeasible(out)
    assert g["h1"].node_id == "n1" and "h2" not in g and "soft_busy" not in g
    assert g["soft_dead"].node_id == "n2" and g["spill"].node_id == "n2"
    assert "node gone" in bad["dead"].message and "soft=True" in bad["dead"].message
    assert "CPU" in bad["never"].message
    s.release(g["h1"].lease_id)
    assert list(grants(s.poll())) == ["h2"]
    s.submit(req({"CPU": 1}, NodeAffinity("n1", fail_on_unavailable=True), rid="failfast"))
    s.submit(req({"CPU": 1}, NodeAffinity("n1", fail_on_unavailable=True), rid="failfast2"))
    assert "busy" in infeasible(s.poll())["failfast"].message
    assert s.poll() == []  # reported once
    assert s.cancel("failfast")
    assert list(infeasible(s.poll())) == ["failfast2"]
    s.release(grants_of(s, "h2"))
    assert list(grants(s.poll())) == ["soft_busy"]  # it waited for n1 first (FIFO)
    s.release(grants_of(s, "soft_busy"))
    assert list(grants(s.poll())) == ["failfast2"]  # busy is not forever


def test_node_labels() -> None:
    s = ClusterScheduler()
    s.add_node("a", {"CPU": 2}, labels={"zone": "us", "gpu": "a100"})
    s.add_node("b", {"CPU": 2}, labels={"zone": "eu"})
    s.submit(req({"CPU": 1}, NodeLabel(hard=(("zone", "in", ("eu",)),)), rid="eu"))
    s.submit(req({"CPU": 1}, NodeLabel(hard=(("gpu", "exists", ()),)), rid="gpu"))
    s.submit(req({"CPU": 1}, NodeLabel(soft=(("zone", "in", ("us",)),)), rid="soft"))
    s.submit(req({"CPU": 1}, NodeLabel(hard=(("zone", "in", ("mars",)),)), rid="mars"))
    out = s.poll()
    g = grants(out)
    assert g["eu"].node_id == "b" and g["gpu"].node_id == "a" and g["soft"].node_id == "a"
    assert "labels" in infeasible(out)["mars"].message


def test_remove_node_returns_lost_leases() -> None:
    s = cluster(("n1", {"CPU": 2}), ("n2", {"CPU": 2}))
    s.submit(req({"CPU": 2}, NodeAffinity("n1"), rid="on1"))
    s.submit(req({"CPU": 2}, NodeAffinity("n2"), rid="on2"))
    g = grants(s.poll())
    assert s.remove_node("n1") == [g["on1"].lease_id]
    assert s.remove_node("n1") == []
    s.release(g["on1"].lease_id)  # lost lease: no effect
    assert s.nodes() == ["n2"] and s.total() == {"CPU": 2.0}
    s.submit(req({"CPU": 1}, NodeAffinity("n1"), rid="late"))
    assert "late" in infeasible(s.poll())
    with pytest.raises(ValueError):
        s.add_node("n2", {"CPU": 1})


# -- placement groups ----------------------------------------------------------------


def test_pack_on_one_node_reserves_atomically_and_serves_bundles() -> None:
    s = cluster(("n1", {"CPU": 4, "GPU": 2}))
    s.create_placement_group("pg", [{"CPU": 1, "GPU": 1}, {"CPU": 2}], "PACK", name="train")
    info = s.placement_group("pg")
    assert info["state"] == "CREATED" and info["name"] == "train"
    assert info["bundles_to_node_id"] == {0: "n1", 1: "n1"}
    assert s.available() == {"CPU": 1.0, "GPU": 1.0}
    assert s.placement_group_changes() == ["pg"]
    s.submit(req({"CPU": 1, "GPU": 1}, BundleStrategy("pg", 0), rid="in0"))
    s.submit(req({"CPU": 1}, BundleStrategy("pg", -1), rid="any"))
    s.submit(req({"CPU": 1}, BundleStrategy("pg", 0), rid="wait0"))
    s.submit(req({"CPU": 3}, BundleStrategy("pg"), rid="huge", desc="task big"))
    s.submit(req({"CPU": 1}, BundleStrategy("pg", 5), rid="badidx"))
    out = s.poll()
    g, bad = grants(out), infeasible(out)
    assert g["in0"].gpu_ids == ("0",) or g["in0"].gpu_ids == ("1",)
    assert g["any"].node_id == "n1" and "wait0" not in g
    assert "task big requires {CPU: 3}, more than its bundles" in bad["huge"].message
    assert "has 2 bundles" in bad["badidx"].message
    assert s.available() == {"CPU": 1.0, "GPU": 1.0}  # bundle use doesn't touch the node pool
    void = s.remove_placement_group("pg")
    assert sorted(void) == sorted([g["in0"].lease_id, g["any"].lease_id])
    assert s.available() == {"CPU": 4.0, "GPU": 2.0}
    assert s.placement_group("pg")["state"] == "REMOVED"
    assert "removed" in infeasible(s.poll())["wait0"].message
    assert s.remove_placement_group("pg") == []


def test_bundle_gpu_ids_come_from_the_reservation() -> None:
    s = cluster(("n1", {"GPU": 4}))
    s.submit(req({"GPU": 1}, rid="first"))
    s.poll()
    s.create_placement_group("pg", [{"GPU": 2}], "STRICT_PACK")
    s.submit(req({"GPU": 1}, BundleStrategy("pg", 0), rid="x"))
    s.submit(req({"GPU": 1}, BundleStrategy("pg", 0), rid="y"))
    g = grants(s.poll())
    assert {g["x"].gpu_ids, g["y"].gpu_ids} == {("1",), ("2",)}


def test_pg_waits_until_resources_free() -> None:
    s = cluster(("n1", {"CPU": 2}))
    s.submit(req({"CPU": 2}, rid="hog"))
    g = grants(s.poll())
    s.create_placement_group("pg", [{"CPU": 1}, {"CPU": 1}], "STRICT_PACK")
    s.submit(req({"CPU": 1}, BundleStrategy("pg"), rid="inside"))
    assert s.poll() == [] and s.placement_group("pg")["state"] == "PENDING"
    assert s.placement_group("pg")["message"] == ""  # could fit later: no complaint
    s.release(g["hog"].lease_id)
    assert list(grants(s.poll())) == ["inside"]
    assert s.placement_group("pg")["state"] == "CREATED"


def test_strategies_on_three_nodes() -> None:
    s = cluster(("a", {"CPU": 5}), ("b", {"CPU": 5}), ("c", {"CPU": 5}))
    s.create_placement_group("spread", [{"CPU": 1}] * 3, "SPREAD")
    s.create_placement_group("sspread", [{"CPU": 1}] * 3, "STRICT_SPREAD")
    s.create_placement_group("spack", [{"CPU": 1}] * 3, "STRICT_PACK")
    s.create_placement_group("pack", [{"CPU": 1}] * 2, "PACK")
    for pg in ("spread", "sspread"):
        nodes = s.placement_group(pg)["bundles_to_node_id"]
        assert sorted(nodes.values()) == ["a", "b", "c"]
    assert len(set(s.placement_group("spack")["bundles_to_node_id"].values())) == 1
    assert len(set(s.placement_group("pack")["bundles_to_node_id"].values())) == 1
    # PACK falls back to several nodes when no single node fits all bundles.
    s.create_placement_group("wide", [{"CPU": 1}] * 4, "PACK")
    info = s.placement_group("wide")
    assert info["state"] == "CREATED" and len(set(info["bundles_to_node_id"].values())) > 1
    assert len(s.placement_groups()) == 5


def test_strict_spread_with_too_few_nodes_stays_pending_with_message() -> None:
    s = cluster(("a", {"CPU": 4}))
    s.create_placement_group("pg", [{"CPU": 1}] * 3, "STRICT_SPREAD")
    info = s.placement_group("pg")
    assert info["state"] == "PENDING"
    assert "needs 3 distinct nodes but the cluster has 1" in info["message"]
    assert s.available() == {"CPU": 4.0}  # nothing reserved: all or none
    s.add_node("b", {"CPU": 4})
    s.add_node("c", {"CPU": 4})
    s.poll()
    assert s.placement_group("pg")["state"] == "CREATED"


def test_strict_pack_too_big_message() -> None:
    s = cluster(("a", {"CPU": 2}), ("b", {"CPU": 2}))
    s.create_placement_group("pg", [{"CPU": 2}, {"CPU": 2}], "STRICT_PACK")
    info = s.placement_group("pg")
    assert info["state"] == "PENDING" and "on one node" in info["message"]


def test_pg_validation() -> None:
    s = cluster(("a", {"CPU": 2}))
    with pytest.raises(ValueError, match="only zero"):
        s.create_placement_group("pg", [{"CPU": 0}], "PACK")
    with pytest.raises(ValueError, match="strategy"):
        s.create_placement_group("pg", [{"CPU": 1}], "TIGHT")
    with pytest.raises(KeyError):
        s.placement_group("nope")


def test_node_death_reschedules_bundles() -> None:
    s = cluster(("a", {"CPU": 2}), ("b", {"CPU": 2}), ("c", {"CPU": 2}))
    s.create_placement_group("pg", [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD")
    placed = s.placement_group("pg")["bundles_to_node_id"]
    s.submit(req({"CPU": 1}, BundleStrategy("pg", 0), rid="in0"))
    g = grants(s.poll())
    victim = placed[0]
    assert g["in0"].lease_id in s.remove_node(victim)
    assert s.placement_group("pg")["state"] in ("RESCHEDULING", "CREATED")
    s.poll()
    info = s.placement_group("pg")
    assert info["state"] == "CREATED" and victim not in info["bundles_to_node_id"].values()
    assert len(set(info["bundles_to_node_id"].values())) == 2


def test_many_pending_requests_stay_linear() -> None:
    s = cluster(("n1", {"CPU": 4, "GPU": 1}))
    n = 10_000
    for i in range(n):
        s.submit(req({"CPU": 1} if i % 2 else {"CPU": 1, "GPU": 0.25}, rid=f"q{i}"))
    granted = list(grants(s.poll()).values())
    assert len(granted) == 4
    decisions_after_first = s.stats["decisions"]
    assert decisions_after_first <= 10  # blocked groups cost one check each, not one per request
    done = 4
    while granted:
        lease = granted.pop()
        s.release(lease.lease_id)
        new = list(grants(s.poll()).values())
        granted.extend(new)
        done += len(new)
    assert done == n and not s.pending()
    # Each grant costs one decision plus at most one failed check per group per poll.
    assert s.stats["decisions"] <= 3 * n + 10
    assert s.available() == {"CPU": 4.0, "GPU": 1.0}


def test_infeasible_when_no_single_node_has_everything() -> None:
    s = cluster(("cpu", {"CPU": 8}), ("gpu", {"CPU": 1, "GPU": 1}))
    s.submit(req({"CPU": 4, "GPU": 1}, rid="x", desc="task t"))
    msg = infeasible(s.poll())["x"].message
    assert "no single node has all of it together" in msg and "gpu: {CPU: 1, GPU: 1}" in msg


def test_pending_pg_is_retried_only_after_something_is_freed() -> None:
    s = cluster(("a", {"CPU": 1}))
    s.submit(req({"CPU": 1}, rid="hog"))
    g = grants(s.poll())
    s.create_placement_group("pg", [{"CPU": 1}], "PACK")
    for _ in range(5):
        s.poll()
    info = s.placement_group("pg")
    assert info["stats"] == {"scheduling_attempt": 1, "scheduling_state": "QUEUED"}
    s.release(g["hog"].lease_id)
    s.poll()
    assert s.placement_group("pg")["stats"] == {"scheduling_attempt": 2, "scheduling_state": "FINISHED"}
    s.create_placement_group("big", [{"CPU": 9}], "PACK")
    assert s.placement_group("big")["stats"]["scheduling_state"] == "INFEASIBLE"
