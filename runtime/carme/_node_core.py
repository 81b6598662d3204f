"""One entry point for the node's object messages: typed message in, effects out. Pure.

Theory of operation. `NodeCore.handle(client, msg)` takes a decoded message from a client
(a driver's or worker's connection, opaque here, with the holder id and pid it said hello
with) and returns what to do: `Answer`s to send and `Note`s for the daemon's log. It
covers the object messages (`Alloc`, `Export`, `Incref`, `Decref`, `GetObject`,
`StoreStats`), which need no process, socket or clock; the daemon routes every message
of those kinds here and carries out the effects. Leases, workers and actors need
processes (fork, kill) and are driven by the daemon's handlers through their own pure
modules (`LeaseTable`, `WorkerPool`, `ActorDirectory`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _messages as M
from . import exceptions as exc
from ._node_objects import Answer, ObjectTable
from ._store import ArenaFull


@dataclass(slots=True)
class Note:
    """Effect: a line for the daemon's log (something was refused)."""

    text: str


@dataclass(slots=True)
class Client:
    """Who sent a message: its connection (opaque), holder id and pid."""

    conn: Any
    holder: str
    pid: int = 0


class NodeCore:
    HANDLED = (M.Alloc, M.Export, M.Incref, M.Decref, M.GetObject, M.StoreStats)

    def __init__(self, table: ObjectTable) -> None:
        self.table = table

    def handle(self, client: Client, msg: M.Msg) -> list[Any]:
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
