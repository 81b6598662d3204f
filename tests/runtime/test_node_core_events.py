"""NodeCore's events from the daemon: forks, readiness, departures, actor creation and
placement on other nodes, placement groups, pulls, the cluster view. Plain calls, no I/O."""

from __future__ import annotations

from types import SimpleNamespace

from carme import _messages as M
from carme import exceptions as exc
from carme._node_actors import ActorDirectory
from carme._node_core import (
    ActorCreation,
    Client,
    ClientGone,
    ClosePeer,
    ClusterView,
    Kill,
    LeaseRequested,
    NodeCore,
    PeerFailed,
    PeerRequest,
    PullDone,
    Pulled,
    Send,
    SpawnWorker,
    StartPull,
    ToPeer,
    WorkerStarted,
)
from carme._node_leases import LeaseTable, NeedWorker
from carme._node_objects import Answer, ObjectTable
from carme._node_workers import WorkerPool, WorkerRec
from carme._scheduler import (
    BundleStrategy,
    ClusterScheduler,
    DefaultStrategy,
    LeaseRequest,
    NodeAffinity,
)
from carme._store import Arena

NODE = "n" * 56
PEER = "p" * 56
A = b"a" * 16
OID = b"o" * 28


def _core(cpus: float = 2, linked: bool = False) -> NodeCore:
    s = ClusterScheduler()
    s.add_node(NODE, {"CPU": cpus}, {})
    return NodeCore(ObjectTable(Arena(1 << 20), NODE), LeaseTable(s, NODE), WorkerPool(2),
                    ActorDirectory("ns"), NODE, linked=linked)


def run(core: NodeCore, client: Client | None, item: object) -> list:
    return core.handle(client, item)


def _view_row(nid: str, state: str = "ALIVE", cpus: float = 4) -> dict:
    return {"node_id": nid, "address": f"tcp:{nid[:4]}", "grpc_address": f"grpc:{nid[:4]}",
            "host": "h", "state": state, "total": {"CPU": cpus}, "available": {"CPU": cpus},
            "metrics": {}, "is_head": False, "labels": {}, "start_time": 1.0, "store_capacity": 1}


def _spec(**kw: object) -> dict:
    return {"class_name": "C", "placement_shape": {"CPU": 1}, "strategy": DefaultStrategy(),
            "env_key": "", **kw}


def _fork(core: NodeCore, spawn: SpawnWorker, n: int = 1) -> WorkerRec:
    """What the daemon does for `SpawnWorker`: fork, then `WorkerStarted`."""
    w = WorkerRec(f"w{n}", 1000 + n, f"wconn{n}", spawn.env_key)
    assert run(core, None, WorkerStarted(w, spawn.waiting)) == []
    return w


# ---------------------------------------------------------------------- workers
def test_a_grant_with_no_idle_worker_forks_one_and_is_answered_when_it_is_ready():
    core = _core()
    driver = Client("driver", "d1", 10)
    (spawn,) = run(core, driver, LeaseRequested(3, "", LeaseRequest(
        "lease-1", {"CPU": 1}, DefaultStrategy(), NODE, "f")))
    assert isinstance(spawn, SpawnWorker) and isinstance(spawn.waiting, NeedWorker)
    w = _fork(core, spawn)
    assert w.state == "STARTING"
    # only the worker's own connection says it is ready
    assert run(core, Client("someone", "s"), M.WorkerReady("unix:x")) == []
    (grant,) = run(core, Client(w.conn, "w1", worker=w), M.WorkerReady("unix:w1"))
    assert isinstance(grant, Answer) and (grant.client, grant.req) == ("driver", 3)
    assert grant.value["address"] == "unix:w1" and w.state == "LEASED"


def test_a_worker_that_dies_holding_a_lease_frees_it_for_the_next_request():
    core = _core(cpus=1)
    driver = Client("driver", "d1", 10)
    (spawn,) = run(core, driver, LeaseRequested(1, "", LeaseRequest(
        "lease-1", {"CPU": 1}, DefaultStrategy(), NODE, "f")))
    w = _fork(core, spawn)
    run(core, Client(w.conn, "w1", worker=w), M.WorkerReady("unix:w1"))
    assert run(core, driver, LeaseRequested(2, "", LeaseRequest(
        "lease-2", {"CPU": 1}, DefaultStrategy(), NODE, "f"))) == []  # the node is full
    (spawn2,) = run(core, None, ClientGone(Client(w.conn, "w1", worker=w)))
    assert spawn2.waiting.req == 2  # the dead worker's CPU went to the waiting request
    assert core.pool is not None and core.pool.get("w1") is None and w.state == "DEAD"
    assert run(core, None, ClientGone(Client(w.conn, "w1", worker=w))) == []  # once


def test_a_departing_driver_loses_its_holds_leases_and_non_detached_actors():
    core = _core()
    driver = Client("driver", "d1", 10)
    core.table.alloc(OID, 100, 10, "d1")
    run(core, driver, ActorCreation(1, A, _spec()))
    detached = b"d" * 16
    run(core, driver, ActorCreation(2, detached, _spec(lifetime="detached")))
    assert core.actors is not None
    core.actors.actors[detached].owner = "someone else"  # detached: owned by no driver
    effects = run(core, None, ClientGone(driver))
    assert core.table.get_entry(OID) is None
    assert core.actors.actors[A].state == "DEAD" and core.actors.actors[detached].state != "DEAD"
    assert core.leases is not None and not core.leases.pending
    assert not any(isinstance(e, Answer) and e.client == "driver" for e in effects)


# ---------------------------------------------------------------------- actor creation
def test_an_actor_is_created_on_a_forked_worker_that_is_told_to_run_it():
    core = _core()
    owner = Client("owner", "o1", 10)
    answer, spawn = run(core, owner, ActorCreation(5, A, _spec(name="x")))
    assert answer.ok and answer.value == {"actor_id": A, "existing": False}
    w = _fork(core, spawn)
    (send,) = run(core, Client(w.conn, "w1", worker=w), M.WorkerReady("unix:w1"))
    assert isinstance(send, Send) and send.conn == "wconn1"
    run_actor = M.read(send.msg)
    assert isinstance(run_actor, M.RunActor) and run_actor.actor_id == A and run_actor.restarts == 0
    assert w.state == "ACTOR" and w.actor_id == A
    # the same name again: refused, or handed back with get_if_exists
    (taken,) = run(core, owner, ActorCreation(6, b"b" * 16, _spec(name="x")))
    assert not taken.ok and isinstance(taken.value, exc.ActorAlreadyExistsError)
    (again,) = run(core, owner, ActorCreation(7, b"b" * 16, _spec(name="x", get_if_exists=True)))
    assert again.ok and again.value["existing"] and again.value["actor_id"] == A


def test_an_actor_that_can_never_fit_dies_unschedulable_and_its_waiters_hear():
    core = _core(cpus=1)
    owner = Client("owner", "o1")
    answer, *rest = run(core, owner, ActorCreation(1, A, _spec(placement_shape={"CPU": 8})))
    assert answer.ok and rest == []  # no waiter yet
    assert core.actors is not None
    actor = core.actors.actors[A]
    assert actor.state == "DEAD" and actor.death is not None
    assert actor.death[0] == "ActorUnschedulableError"


def test_an_actor_dead_before_its_worker_is_ready_gives_the_worker_back():
    core = _core()
    _answer, spawn = run(core, Client("owner", "o1"), ActorCreation(1, A, _spec()))
    w = _fork(core, spawn)
    run(core, Client("owner", "o1"), M.KillActor(A, True))
    assert run(core, Client(w.conn, "w1", worker=w), M.WorkerReady("unix:w1")) == []
    assert w.state == "IDLE"
    assert core.leases is not None and core.leases.scheduler.available(NODE)["CPU"] == 2


# ---------------------------------------------------------------------- actors on other nodes
def _remote_actor(core: NodeCore) -> PeerRequest:
    run(core, None, ClusterView([_view_row(PEER)]))
    _answer, req = run(core, Client("owner", "o1"), ActorCreation(
        1, A, _spec(name="x", strategy=NodeAffinity(PEER, False))))
    assert isinstance(req, PeerRequest) and req.node_id == PEER
    return req


def test_an_actor_placed_on_another_node_is_forwarded_there_and_lookups_redirect():
    core = _core()
    req = _remote_actor(core)
    kind, rid, actor_id, spec = req.msg
    assert (kind, rid, actor_id) == (M.CREATE_ACTOR, req.req, A)
    assert spec["forwarded"] and spec["name"] is None and spec["display_name"] == "x"
    assert spec["strategy"] == NodeAffinity(PEER, False)  # it may not move again
    # a reply on any other connection than ours to that node is not the answer
    assert run(core, Client("driver", "d"), M.Reply(req.req, False, "no")) == []
    assert run(core, Client("c", "node:" + PEER, peer=PEER), M.Reply(req.req, True, {})) == []
    (info,) = run(core, Client("c", "h"), M.decode((M.ACTOR_INFO, 9, A, None, None, True)))
    assert info.value["state"] == "REMOTE" and info.value["address"] == f"tcp:{PEER[:4]}"


def test_a_forwarded_creation_that_fails_or_cannot_be_sent_kills_the_actor():
    for failure in ("reply", "unsent", "gone"):
        core = _core()
        req = _remote_actor(core)
        peer = Client("c", "node:" + PEER, peer=PEER)
        if failure == "reply":
            run(core, peer, M.Reply(req.req, False, exc.RaySystemError("no room")))
            why = "no room"
        elif failure == "unsent":
            run(core, None, PeerFailed(req.req, exc.NodeDiedError("node pppppppp is unreachable")))
            why = "unreachable"
        else:
            run(core, None, ClientGone(peer))
            why = "went away"
        assert core.actors is not None
        actor = core.actors.actors[A]
        assert actor.state == "DEAD" and actor.death is not None and why in actor.death[1], failure
        assert core.forwarded == {}


def test_a_dead_node_in_the_view_restarts_its_actors_here_and_closes_its_connection():
    core = _core()
    run(core, None, ClusterView([_view_row(PEER)]))
    _answer, req = run(core, Client("owner", "o1"), ActorCreation(
        1, A, _spec(max_restarts=1, strategy=NodeAffinity(PEER, True))))
    run(core, Client("c", "node:" + PEER, peer=PEER), M.Reply(req.req, True, {}))
    effects = run(core, None, ClusterView([_view_row(PEER, state="DEAD")]))
    assert ClosePeer(PEER) in effects
    assert any(isinstance(e, SpawnWorker) for e in effects)  # restarted here (soft affinity)
    assert core.actors is not None
    actor = core.actors.actors[A]
    assert actor.remote_node is None and actor.restarts == 1 and actor.state == "RESTARTING"
    assert PEER not in core.leases.scheduler.nodes()  # type: ignore[union-attr]


def test_a_creation_still_forwarded_when_its_node_dies_restarts_rather_than_fails():
    core = _core()
    run(core, None, ClusterView([_view_row(PEER)]))
    run(core, Client("owner", "o1"), ActorCreation(
        1, A, _spec(max_restarts=1, strategy=NodeAffinity(PEER, True))))
    assert len(core.forwarded) == 1  # no answer from that node yet
    run(core, None, ClusterView([_view_row(PEER, state="DEAD")]))
    assert core.forwarded == {}
    assert core.actors is not None and core.actors.actors[A].state == "RESTARTING"


def test_the_view_adds_peers_and_mirrors_their_load_and_names_their_address():
    core = _core()
    run(core, None, ClusterView([_view_row(NODE), _view_row(PEER, cpus=8)]))
    assert core.leases is not None
    assert core.leases.scheduler.available(PEER)["CPU"] == 8
    (addr,) = run(core, Client("c", "h"), M.NodeAddress(1, PEER))
    assert addr.value == f"tcp:{PEER[:4]}"
    (unknown,) = run(core, Client("c", "h"), M.NodeAddress(2, "x" * 56))
    assert not unknown.ok and "unknown node" in str(unknown.value)
    assert NODE not in core.peers  # this node is not its own peer


# ---------------------------------------------------------------------- placement groups
def test_a_placement_group_wait_is_answered_when_it_is_created():
    core = _core(cpus=2)
    c = Client("c", "h")
    answer, *_ = run(core, c, M.PgCreate(1, "pg1", [{"CPU": 1}, {"CPU": 1}], "PACK", "g"))
    assert answer.ok and answer.value == "pg1"
    (ready,) = run(core, c, M.PgWait(2, "pg1"))  # reserved at the create's scheduling
    assert ready.ok and ready.value == "CREATED"
    (bad,) = run(core, c, M.PgCreate(3, "pg1", [{"CPU": 1}], "PACK", None))
    assert not bad.ok and "already exists" in str(bad.value)
    (by_name,) = run(core, c, M.PgInfo(4, None, "g"))
    assert by_name.value["placement_group_id"] == "pg1"
    (missing,) = run(core, c, M.PgInfo(5, "nope", None))
    assert not missing.ok and "no placement group" in str(missing.value)


def test_a_wait_for_a_group_that_cannot_fit_yet_is_answered_when_it_is_removed():
    core = _core(cpus=1)
    c = Client("c", "h")
    run(core, c, M.PgCreate(1, "pg1", [{"CPU": 1}], "PACK", None))
    (spawn,) = run(core, c, LeaseRequested(2, "", LeaseRequest(
        "lease-1", {"CPU": 1}, BundleStrategy("pg1", 0), NODE, "f")))
    w = _fork(core, spawn)
    run(core, Client(w.conn, "w1", worker=w), M.WorkerReady("unix:w1"))
    run(core, c, M.PgCreate(3, "pg2", [{"CPU": 1}], "PACK", None))
    assert run(core, c, M.PgWait(4, "pg2")) == []  # pg1 holds the only CPU
    effects = run(core, c, M.PgRemove(5, "pg2"))
    assert [(type(e), e.req, e.ok, e.value) for e in effects] == [
        (Answer, 5, True, None), (Answer, 4, False, "REMOVED")]
    # removing a group kills the workers leased inside it
    effects = run(core, c, M.PgRemove(6, "pg1"))
    assert effects[0] == Kill(1001) and effects[1].req == 6


# ---------------------------------------------------------------------- pulls
def test_another_nodes_object_is_pulled_once_for_all_its_readers():
    core = _core(linked=True)
    run(core, None, ClusterView([_view_row(PEER)]))
    a, b = Client("a", "ha"), Client("b", "hb")
    (pull,) = run(core, a, M.GetRemote(1, OID, PEER))
    assert pull == StartPull(OID, f"grpc:{PEER[:4]}", f"tcp:{PEER[:4]}")
    assert run(core, b, M.GetRemote(2, OID, PEER)) == []  # the pull under way serves it too
    off = core.table.alloc_secondary(OID, 64)
    assert off is not None
    *effects, watch = run(core, None, Pulled(OID, off, 64, False, None))
    assert [(e.client, e.req, e.ok) for e in effects] == [("a", 1, True), ("b", 2, True)]
    assert watch == ToPeer(PEER, (M.WATCH, [OID]))  # told when it goes there (the copy goes too)
    (local,) = run(core, Client("c", "hc"), M.GetRemote(3, OID, PEER))
    assert local.ok and local.value == effects[0].value  # the copy stays for the next reader


def test_a_pull_from_a_dead_or_unknown_node_or_outside_a_cluster_fails_with_the_reason():
    core = _core(linked=False)
    run(core, None, ClusterView([_view_row(PEER)]))
    (lost,) = run(core, Client("a", "ha"), M.GetRemote(1, OID, PEER))
    assert not lost.ok and isinstance(lost.value, exc.ObjectLostError)
    core = _core(linked=True)
    (lost,) = run(core, Client("a", "ha"), M.GetRemote(1, OID, PEER))
    assert not lost.ok and "not alive" in str(lost.value)
    run(core, None, ClusterView([_view_row(PEER)]))
    run(core, Client("a", "ha"), M.GetRemote(2, OID, PEER))
    (failed,) = run(core, None, Pulled(OID, None, 0, False, "RpcError: gone"))
    assert not failed.ok and "could not be fetched" in str(failed.value)


def test_an_object_pinned_for_a_peers_pull_is_held_until_the_pull_is_done():
    core = _core()
    off = core.table.alloc(OID, 100, 10, "d1")
    core.table.export(OID, (M.SHARED, off, 100, False, NODE), [], 0, "bytes", "d1", 10)
    key, offset, size, is_error = core.pin_for_pull(OID)  # type: ignore[misc]
    assert (offset, size, is_error) == (off, 100, False)
    core.table.decref([OID], "d1")
    assert core.table.get_entry(OID) is not None  # the pull still holds it
    run(core, None, PullDone(OID, key))
    assert core.table.get_entry(OID) is None
    assert core.pin_for_pull(b"z" * 28) is None


def test_the_view_rows_are_read_from_the_heads_reply():
    from carme._node_state import parse_view
    good = SimpleNamespace(
        info=SimpleNamespace(node_id=PEER, address="tcp:x", grpc_address="g", host="h",
                             resources_json='{"CPU": 2}', labels_json="", is_head=True,
                             start_time=2.0, object_store_memory=5),
        state="ALIVE", available_json='{"CPU": 1}', metrics_json="")
    bad = SimpleNamespace(
        info=SimpleNamespace(node_id="b" * 56, address="", grpc_address="", host="",
                             resources_json='{"CPU": -1}', labels_json="", is_head=False,
                             start_time=0.0, object_store_memory=0),
        state="ALIVE", available_json="", metrics_json="")
    rows, notes = parse_view(SimpleNamespace(nodes=[good, bad]))
    assert [r["node_id"] for r in rows] == [PEER] and rows[0]["available"] == {"CPU": 1}
    assert len(notes) == 1 and "ignoring node bbbbbbbb" in notes[0]
