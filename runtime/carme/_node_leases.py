"""The node's leases: requests waiting for the scheduler, grants, spillback. Pure.

Theory of operation. A client asks for a worker lease (`request`); the pure
`ClusterScheduler` decides when and where. `poll` turns its decisions into effects for
the daemon: `Spill` (another node fits: tell the client to ask there), `NeedWorker` (a
grant here: find or fork a worker for it, then `bind` it), `Refuse` (infeasible), and the
actor counterparts `ActorGrant` / `ActorInfeasible` for creation requests (whose ids start
with "actor-"). A lease is released when its client gives it back, its worker dies or its
client goes (`client_gone`); a lease whose worker waits in `get()` is `block`ed — its
resources go back to the scheduler so nested tasks cannot deadlock — and released once
more, harmlessly, at its end. Clients and workers are opaque values here.
"""

from __future__ import annotations

from typing import Any

from . import exceptions as exc
from ._record import record
from ._scheduler import ClusterScheduler, Grant, Infeasible, LeaseRequest


@record
class Spill:
    client: Any
    req: int
    node_id: str


@record
class NeedWorker:
    grant: Grant
    client: Any
    req: int
    env_key: str


@record
class Refuse:
    client: Any
    req: int
    error: BaseException


@record
class ActorGrant:
    grant: Grant


@record
class ActorInfeasible:
    actor_id: bytes
    message: str


class LeaseTable:
    def __init__(self, scheduler: ClusterScheduler, node_id: str) -> None:
        self.scheduler = scheduler
        self.node_id = node_id
        self.pending: dict[str, tuple[Any, int, str]] = {}  # request id -> client, req, env
        self.leases: dict[str, tuple[Any, Any, int]] = {}  # lease id -> worker|None, client, req
        self.blocked: set[str] = set()

    def request(self, request_id: str, client: Any, req: int, env_key: str,
                lease: LeaseRequest) -> None:
        self.pending[request_id] = (client, req, env_key)
        self.scheduler.submit(lease)

    def poll(self) -> list[Any]:
        out: list[Any] = []
        for d in self.scheduler.poll():
            rid = d.request_id
            if isinstance(d, Infeasible):
                self.scheduler.cancel(rid)
                if rid.startswith("actor-"):
                    out.append(ActorInfeasible(bytes.fromhex(rid[6:]), d.message))
                    continue
                pending = self.pending.pop(rid, None)
                if pending is not None:
                    out.append(Refuse(pending[0], pending[1], exc.TaskUnschedulableError(d.message)))
                continue
            if rid.startswith("actor-"):
                out.append(ActorGrant(d))
                continue
            pending = self.pending.pop(rid, None)
            if pending is None:  # its client went away meanwhile
                self.scheduler.release(d.lease_id)
                continue
            client, req, env_key = pending
            if d.node_id != self.node_id:
                self.scheduler.release(d.lease_id)
                out.append(Spill(client, req, d.node_id))
                continue
            self.leases[d.lease_id] = (None, client, req)
            out.append(NeedWorker(d, client, req, env_key))
        return out

    def bind(self, lease_id: str, worker: Any, client: Any, req: int) -> bool:
        """A worker serves the lease; False if the lease is gone (client left meanwhile)."""
        if lease_id not in self.leases:
            return False
        self.leases[lease_id] = (worker, client, req)
        return True

    def holder(self, lease_id: str) -> Any:
        entry = self.leases.get(lease_id)
        return entry[1] if entry is not None else None

    def release(self, lease_id: str) -> tuple[bool, Any]:
        """End a lease: (whether it existed, its worker or None)."""
        entry = self.leases.pop(lease_id, None)
        if entry is None:
            return False, None
        self.blocked.discard(lease_id)
        self.scheduler.release(lease_id)
        return True, entry[0]

    def block(self, lease_id: str) -> bool:
        """The lease's worker waits in get(): lend its resources out (True if it did)."""
        if lease_id in self.leases and lease_id not in self.blocked:
            self.blocked.add(lease_id)
            self.scheduler.release(lease_id)
            return True
        return False

    def client_gone(self, client: Any, keep: Any = None) -> list[str]:
        """Cancel the client's waiting requests; returns its leases to release (those
        whose worker `keep(worker)` says to keep, e.g. an actor's, are left)."""
        for rid, (c, _req, _env) in list(self.pending.items()):
            if c is client:
                self.scheduler.cancel(rid)
                del self.pending[rid]
        return [lid for lid, (w, c, _req) in self.leases.items()
                if c is client and not (w is not None and keep is not None and keep(w))]
