"""The node's lease table over the real (pure) scheduler, driven synchronously."""

from __future__ import annotations

from carme import exceptions as exc
from carme._node_leases import ActorGrant, LeaseTable, NeedWorker, Refuse, Spill
from carme._scheduler import ClusterScheduler, DefaultStrategy, LeaseRequest, NodeAffinity

HERE, OTHER = "node-here", "node-other"


def _table(cpus: float = 1) -> LeaseTable:
    s = ClusterScheduler()
    s.add_node(HERE, {"CPU": cpus}, {})
    return LeaseTable(s, HERE)


def _ask(t: LeaseTable, rid: str, client: str, req: int, cpus: float = 1, strategy=None) -> None:
    t.request(rid, client, req, "", LeaseRequest(rid, {"CPU": cpus}, strategy or DefaultStrategy(), HERE, "f"))


def test_a_grant_here_needs_a_worker_and_binds_it():
    t = _table()
    _ask(t, "lease-1", "c1", 7)
    (eff,) = t.poll()
    assert isinstance(eff, NeedWorker) and (eff.client, eff.req) == ("c1", 7)
    assert t.bind(eff.grant.lease_id, "worker-a", "c1", 7)
    assert t.holder(eff.grant.lease_id) == "c1"


def test_requests_wait_for_resources_and_get_them_when_a_lease_ends():
    t = _table(cpus=1)
    _ask(t, "lease-1", "c1", 1)
    _ask(t, "lease-2", "c2", 2)
    (first,) = t.poll()
    assert t.poll() == []  # the second waits
    t.bind(first.grant.lease_id, "w", "c1", 1)
    assert t.release(first.grant.lease_id) == (True, "w")
    (second,) = t.poll()
    assert isinstance(second, NeedWorker) and second.client == "c2"


def test_a_blocked_lease_lends_its_resources_and_is_released_once():
    t = _table(cpus=1)
    _ask(t, "lease-1", "c1", 1)
    (first,) = t.poll()
    lid = first.grant.lease_id
    t.bind(lid, "w", "c1", 1)
    _ask(t, "lease-2", "c1", 2)
    assert t.poll() == []
    assert t.block(lid) and not t.block(lid)
    (nested,) = t.poll()
    assert nested.client == "c1" and nested.req == 2
    assert t.release(lid) == (True, "w") and t.release(lid) == (False, None)
    assert not t.blocked


def test_another_node_that_fits_means_spillback():
    t = _table(cpus=1)
    t.scheduler.add_node(OTHER, {"CPU": 4}, {})
    _ask(t, "lease-1", "c1", 3, cpus=4)
    (eff,) = t.poll()
    assert isinstance(eff, Spill) and eff.node_id == OTHER
    assert not t.leases  # nothing is held here for it


def test_an_infeasible_request_is_refused_with_a_clear_error():
    t = _table(cpus=1)
    _ask(t, "lease-1", "c1", 5, strategy=NodeAffinity("no-such-node", False))
    (eff,) = t.poll()
    assert isinstance(eff, Refuse) and isinstance(eff.error, exc.TaskUnschedulableError)
    assert not t.pending


def test_a_client_that_goes_cancels_its_requests_and_hands_back_its_leases():
    t = _table(cpus=1)
    _ask(t, "lease-1", "c1", 1)
    (eff,) = t.poll()
    t.bind(eff.grant.lease_id, "w", "c1", 1)
    _ask(t, "lease-2", "c1", 2)
    assert t.client_gone("c1") == [eff.grant.lease_id]
    assert not t.pending
    t.release(eff.grant.lease_id)
    assert t.poll() == []  # the cancelled request is not granted later


def test_a_grant_for_a_client_gone_meanwhile_is_not_bound():
    t = _table()
    _ask(t, "lease-1", "c1", 1)
    (eff,) = t.poll()
    t.client_gone("c1")
    t.release(eff.grant.lease_id)
    assert not t.bind(eff.grant.lease_id, "w", "c1", 1)


def test_actor_creation_requests_pass_through_as_actor_grants():
    t = _table()
    t.scheduler.submit(LeaseRequest("actor-" + "ab" * 8, {"CPU": 1}, DefaultStrategy(), HERE, "A"))
    (eff,) = t.poll()
    assert isinstance(eff, ActorGrant)
