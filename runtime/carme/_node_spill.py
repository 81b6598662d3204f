"""Spilling objects from the shared-memory store to disk: the policy and the accounting. Pure.

Theory of operation. When an object does not fit in the node's store, the daemon moves
the least recently used objects that nobody is reading to files on local disk, one file
per object, and frees their blocks. An object is *mapped* while a process reads it or
holds zero-copy views of it (`MAP_OBJECT` ... `UNMAP_OBJECT`, counted per process) and
while another node pulls it: such objects, pending ones, blocks being written and cached
copies of other nodes' objects (evicted, never spilled) stay where they are. Readers never
trust an offset they were handed earlier: they map the object first, which brings a
spilled object back into the store (possibly spilling others) and tells the reader where
it now lives.

`SpillSpace` counts what is on disk (bytes and objects, with an optional limit: beyond it
the store is really full and an allocation fails with `ObjectStoreFullError`).
`spill_victims` picks, oldest use first, the objects whose blocks make room.
`SpillingTable` is the spilling half of the node's object table (`ObjectTable` inherits
it): maps, candidates, and the steps the daemon takes around its copies. Nothing here
reads or writes a file: `_spill_files.py` does, in the daemon.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _messages as M
from . import exceptions as exc

if TYPE_CHECKING:
    from ._node_objects import ObjEntry
    from ._store import Arena


@dataclass
class SpillSpace:
    """What this node has on disk; `limit` bytes at most (None: as much as the disk takes)."""

    limit: int | None = None
    files: dict[bytes, int] = field(default_factory=dict)  # object id -> bytes on disk
    used: int = 0
    spilled_total: int = 0   # bytes ever written (counters for metrics and benchmarks)
    restored_total: int = 0  # bytes ever read back

    def room_for(self, size: int) -> bool:
        return self.limit is None or self.used + size <= self.limit

    def add(self, oid: bytes, size: int) -> None:
        self.files[oid] = size
        self.used += size
        self.spilled_total += size

    def remove(self, oid: bytes) -> bool:
        """Forget a file (its object was freed, or restored and the space is short);
        False if there was none."""
        size = self.files.pop(oid, None)
        if size is None:
            return False
        self.used -= size
        return True

    def over(self) -> bool:
        return self.limit is not None and self.used > self.limit

    def stats(self) -> dict:
        return {"spilled_bytes": self.used, "spilled_objects": len(self.files),
                "spill_limit": self.limit, "spilled_total": self.spilled_total,
                "restored_total": self.restored_total}


@dataclass(frozen=True, slots=True)
class Candidate:
    """An object that could go to disk: its id, last use (a counter), store block and size."""

    oid: bytes
    used: int
    offset: int
    size: int
    on_disk: bool = False  # restored earlier and its file kept: it goes without a write


def spill_victims(candidates: Iterable[Candidate], need: int, space: SpillSpace,
                  credit: int = 0) -> list[Candidate]:
    """The least recently used candidates whose sizes add up to `need` bytes (or all that
    fit in the spill space, if fewer). Empty: nothing can go. `credit`: bytes on disk that
    go once the room is made (a restore makes room for the file it reads back)."""
    out: list[Candidate] = []
    freed = 0
    planned = 0
    for c in sorted(candidates, key=lambda c: c.used):
        if freed >= need:
            break
        cost = 0 if c.on_disk else c.size
        if cost and not space.room_for(planned + cost - credit):
            continue
        out.append(c)
        freed += c.size
        planned += cost
    return out


def full_message(size: int, capacity: int, used: int, largest_free: int, objects: int,
                 space: SpillSpace, directory: str, mapped: int) -> str:
    """Why an object of `size` bytes has no place, and how to make one."""
    limit = "no limit" if space.limit is None else f"limit {space.limit:,} bytes"
    why = ("the spill space is full" if space.limit is not None and space.used + size > space.limit
           else "every object still in memory is in use (read by a process, pulled by "
                "another node, or still being written)" if mapped else
           "no object in memory can be spilled")
    return (f"the object store cannot fit an object of {size:,} bytes: {used:,} of {capacity:,} "
            f"bytes are in memory ({objects} objects, largest free block {largest_free:,} bytes) "
            f"and {space.used:,} bytes are spilled to disk ({len(space.files)} objects, {limit}) in "
            f"{directory or 'the session directory'}; {why}. To free space: drop ObjectRefs you "
            f"no longer need (and views of their values), start carme with a larger "
            f"object_store_memory=, or give spilling more room (object_spilling_directory= on a "
            f"larger disk, or a larger object_spilling_max_bytes=).")


class SpillingTable:
    """The spilling half of `ObjectTable` (`_node_objects.py`): maps, candidates, and the
    steps around the daemon's file copies. An entry is `spilled` (value in a file, block
    freed), `spilling` (file being written, block still there) or `restoring` (a block
    being filled from its file)."""

    objects: dict[bytes, ObjEntry]
    arena: Arena
    spill: SpillSpace
    spill_dir: str
    tick: int
    maps_by: dict[str, set[bytes]]
    dropped_files: list[bytes]

    def lost(self, oid: bytes, why: str) -> exc.ObjectLostError:
        raise NotImplementedError

    def is_local(self, payload: tuple) -> bool:
        raise NotImplementedError

    def _tick(self) -> int:
        self.tick += 1
        return self.tick

    def map_object(self, oid: bytes, holder: str, client: Any = None, req: int = 0) -> tuple[bool, Any] | None:
        """A process is about to read an object here: (True, its payload as it is now),
        counted until `unmap_object`; (False, error) if it is gone. A spilled object must
        be restored first (the daemon does, see `needs_restore`). An object not sealed yet
        (its writer's EXPORT may come on another connection after the reader's MAP): None,
        and `client` is answered once it is (`grant_map_waiters`)."""
        e = self.objects.get(oid)
        if e is not None and e.payload is None and client is not None:
            e.map_waiters.append((client, req, holder))
            return None
        if e is None or e.payload is None:
            return False, self.lost(oid, "It is not in this node's object store: every reference "
                                         "to it was dropped, or its owner died.")
        if e.spilled:
            return False, exc.ObjectStoreFullError(
                f"object {oid.hex()} is spilled to disk and could not be restored: " + self.full_text(e.size))
        e.maps[holder] = e.maps.get(holder, 0) + 1
        self.maps_by.setdefault(holder, set()).add(oid)
        e.used = self._tick()
        return True, e.payload

    def grant_map_waiters(self, oid: bytes, e: ObjEntry) -> list:
        """The object was sealed: the maps asked for meanwhile, granted."""
        from ._node_objects import Answer
        waiters, e.map_waiters = e.map_waiters, []
        out = []
        for client, req, holder in waiters:
            got = self.map_object(oid, holder)
            assert got is not None  # sealed now: answered at once
            out.append(Answer(client, req, *got))
        return out

    def unmap_object(self, oid: bytes, holder: str, n: int = 1) -> None:
        e = self.objects.get(oid)
        if e is None or holder not in e.maps:
            return
        left = e.maps[holder] - n
        if left > 0:
            e.maps[holder] = left
            return
        del e.maps[holder]
        mapped = self.maps_by.get(holder)
        if mapped is not None:
            mapped.discard(oid)
            if not mapped:
                del self.maps_by[holder]

    def unmap_holder(self, holder: str) -> None:
        """A process went: it maps nothing any more."""
        for oid in list(self.maps_by.pop(holder, ())):
            e = self.objects.get(oid)
            if e is not None:
                e.maps.pop(holder, None)

    def needs_restore(self, oid: bytes) -> int | None:
        """The size of the block a spilled object needs to come back (None: not spilled)."""
        e = self.objects.get(oid)
        return (e.payload[2] if e is not None and e.spilled and e.restoring is None
                and e.payload is not None else None)

    def spill_candidates(self) -> list[Candidate]:
        """Sealed local objects in the store that no process maps and no peer pulls."""
        out = []
        for oid, e in self.objects.items():
            p = e.payload
            if (p is None or p[0] != M.SHARED or e.spilled or e.spilling or e.maps
                    or e.secondary is not None or not self.is_local(p) or self._pulled(e)
                    or "cache" in e.holders):
                continue
            out.append(Candidate(oid, e.used, p[1], p[2], oid in self.spill.files))
        return out

    @staticmethod
    def _pulled(e: ObjEntry) -> bool:
        return any(h.startswith("pull:") for h in e.holders)

    def start_spill(self, oid: bytes) -> None:
        """Its spill file is being written: no second write, and it stays readable meanwhile."""
        self.objects[oid].spilling = True

    def finish_spill(self, oid: bytes, ok: bool) -> bool:
        """The write of its spill file ended: True if the object is on disk now; False if
        the write failed or the file is not wanted (the object was freed, or someone
        mapped or pulled it meanwhile): the daemon then removes the file."""
        e = self.objects.get(oid)
        if e is None or not e.spilling:
            return False
        e.spilling = False
        if not ok or e.maps or self._pulled(e):
            return False
        self.mark_spilled(oid)
        return True

    def start_restore(self, oid: bytes, offset: int) -> None:
        """Its spill file is being read into the block at `offset` (from `allocate`)."""
        self.objects[oid].restoring = offset

    def finish_restore(self, oid: bytes, offset: int, ok: bool) -> None:
        """The read ended: the object is back at `offset`, or (failed) the block goes."""
        e = self.objects.get(oid)
        if e is None or e.restoring != offset:
            return  # freed meanwhile: `free` took the block
        e.restoring = None
        if ok:
            self.mark_restored(oid, offset)
        else:
            self.arena.free(offset)
            e.log.append("restore from disk failed")

    def mark_spilled(self, oid: bytes) -> None:
        """The object's value is in its spill file now: its block goes back to the arena."""
        e = self.objects[oid]
        assert e.payload is not None and not e.spilled
        self.arena.free(e.payload[1])
        e.spilled = True
        if oid in self.spill.files:
            e.log.append("dropped from memory (its spill file was kept)")
        else:
            self.spill.add(oid, e.payload[2])
            e.log.append(f"spilled {e.payload[2]} bytes to disk")

    def mark_restored(self, oid: bytes, offset: int) -> None:
        """The object's value was read back into the block at `offset` (from `allocate`)."""
        e = self.objects[oid]
        assert e.payload is not None and e.spilled
        e.payload = (e.payload[0], offset, *e.payload[2:])
        e.spilled = False
        e.used = self._tick()
        self.spill.restored_total += e.payload[2]
        # the file stays, so the object can leave memory again without a write, unless
        # the spill space is short (room for this restore may have counted on its file)
        if self.spill.over():
            self.spill.remove(oid)
            self.dropped_files.append(oid)
        e.log.append(f"restored from disk to {offset}")

    def mapped_count(self) -> int:
        return sum(1 for e in self.objects.values() if e.maps and not e.spilled)

    def full_text(self, size: int) -> str:
        a = self.arena
        return full_message(size, a.capacity, a.used_bytes, a.largest_free(), a.allocations(),
                            self.spill, self.spill_dir, self.mapped_count())
