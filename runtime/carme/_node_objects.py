"""The node's object table: payloads, holds, waiters and a short story per object. Pure.

Theory of operation. An object the node daemon knows has an entry: its payload (None
while pending), holds counted per holder, the clients waiting for its value, and a
bounded event log. Holders are strings: a process (its worker id) holds an object at
most once however often it says so; a stored value containing a reference
("obj:<hex>"), a return value in flight ("<worker>:blob"), a pull in progress ("pull:…")
or the node's cache of other nodes' objects ("cache") hold once per reference. At zero
holds the entry goes: its shared-memory block returns to the `Arena`, the objects its
value referred to lose the value's hold, and anyone still waiting is told it is lost.

Spilling (the policy and the methods, `SpillingTable`, are in `_node_spill.py`): an entry
can be `spilled` (its value in a file, its block freed), and counts the processes that map
it (`maps`); `map_object` answers a reader with where the value lives now. Files of freed
or restored objects are listed in `dropped_files` for the daemon to remove.

Nothing here touches a socket, a process or the clock beyond `time.time()` for the log.
Methods that must tell clients something return `Answer` effects; the daemon (the I/O
shell) sends them. Clients are opaque handles to this module. The last few events of
recently freed objects are kept (bounded) so a late `get` can say what happened.

A *proxy* entry stands for an object whose entry lives on another node's daemon (its
`home`): holders here count as usual, and this node holds the object at its home once
(holder "node:<this node>"), taken by the caller before a proxy is used; when the proxy
goes, that hold is released there (`take_remote_releases`, sent by the shell). So a
reference nested in a value that crossed nodes keeps its object alive on its home node
as long as anything on this node holds it, and no longer.
A proxy's first waiter asks for its payload (`proxy_fetches`, asked of the home by the
shell), and nodes that copied an object here hear when it goes (`watch`, `freed_notices`).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from . import _messages as M
from . import exceptions as exc
from ._node_spill import SpillingTable, SpillSpace
from ._store import Arena, ArenaFull

LOG_SIZE = 12          # events kept per object
FREED_KEPT = 1024      # freed objects whose story is kept for late lookups


@dataclass(slots=True)
class Answer:
    """Effect: answer request `req` of `client`."""

    client: Any
    req: int
    ok: bool
    value: Any


def is_process(holder: str) -> bool:
    return not (holder.endswith(":blob") or holder.startswith(("obj:", "pull:", "cache")))


@dataclass
class ObjEntry:
    payload: tuple | None = None  # None while pending
    count: int = 0
    holders: dict[str, int] = field(default_factory=dict)  # holder id -> holds
    contained: list[bytes] = field(default_factory=list)
    waiters: list[tuple[Any, int]] = field(default_factory=list)
    owner_pid: int = 0
    created: float = field(default_factory=time.time)
    size: int = 0
    type_name: str = ""
    secondary: int | None = None  # arena block reserved for a value being written or pulled
    stale: list[int] = field(default_factory=list)  # blocks of earlier attempts, freed with the entry
    home: str | None = None  # a proxy: the node whose daemon has the object's entry
    fetching: bool = False  # a proxy's value is being asked of its home
    watchers: list[str] = field(default_factory=list)  # nodes that copied it (told when it goes)
    log: deque = field(default_factory=lambda: deque(maxlen=LOG_SIZE))
    spilled: bool = False  # the value is in a spill file, not in the store
    spilling: bool = False  # its spill file is being written (the block stays until done)
    restoring: int | None = None  # block being filled from its spill file
    used: int = 0  # when last allocated, sealed or mapped (the table's counter): LRU order
    maps: dict[str, int] = field(default_factory=dict)  # process -> readings/views in progress
    map_waiters: list[tuple[Any, int, str]] = field(default_factory=list)  # (client, req, holder) until sealed


class ObjectTable(SpillingTable):
    def __init__(self, arena: Arena, node_id: str, spill: SpillSpace | None = None,
                 spill_dir: str = "") -> None:
        self.arena = arena
        self.spill = spill if spill is not None else SpillSpace()
        self.spill_dir = spill_dir
        self.tick = 0
        self.maps_by: dict[str, set[bytes]] = {}  # process -> the objects it maps
        self.dropped_files: list[bytes] = []  # spill files the daemon should remove
        self.node_id = node_id
        self.objects: dict[bytes, ObjEntry] = {}
        # holder -> the objects it holds, so a holder that goes releases exactly those
        self.holds_by: dict[str, set[bytes]] = {}
        self.cached: list[bytes] = []  # copies pulled from other nodes, oldest first
        self.freed: OrderedDict[bytes, list[str]] = OrderedDict()
        self.remote_releases: dict[str, list[bytes]] = {}  # home node -> proxies gone
        self.remote_holds: dict[str, list[bytes]] = {}  # node -> entries that hold its copy
        self.freed_notices: dict[str, list[bytes]] = {}  # node -> its copies' objects, freed here
        self.proxy_fetches: list[bytes] = []  # proxies whose payload is to be asked of their home

    # ------------------------------------------------------------------ lookups
    def __len__(self) -> int:
        return len(self.objects)

    def get_entry(self, oid: bytes) -> ObjEntry | None:
        return self.objects.get(oid)

    def is_local(self, payload: tuple) -> bool:
        return len(payload) < 5 or payload[4] == self.node_id

    def story(self, oid: bytes) -> list[str]:
        e = self.objects.get(oid)
        if e is not None:
            return list(e.log)
        return list(self.freed.get(oid, ()))

    def lost(self, oid: bytes, why: str) -> exc.ObjectLostError:
        story = self.story(oid)
        detail = why + (" Its last events here: " + "; ".join(story) + "." if story else "")
        return exc.ObjectLostError(oid.hex(), "", "", detail)

    # ------------------------------------------------------------------ holds
    def hold(self, oid: bytes, holder: str, n: int = 1) -> bool:
        """Add `n` holds of `holder` (a process holds at most once); False if unknown."""
        e = self.objects.get(oid)
        if e is None:
            return False
        if holder in e.holders and is_process(holder):
            return True
        e.count += n
        e.holders[holder] = e.holders.get(holder, 0) + n
        self.holds_by.setdefault(holder, set()).add(oid)
        e.log.append(f"held by {holder}")
        return True

    def unhold(self, oid: bytes, holder: str, n: int = 1) -> list[Answer]:
        e = self.objects.get(oid)
        if e is None:
            return []
        have = e.holders.get(holder, 0)
        n = min(n, have)
        if n <= 0:
            return []
        if have == n:
            del e.holders[holder]
            held = self.holds_by.get(holder)
            if held is not None:
                held.discard(oid)
                if not held:
                    del self.holds_by[holder]
        else:
            e.holders[holder] = have - n
        e.count -= n
        e.log.append(f"released by {holder}")
        if e.count <= 0:
            return self.free(oid)
        return []

    def release_holder(self, holder: str) -> list[Answer]:
        out: list[Answer] = []
        for oid in list(self.holds_by.get(holder, ())):
            e = self.objects.get(oid)
            if e is not None:
                out += self.unhold(oid, holder, e.holders.get(holder, 0))
        self.holds_by.pop(holder, None)
        return out

    def incref(self, oids: list[bytes], holder: str) -> list[bytes]:
        """Holds of `holder` on `oids`; returns the ids this node does not know."""
        return [oid for oid in oids if not self.hold(oid, holder)]

    def decref(self, oids: list[bytes], holder: str) -> list[Answer]:
        out: list[Answer] = []
        for oid in oids:
            out += self.unhold(oid, holder)
        return out

    # ------------------------------------------------------------------ proxies
    def proxy(self, oid: bytes, home: str) -> ObjEntry:
        """An entry for another node's object (its home holds it for this node)."""
        e = self.objects[oid] = ObjEntry(owner_pid=0, home=home)
        e.log.append(f"proxy of node {home[:8]}'s object")
        return e

    def watch(self, oids: list[bytes], node: str) -> None:
        """`node` copied these objects: it hears (`freed_notices`) when they go here (at
        once for those already gone)."""
        for oid in oids:
            e = self.objects.get(oid)
            if e is None:
                self.freed_notices.setdefault(node, []).append(oid)
            elif node not in e.watchers:
                e.watchers.append(node)

    def drop_copies(self, oids: list[bytes]) -> list[Answer]:
        """The objects these cached copies were made of are freed at their node: the
        copies go (once nothing here holds them but the cache)."""
        out: list[Answer] = []
        for oid in oids:
            e = self.objects.get(oid)
            if e is not None and e.home is None and "cache" in e.holders:
                if oid in self.cached:
                    self.cached.remove(oid)
                out += self.unhold(oid, "cache")
        return out

    def take_freed_notices(self) -> dict[str, list[bytes]]:
        out, self.freed_notices = self.freed_notices, {}
        return out

    def take_remote_releases(self) -> tuple[dict[str, list[bytes]], dict[str, list[bytes]]]:
        """Holds of this node to take (entries now holding another node's copy) and to
        release (proxies that went) at other nodes."""
        take, self.remote_holds = self.remote_holds, {}
        out, self.remote_releases = self.remote_releases, {}
        return take, out

    # ------------------------------------------------------------------ creating
    def allocate(self, size: int) -> int:
        """Arena space, evicting cached copies of other nodes' objects if need be."""
        while True:
            try:
                return self.arena.allocate(size)
            except ArenaFull:
                if not self.cached:
                    raise
                self.unhold(self.cached.pop(0), "cache")

    def alloc(self, oid: bytes, size: int, owner_pid: int, holder: str, writer: str | None = None) -> int:
        """A block in the store for an object's value, and a hold of `holder` (the
        creator's, or for a task return the submitter's). A new object starts pending; a
        task return its owner already exported while pending keeps its entry (holds,
        waiters); a block an earlier attempt took and never sealed stays reserved until
        the entry goes (its writer may still be at it). The `writer` maps the object from
        here on, until it says otherwise (`unmap_object`). Raises ArenaFull."""
        off = self.allocate(size)
        e = self.objects.get(oid)
        if e is None:
            e = self.objects[oid] = ObjEntry(None, owner_pid=owner_pid, size=size)
        else:
            if e.secondary is not None:
                e.stale.append(e.secondary)
            if e.payload is None:
                e.size = size
        e.secondary = off  # until sealed, the block belongs to the entry
        e.used = self._tick()
        e.log.append(f"allocated {size} bytes at {off} for {holder}")
        self.hold(oid, holder)
        if writer is not None:
            e.maps[writer] = e.maps.get(writer, 0) + 1
            self.maps_by.setdefault(writer, set()).add(oid)
        return off

    def export(self, oid: bytes, payload: tuple | None, contained: list[bytes], add: int,
               type_name: str, holder: str, owner_pid: int) -> list[Answer]:
        """A process tells the node about an object (and maybe its value). Checks that a
        local shared-memory payload names a block this node handed out for it."""
        e = self.objects.get(oid)
        local_shared = payload is not None and payload[0] == M.SHARED and self.is_local(payload)
        if payload is not None and local_shared and (e is None or e.payload is None or e.secondary is not None):
            block = e.secondary if e is not None else None
            if block != payload[1] or not self.arena.owns(payload[1], payload[2]):
                raise M.BadMessage(
                    f"Export.payload names store block ({payload[1]}, {payload[2]}) that was not "
                    f"allocated for object {oid.hex()} on this node")
        if e is None:
            e = self.objects[oid] = ObjEntry(owner_pid=owner_pid)
            e.log.append(f"exported by {holder}")
        out: list[Answer] = []
        if add:
            self.hold(oid, holder, add)
        if contained and not e.contained:
            e.contained = list(contained)
            key = "obj:" + oid.hex()
            for c in contained:  # the stored value holds what it refers to
                held = self.objects.get(c)
                if held is None or key not in held.holders:  # (unless taken before: a proxy's)
                    self.hold(c, key)
        if type_name:
            e.type_name = type_name
        if payload is not None and e.payload is None:
            if payload[0] == M.SHARED and not self.is_local(payload) and e.home is None:
                # a value exported while pending, written on another node: this entry
                # holds that node's copy while it lives (released when it goes)
                e.home = payload[4]
                self.remote_holds.setdefault(e.home, []).append(oid)
            e.payload = payload
            e.secondary = None
            e.used = self._tick()
            e.size = payload[2] if payload[0] == M.SHARED else len(payload[1]) + sum(len(b) for b in payload[2])
            e.log.append("sealed")
            waiters, e.waiters = e.waiters, []
            out += [Answer(c, r, True, payload) for c, r in waiters]
            out += self.grant_map_waiters(oid, e)
        elif local_shared and e.secondary is not None:
            # a second value for a sealed object (a retried task): the first one stays
            self.arena.free(e.secondary)
            e.secondary = None
            e.log.append("duplicate value dropped")
        if e.count <= 0 and payload is not None:
            out += self.free(oid)
        return out

    # ------------------------------------------------------------------ reading
    def get(self, client: Any, req: int, oid: bytes) -> list[Answer]:
        e = self.objects.get(oid)
        if e is None:
            return [Answer(client, req, False, self.lost(
                oid, "It is not in this node's object store: every reference to it was "
                     "dropped, or its owner died."))]
        if e.payload is not None:
            return [Answer(client, req, True, e.payload)]
        e.waiters.append((client, req))
        if e.home is not None and not e.fetching and e.secondary is None:
            e.fetching = True
            self.proxy_fetches.append(oid)
        return []

    def drop_client(self, client: Any) -> None:
        """A client went away: forget its waits (its holds go with `release_holder`)."""
        for e in self.objects.values():
            if e.waiters:
                e.waiters = [(c, r) for c, r in e.waiters if c is not client]
            if e.map_waiters:
                e.map_waiters = [w for w in e.map_waiters if w[0] is not client]

    # ------------------------------------------------------------------ freeing
    def free(self, oid: bytes) -> list[Answer]:
        e = self.objects.pop(oid, None)
        if e is None:
            return []
        if "cache" in e.holders and oid in self.cached:
            self.cached.remove(oid)
        for index, holders in ((self.holds_by, e.holders), (self.maps_by, e.maps)):
            for h in holders:
                held = index.get(h)
                if held is not None:
                    held.discard(oid)
                    if not held:
                        del index[h]
        if self.spill.remove(oid):
            self.dropped_files.append(oid)
        if e.spilled:
            pass  # its block went when it was spilled
        elif e.payload is not None and e.payload[0] == M.SHARED and self.is_local(e.payload):
            self.arena.free(e.payload[1])
        if e.restoring is not None:
            e.stale.append(e.restoring)
        for block in ([e.secondary] if e.secondary is not None else []) + e.stale:
            self.arena.free(block)
        e.log.append("freed")
        if e.home is not None:
            self.remote_releases.setdefault(e.home, []).append(oid)
        for node in e.watchers:
            self.freed_notices.setdefault(node, []).append(oid)
        self.freed[oid] = list(e.log)
        while len(self.freed) > FREED_KEPT:
            self.freed.popitem(last=False)
        out = [Answer(c, r, False, self.lost(oid, "The object was freed: no reference to it remains."))
               for c, r in e.waiters + [w[:2] for w in e.map_waiters]]
        if e.contained:
            key = "obj:" + oid.hex()
            for c in e.contained:
                out += self.unhold(c, key)
        return out

    # ------------------------------------------------------------------ copies of other nodes' objects
    def pin_for_pull(self, oid: bytes, key: str) -> tuple | None:
        """Hold a local shared object for a peer's pull; (offset, size, is_error) or None."""
        e = self.objects.get(oid)
        if (e is None or e.payload is None or e.payload[0] != M.SHARED or not self.is_local(e.payload)
                or e.spilled):
            return None
        self.hold(oid, key)
        e.used = self._tick()
        return e.payload[1], e.payload[2], e.payload[3]

    def start_pull(self, oid: bytes) -> ObjEntry:
        e = self.objects.get(oid) or ObjEntry(owner_pid=0)  # (a proxy pulls into its entry)
        self.objects[oid] = e
        e.log.append("pull started")
        return e

    def alloc_secondary(self, oid: bytes, total: int) -> int | None:
        """Space for a pulled copy (None if the entry went or nothing fits)."""
        e = self.objects.get(oid)
        if e is None:
            return None
        try:
            off = self.allocate(total)
        except ArenaFull:
            return None
        e.payload = None
        e.size = total
        e.secondary = off
        return off

    def pulled(self, oid: bytes, offset: int | None, total: int, is_error: bool,
               err: str | None) -> list[Answer]:
        e = self.objects.get(oid)
        if e is None:
            if offset is not None:
                self.arena.free(offset)
            return []
        if err is not None or offset is None:
            waiters, e.waiters = e.waiters, []
            e.log.append(f"pull failed: {err}")
            if e.home is not None:  # a proxy stays (its holds count); a later get asks again
                if e.secondary is not None:
                    self.arena.free(e.secondary)
                e.payload, e.secondary, e.fetching = None, None, False
                return [Answer(c, r, False, self.lost(oid, f"It could not be fetched from its node: {err}."))
                        for c, r in waiters]
            self.objects.pop(oid, None)
            self.freed[oid] = list(e.log)
            return [Answer(c, r, False, self.lost(oid, f"It could not be fetched from its node: {err}."))
                    for c, r in waiters]
        e.payload = (M.SHARED, offset, total, is_error, self.node_id)
        e.secondary = None
        e.log.append("pulled")
        if e.home is None:
            # keep the copy for the next task here that needs it; evicted under pressure
            self.hold(oid, "cache")
            self.cached.append(oid)
        # (a proxy's copy lives as long as the proxy: its holders keep both)
        waiters, e.waiters = e.waiters, []
        return [Answer(c, r, True, e.payload) for c, r in waiters]

    # ------------------------------------------------------------------ rows
    def rows(self, node_id: str) -> list[dict]:
        return [{"object_id": oid.hex(), "object_size": e.size if e.payload is not None else None,
                 "reference_count": e.count,
                 "holders": sorted(e.holders),
                 "task_status": "FINISHED" if e.payload is not None else "PENDING",
                 "location": ("spilled" if e.spilled else "shared_memory"
                              if e.payload and e.payload[0] == M.SHARED else "inline"),
                 "pid": e.owner_pid, "node_id": node_id, "ip": "127.0.0.1",
                 "type": e.type_name, "spilled": e.spilled,
                 "created_ms": int(e.created * 1000)} for oid, e in self.objects.items()]
