"""Values: turning Python values into object payloads and back, for one process.

Theory of operation. A value is pickled with its buffers out of band (`_serialization`).
A small one travels inline in the payload; a large one is written into the node's
shared-memory store (ALLOC a block, write, EXPORT to seal it) and travels as an offset.
Reading a payload from the store gives zero-copy views, each pinning its object through
the process's reference counts (`pinned`) until the view is collected; a payload on
another node's store is first copied into ours (`localize`). ObjectRefs found inside a
value are exported before it leaves, and borrowed when it is read.

`Values` holds no state of its own beyond the process's `CoreWorker` (`_core.py`), whose
lock, ownership table, arena and requests it uses; `CoreWorker.serialize`, `deserialize`,
`put`, `localize` and `protect_views` delegate here.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _messages as M
from . import exceptions as exc
from ._ownership import LocalObject
from ._serialization import (
    INLINE_LIMIT,
    dumps,
    inline_payload,
    layout_size,
    loads,
    read_layout,
    total_size,
    write_layout,
)

if TYPE_CHECKING:
    from ._core import CoreWorker


class Values:
    def __init__(self, core: CoreWorker) -> None:
        self.core = core

    def serialize(self, value: Any, oid: bytes | None = None, *, is_error: bool = False,
                  hold_contained: bool = False) -> tuple[tuple, list]:
        """Serialize a value for a result or a put: inline payload or shared memory.

        Returns (payload, contained ObjectRefs). Contained refs are exported; with
        `hold_contained` the value takes a daemon hold on each (for a value that outlives
        this process's references)."""
        core = self.core
        data, buffers, contained = dumps(value)
        holder = core.current_task.submitter
        if contained:
            core.export(contained)
            if hold_contained:
                homes = {r._id: core.home_of(r._id) for r in contained}
                homes = {o: h for o, h in homes.items() if h != core.node_id}
                core.request(M.INCREF, [r._id for r in contained],
                             holder + ":blob" if holder else None, *([homes] if homes else []))
        size = total_size(data, buffers)
        if size < INLINE_LIMIT or oid is None:
            return inline_payload(data, buffers, is_error), contained
        total = layout_size(data, buffers)
        off = core.request(M.ALLOC, oid, total, core.pid, holder)
        write_layout(core.arena.writable(off, total), data, buffers)
        payload = (M.SHARED, off, total, is_error, core.node_id)
        # sealed at the node before anyone can hear of it, so peers can pull it at once
        core.request(M.EXPORT, oid, payload, [], 0, type(value).__name__)
        # mapped since its ALLOC; a retried task's second value may not be the one kept
        core.rpc.unmap_now(oid)
        return payload, contained

    def protect_views(self) -> None:
        """Before a task reports back: zero-copy views of its arguments that are still
        alive (kept in actor state, say) get a hold of this process, taken while the
        submitter still holds the object; and a map of this process where the submitter's
        map was what they were read under (it goes with the result)."""
        core = self.core
        if not core._unprotected and not core._held_reads:
            return  # (the common case: the task read no argument from the store)
        with core.lock:
            oids, core._unprotected = core._unprotected, set()
            held, core._held_reads = core._held_reads, set()
        keep = [oid for oid in oids if core.refs.count(oid) and oid not in core.objects]
        if keep:
            core._borrow_ids(keep)
        for oid in held:
            if not core.refs.count(oid) or oid in core._late_maps:
                continue  # no view left (the common case), or mapped here already
            core._late_maps.add(oid)
            core.rpc.map_object(oid)  # where it is: where we read it, the submitter maps it
            self.views_gone(oid, False)  # (if they went meanwhile)

    def views_gone(self, oid: bytes, mapped: bool) -> None:
        """The views of one read of `oid` are gone; `mapped`: that read mapped it (one
        user to give back). A map taken late (`protect_views`) goes with the last view."""
        core = self.core
        if mapped:
            core.unmap_later(oid)
        if oid in core._late_maps and not core.refs.count(oid):
            try:
                core._late_maps.remove(oid)  # (atomic: finalizers run in any thread)
            except KeyError:
                return
            core.unmap_later(oid)

    def localize(self, oid: bytes, payload: tuple) -> tuple:
        """A payload readable here: an object in another node's store is copied to ours
        (once per node) and this process holds that copy while it has references."""
        core = self.core
        if payload[0] != M.SHARED or len(payload) < 5 or payload[4] == core.node_id:
            return payload
        try:
            local = core.request(M.GET_REMOTE, oid, payload[4])
        except exc.ObjectLostError as lost:
            # its node is gone: an object we own is made again from its lineage
            core.submitter.rebuild(oid, lost)
            return self.localize(oid, core.wait_payload(oid))
        with core.lock:
            core.own.add_copy(oid, payload)  # (a process holds a copy once, however often it asks)
        return local  # type: ignore[no-any-return]

    def deserialize(self, oid: bytes, payload: tuple, held: bool = False) -> Any:
        """`held`: a task argument its submitter keeps mapped in our store until our
        result (`CoreWorker.resolve_args`): read where it says, without asking the daemon."""
        core = self.core
        held = held and bool(oid) and payload[0] == M.SHARED and len(payload) > 4 and payload[4] == core.node_id
        if payload[0] != M.INLINE:
            if oid not in core.objects:
                # a task argument: its submitter keeps it alive while the task runs;
                # views that outlive the task get a hold of ours (protect_views)
                core._unprotected.add(oid)
            if not held:
                payload = core.localize(oid, payload)  # (inline after a rebuild that failed)
                if oid and payload[0] != M.INLINE:
                    # where the value lives now (the daemon brings a spilled one back); mapped
                    # until our views of it are gone, so it is not spilled under them
                    payload = core.rpc.map_object(oid)
        if payload[0] == M.INLINE:
            value, loaded = loads(payload[1], payload[2])
        else:
            bufs: list = []
            try:
                src = core.arena.readonly(payload[1], payload[2])
                data, bufs = read_layout(src)
                if bufs:
                    bufs = pinned(bufs, oid, core.refs, (lambda o: self.views_gone(o, not held)) if oid else None)
                    if held:  # (once its views exist) views that outlive the task get a map of ours
                        core._held_reads.add(oid)
                value, loaded = loads(data, bufs)
            finally:
                if oid and not bufs and not held:
                    core.unmap_later(oid)
            if not core.refs.count(oid):
                core._on_ref_zero(oid)  # no view and no ref keeps it: let go at once
        if loaded:
            core.borrow(loaded)
        if payload[3]:
            if isinstance(value, exc.RayTaskError):
                raise value.as_instanceof_cause()
            raise value
        return value

    def put(self, value: Any, _owner: Any = None) -> Any:
        core = self.core
        from ._ids import put_id
        from ._objects import ObjectRef
        oid = put_id()
        if isinstance(value, ObjectRef):
            raise TypeError("Calling 'put' on an ObjectRef is not allowed. If you really want to do this, you can wrap the ObjectRef in a list and call 'put' on it.")
        entry = LocalObject()
        entry.type_name = type(value).__name__
        data, buffers, contained = dumps(value)
        size = len(data) + sum(b.raw().nbytes for b in buffers)
        entry.size = size
        with core.lock:
            core.objects[oid] = entry
        ref = ObjectRef(oid, core.worker_id)
        if size < INLINE_LIMIT:
            entry.payload = inline_payload(data, buffers)
            entry.keep = list(contained)
        else:
            if contained:
                core.export(contained)
                core.hold_remote_contained(oid, {r._id: core.home_of(r._id) for r in contained})
            total = layout_size(data, buffers)
            off = core.request(M.ALLOC, oid, total, core.pid)
            write_layout(core.arena.writable(off, total), data, buffers)
            entry.payload = (M.SHARED, off, total, False, core.node_id)
            entry.held = entry.exported = True
            core.daemon_send((M.EXPORT, None, oid, entry.payload, [r._id for r in contained], 0, entry.type_name))
            core.rpc.written(oid, entry.payload)  # mapped since its ALLOC: a get needs no round trip
        return ref


def pinned(bufs: list, oid: bytes, refs: Any, unmap: Callable[[bytes], None] | None = None) -> list:
    """Wrap zero-copy buffers so the object stays allocated while any view of it lives,
    and (`unmap`, once the last of them is gone) stays mapped, so it is not spilled.

    numpy keeps the exact object it was handed as the base of the arrays it rebuilds
    (but makes its own memoryview of a memoryview), so when numpy is there the buffers
    are uint8 arrays, and a finalizer on each releases its pin."""
    try:
        import numpy as np
        out = [np.frombuffer(b, dtype=np.uint8) for b in bufs]
    except ImportError:
        out = bufs
    left = list(range(len(out)))  # list.pop is atomic: finalizers may run in any thread

    def release() -> None:
        refs.remove(oid)
        left.pop()
        if not left and unmap is not None:
            unmap(oid)
    for b in out:
        refs.add(oid)
        weakref.finalize(b, release)
    return out


def lost_payload(oid: bytes) -> tuple:
    return error_payload(exc.ObjectLostError(
        oid.hex(), detail="This process holds no reference to it any more: all references "
                          "to it were dropped, or its owner died."))


def error_payload(err: BaseException) -> tuple:
    data, bufs, _ = dumps(err)
    return inline_payload(data, bufs, True)
