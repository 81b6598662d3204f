"""The node's state machine: one entry point, events in, effects out. Pure.

Theory of operation. `NodeCore.handle(client, item)` takes a decoded message from a
client (a driver's, worker's or another node's connection, opaque here, with the holder
id and pid it said hello with) or an event the daemon saw itself (`_node_effects.py`),
and returns what to do. It covers

  * objects (`Alloc`, `Export`, `Incref`, `Decref`, `GetObject`, `StoreStats`) over the
    `ObjectTable`, and copies of other nodes' objects (`GetRemote`: `StartPull`, then
    `Pulled`; a peer's pull of ours: `pin_for_pull`, then `PullDone`);
  * leases (`ReturnLease`, `Blocked`, `Unblocked`, `KillWorker`, `LeaseRequested`) over
    the `LeaseTable` and `ClusterScheduler`, and workers (`WorkerStarted`, `WorkerReady`,
    `WorkerFound`; a worker's death is its connection's `ClientGone`) over the
    `WorkerPool`: a grant takes an idle worker or asks for a fork (`SpawnWorker`);
  * actors (creation, placement here or on another node, reports, kills, restarts,
    deaths): the `ActorCore` half in `_node_core_actors.py`;
  * placement groups (`PgCreate`, `PgRemove`, `PgInfo`, `PgWait`: waits answered when
    the group is created or removed; `PgReserve`: bundles placed here by the head); a
    request for a bundle of a group this node does not know: `_node_core_pgs.py`;
  * the cluster view (`ClusterView`: new peers, dead peers and their actors) and the
    node's address book (`NodeAddress`);
  * a client's departure (`ClientGone`): its holds, leases and non-detached actors go.

None of it needs a process, socket or clock; the daemon carries out the effects in order
(`Answer`, `Send`, `Retire`, `Kill`, `SpawnWorker`, `ToPeer`, `PeerRequest`, `ClosePeer`,
`StartPull`, `Event`, `Note`, and the scheduler's `Spill` and `Refuse`). Whenever the
scheduler may have decided something (`poll`), its decisions are carried through here:
a grant here takes an idle worker or asks for a fork, an actor's grant places it, an
infeasible actor dies, and placement-group waits that can be answered are.
"""

from __future__ import annotations

import itertools
from typing import Any

from . import _messages as M
from . import exceptions as exc
from ._node_actors import ActorDirectory
from ._node_core_actors import ActorCore, as_error
from ._node_core_pgs import PgRouting
from ._node_core_refs import RefCore
from ._node_effects import (
    ActorCreation,
    ActorStart,
    Client,
    ClientGone,
    ClosePeer,
    ClusterView,
    Event,
    Kill,
    LeaseRequested,
    Note,
    PeerFailed,
    PeerRequest,
    PullDone,
    Pulled,
    Retire,
    Send,
    SpawnWorker,
    StartPull,
    ToPeer,
    WorkerFound,
    WorkerStarted,
)
from ._node_leases import ActorGrant, ActorInfeasible, LeaseTable, NeedWorker, Spill
from ._node_objects import Answer, ObjectTable
from ._node_workers import WorkerPool, WorkerRec
from ._store import ArenaFull


class NodeCore(ActorCore, RefCore, PgRouting):
    def __init__(self, table: ObjectTable, leases: LeaseTable | None = None,
                 pool: WorkerPool | None = None, actors: ActorDirectory | None = None,
                 node_id: str = "", peers: dict[str, dict[str, Any]] | None = None,
                 linked: bool = False) -> None:
        self.table = table
        self.leases = leases
        self.pool = pool
        self.actors = actors
        self.node_id = node_id
        self.peers = peers if peers is not None else {}  # other nodes (the cluster view)
        self.linked = linked  # in a cluster: other nodes' objects can be pulled
        self.pg_waiters: dict[str, list[tuple[Any, int]]] = {}
        self.pg_mirrored: dict[str, set[str]] = {}  # group -> other nodes told to reserve its bundles
        self.heads_away: set[str] = set()  # a head that does not answer, kept as fully busy
        self._pull_keys = itertools.count(1)
        self._init_actors()
        self._init_refs()
        self._init_pgs()

    def handle(self, client: Client | None, msg: Any) -> list[Any]:
        """Effects of a client's message, or of an event (`client` may be None for
        events that come from no client)."""
        handler = self._handlers.get(type(msg))
        if handler is None:
            raise TypeError(f"NodeCore does not handle {type(msg).__name__}")
        out: list[Any] = handler(self, client, msg)
        if self.table.remote_releases or self.table.remote_holds:
            out += self.remote_releases()
        if self.table.freed_notices:
            out += self.freed_notices()
        if self.table.proxy_fetches:
            out += self.fetch_proxies()
        return out

    # ------------------------------------------------------------------ objects
    def _alloc(self, client: Client, msg: M.Alloc) -> list[Any]:
        # the entry starts pending with one hold: the creator's, or for a task return
        # the submitter's (the worker names it); a return its owner already exported
        # while pending keeps its entry (holds, waiters)
        try:
            off = self.table.alloc(msg.oid, msg.size, msg.owner_pid, msg.holder or client.holder,
                                   writer=client.holder)
        except ArenaFull:
            return [Answer(client.conn, msg.req, False, exc.ObjectStoreFullError(self.table.full_text(msg.size)))]
        return [Answer(client.conn, msg.req, True, off)]

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

    def _incref(self, client: Client, msg: M.Incref) -> list[Any]:
        if msg.homes or self.needs_confirming(msg.oids):
            return self.incref_homes(client, msg)
        missing = self.table.incref(msg.oids, msg.holder or client.holder)
        return [] if msg.req is None else [Answer(client.conn, msg.req, True, missing)]

    def _store_stats(self, client: Client, msg: M.StoreStats) -> list[Any]:
        arena = self.table.arena
        return [Answer(client.conn, msg.req, True, {
            "capacity": arena.capacity, "used": arena.used_bytes,
            "shared_objects": arena.allocations(), "objects": len(self.table),
            **self.table.spill.stats(), "spill_directory": self.table.spill_dir})]

    def _map_object(self, client: Client, msg: M.MapObject) -> list[Any]:
        got = self.table.map_object(msg.oid, client.holder, client.conn, msg.req)
        if got is None:
            return []  # not sealed yet: answered when it is
        return [Answer(client.conn, msg.req, got[0], got[1])]

    def _get_remote(self, client: Client, msg: M.GetRemote) -> list[Any]:
        """Another node's object, for a process here: the local copy, or a pull (once)."""
        oid, table = msg.oid, self.table
        e = table.get_entry(oid)
        if e is not None and e.payload is not None and table.is_local(e.payload):
            table.hold(oid, client.holder)
            return [Answer(client.conn, msg.req, True, e.payload)]
        out: list[Any] = []
        if e is not None and e.home is not None and e.payload is not None:
            e.payload, e.fetching = None, True  # a proxy's copy: pulled into its entry
            e = None
        if e is None:
            self.pull_sources[oid] = msg.node_id  # (told when it goes there: `copied_from`)
            peer = self.peers.get(msg.node_id)
            if peer is None or peer["state"] != "ALIVE" or not self.linked:
                return [Answer(client.conn, msg.req, False, table.lost(
                    oid, f"It lives on node {msg.node_id[:8]}, which is not alive."))]
            e = table.start_pull(oid)
            out.append(StartPull(oid, peer["grpc_address"], peer.get("address") or ""))
        table.hold(oid, client.holder)
        e.waiters.append((client.conn, msg.req))
        return out

    def pin_for_pull(self, oid: bytes) -> tuple | None:
        """A peer pulls a local object: (key, offset, size, is_error), held under `key`
        until `PullDone`; None if it is not here."""
        key = f"pull:{next(self._pull_keys)}"
        pinned = self.table.pin_for_pull(oid, key)
        return None if pinned is None else (key, *pinned)

    def _pull_done(self, client: Client | None, ev: PullDone) -> list[Any]:
        return list(self.table.unhold(ev.oid, ev.key))

    def _pulled(self, client: Client | None, ev: Pulled) -> list[Any]:
        out: list[Any] = list(self.table.pulled(ev.oid, ev.offset, ev.total, ev.is_error, ev.error))
        return out + self.copied_from(ev.oid)

    # ------------------------------------------------------------------ leases and workers
    def _lease_event(self, client: Client, msg: Any) -> list[Any]:
        leases, pool = self.leases, self.pool
        assert leases is not None and pool is not None, "NodeCore without a lease table"
        if isinstance(msg, LeaseRequested):
            return self.lease_requested(client, msg)
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
        """What the scheduler decided (through the lease table), carried through."""
        assert self.leases is not None
        out: list[Any] = []
        for d in self.leases.poll():
            if isinstance(d, NeedWorker):
                out += self._need_worker(d)
            elif isinstance(d, ActorGrant):
                out += self._actor_granted(d.grant)
            elif isinstance(d, ActorInfeasible):
                out += self._actor_infeasible(d)
            else:  # Spill, Refuse
                out.append(d)
        return out + self._check_pgs() + self._tell_bundle_nodes()

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

    def _need_worker(self, need: NeedWorker) -> list[Any]:
        """A grant here: an idle worker of its runtime env, or a new one."""
        assert self.pool is not None
        w = self.pool.take(need.env_key)
        return [SpawnWorker(need.env_key, need)] if w is None else self._found(need, w)

    def _found(self, need: NeedWorker, w: WorkerRec) -> list[Any]:
        assert self.leases is not None
        g = need.grant
        if not self.leases.bind(g.lease_id, w, need.client, need.req):
            return self.give_back(w)  # the requester went away meanwhile
        w.state = "LEASED"
        w.lease_id = g.lease_id
        return [Answer(need.client, need.req, True, {
            "lease_id": g.lease_id, "worker_id": w.worker_id, "address": w.address, "tcp": w.tcp,
            "pid": w.pid, "gpu_ids": list(g.gpu_ids), "node_id": g.node_id})]

    def _worker_started(self, client: Client | None, ev: WorkerStarted) -> list[Any]:
        assert self.pool is not None
        self.pool.add(ev.worker)
        if ev.waiting is not None:
            self.pool.wait_for(ev.worker, ev.waiting)
        return []

    def _worker_ready(self, client: Client, msg: M.WorkerReady) -> list[Any]:
        w = client.worker
        if w is None:
            return []  # only a worker's own control connection says so
        assert self.pool is not None
        out: list[Any] = []
        for waiting in self.pool.ready(w, msg.address, msg.tcp):
            if isinstance(waiting, ActorStart):
                out += self._start_actor(waiting, w)
            else:
                out += self._found(waiting, w)
        return out

    def worker_died(self, w: WorkerRec) -> list[Any]:
        """A worker's control connection closed: its lease goes, its actor restarts or dies."""
        assert self.pool is not None and self.leases is not None
        prev = self.pool.remove(w)
        if prev == "DEAD":
            return []
        out: list[Any] = []
        if w.lease_id is not None:
            self.leases.release(w.lease_id)  # (and no longer counted as blocked)
        if prev == "ACTOR" or w.actor_id is not None:
            actor = self.actors.get(w.actor_id) if self.actors and w.actor_id else None
            if actor is not None and actor.worker is w:
                out += self.actor_worker_died(actor)
        return out + self.poll()

    def _client_gone(self, client: Client | None, ev: ClientGone) -> list[Any]:
        c = ev.client
        out: list[Any] = [] if c.worker is None else self.worker_died(c.worker)
        if c.peer is not None:
            out += self._peer_gone(c.peer, "went away") + self.refs_peer_gone(c.peer) + self.pg_peer_gone(c.peer)
        self.table.drop_client(c.conn)
        self.table.unmap_holder(c.holder)
        if not self.holds_outlive(c.holder):
            out += self.table.release_holder(c.holder)
            out += self.table.release_holder(c.holder + ":blob")
        if self.leases is not None:
            # leases held by this client go back; non-detached actors it owns die with it
            for lease_id in self.leases.client_gone(c.conn, keep=lambda w: w.state == "ACTOR"):
                out += self.release_lease(lease_id, kill=False)
        if self.actors is not None:
            for actor in self.actors.owned_by(c.conn):
                actor.no_restart = True
                out += self.kill_actor(actor, "the actor's owner exited")
        return out

    # ------------------------------------------------------------------ placement groups
    def _pg(self, client: Client, msg: Any) -> list[Any]:
        assert self.leases is not None and self.actors is not None
        scheduler, conn, req = self.leases.scheduler, client.conn, msg.req
        if isinstance(msg, M.PgCreate):
            try:
                scheduler.create_placement_group(msg.pg_id, msg.bundles, msg.strategy, msg.name or "")
            except ValueError as e:
                return [Answer(conn, req, False, ValueError(str(e)))]
            return [Answer(conn, req, True, msg.pg_id), *self.poll()]
        if isinstance(msg, M.PgRemove):
            lost = scheduler.remove_placement_group(msg.pg_id)
            return [*self._void_leases(lost), Answer(conn, req, True, None), *self.poll()]
        if isinstance(msg, M.PgWait):
            self.pg_waiters.setdefault(msg.pg_id, []).append((conn, req))
            return self._check_pgs()
        # PgInfo: every group, or the one with this id or name
        self.asked_by(client, msg.pg_id)
        if msg.pg_id is None and msg.name is None:
            return [Answer(conn, req, True, scheduler.placement_groups())]
        for pg in scheduler.placement_groups():
            if pg["placement_group_id"] == msg.pg_id or (
                    msg.name and pg.get("name") == msg.name and pg["state"] != "REMOVED"):
                return [Answer(conn, req, True, pg)]
        return [Answer(conn, req, False, ValueError(f"no placement group {msg.pg_id or msg.name!r}"))]

    def _tell_bundle_nodes(self) -> list[Any]:
        """Groups placed here that changed: the nodes holding their bundles reserve them
        there too (`PgReserve`), and nodes no longer holding any let them go."""
        assert self.leases is not None
        scheduler = self.leases.scheduler
        out: list[Any] = []
        for pg_id in scheduler.placement_group_changes():
            now = scheduler.bundles_on(pg_id, self.node_id)
            before = self.pg_mirrored.pop(pg_id, set())
            for nid, bundles in now.items():
                if nid in self.peers:
                    out.append(ToPeer(nid, (M.PG_RESERVE, pg_id, bundles)))
            out += [ToPeer(nid, (M.PG_RESERVE, pg_id, {})) for nid in before - set(now)
                    if self.peers.get(nid, {}).get("state") == "ALIVE"]
            if now:
                self.pg_mirrored[pg_id] = set(now)
            out += self.tell_askers(pg_id, before | set(now))
        return out

    def _pg_reserve(self, client: Client, msg: M.PgReserve) -> list[Any]:
        """Another node placed bundles of a group here: this node reserves them."""
        assert self.leases is not None and self.actors is not None
        if not client.holder.startswith("node:"):
            return [Note(f"refused PgReserve from pid {client.pid}: only another node's daemon may send it")]
        void = self.leases.scheduler.mirror_bundles(msg.pg_id, msg.bundles, self.node_id)
        return [*self._void_leases(void), *self.poll(), *self.pg_forget(msg.pg_id)]

    def _void_leases(self, lost: list[str]) -> list[Any]:
        """Leases inside a removed group: their workers are killed, actors not restarted."""
        assert self.leases is not None and self.actors is not None
        out: list[Any] = []
        for lease_id in lost:
            entry = self.leases.leases.get(lease_id)
            if entry and entry[0] is not None:
                out.append(Kill(entry[0].pid))
        for actor in self.actors.actors.values():
            if actor.lease_id in lost:
                actor.no_restart = True
        return out

    def _check_pgs(self) -> list[Any]:
        """Answer the waits for groups now created (True) or removed (False)."""
        assert self.leases is not None
        out: list[Any] = []
        for pg_id in list(self.pg_waiters):
            try:
                state = self.leases.scheduler.placement_group(pg_id)["state"]
            except KeyError:
                state = "REMOVED"
            if state in ("CREATED", "REMOVED"):
                out += [Answer(c, r, state == "CREATED", state) for c, r in self.pg_waiters.pop(pg_id)]
        return out

    # ------------------------------------------------------------------ the cluster
    def _cluster_view(self, client: Client | None, ev: ClusterView) -> list[Any]:
        """The head's view: peers' rows and resources; a node now dead takes its actors."""
        assert self.leases is not None
        scheduler = self.leases.scheduler
        known = set(scheduler.nodes())
        out: list[Any] = []
        for row in ev.rows:
            nid = row["node_id"]
            if nid == self.node_id:
                continue
            self.peers[nid] = row
            if row["state"] == "ALIVE":
                if nid in self.heads_away:  # the head is back: its own totals again
                    self.heads_away.discard(nid)
                    scheduler.remove_node(nid)
                    known.discard(nid)
                if nid not in known:
                    scheduler.add_node(nid, row["total"], row["labels"])
                scheduler.set_remote_usage(nid, row["available"])
            elif nid in known and nid not in self.heads_away:
                scheduler.remove_node(nid)
                out += [ClosePeer(nid), *self._peer_died(nid), *self.node_holds_gone(nid),
                        *self.refs_peer_gone(nid)]
                if row.get("is_head"):
                    self._head_away(nid, row)
        return out + self.poll() + self.pg_views()

    def _head_away(self, nid: str, row: dict[str, Any]) -> None:
        """The head does not answer (only this node's link marks a head DEAD: a head never
        says so of itself, `_link.mark_head_down`); it is expected back on the same port.
        It stays in the scheduler with all it has in use: nothing is sent there, and a
        request only it can serve waits for it (as Ray keeps it pending) instead of
        failing as infeasible; a `get` with a timeout times out meanwhile."""
        assert self.leases is not None
        scheduler = self.leases.scheduler
        scheduler.add_node(nid, row["total"], row["labels"])
        scheduler.set_remote_usage(nid, {})
        self.heads_away.add(nid)

    def _node_address(self, client: Client, msg: M.NodeAddress) -> list[Any]:
        peer = self.peers.get(msg.node_id)
        if peer is None:
            return [Answer(client.conn, msg.req, False, ValueError(f"unknown node {msg.node_id}"))]
        return [Answer(client.conn, msg.req, True, peer["address"])]

    # ------------------------------------------------------------------ dispatch
    def _peer_reply(self, client: Client, msg: M.Reply | PeerFailed) -> list[Any]:
        mine = self.ref_reply(client, msg)
        if mine is None:
            mine = self.pg_reply(client, msg)
        return self._forwarded_reply(client, msg) if mine is None else mine

    def _kill_actor_msg(self, client: Client, msg: M.KillActor) -> list[Any]:
        assert self.actors is not None
        actor = self.actors.get(msg.actor_id)
        if actor is None or actor.state == "DEAD":
            return []
        actor.no_restart = actor.no_restart or msg.no_restart
        return self.kill_actor(actor, "the actor was killed by carme.kill()")

    def _actor_infeasible(self, eff: ActorInfeasible) -> list[Any]:
        assert self.actors is not None
        actor = self.actors.get(eff.actor_id)
        return [] if actor is None else self.actor_dead(actor, exc.ActorUnschedulableError(eff.message))

    _handlers: dict[type, Any] = {
        M.Alloc: _alloc, M.Export: _export, M.Incref: _incref,
        M.Decref: lambda self, c, m: list(self.table.decref(m.oids, m.holder or c.holder)),
        M.GetObject: lambda self, c, m: list(self.table.get(c.conn, m.req, m.oid)),
        M.StoreStats: _store_stats, M.MapObject: _map_object,
        M.UnmapObject: lambda self, c, m: self.table.unmap_object(m.oid, c.holder) or [], M.GetRemote: _get_remote, PullDone: _pull_done, Pulled: _pulled,
        **dict.fromkeys((M.ReturnLease, M.Blocked, M.Unblocked, M.KillWorker, LeaseRequested,
                         WorkerFound), _lease_event),
        WorkerStarted: _worker_started, M.WorkerReady: _worker_ready,
        ClientGone: _client_gone,
        M.ActorInfo: ActorCore._actor_query, M.NamedActors: ActorCore._actor_query,
        M.ActorReady: ActorCore._actor_report, M.ActorFailed: ActorCore._actor_report,
        M.KillActor: _kill_actor_msg, ActorCreation: ActorCore._create_actor,
        M.Reply: _peer_reply, PeerFailed: _peer_reply,
        M.Watch: RefCore.watch_copies, M.Freed: RefCore.copies_freed,
        **dict.fromkeys((M.PgCreate, M.PgRemove, M.PgInfo, M.PgWait), _pg), M.PgReserve: _pg_reserve,
        ClusterView: _cluster_view, M.NodeAddress: _node_address,
    }


__all__ = ["ActorCreation", "Answer", "Client", "ClientGone",
           "ClosePeer", "ClusterView", "Event", "Kill", "LeaseRequested", "NodeCore", "Note",
           "PeerFailed", "PeerRequest", "PullDone", "Pulled", "Retire", "Send", "Spill",
           "SpawnWorker", "StartPull", "ToPeer", "WorkerFound", "WorkerStarted", "as_error"]
