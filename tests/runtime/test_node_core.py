"""The node core's entry point for object and lease messages: messages in, effects out, no I/O."""

from __future__ import annotations

import pytest

from carme import _messages as M
from carme import exceptions as exc
from carme._node_actors import ActorDirectory
from carme._node_core import (
    Client,
    Event,
    Kill,
    LeaseRequested,
    NodeCore,
    Note,
    Retire,
    SpawnWorker,
    ToPeer,
    WorkerFound,
)
from carme._node_leases import LeaseTable, NeedWorker, Refuse
from carme._node_objects import Answer, ObjectTable
from carme._node_workers import WorkerPool, WorkerRec
from carme._scheduler import ClusterScheduler, DefaultStrategy, LeaseRequest
from carme._store import Arena

NODE = "n" * 56
A = b"a" * 28


def _core(capacity: int = 1 << 20) -> NodeCore:
    return NodeCore(ObjectTable(Arena(capacity), NODE))


def _handle(core: NodeCore, client: Client, raw: tuple) -> list:
    return core.handle(client, M.decode(raw))


def test_put_get_and_release_through_messages():
    core = _core()
    driver, reader = Client("driver", "d1", 10), Client("reader", "r1", 11)
    (alloc,) = _handle(core, driver, (M.ALLOC, 1, A, 1000, 10))
    assert isinstance(alloc, Answer) and alloc.ok
    off = alloc.value
    assert _handle(core, reader, (M.GET_OBJECT, 5, A)) == []  # pending: the reader waits
    payload = (M.SHARED, off, 1000, False, NODE)
    effects = _handle(core, driver, (M.EXPORT, 2, A, payload, [], 0, "bytes"))
    assert [(e.client, e.req, e.ok) for e in effects] == [("driver", 2, True), ("reader", 5, True)]
    (missing,) = _handle(core, reader, (M.INCREF, 6, [A, b"z" * 28]))
    assert missing.value == [b"z" * 28]
    _handle(core, driver, (M.DECREF, [A]))
    _handle(core, reader, (M.DECREF, [A]))
    (stats,) = _handle(core, driver, (M.STORE_STATS, 7))
    assert stats.value["objects"] == 0 and stats.value["used"] == 0


def test_a_full_store_is_an_error_answer_naming_the_fix():
    core = _core(capacity=4096)
    (answer,) = _handle(core, Client("c", "h"), (M.ALLOC, 1, A, 10_000, 1))
    assert not answer.ok and isinstance(answer.value, exc.ObjectStoreFullError)
    assert "object_store_memory" in str(answer.value)


def test_an_export_of_a_foreign_block_is_refused_and_logged():
    core = _core()
    effects = _handle(core, Client("c", "h", 9), (M.EXPORT, 3, A, (M.SHARED, 0, 64, False, NODE), [], 1, ""))
    assert isinstance(effects[0], Note) and "pid 9" in effects[0].text
    assert not effects[1].ok and isinstance(effects[1].value, M.BadMessage)
    assert len(core.table) == 0


# ---------------------------------------------------------------------- leases and workers
def _lease_core(cpus: float = 1, max_idle: int = 2) -> NodeCore:
    s = ClusterScheduler()
    s.add_node(NODE, {"CPU": cpus}, {})
    return NodeCore(ObjectTable(Arena(1 << 20), NODE), LeaseTable(s, NODE), WorkerPool(max_idle))


def _ask(core: NodeCore, client: Client, req: int, rid: str) -> list:
    return core.handle(client, LeaseRequested(req, "", LeaseRequest(
        rid, {"CPU": 1}, DefaultStrategy(), NODE, "f")))


def _need(core: NodeCore, client: Client, req: int, rid: str) -> NeedWorker:
    """A lease granted here with no idle worker: the core asks for a fork, and the grant
    waits for it."""
    (spawn,) = _ask(core, client, req, rid)
    assert isinstance(spawn, SpawnWorker) and isinstance(spawn.waiting, NeedWorker)
    return spawn.waiting


def _worker(core: NodeCore, n: int) -> WorkerRec:
    assert core.pool is not None
    w = WorkerRec(f"w{n}", 1000 + n, f"wconn{n}", "", address=f"addr{n}", state="IDLE")
    core.pool.add(w)
    return w


def test_a_lease_is_granted_to_a_found_worker_and_given_back_through_messages():
    core = _lease_core()
    driver = Client("driver", "d1", 10)
    need = _need(core, driver, 3, "lease-1")
    w = _worker(core, 1)
    (grant,) = core.handle(driver, WorkerFound(need, w))
    assert isinstance(grant, Answer) and (grant.client, grant.req, grant.ok) == ("driver", 3, True)
    assert grant.value["worker_id"] == "w1" and grant.value["address"] == "addr1"
    assert w.state == "LEASED" and w.lease_id == need.grant.lease_id
    lid = need.grant.lease_id
    # only the holder gives a lease back
    assert core.handle(Client("other", "o1"), M.decode((M.RETURN_LEASE, lid, True))) == []
    effects = core.handle(driver, M.decode((M.RETURN_LEASE, lid, True)))
    assert effects == []
    assert w.state == "IDLE" and w.lease_id is None
    assert core.handle(driver, M.decode((M.RETURN_LEASE, lid, True))) == []  # once


def test_a_lease_given_back_with_a_broken_worker_kills_it():
    core = _lease_core()
    driver = Client("driver", "d1", 10)
    need = _need(core, driver, 3, "lease-1")
    w = _worker(core, 1)
    core.handle(driver, WorkerFound(need, w))
    effects = core.handle(driver, M.decode((M.RETURN_LEASE, need.grant.lease_id, False)))
    assert isinstance(effects[0], Kill) and effects[0].pid == 1001


def test_a_worker_past_the_idle_limit_retires():
    core = _lease_core(cpus=2, max_idle=1)
    driver = Client("driver", "d1", 10)
    n1 = _need(core, driver, 1, "lease-1")
    n2 = _need(core, driver, 2, "lease-2")
    w1, w2 = _worker(core, 1), _worker(core, 2)
    core.handle(driver, WorkerFound(n1, w1))
    core.handle(driver, WorkerFound(n2, w2))
    assert core.handle(driver, M.decode((M.RETURN_LEASE, n1.grant.lease_id, True))) == []
    (retire,) = core.handle(driver, M.decode((M.RETURN_LEASE, n2.grant.lease_id, True)))
    assert isinstance(retire, Retire) and retire.worker is w2 and w2.state == "DEAD"
    assert core.pool is not None and core.pool.get("w2") is None


def test_a_worker_found_for_a_client_that_left_goes_back_to_the_pool():
    core = _lease_core()
    driver = Client("driver", "d1", 10)
    need = _need(core, driver, 3, "lease-1")
    assert core.leases is not None
    for lid in core.leases.client_gone("driver"):
        core.release_lease(lid, kill=False)
    w = _worker(core, 1)
    w.state = "LEASED"
    assert core.handle(driver, WorkerFound(need, w)) == []
    assert w.state == "IDLE"


def test_a_blocked_lease_lends_its_cpu_to_a_nested_request():
    core = _lease_core(cpus=1)
    worker_client = Client("wconn", "w1", 20)
    need = _need(core, worker_client, 1, "lease-1")
    core.handle(worker_client, WorkerFound(need, _worker(core, 1)))
    assert _ask(core, worker_client, 2, "lease-2") == []  # waits
    effects = core.handle(worker_client, M.decode((M.BLOCKED, need.grant.lease_id)))
    assert isinstance(effects[0], SpawnWorker) and effects[0].waiting.req == 2
    assert core.handle(worker_client, M.decode((M.BLOCKED, need.grant.lease_id))) == []
    assert core.handle(worker_client, M.decode((M.UNBLOCKED, need.grant.lease_id))) == []


def test_kill_worker_names_its_process_and_unknown_workers_are_ignored():
    core = _lease_core()
    _worker(core, 4)
    assert core.handle(Client("c", "h"), M.decode((M.KILL_WORKER, "w4"))) == [Kill(1004)]
    assert core.handle(Client("c", "h"), M.decode((M.KILL_WORKER, "nobody"))) == []


def test_an_infeasible_lease_is_refused_with_the_reason():
    core = _lease_core(cpus=1)
    effects = core.handle(Client("driver", "d1"), LeaseRequested(5, "", LeaseRequest(
        "lease-9", {"CPU": 64}, DefaultStrategy(), NODE, "f")))
    refuse = effects[0]
    assert isinstance(refuse, Refuse) and refuse.req == 5
    assert isinstance(refuse.error, exc.TaskUnschedulableError)


# ---------------------------------------------------------------------- actor queries
def _actor_core() -> NodeCore:
    core = _lease_core()
    core.actors = ActorDirectory("ns")
    core.node_id = NODE
    return core


def test_actor_info_waits_for_a_pending_actor_and_its_death_answers_the_waiter():
    core = _actor_core()
    assert core.actors is not None
    actor, _ = core.actors.create(A, {"class_name": "C", "name": "x", "methods": ["f"]}, "owner")
    c = Client("caller", "c1")
    assert core.handle(c, M.decode((M.ACTOR_INFO, 4, None, "x", None, True))) == []  # waits
    (now,) = core.handle(c, M.decode((M.ACTOR_INFO, 5, A, None, None, False)))
    assert now.ok and now.value["state"] == "PENDING_CREATION" and now.value["spec"]["methods"] == ["f"]
    (named,) = core.handle(c, M.decode((M.NAMED_ACTORS, 6, False, None)))
    assert named.value == ["x"]
    actor.lease_id = "lease-x"
    (answer,) = core.actor_dead(actor, exc.ActorDiedError("gone"))
    assert (answer.client, answer.req) == ("caller", 4)
    assert answer.value["state"] == "DEAD" and answer.value["death"] == ("ActorDiedError", "gone")
    assert actor.lease_id is None
    (missing,) = core.handle(c, M.decode((M.ACTOR_INFO, 7, None, "x", None, False)))
    assert not missing.ok and "no live actor" in str(missing.value)


def test_actor_info_of_an_actor_on_another_node_redirects_there():
    core = _actor_core()
    assert core.actors is not None
    actor, _ = core.actors.create(A, {"class_name": "C"}, "owner")
    actor.remote_node = "node-b"
    core.peers["node-b"] = {"address": "tcp:127.0.0.1:5"}
    (info,) = core.handle(Client("c", "h"), M.decode((M.ACTOR_INFO, 1, A, None, None, True)))
    assert info.value["state"] == "REMOTE" and info.value["address"] == "tcp:127.0.0.1:5"
    (unknown,) = core.handle(Client("c", "h"), M.decode((M.ACTOR_INFO, 2, b"z" * 16, None, None, False)))
    assert not unknown.ok and "unknown actor" in str(unknown.value)


# ---------------------------------------------------------------------- messages to others
def test_messages_to_others_round_trip_and_are_checked():
    run = M.RunActor(b"a" * 16, {"class_name": "C"}, [0], 2)
    assert run.wire() == (M.RUN_ACTOR, b"a" * 16, {"class_name": "C"}, [0], 2)
    assert M.read(run.wire()) == run
    assert M.read(M.Exit().wire()) == M.Exit()
    log = M.read(M.Log(None, "stdout", "hi\n", "f pid=1").wire())
    assert (log.task_id, log.stream, log.text, log.label) == (None, "stdout", "hi\n", "f pid=1")
    assert M.read(M.Cancel(b"t" * 16, True, False).wire()).force is True
    assert M.read(M.Peer("w1").wire()).worker_id == "w1"
    reply = M.read(M.Reply(7, False, ValueError("x")).wire())
    assert reply.req == 7 and reply.ok is False
    with pytest.raises(M.BadMessage, match="Cancel.force must be bool"):
        M.read((M.CANCEL, b"t" * 16, "yes", False))
    with pytest.raises(M.BadMessage, match="RunActor takes 4..4 fields"):
        M.read((M.RUN_ACTOR, b"a" * 16))


def test_the_daemon_refuses_kinds_only_others_receive():
    for wire in (M.Exit().wire(), M.RunActor(b"a" * 16, {}, [], 0).wire(),
                 M.Log(None, "stdout", "x", None).wire()):
        with pytest.raises(M.BadMessage, match="unknown message kind"):
            M.decode(wire)


# ---------------------------------------------------------------------- actor reports
def _placed_actor(core: NodeCore, **spec):
    assert core.actors is not None and core.leases is not None
    actor, _ = core.actors.create(A, {"class_name": "C", **spec}, "owner")
    w = _worker(core, 7)
    w.state, w.actor_id = "ACTOR", A
    actor.worker = w
    need = _need(core, Client("owner", "o1"), 1, "lease-a")
    core.handle(Client("owner", "o1"), WorkerFound(need, w))
    actor.lease_id = w.lease_id
    return actor, w


def test_an_actor_ready_gives_back_its_creation_lease_and_answers_waiters():
    core = _actor_core()
    actor, w = _placed_actor(core)
    caller = Client("caller", "c1")
    core.handle(caller, M.decode((M.ACTOR_INFO, 3, A, None, None, True)))
    # only the actor's own worker reports on it
    assert core.handle(Client("someone", "s"), M.decode((M.ACTOR_READY, A))) == []
    effects = core.handle(Client(w.conn, "w7"), M.decode((M.ACTOR_READY, A)))
    ev = effects[0]
    assert isinstance(ev, Event) and (ev.task_id, ev.state) == (A.hex(), "FINISHED")
    assert ev.attrs["worker_pid"] == 1007
    answer = effects[-1]
    assert isinstance(answer, Answer) and answer.req == 3 and answer.value["state"] == "ALIVE"
    assert actor.lease_id is None and w.lease_id is None and actor.state == "ALIVE"


def test_an_actor_that_failed_in_its_constructor_dies_and_its_worker_is_killed():
    core = _actor_core()
    actor, w = _placed_actor(core)
    core.handle(Client("caller", "c1"), M.decode((M.ACTOR_INFO, 3, A, None, None, True)))
    effects = core.handle(Client(w.conn, "w7"),
                          M.decode((M.ACTOR_FAILED, A, ("ValueError", "bad init"))))
    ev, answer, kill = effects
    assert isinstance(ev, Event) and ev.state == "FAILED" and ev.attrs["error_message"] == "bad init"
    assert isinstance(answer, Answer) and answer.value["death"] == ("ValueError", "bad init")
    assert kill == Kill(1007)
    assert actor.state == "DEAD" and actor.no_restart


# ---------------------------------------------------------------------- actor kills and restarts
def test_kill_actor_without_restart_is_dead_at_once_and_its_worker_killed():
    core = _actor_core()
    actor, w = _placed_actor(core, name="x")
    core.handle(Client("caller", "c1"), M.decode((M.ACTOR_INFO, 3, A, None, None, True)))
    effects = core.handle(Client("driver", "d"), M.decode((M.KILL_ACTOR, A, True)))
    answer, kill = effects
    assert isinstance(answer, Answer) and answer.value["state"] == "DEAD"
    assert "carme.kill()" in answer.value["death"][1]
    assert kill == Kill(1007) and actor.no_restart
    assert core.handle(Client("driver", "d"), M.decode((M.KILL_ACTOR, A, True))) == []  # once


def test_kill_of_an_actor_on_another_node_goes_there_too():
    core = _actor_core()
    assert core.actors is not None
    actor, _ = core.actors.create(A, {"class_name": "C"}, "owner")
    actor.remote_node = "node-b"
    effects = core.kill_actor(actor, "the actor's owner exited")
    assert effects[0] == ToPeer("node-b", (M.KILL_ACTOR, A, False))
    assert actor.state != "DEAD"  # restartable: its node decides


def test_an_actor_whose_worker_died_restarts_until_its_limit_then_dies():
    core = _actor_core()
    actor, w = _placed_actor(core, max_restarts=1, placement_shape={"CPU": 1},
                             strategy=DefaultStrategy(), env_key="")
    old_lease = actor.lease_id
    effects = core.actor_worker_died(actor)
    assert actor.state == "RESTARTING" and actor.restarts == 1
    # its creation lease went back, so the scheduler places it again at once (on a new worker)
    (spawn,) = effects
    assert isinstance(spawn, SpawnWorker) and spawn.waiting.grant.request_id == f"actor-{A.hex()}"
    assert actor.lease_id == spawn.waiting.grant.lease_id != old_lease
    core.handle(Client("caller", "c1"), M.decode((M.ACTOR_INFO, 3, A, None, None, True)))
    (answer,) = core.actor_worker_died(actor)
    assert actor.state == "DEAD" and answer.req == 3
    assert answer.value["death"] == ("ActorDiedError", "the actor's worker process died unexpectedly")
