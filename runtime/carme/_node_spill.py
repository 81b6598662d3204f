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
`spill_victims` picks, oldest use first, the objects whose blocks make room. Nothing here
reads or writes a file: `_spill_files.py` does, in the daemon.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


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

    def remove(self, oid: bytes, restored: bool = False) -> bool:
        """Forget a file (its object was restored or freed); False if there was none."""
        size = self.files.pop(oid, None)
        if size is None:
            return False
        self.used -= size
        if restored:
            self.restored_total += size
        return True

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
        if not space.room_for(planned + c.size - credit):
            continue
        out.append(c)
        freed += c.size
        planned += c.size
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
