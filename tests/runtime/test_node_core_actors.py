"""The node's actor directory, driven synchronously: names per namespace, restarts, deaths."""

from __future__ import annotations

import pytest

from carme import exceptions as exc
from carme._node_actors import ActorDirectory

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16


def _spec(**kw):
    return {"class_name": "Counter", "placement_shape": {}, **kw}


def test_a_live_name_is_refused_or_handed_back_and_a_dead_one_is_free_again():
    d = ActorDirectory("ns")
    first, existing = d.create(A, _spec(name="x"), "owner")
    assert not existing
    with pytest.raises(exc.ActorAlreadyExistsError, match="get_if_exists"):
        d.create(B, _spec(name="x"), "owner")
    same, existing = d.create(B, _spec(name="x", get_if_exists=True), "owner")
    assert existing and same is first and B not in d.actors
    d.dead(first, exc.ActorDiedError("killed"))
    with pytest.raises(ValueError, match="no live actor"):
        d.lookup("x", None)
    again, existing = d.create(C, _spec(name="x"), "owner")
    assert not existing and d.lookup("x", "ns") is again


def test_names_are_per_namespace():
    d = ActorDirectory("default")
    d.create(A, _spec(name="x", namespace="one"), "o")
    d.create(B, _spec(name="x", namespace="two"), "o")
    d.create(C, _spec(name="y"), "o")
    assert d.named(False, "one") == ["x"]
    assert d.named(False, None) == ["y"]
    assert sorted(map(str, d.named(True, None))) == sorted(map(str, [
        {"name": "x", "namespace": "one"}, {"name": "x", "namespace": "two"},
        {"name": "y", "namespace": "default"}]))
    with pytest.raises(ValueError):
        d.lookup("x", None)
    assert d.lookup("x", "two").actor_id == B


def test_an_id_is_created_once():
    d = ActorDirectory("ns")
    d.create(A, _spec(), "o")
    with pytest.raises(ValueError, match="already exists"):
        d.create(A, _spec(), "o")


@pytest.mark.parametrize("max_restarts, deaths_survived", [(0, 0), (2, 2), (-1, 50)])
def test_restarts_follow_max_restarts(max_restarts, deaths_survived):
    d = ActorDirectory("ns")
    a, _ = d.create(A, _spec(max_restarts=max_restarts), "o")
    for i in range(deaths_survived):
        assert d.worker_died(a) == "restart"
        assert a.state == "RESTARTING" and a.restarts == i + 1
    if max_restarts != -1:
        assert d.worker_died(a) == "dead"


def test_an_actor_killed_for_good_does_not_restart_and_tells_its_waiters_why():
    d = ActorDirectory("ns")
    a, _ = d.create(A, _spec(max_restarts=-1), "o")
    a.waiters.append(("client", 7))
    a.no_restart = True
    a.spec["kill_reason"] = "the actor was killed by carme.kill()"
    assert d.worker_died(a) == "dead"
    reason = d.death_reason(a)
    assert d.dead(a, exc.ActorDiedError(reason)) == [("client", 7)]
    assert a.death == ("ActorDiedError", "the actor was killed by carme.kill()")
    assert d.worker_died(a) == ""  # already dead


def test_non_detached_actors_die_with_their_owner():
    d = ActorDirectory("ns")
    d.create(A, _spec(), "driver1")
    d.create(B, _spec(lifetime="detached"), "driver1")
    d.create(C, _spec(), "driver2")
    assert [a.actor_id for a in d.owned_by("driver1")] == [A]


def test_records_of_dead_actors_are_bounded_oldest_first():
    d = ActorDirectory("ns", max_dead=3)
    for i in range(10):
        a, _ = d.create(bytes([i]) * 16, _spec(name=f"n{i}"), "o")
        d.dead(a, exc.ActorDiedError("gone"))
    live, _ = d.create(b"L" * 16, _spec(name="live"), "o")
    assert len(d) == 4 and d.get(bytes([9]) * 16) is not None and d.get(bytes([0]) * 16) is None
    assert ("ns", "n0") not in d.names and d.lookup("live", None) is live
