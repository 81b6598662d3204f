"""Ownership: the objects one process owns or borrows, and its local reference counts.

Theory of operation. Pure logic, no sockets, threads, locks or selectors: the
CoreWorker (`_core.py`) is the I/O shell that holds its lock around every call here,
sends the messages these decisions ask for and runs the waiters they hand back.

  * `objects` maps an object id to its `LocalObject`: the payload (None while pending),
    whether this process holds a daemon reference (`held`, at the daemon of `home`),
    whether the daemon knows the object (`exported`), and the bookkeeping of a value in
    flight (`sealing`, `orphan`, `exporting`: a value that arrives while our EXPORT of a
    pending object is being sent is sealed only after it, by `export_sent`).
  * `counts` are the live ObjectRef instances (and zero-copy views) per object id;
    `add`/`remove` change them, `remove` says when one reached zero.
  * `ref_zero(oid)` decides what the last local reference going means: the entry is
    dropped and its holds queued for release, or — for an owned object that was
    exported while its value is still coming (the daemon learns the value only from
    us) — it is marked an orphan and let go once sealed (`sealed` says so).
  * Releases are queued, never sent: `take_daemon_releases` (before a request to our
    daemon) and `take_releases` (the periodic flush) hand them to the shell, grouped by
    daemon and by holder (our own holds, and the `:blob` holds a worker took for us on
    references inside a value).
  * `begin_export`, `borrow`, `set_payload`, `when_ready` are the other events; each
    returns what the shell has to do (a plan, new ids to incref, waiters to run, whether
    to fetch or seal).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ._messages import SHARED

_now = time.time
# A pending object's lists are usually empty all its life: they share this one until used
# (tens of thousands of objects may be pending at once).
_NONE: tuple = ()


class LocalObject:
    __slots__ = ("payload", "waiters", "held", "exported", "owned", "contained_ids",
                 "keep", "fetching", "size", "created", "type_name", "task_name", "home", "copy",
                 "sealing", "orphan", "lineage", "actor_return", "exporting")

    def __init__(self, payload: tuple | None = None, owned: bool = True) -> None:
        self.payload = payload          # None while pending
        self.waiters: list[Callable[[], None]] | tuple = _NONE
        self.held = False               # this process holds a daemon reference
        self.exported = False           # the daemon knows this object
        self.owned = owned
        self.contained_ids: list[bytes] | tuple = _NONE  # blob holds a worker took for a return
        self.keep: list[Any] | tuple = _NONE  # ObjectRefs kept alive by a locally stored value
        self.fetching = False
        self.size = 0
        self.created = _now()
        self.type_name = ""
        self.task_name = ""
        self.home: str | None = None    # the node whose daemon has our hold (None: ours)
        self.copy = False               # we hold a local copy pulled from another node
        self.sealing = False            # its value is being handed to the daemon
        self.orphan = False             # no local reference left: let go once sealed
        self.lineage: Any = None        # the TaskSpec that can make it again (`_lineage.py`)
        self.actor_return = False       # returned by an actor method (cannot be made again)
        self.exporting = False          # its EXPORT is decided but not at the daemon yet


class ExportPlan(NamedTuple):
    """What exporting one object takes: an EXPORT with `payload` (None: pending) that
    holds `contained` (our blob holds plus the refs a local value keeps), after `keep`
    is exported itself; then `blob_holds` are released at `home`."""
    payload: tuple | None
    keep: list | tuple
    blob_holds: list[bytes] | tuple
    type_name: str
    home: str | None


class Releases(NamedTuple):
    """Holds to release. `local`/`local_blobs`: at our daemon (our holds, our blob
    holds); `peers`/`peer_blobs`: per other node."""
    local: list[bytes]
    local_blobs: list[bytes]
    peers: dict[str, list[bytes]]
    peer_blobs: dict[str, list[bytes]]


class PayloadSet(NamedTuple):
    """A pending object got its value: run `waiters`; with `seal`, hand the value to
    the daemon and then call `sealed`."""
    waiters: list | tuple
    seal: bool


class Ownership:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.objects: dict[bytes, LocalObject] = {}
        self.counts: dict[bytes, int] = {}
        self._decrefs: list[bytes] = []
        self._peer_decrefs: dict[str, list[bytes]] = {}
        self._blob_decrefs: dict[str | None, list[bytes]] = {}
        # held at our daemon as well as at their `home` (exported here, written there)
        self.held_here: set[bytes] = set()
        # a pickled ref named our daemon as their home: exported here, wherever written
        self.promised: set[bytes] = set()

    # ------------------------------------------------------------------ counts
    def add(self, oid: bytes) -> None:
        self.counts[oid] = self.counts.get(oid, 0) + 1

    def remove(self, oid: bytes) -> bool:
        """One reference fewer; True when it was the last (call `ref_zero` then)."""
        n = self.counts.get(oid, 0) - 1
        if n > 0:
            self.counts[oid] = n
            return False
        self.counts.pop(oid, None)
        return True

    def count(self, oid: bytes) -> int:
        return self.counts.get(oid, 0)

    def ref_zero(self, oid: bytes) -> None:
        """No local reference is left (unless one came back meanwhile)."""
        entry = self.objects.get(oid)
        if entry is None or self.counts.get(oid):
            return
        if entry.owned and entry.exported and (entry.payload is None or entry.sealing):
            # a reference left this process (nested in an argument or a return value)
            # while the value is still coming: the daemon only learns the value from
            # us, so keep the entry until it is sealed there (set_payload lets go)
            entry.orphan = True
            return
        del self.objects[oid]
        if entry.held:
            self.release_holds([oid], entry.home)
        if oid in self.held_here:
            self.held_here.discard(oid)
            self._decrefs.append(oid)
        self.promised.discard(oid)
        if entry.contained_ids:
            self.release_blob_holds(entry.contained_ids, entry.home)
        if entry.copy:
            self._decrefs.append(oid)
        entry.keep = _NONE
        entry.lineage = None  # its task's argument refs go with the spec's last return

    # ------------------------------------------------------------------ releases
    def release_holds(self, oids: list[bytes], node_id: str | None) -> None:
        """Queue releases of our holds at `node_id`'s daemon (None: our node's)."""
        if node_id is None or node_id == self.node_id:
            self._decrefs.extend(oids)
        else:
            self._peer_decrefs.setdefault(node_id, []).extend(oids)

    def release_blob_holds(self, oids: Sequence[bytes], node_id: str | None) -> None:
        """Queue releases of holds a worker took for us on references inside a value."""
        key = None if node_id is None or node_id == self.node_id else node_id
        self._blob_decrefs.setdefault(key, []).extend(oids)

    def take_daemon_releases(self) -> tuple[list[bytes], list[bytes] | None]:
        """The releases due at our own daemon: (our holds, our blob holds)."""
        decrefs, self._decrefs = self._decrefs, []
        return decrefs, self._blob_decrefs.pop(None, None)

    def take_releases(self) -> Releases:
        decrefs, self._decrefs = self._decrefs, []
        peers, self._peer_decrefs = self._peer_decrefs, {}
        blobs, self._blob_decrefs = self._blob_decrefs, {}
        local_blobs = blobs.pop(None, None) or []
        return Releases(decrefs, local_blobs, peers,
                        {k: v for k, v in blobs.items() if k is not None})

    # ------------------------------------------------------------------ objects
    def new_owned(self, oid: bytes, name: str = "") -> LocalObject:
        entry = LocalObject()
        entry.task_name = name
        self.objects[oid] = entry
        return entry

    def begin_export(self, oid: bytes) -> ExportPlan | None:
        """A reference to `oid` is about to leave: None if the daemon knows it already
        (or we do not); otherwise the entry is exported and held from now on."""
        entry = self.objects.get(oid)
        if entry is None or entry.exported:
            return None
        home = entry.home
        if not entry.held:
            entry.home = None  # our hold is at our own daemon from now on
        elif home and home != self.node_id:
            self.held_here.add(oid)  # held where it was written, and now at our daemon too
        entry.exported = True
        entry.exporting = True  # a value arriving before the EXPORT is sent waits for it
        entry.held = True
        blob_holds = entry.contained_ids
        entry.contained_ids = _NONE
        return ExportPlan(entry.payload, entry.keep, blob_holds, entry.type_name, home)

    def borrow(self, oids: list[bytes]) -> list[bytes]:
        """References just deserialized: those we did not know get an entry held at our
        daemon; returns them (the shell increfs them there, then calls `missing`)."""
        new = []
        for oid in oids:
            if oid not in self.objects:
                e = LocalObject(owned=False)
                e.held = True
                e.exported = True
                self.objects[oid] = e
                new.append(oid)
        return new

    def missing(self, oids: list[bytes], lost_payload: Callable[[bytes], tuple]) -> None:
        """The daemon does not know these borrowed objects: they are lost, unheld."""
        for oid in oids:
            lost = self.objects.get(oid)
            if lost is not None:
                lost.held = False
                lost.payload = lost_payload(oid)

    def add_copy(self, oid: bytes, payload: tuple) -> None:
        """We hold a local copy of an object pulled from another node (once)."""
        entry = self.objects.get(oid)
        if entry is None:
            entry = self.objects[oid] = LocalObject(owned=False)
            entry.payload = payload
        entry.copy = True

    def when_ready(self, oid: bytes, cb: Callable[[], None]) -> str:
        """'now' (it has a payload, or we do not know it), 'wait' (cb queued) or 'fetch'
        (cb queued; the shell asks the daemon for the value, once)."""
        entry = self.objects.get(oid)
        if entry is None or entry.payload is not None:
            return "now"
        if isinstance(entry.waiters, list):
            entry.waiters.append(cb)
        else:
            entry.waiters = [cb]
        if not entry.owned and not entry.fetching:
            entry.fetching = True
            return "fetch"
        return "wait"

    def set_payload(self, oid: bytes, payload: tuple, daemon_lost: bool) -> PayloadSet | None:
        """A value arrived (None: unknown object, or it had one already)."""
        entry = self.objects.get(oid)
        if entry is None or entry.payload is not None:
            return None
        entry.payload = payload
        if not entry.size:
            if payload[0] == SHARED:
                entry.size = payload[2]
            else:
                entry.size = len(payload[1]) + (sum(len(b) for b in payload[2]) if payload[2] else 0)
        waiters, entry.waiters = entry.waiters, _NONE
        seal = entry.exported and entry.owned and not daemon_lost
        entry.sealing = seal
        # while our EXPORT of it is on its way, the seal must not overtake it (the
        # daemon would free a sealed object nobody holds yet): `export_sent` seals
        return PayloadSet(waiters, seal and not entry.exporting)

    def export_sent(self, oid: bytes) -> LocalObject | None:
        """Our EXPORT of `oid` reached the daemon: the entry, if its value came meanwhile
        and is to be sealed now (by the caller, as `PayloadSet.seal` asks)."""
        entry = self.objects.get(oid)
        if entry is None or not entry.exporting:
            return None
        entry.exporting = False
        return entry if entry.sealing and entry.payload is not None else None

    def sealed(self, oid: bytes, entry: LocalObject) -> bool:
        """The daemon has the value; True if no local reference is left (call
        `ref_zero`)."""
        entry.sealing = False
        if entry.payload is not None and entry.payload[0] != SHARED:
            entry.home = None  # an inline value: our only hold is the export's, at our daemon
        return entry.orphan

    def home_of(self, oid: bytes) -> str:
        """The node whose daemon has the object's entry, as a pickled reference names
        it: where we hold it, else ours (a reference leaving is exported to our daemon)."""
        entry = self.objects.get(oid)
        if entry is not None and entry.held and entry.home:
            return entry.home
        if entry is not None and not entry.exported:
            # the ref is exported to our daemon next, even if its value is written on
            # another node meanwhile (see `returned`)
            self.promised.add(oid)
        return self.node_id

    def returned(self, oid: bytes, entry: LocalObject, payload: tuple, home: str | None,
                 daemon_lost: bool) -> PayloadSet | None:
        """A task's value came back (`home`: the node whose store holds a SHARED value,
        with a hold the worker took for us). Sealed at our daemon when we exported it
        there while pending, or when it lies in our own node's store (the stored value
        then takes over the holds on refs inside it). A value on another node that our
        daemon never heard of is not sent there: its entry lives at `home`, and a
        reference pickled from now on names `home` (`home_of`). A ref pickled before it
        came named our daemon (`promised`): exported there later, with this value."""
        unheard = False
        if payload[0] == SHARED:
            entry.held = True
            if not entry.exported and oid not in self.promised:
                if home is None or home == self.node_id:
                    entry.exported = True  # (the worker made its entry at our daemon)
                else:
                    unheard = True
        done = self.set_payload(oid, payload, daemon_lost)
        if unheard:
            entry.exported = True  # known where it lives; never exported to our daemon
        return done

    def pending(self) -> list[bytes]:
        return [oid for oid, entry in self.objects.items() if entry.payload is None]
