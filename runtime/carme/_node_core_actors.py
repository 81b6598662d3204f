"""The actor half of `NodeCore`: creation, placement, reports, kills, restarts. Pure.

Theory of operation. The daemon that receives an actor's creation (`ActorCreation`, once
its runtime env is set up) records it in the `ActorDirectory` and asks the scheduler for
a place. A grant here (`ActorGrant`) takes an idle worker or forks one (`SpawnWorker`
with an `ActorStart` waiting for it) and sends it `RunActor`; the actor's own worker
then reports `ActorReady` (its creation resources go back unless it holds them) or
`ActorFailed`. A grant on another node forwards the creation there (`PeerRequest` of a
`CREATE_ACTOR` that may not move again); that node runs and restarts it, and lookups
here answer with a redirect. When the actor's worker dies, the directory decides
restart or death; a death answers everyone waiting for the actor. A dead peer takes its
actors with it (restarted here or elsewhere if they may be). No I/O: the effects say
what to send, fork and kill.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from . import _messages as M
from . import exceptions as exc
from ._node_actors import ActorDirectory, ActorRec
from ._node_effects import (
    ActorCreation,
    ActorStart,
    Client,
    Event,
    Kill,
    PeerFailed,
    PeerRequest,
    Send,
    SpawnWorker,
    ToPeer,
)
from ._node_leases import LeaseTable
from ._node_objects import Answer
from ._node_workers import WorkerPool, WorkerRec
from ._scheduler import BundleStrategy, Grant, LeaseRequest, NodeAffinity


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


class ActorCore:
    """Mixed into `NodeCore` (which provides the tables and `poll`, `give_back`)."""

    leases: LeaseTable | None
    pool: WorkerPool | None
    actors: ActorDirectory | None
    node_id: str
    peers: dict[str, dict[str, Any]]
    route_bundle: Callable[[tuple[str, Any, Any]], list[Any] | None]  # PgRouting's

    def poll(self) -> list[Any]:
        raise NotImplementedError  # NodeCore's

    def give_back(self, w: WorkerRec) -> list[Any]:
        raise NotImplementedError  # NodeCore's

    def _init_actors(self) -> None:
        # creations forwarded to other nodes, by request id: (node id, actor)
        self.forwarded: dict[int, tuple[str, ActorRec]] = {}
        self._peer_req_ids = itertools.count(1)

    # ------------------------------------------------------------------ queries and reports
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
                "tcp": w.tcp if w and actor.state == "ALIVE" else None,
                "pid": w.pid if w else None, "worker_id": w.worker_id if w else None,
                "death": actor.death, "restarts": actor.restarts,
                "incarnation": actor.restarts, "spec": self.public_spec(actor),
                "node_id": self.node_id}

    # ------------------------------------------------------------------ creation and placement
    def _create_actor(self, client: Client, ev: ActorCreation) -> list[Any]:
        assert self.actors is not None
        try:
            actor, existing = self.actors.create(ev.actor_id, ev.spec, client.conn)
        except ValueError as e:  # ActorAlreadyExistsError is one
            return [Answer(client.conn, ev.req, False, e)]
        if existing:
            return [Answer(client.conn, ev.req, True, {"actor_id": actor.actor_id, "existing": True,
                                                      "spec": self.public_spec(actor)})]
        return [Answer(client.conn, ev.req, True, {"actor_id": ev.actor_id, "existing": False}),
                *self.schedule_actor(actor)]

    def schedule_actor(self, actor: ActorRec) -> list[Any]:
        """Ask the scheduler for a place for the actor (creation or restart)."""
        assert self.leases is not None
        routed = self.route_bundle(("actor", None, actor))
        if routed is not None:
            return routed  # a group this node does not know: the head says where its bundles are
        s = actor.spec
        self.leases.scheduler.submit(LeaseRequest(
            f"actor-{actor.actor_id.hex()}", s["placement_shape"], s["strategy"], self.node_id,
            f"actor {s['class_name']}"))
        return self.poll()

    def _actor_granted(self, g: Grant) -> list[Any]:
        assert self.actors is not None and self.leases is not None and self.pool is not None
        actor = self.actors.get(bytes.fromhex(g.request_id[6:]))
        if actor is None or actor.state == "DEAD":
            self.leases.scheduler.release(g.lease_id)
            return []
        if g.node_id != self.node_id:
            self.leases.scheduler.release(g.lease_id)
            return self._place_remote(actor, g.node_id)
        actor.lease_id = g.lease_id
        start = ActorStart(actor, g)
        w = self.pool.take(actor.spec["env_key"])
        return [SpawnWorker(actor.spec["env_key"], start)] if w is None else self._start_actor(start, w)

    def _start_actor(self, start: ActorStart, w: WorkerRec) -> list[Any]:
        assert self.leases is not None
        actor, g = start.actor, start.grant
        if actor.state == "DEAD":
            out = self.give_back(w)
            self.leases.scheduler.release(g.lease_id)
            return out
        w.state = "ACTOR"
        w.actor_id = actor.actor_id
        actor.worker = w
        self.leases.leases[g.lease_id] = (w, actor.owner, 0)
        w.lease_id = g.lease_id
        return [Send(w.conn, M.RunActor(actor.actor_id, actor.spec, list(g.gpu_ids),
                                        actor.restarts).wire())]

    def _place_remote(self, actor: ActorRec, node_id: str) -> list[Any]:
        """The scheduler chose another node: that node's daemon runs (and restarts) it."""
        actor.remote_node = node_id
        # (in a group's bundle: that node leases it from the bundle it reserves)
        strategy = actor.spec["strategy"]
        if not isinstance(strategy, BundleStrategy):
            strategy = NodeAffinity(node_id, False)
        spec = dict(actor.spec, name=None, get_if_exists=False, display_name=actor.spec.get("name"),
                    strategy=strategy, forwarded=True)
        req = next(self._peer_req_ids)
        self.forwarded[req] = (node_id, actor)
        return [PeerRequest(node_id, req, (M.CREATE_ACTOR, req, actor.actor_id, spec))]

    def _forwarded_reply(self, client: Client, msg: M.Reply | PeerFailed) -> list[Any]:
        """The answer to a creation forwarded to another node (only from that node's
        connection), or the failure to send it."""
        entry = self.forwarded.get(msg.req)
        if entry is None:
            return []
        if isinstance(msg, PeerFailed):
            ok, value = False, msg.error
        elif client.peer is not None and client.peer == entry[0]:
            ok, value = msg.ok, msg.value
        else:
            return []
        del self.forwarded[msg.req]
        actor = entry[1]
        if not ok:
            actor.no_restart = True
            return self.actor_dead(actor, as_error(value))
        waiters, actor.waiters = actor.waiters, []
        return [Answer(wconn, wreq, True, self.actor_info(actor)) for wconn, wreq in waiters]

    def _peer_gone(self, node_id: str, why: str) -> list[Any]:
        """Our connection to a node closed: creations forwarded on it fail."""
        out: list[Any] = []
        for req, (nid, _actor) in list(self.forwarded.items()):
            if nid == node_id:
                out += self._forwarded_reply(Client(None, ""), PeerFailed(
                    req, exc.NodeDiedError(f"node {node_id[:8]} {why}")))
        return out

    def _peer_died(self, node_id: str) -> list[Any]:
        """The cluster view says a node is dead: its actors restart (here or elsewhere)
        or die; creations forwarded to it get no answer now (and are not failed: the
        restart decides)."""
        assert self.actors is not None
        for req in [r for r, (nid, _actor) in self.forwarded.items() if nid == node_id]:
            del self.forwarded[req]
        out: list[Any] = []
        for actor in list(self.actors.actors.values()):
            if actor.remote_node == node_id and actor.state != "DEAD":
                actor.remote_node = None
                actor.spec["kill_reason"] = f"the actor's node {node_id[:8]} died"
                out += self.actor_worker_died(actor)
        return out

    # ------------------------------------------------------------------ kills, restarts, deaths
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


__all__ = ["ActorCore", "as_error"]
