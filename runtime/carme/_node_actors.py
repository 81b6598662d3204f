"""The node's actor directory: actor records, names per namespace, restart decisions. Pure.

Theory of operation. The daemon that receives an actor's creation owns its record here:
its spec, state (PENDING_CREATION -> ALIVE -> RESTARTING ... -> DEAD), restarts and cause
of death. A name is claimed in a namespace at creation; a name whose actor is dead is free
again, and a live one is either handed back (`get_if_exists`) or refused with
`ActorAlreadyExistsError`. When an actor's worker dies, `worker_died` decides — from
`max_restarts` (-1: forever), the restarts so far and whether it was killed for good —
whether the actor restarts or is dead. Records of dead actors are kept (callers learn
how an actor died) up to `max_dead` of them, oldest dropped first, as Ray's GCS does.
Workers, leases and sockets belong to the daemon; records hold them as opaque values.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from . import exceptions as exc
from ._record import field, record


@record
class ActorRec:
    actor_id: bytes
    spec: dict
    owner: Any  # the creating client (its connection); non-detached actors die with it
    state: str = "PENDING_CREATION"  # ALIVE, RESTARTING, DEAD
    worker: Any = None
    lease_id: str | None = None
    restarts: int = 0
    no_restart: bool = False
    death: tuple | None = None  # (error class name, message)
    waiters: list[tuple[Any, int]] = field(default_factory=list)
    remote_node: str | None = None  # placed on another node: it runs and restarts it there


def death_of(err: BaseException) -> tuple[str, str]:
    """The (class name, message) form of an actor's death that callers rebuild."""
    return (type(err).__name__, str(err.args[0]) if err.args else str(err))


MAX_DEAD = 100_000  # Ray's default for destroyed actors kept by its GCS


class ActorDirectory:
    def __init__(self, namespace: str, max_dead: int = MAX_DEAD) -> None:
        self.namespace = namespace  # the default one
        self.actors: dict[bytes, ActorRec] = {}
        self.names: dict[tuple[str, str], bytes] = {}
        self.max_dead = max_dead
        self._dead: deque[bytes] = deque()  # oldest death first

    def __len__(self) -> int:
        return len(self.actors)

    def get(self, actor_id: bytes) -> ActorRec | None:
        return self.actors.get(actor_id)

    def live(self, actor_id: bytes | None) -> ActorRec | None:
        a = self.actors.get(actor_id) if actor_id is not None else None
        return a if a is not None and a.state != "DEAD" else None

    # ------------------------------------------------------------------ creation and names
    def create(self, actor_id: bytes, spec: dict, owner: Any) -> tuple[ActorRec, bool]:
        """Record a new actor, claiming its name. Returns (record, existing): with
        `get_if_exists` and a live actor of that name, that actor and True. Raises
        ValueError for an id already known, ActorAlreadyExistsError for a taken name."""
        if actor_id in self.actors:
            raise ValueError(f"actor {actor_id.hex()} already exists on this node")
        name = spec.get("name")
        key = None
        if name:
            key = (spec.get("namespace") or self.namespace, name)
            existing = self.live(self.names.get(key))
            if existing is not None:
                if spec.get("get_if_exists"):
                    return existing, True
                raise exc.ActorAlreadyExistsError(
                    f"The name {name!r} (namespace {key[0]!r}) is already taken by another actor. "
                    f"Use get_if_exists=True to reuse it, or choose another name.")
        actor = self.actors[actor_id] = ActorRec(actor_id, spec, owner)
        if key is not None:
            self.names[key] = actor_id
        return actor, False

    def lookup(self, name: str, namespace: str | None) -> ActorRec:
        ns = namespace or self.namespace
        actor = self.live(self.names.get((ns, name)))
        if actor is None:
            raise ValueError(f"Failed to look up actor with name {name!r} in namespace {ns!r}: no "
                             f"live actor has that name. Create it with .options(name=...) first.")
        return actor

    def named(self, all_namespaces: bool, namespace: str | None) -> list[Any]:
        ns_wanted = namespace or self.namespace
        out: list[Any] = []
        for (ns, name), aid in self.names.items():
            if self.live(aid) is None:
                continue
            if all_namespaces:
                out.append({"name": name, "namespace": ns})
            elif ns == ns_wanted:
                out.append(name)
        return out

    def name_of(self, actor: ActorRec) -> tuple[str, str]:
        """(namespace, name) of an actor; a forwarded actor shows its original name."""
        for (ns, n), aid in self.names.items():
            if aid == actor.actor_id:
                return ns, n
        return (actor.spec.get("namespace") or self.namespace, actor.spec.get("display_name") or "")

    # ------------------------------------------------------------------ life and death
    def worker_died(self, actor: ActorRec) -> str:
        """The actor's worker is gone: "restart" (state RESTARTING, one more restart
        counted) or "dead" (the caller calls `dead`); "" if it was dead already."""
        actor.worker = None
        if actor.state == "DEAD":
            return ""
        max_restarts = actor.spec.get("max_restarts", 0)
        if not actor.no_restart and (max_restarts == -1 or actor.restarts < max_restarts):
            actor.restarts += 1
            actor.state = "RESTARTING"
            actor.spec.pop("kill_reason", None)
            return "restart"
        return "dead"

    def death_reason(self, actor: ActorRec) -> str:
        return actor.spec.get("kill_reason") or "the actor's worker process died unexpectedly"

    def dead(self, actor: ActorRec, error: BaseException) -> list[tuple[Any, int]]:
        """Mark the actor dead (its name is free again); returns who waited for it."""
        if actor.state != "DEAD":
            self._dead.append(actor.actor_id)
        actor.state = "DEAD"
        actor.death = death_of(error)
        waiters, actor.waiters = actor.waiters, []
        while len(self._dead) > self.max_dead:
            self._forget(self._dead.popleft())
        return waiters

    def _forget(self, actor_id: bytes) -> None:
        old = self.actors.get(actor_id)
        if old is None or old.state != "DEAD":
            return
        del self.actors[actor_id]
        for key in [k for k, aid in self.names.items() if aid == actor_id]:
            del self.names[key]

    def owned_by(self, owner: Any) -> list[ActorRec]:
        """Live, non-detached actors of `owner` (they die with it)."""
        return [a for a in self.actors.values()
                if a.owner is owner and a.spec.get("lifetime") != "detached" and a.state != "DEAD"]
