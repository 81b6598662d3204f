"""The objects one process maps in its node's store, and how long it keeps them mapped. Pure.

Theory of operation. Before a process reads an object from the store it asks its daemon
where the object lives now (`MAP_OBJECT`: a spilled object comes back, maybe elsewhere);
the daemon does not spill an object while some process maps it. Asking costs a round
trip through the daemon (most of a zero-copy get's time), so a process keeps an object
mapped a little while after its last view goes (`linger_s`), and a get of it meanwhile
needs no round trip. Idle mappings are bounded in bytes (`idle_limit`, oldest dropped
first) so they never keep much of the store from being spilled, and each is given back
(`UNMAP_OBJECT`) once it has been idle `linger_s`.

One entry per object is one map at the daemon. `MapCache` does no I/O and takes the time
as an argument; its caller (`_rpc.py`) holds the process's lock and sends the unmaps.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

LINGER_S = 1.0


@dataclass
class _Mapped:
    payload: tuple
    views: int  # readers and zero-copy views in this process
    idle_since: float | None = None


class MapCache:
    def __init__(self, idle_limit: int = 64 << 20, linger_s: float = LINGER_S) -> None:
        self.idle_limit = idle_limit
        self.linger_s = linger_s
        self.entries: dict[bytes, _Mapped] = {}
        self.idle: OrderedDict[bytes, int] = OrderedDict()  # idle entries, oldest first -> size
        self.idle_bytes = 0

    def acquire(self, oid: bytes) -> tuple | None:
        """The payload of an object this process maps (one more user), or None: ask."""
        e = self.entries.get(oid)
        if e is None:
            return None
        e.views += 1
        if e.idle_since is not None:
            e.idle_since = None
            self.idle_bytes -= self.idle.pop(oid)
        return e.payload

    def add(self, oid: bytes, payload: tuple) -> bool:
        """A map the daemon granted, with one user. False if the object was mapped here
        meanwhile (another thread): it gets the user, and the caller gives its map back."""
        if self.acquire(oid) is not None:
            return False
        self.entries[oid] = _Mapped(payload, 1)
        return True

    def release(self, oids: list[bytes], now: float) -> list[bytes]:
        """Users gone; returns the objects to unmap now (idle ones past the byte bound)."""
        for oid in oids:
            e = self.entries.get(oid)
            if e is None or e.views <= 0:
                continue
            e.views -= 1
            if e.views == 0:
                e.idle_since = now
                self.idle[oid] = e.payload[2]
                self.idle_bytes += e.payload[2]
        out = []
        while self.idle and self.idle_bytes > self.idle_limit:
            oid, size = self.idle.popitem(last=False)
            self.idle_bytes -= size
            del self.entries[oid]
            out.append(oid)
        return out

    def expired(self, now: float) -> list[bytes]:
        """Idle entries past `linger_s`, removed: the caller unmaps them."""
        out = []
        while self.idle:
            oid = next(iter(self.idle))
            e = self.entries[oid]
            if e.idle_since is None or now - e.idle_since < self.linger_s:
                break
            self.idle_bytes -= self.idle.pop(oid)
            del self.entries[oid]
            out.append(oid)
        return out
