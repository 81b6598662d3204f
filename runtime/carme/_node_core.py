"""One entry point for the node's object and lease messages: event in, effects out. Pure.

Theory of operation. `NodeCore.handle(client, msg)` takes a decoded message from a client
(a driver's or worker's connection, opaque here, with the holder id and pid it said hello
with), or an event the daemon saw itself, and returns what to do. It covers

  * the object messages (`Alloc`, `Export`, `Incref`, `Decref`, `GetObject`,
    `StoreStats`) over the `ObjectTable`: effects `Answer` (a reply to send) and `Note`
    (a line for the daemon's log);
  * the actor queries (`ActorInfo`, `NamedActors`) and an actor worker's reports
    (`ActorReady`, `ActorFailed`), kills (`KillActor`, `kill_actor`), restarts and deaths
    (`actor_worker_died`, `actor_dead`: its lease goes, its waiters hear) over the
    `ActorDirectory`: effects `Answer`, `Event` (a task event for the daemon's log,
    stamped there), `Kill`, `ToPeer` (a message to another node's daemon);
  * the lease messages (`ReturnLease`, `Blocked`, `Unblocked`, `KillWorker`) and the
    events `LeaseRequested` (a `Lease` whose runtime env the daemon has set up) and
    `WorkerFound` (a worker for a grant) over the `LeaseTable` and `WorkerPool`:
    effects `Answer`, `Retire` (tell a worker to exit), `Kill` (a process), and what the
    scheduler decided (`poll`: `NeedWorker`, `Spill`, `Refuse`, `ActorGrant`,
    `ActorInfeasible`, then `CheckPlacementGroups`).

None of it needs a process, socket or clock; the daemon routes every message of those
kinds here and carries out the effects. Actor creation and placement on another node,
and worker processes (spawn, output, death), are still driven by the daemon's handlers
through their pure modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _messages as M
from . import exceptions as exc
from ._node_actors import ActorDirectory, ActorRec
from ._node_leases import LeaseTable, NeedWorker, Spill
from ._node_objects import Answer, ObjectTable
from ._node_workers import WorkerPool, WorkerRec
from ._scheduler import LeaseRequest
from ._store import ArenaFull


def as_error(value: Any) -> BaseException:
    """A failure value as an exception instance (peers may still send (name, message))."""
    if isinstance(value, BaseException):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        cls = getattr(exc, str(value[0]), None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                return cls(value[1])  # type: ignore[no-any-return]
            except TypeError:
                pass
        if value[0] == "ValueError":
            return ValueError(value[1])
    return exc.RaySystemError(str(value))


@dataclass(slots=True)
class Note:
    """Effect: a line for the daemon's log (something was refused)."""

    text: str


@dataclass(slots=True)
class Retire:
    """Effect: tell this worker to exit (the pool has enough idle ones; it is forgotten)."""

    worker: WorkerRec


@dataclass(slots=True)
class Kill:
    """Effect: kill this process (a worker whose lease ended badly, or on request)."""

    pid: int


@dataclass(slots=True)
class Event:
    """Effect: record a task event (the daemon stamps the time)."""

    task_id: str
    state: str
    attrs: dict


@dataclass(slots=True)
class ToPeer:
    """Effect: send this wire message to another node's daemon (best effort)."""

    node_id: str
    msg: tuple


@dataclass(slots=True)
class CheckPlacementGroups:
    """Effect: the scheduler ran; answer placement-group waits that can be answered."""


@dataclass(slots=True)
class LeaseRequested:
    """Event: a client asked for a worker lease; its runtime env is set up (`env_key`)."""

    req: int
    env_key: str
    request: LeaseRequest


@dataclass(slots=True)
class WorkerFound:
    """Event: a worker (idle, or just started) for a grant the scheduler made."""

    need: NeedWorker
    worker: WorkerRec


@dataclass(slots=True)
class Client:
    """Who sent a message: its connection (opaque), holder id and pid."""

    conn: Any
    holder: str
    pid: int = 0


class NodeCore:
    HANDLED = (M.Alloc, M.Export, M.Incref, M.Decref, M.GetObject, M.StoreStats,
               M.ReturnLease, M.Blocked, M.Unblocked, M.KillWorker, M.ActorInfo, M.NamedActors,
               M.ActorReady, M.ActorFailed, M.KillActor)

    def __init__(self, table: ObjectTable, leases: LeaseTable | None = None,
                 pool: WorkerPool | None = None, actors: ActorDirectory | None = None,
                 node_id: str = "", peers: dict[str, dict[str, Any]] | None = None) -> None:
        self.table = table
        self.leases = leases
        self.pool = pool
        self.actors = actors
        self.node_id = node_id
        self.peers = peers if peers is not None else {}  # other nodes (the daemon's view)

    def handle(self, client: Client, msg: Any) -> list[Any]:
        if isinstance(msg, (M.ReturnLease, M.Blocked, M.Unblocked, M.KillWorker,
                            LeaseRequested, WorkerFound)):
            return self._lease_event(client, msg)
        if isinstance(msg, (M.ActorInfo, M.NamedActors)):
            return self._actor_query(client, msg)
        if isinstance(msg, (M.ActorReady, M.ActorFailed)):
            return self._actor_report(client, msg)
        if isinstance(msg, M.KillActor):
            assert self.actors is not None
            actor = self.actors.get(msg.actor_id)
            if actor is None or actor.state == "DEAD":
                return []
            actor.no_restart = actor.no_restart or msg.no_restart
            return self.kill_actor(actor, "the actor was killed by carme.kill()")
        if isinstance(msg, M.Export):
            return self._export(client, msg)
        if isinstance(msg, M.Decref):
            return list(self.table.decref(msg.oids, msg.holder or client.holder))
        if isinstance(msg, M.Incref):
            missing = self.table.incref(msg.oids, msg.holder or client.holder)
            return [] if msg.req is None else [Answer(client.conn, msg.req, True, missing)]
        if isinstance(msg, M.GetObject):
            return list(self.table.get(client.conn, msg.req, msg.oid))
        if isinstance(msg, M.Alloc):
            return [self._alloc(client, msg)]
        if isinstance(msg, M.StoreStats):
            arena = self.table.arena
            return [Answer(client.conn, msg.req, True, {
                "capacity": arena.capacity, "used": arena.used_bytes,
                "shared_objects": arena.allocations(), "objects": len(self.table)})]
        raise TypeError(f"NodeCore does not handle {type(msg).__name__}")

    # ------------------------------------------------------------------ leases
    def _lease_event(self, client: Client, msg: Any) -> list[Any]:
        leases, pool = self.leases, self.pool
        assert leases is not None and pool is not None, "NodeCore without a lease table"
        if isinstance(msg, LeaseRequested):
            leases.request(msg.request.request_id, client.conn, msg.req, msg.env_key, msg.request)
            return self.poll()
        if isinstance(msg, WorkerFound):
            return self._found(msg.need, msg.worker)
        if isinstance(msg, M.ReturnLease):
            holder = leases.holder(msg.lease_id)
            if holder is not None and holder is not client.conn:
                return []  # only the holder of a lease gives it back
            return self.release_lease(msg.lease_id, kill=not msg.worker_ok)
        if isinstance(msg, M.Blocked):
            # a worker waits in get(): lend its CPU out so nested tasks cannot deadlock
            return self.poll() if leases.block(msg.lease_id) else []
        if isinstance(msg, M.KillWorker):
            w = pool.get(msg.worker_id)
            return [] if w is None else [Kill(w.pid)]
        # Unblocked: the worker runs again (possibly oversubscribing the node until its
        # task ends, as Ray does); the lease's resources were already handed back
        return []

    def poll(self) -> list[Any]:
        """What the scheduler decided (through the lease table)."""
        assert self.leases is not None
        return [*self.leases.poll(), CheckPlacementGroups()]

    def give_back(self, w: WorkerRec) -> list[Any]:
        """A worker's lease ended: it goes idle, or retires if enough are idle."""
        assert self.pool is not None
        return [] if self.pool.give_back(w) else [Retire(w)]

    def release_lease(self, lease_id: str, kill: bool) -> list[Any]:
        assert self.leases is not None
        existed, w = self.leases.release(lease_id)
        if not existed:
            return []
        out: list[Any] = []
        if w is not None:
            out = [Kill(w.pid)] if kill else self.give_back(w)
        return out + self.poll()

    # ------------------------------------------------------------------ actors
    def _actor_query(self, client: Client, msg: M.ActorInfo | M.NamedActors) -> list[Any]:
        d = self.actors
        assert d is not None, "NodeCore without an actor directory"
        if isinstance(msg, M.NamedActors):
            return [Answer(client.conn, msg.req, True, d.named(msg.all_namespaces, msg.namespace))]
        actor_id = msg.actor_id
        if actor_id is None:
            try:
                actor_id = d.lookup(msg.name or "", msg.namespace).actor_id
            except ValueError as e:
                return [Answer(client.conn, msg.req, False, e)]
        actor = d.get(actor_id)
        if actor is None:
            return [Answer(client.conn, msg.req, False, ValueError(f"unknown actor {actor_id.hex()}"))]
        if msg.wait and actor.state in ("PENDING_CREATION", "RESTARTING") and actor.remote_node is None:
            actor.waiters.append((client.conn, msg.req))
            return []
        return [Answer(client.conn, msg.req, True, self.actor_info(actor))]

    def _actor_report(self, client: Client, msg: M.ActorReady | M.ActorFailed) -> list[Any]:
        assert self.actors is not None
        actor = self.actors.get(msg.actor_id)
        if actor is None or actor.worker is None or actor.worker.conn is not client.conn:
            return []  # only the actor's own worker reports on it
        w = actor.worker
        if isinstance(msg, M.ActorFailed):
            actor.no_restart = True
            return [Event(msg.actor_id.hex(), "FAILED", {
                        "error_type": "ActorDiedError", "error_message": str(msg.error[1])[:500]}),
                    *self.actor_dead(actor, as_error(msg.error)), Kill(w.pid)]
        actor.state = "ALIVE"
        out: list[Any] = [Event(msg.actor_id.hex(), "FINISHED", {
            "node_id": self.node_id, "worker_id": w.worker_id, "worker_pid": w.pid})]
        if not actor.spec.get("hold_resources") and actor.lease_id:
            # its creation resources go back; it keeps running on its worker
            assert self.leases is not None
            self.leases.scheduler.release(actor.lease_id)
            self.leases.leases.pop(actor.lease_id, None)
            w.lease_id = None
            actor.lease_id = None
            out += self.poll()
        waiters, actor.waiters = actor.waiters, []
        return out + [Answer(conn, req, True, self.actor_info(actor)) for conn, req in waiters]

    @staticmethod
    def public_spec(actor: ActorRec) -> dict:
        s = actor.spec
        return {k: s.get(k) for k in ("class_name", "methods", "is_async", "max_task_retries",
                                      "method_options", "max_concurrency")}

    def actor_info(self, actor: ActorRec) -> dict:
        """What a caller needs to reach an actor (or to learn it is dead)."""
        w = actor.worker
        if actor.remote_node is not None and actor.state != "DEAD":
            peer = self.peers.get(actor.remote_node, {})
            return {"actor_id": actor.actor_id, "state": "REMOTE", "redirect": actor.remote_node,
                    "address": peer.get("address"), "spec": self.public_spec(actor),
                    "death": None, "restarts": actor.restarts, "node_id": actor.remote_node}
        return {"actor_id": actor.actor_id, "state": actor.state,
                "address": w.address if w and actor.state == "ALIVE" else None,
                "pid": w.pid if w else None, "worker_id": w.worker_id if w else None,
                "death": actor.death, "restarts": actor.restarts,
                "incarnation": actor.restarts, "spec": self.public_spec(actor),
                "node_id": self.node_id}

    def schedule_actor(self, actor: ActorRec) -> list[Any]:
        """Ask the scheduler for a place for the actor (creation or restart)."""
        assert self.leases is not None
        s = actor.spec
        self.leases.scheduler.submit(LeaseRequest(
            f"actor-{actor.actor_id.hex()}", s["placement_shape"], s["strategy"], self.node_id,
            f"actor {s['class_name']}"))
        return self.poll()

    def kill_actor(self, actor: ActorRec, reason: str) -> list[Any]:
        """Kill an actor (its node's daemon too, if it runs elsewhere); with `no_restart`
        it is dead at once (its name is free again) and its worker's exit is a formality."""
        actor.spec["kill_reason"] = reason
        out: list[Any] = []
        if actor.remote_node is not None:
            out.append(ToPeer(actor.remote_node,
                              M.KillActor(actor.actor_id, actor.no_restart).wire()))
        if actor.no_restart:
            out += self.actor_dead(actor, exc.ActorDiedError(reason))
        if actor.worker is not None and actor.worker.state != "DEAD":
            out.append(Kill(actor.worker.pid))
        return out

    def actor_worker_died(self, actor: ActorRec) -> list[Any]:
        """The actor's worker is gone: restart it, or it is dead."""
        assert self.actors is not None
        self.release_actor_lease(actor)
        reason = self.actors.death_reason(actor)
        decision = self.actors.worker_died(actor)
        if decision == "restart":
            return self.schedule_actor(actor)
        if decision == "dead":
            return self.actor_dead(actor, exc.ActorDiedError(reason))
        return []

    def release_actor_lease(self, actor: ActorRec) -> None:
        if actor.lease_id:
            assert self.leases is not None
            self.leases.leases.pop(actor.lease_id, None)
            self.leases.scheduler.release(actor.lease_id)
            actor.lease_id = None

    def actor_dead(self, actor: ActorRec, error: BaseException) -> list[Any]:
        """The actor is dead: its lease goes; those waiting for it hear (its name is free)."""
        assert self.actors is not None
        self.release_actor_lease(actor)
        return [Answer(conn, req, True, self.actor_info(actor))
                for conn, req in self.actors.dead(actor, error)]

    def _found(self, need: NeedWorker, w: WorkerRec) -> list[Any]:
        assert self.leases is not None
        g = need.grant
        if not self.leases.bind(g.lease_id, w, need.client, need.req):
            return self.give_back(w)  # the requester went away meanwhile
        w.state = "LEASED"
        w.lease_id = g.lease_id
        return [Answer(need.client, need.req, True, {
            "lease_id": g.lease_id, "worker_id": w.worker_id, "address": w.address,
            "pid": w.pid, "gpu_ids": list(g.gpu_ids), "node_id": g.node_id})]


    def _alloc(self, client: Client, msg: M.Alloc) -> Answer:
        # the entry starts pending with one hold: the creator's, or for a task return
        # the submitter's (the worker names it); a return its owner already exported
        # while pending keeps its entry (holds, waiters)
        try:
            off = self.table.alloc(msg.oid, msg.size, msg.owner_pid, msg.holder or client.holder)
        except ArenaFull as e:
            return Answer(client.conn, msg.req, False, exc.ObjectStoreFullError(str(e)))
        return Answer(client.conn, msg.req, True, off)

    def _export(self, client: Client, msg: M.Export) -> list[Any]:
        try:
            effects: list[Any] = self.table.export(msg.oid, msg.payload, msg.contained, msg.add,
                                                   msg.type_name, client.holder, client.pid)
        except M.BadMessage as e:
            out: list[Any] = [Note(f"refused a message from pid {client.pid}: {e}")]
            if msg.req is not None:
                out.append(Answer(client.conn, msg.req, False, e))
            return out
        if msg.req is not None:
            effects.insert(0, Answer(client.conn, msg.req, True, None))
        return effects


__all__ = ["Answer", "CheckPlacementGroups", "Client", "Event", "Kill", "LeaseRequested", "NodeCore",
           "Note", "Retire", "Spill", "ToPeer", "WorkerFound"]
