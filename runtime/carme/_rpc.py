"""Requests from one process to node daemons: ids, waiters, replies, batched releases.

Theory of operation. A request carries an id; its answer is a REPLY with that id, read by
the process's I/O thread (`on_daemon_msgs`), which wakes the waiting thread (`request`,
through a `_Waiter`) or runs the callback (`request_async`). Requests to another node's
daemon (`peer`) remember their ids on that connection, so when it goes they fail with
NodeDiedError instead of waiting forever. Releases of holds (`Ownership`'s queued
DECREFs) go out ahead of the next message to our daemon (`daemon_send`) or with the
periodic `flush`, together with the task events recorded meanwhile.

`Rpc` holds the pending requests; everything else (connections, lock, ownership table, the
I/O thread) is the process's `CoreWorker` (`_core.py`), which delegates its `request`,
`request_async`, `daemon_send`, `peer`, `control` and `flush` here.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _messages as M
from . import exceptions as exc
from ._maps import MapCache
from ._protocol import Connection, ConnectionClosed, connect

if TYPE_CHECKING:
    from ._core import CoreWorker


# On a CoreWorker's I/O thread, `pending` lists the wake-ups of other threads (waiters
# it set, work it handed over) since it last waited for I/O; it does them just before it
# waits again (`wake_deferred`). Woken at once,
# the waiting thread would ask for the GIL while the I/O thread still runs Python, and
# both would sleep and wake again on it (four futex calls more per round trip).
_io_wakes = threading.local()


class _Waiter:
    """A one-shot result for a blocking call, cheaper than threading.Event."""

    __slots__ = ("lock", "ok", "value", "done")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.ok = True
        self.value: Any = None
        self.done = False  # set (its waiting thread may be woken only later: `_io_wakes`)

    def set(self, ok: bool, value: Any) -> None:
        self.ok, self.value, self.done = ok, value, True
        pending = getattr(_io_wakes, "pending", None)
        if pending is None:
            self.lock.release()
        else:
            pending.append(self.lock.release)

    def wait(self, timeout: float | None = None) -> bool:
        return self.lock.acquire(timeout=-1 if timeout is None else max(timeout, 0))

    def is_set(self) -> bool:
        return self.done


class Countdown:
    """A callback that calls `then()` on its `n`-th call, from whichever thread makes it
    (one per object a `get` or a task's arguments wait for). `left`: calls still to come."""

    __slots__ = ("left", "then", "lock")

    def __init__(self, n: int, then: Callable[[], None]) -> None:
        self.left = n
        self.then = then
        self.lock = threading.Lock() if n > 1 else None  # (one call: nothing to count)

    def __call__(self) -> None:
        if self.lock is None:
            self.left = 0
        else:
            with self.lock:
                self.left -= 1
                if self.left:
                    return
        self.then()


def defer_wakes() -> list:
    """This thread (an I/O loop) wakes the threads it hands work to (waiters it sets,
    `hand_over`) only at `wake_deferred`."""
    _io_wakes.pending = []
    return _io_wakes.pending


def hand_over(put: Callable[[Any], None], item: Any) -> None:
    """`put(item)` now, or on an I/O thread when it next waits for I/O."""
    pending = getattr(_io_wakes, "pending", None)
    if pending is None:
        put(item)
    else:
        pending.append(lambda: put(item))


def wake_deferred(pending: list) -> None:
    """Do the wake-ups owed; one that fails (a waiter set twice, say) is reported, as it
    was where it was set, and never stops the I/O loop that calls this."""
    wakes = pending[:]
    pending.clear()
    for wake in wakes:
        try:
            wake()
        except Exception:  # noqa: BLE001 - reported; the loop must go on
            import traceback
            traceback.print_exc()


def error_from_reply(value: Any) -> Exception:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        cls: Any = getattr(exc, value[0], None) or {"ValueError": ValueError, "TypeError": TypeError}.get(value[0], exc.RaySystemError)
        try:
            return cls(value[1])
        except TypeError:
            e = exc.RaySystemError(value[1])
            return e
    if isinstance(value, BaseException):
        return value  # type: ignore[return-value]
    return exc.RaySystemError(str(value))


class Rpc:
    def __init__(self, core: CoreWorker) -> None:
        self.core = core
        self.req_ids = itertools.count(1)
        self.requests: dict[int, Any] = {}
        # the objects this process maps in the store (`_maps.py`); users that went
        # (`unmap_later`, from finalizers: only appended here) and maps given back at once
        self.maps = MapCache()
        self.released: list[bytes] = []
        self.extra_unmaps: list[bytes] = []

    def unmap_later(self, oid: bytes) -> None:
        """A reader or view of `oid` is gone. Queued, never sent from here: this runs in
        finalizers, maybe inside a send."""
        self.released.append(oid)

    def unmap_now(self, oid: bytes) -> None:
        """Give back a map this process does not keep (sent with the next message)."""
        self.extra_unmaps.append(oid)

    def written(self, oid: bytes, payload: tuple) -> None:
        """We wrote `oid` (mapped since its ALLOC): keep it mapped a while, so a get of
        what we just put needs no round trip."""
        with self.core.lock:
            self.maps.add(oid, payload)
            self.extra_unmaps.extend(self.maps.release([oid], time.monotonic()))

    def map_object(self, oid: bytes) -> tuple:
        """Where `oid` lives in our store now, mapped (no round trip while it is mapped)."""
        core = self.core
        with core.lock:
            payload = self.maps.acquire(oid)
        if payload is not None:
            return payload
        payload = self.request(M.MAP_OBJECT, oid)
        with core.lock:
            if not self.maps.add(oid, payload):
                self.extra_unmaps.append(oid)  # mapped meanwhile by another thread
        return payload  # type: ignore[no-any-return]

    def take_unmaps(self) -> list[tuple]:
        """(Under the core's lock) the unmaps due now: users gone past the idle bound,
        mappings idle for long enough, and extra maps."""
        rel = _drain(self.released)
        extra = _drain(self.extra_unmaps)
        if not (rel or extra or self.maps.idle):
            return []
        now = time.monotonic()
        out = self.maps.release(rel, now) + self.maps.expired(now) + extra
        return [(M.UNMAP_OBJECT, oid) for oid in out]

    def fail_requests(self, conn: Connection) -> None:
        """Another node's daemon went away: its unanswered requests fail with NodeDiedError."""
        pending = [self.requests.pop(req, None) for req in conn.meta.pop("reqs", ())]
        self.answer_failed([cb for cb in pending if cb is not None],
                           ("NodeDiedError", f"the node at {conn.peer} went away"))

    def answer_failed(self, callbacks: list, err: Any) -> None:
        core = self.core
        for cb in callbacks:
            if isinstance(cb, _Waiter):
                cb.set(False, err)
            else:
                try:
                    cb(False, err)
                except Exception:
                    core._report_bug()

    def on_daemon_msgs(self, conn: Connection, msgs: list | None) -> None:
        core = self.core
        if msgs is None:
            if conn is not core.daemon:
                self.fail_requests(conn)
            return
        reqs = conn.meta.get("reqs")
        for msg in msgs:
            kind = msg[0]
            if kind == M.REPLY:
                try:
                    reply = M.read(msg)
                except M.BadMessage as e:
                    print(f"carme: refused a reply from a node daemon: {e}", file=sys.__stderr__, flush=True)
                    continue
                if reqs:
                    reqs.discard(reply.req)
                cb = self.requests.pop(reply.req, None)
                if cb is None:
                    continue
                if isinstance(cb, _Waiter):
                    cb.set(reply.ok, reply.value)
                else:
                    cb(reply.ok, reply.value)
            elif kind == M.LOG:
                lg = M.read(msg)
                core.on_log(None, lg.stream, lg.text, lg.label)
            elif core.executor is not None:
                core.executor.on_daemon_message(msg)

    def daemon_send(self, msg: tuple) -> None:
        core = self.core
        if core.daemon_lost:
            raise exc.LocalRayletDiedError()
        with core.lock:
            decrefs, blobs = core.own.take_daemon_releases()
            unmaps = self.take_unmaps()
        if decrefs or blobs or unmaps:
            msgs: list[tuple] = [(M.DECREF, decrefs)] if decrefs else []
            msgs += unmaps
            if blobs:
                msgs.append((M.DECREF, blobs, core.worker_id + ":blob"))
            core.daemon.send_many([*msgs, msg])
        else:
            core.daemon.send(msg)

    def control(self) -> Connection:
        """Where actors' names and placement groups live: the head's daemon in a cluster
        (this node's daemon in the embedded cluster, or on the head node)."""
        core = self.core
        if "head_node" not in core.info and not core.on_loop_thread():
            # a worker learns where the head is from its daemon (once the view names it);
            # never from the I/O thread, which must stay free to read that very reply
            hello = self.request(M.HELLO, core.role, os.getpid(), {"worker_id": core.worker_id})
            if hello.get("head_node"):
                core.info.update(head_node=hello["head_node"], head_address=hello["head_address"])
        head = core.info.get("head_node")
        if not head or head == core.node_id:
            return core.daemon
        try:
            return self.peer(head, core.info.get("head_address"))
        except OSError:  # refused, reset, no route: the head is down (or restarting)
            from ._head_state import head_unreachable
            raise exc.RaySystemError(head_unreachable(core.info.get("head_address") or head)) from None

    def request(self, kind: int, *args: Any, timeout: float | None = None,
                conn: Connection | None = None) -> Any:
        core = self.core
        req = next(self.req_ids)
        w = _Waiter()
        self.requests[req] = w
        try:
            if conn is None or conn is core.daemon:
                self.daemon_send((kind, req, *args))
            else:
                conn.meta.setdefault("reqs", set()).add(req)
                conn.send((kind, req, *args))
        except (ConnectionClosed, exc.LocalRayletDiedError):
            self.requests.pop(req, None)
            raise exc.LocalRayletDiedError() from None
        if not core.wait_for(w, timeout):
            self.requests.pop(req, None)
            raise exc.GetTimeoutError(f"no answer from the node daemon within {timeout} s")
        if not w.ok:
            raise error_from_reply(w.value)
        return w.value

    def request_async(self, kind: int, args: tuple, callback: Callable[[bool, Any], None],
                      conn: Connection | None = None) -> None:
        core = self.core
        req = next(self.req_ids)
        self.requests[req] = callback
        if conn is None or conn is core.daemon:
            try:
                self.daemon_send((kind, req, *args))
            except (ConnectionClosed, exc.LocalRayletDiedError):
                if self.requests.pop(req, None) is not None:
                    callback(False, exc.LocalRayletDiedError())
        else:
            conn.meta.setdefault("reqs", set()).add(req)
            try:
                conn.send((kind, req, *args))
            except ConnectionClosed:
                self.fail_requests(conn)

    def peer(self, node_id: str, address: str | None = None) -> Connection:
        """A connection to another node's daemon (for leases there, and its objects)."""
        core = self.core
        with core.lock:
            conn = core.peers.get(node_id)
            if conn is not None and not conn.closed:
                return conn
        if address is None:
            address = self.request(M.NODE_ADDRESS, node_id)
        conn = connect(address, core.token)
        conn.send((M.HELLO, 0, core.role, os.getpid(), {"worker_id": core.worker_id}))
        with core.lock:
            core.peers[node_id] = conn
        core.register(conn, self.on_daemon_msgs)
        return conn

    def flush(self) -> None:
        core = self.core
        with core.lock:
            decrefs, local_blobs, peer_decrefs, blobs = core.own.take_releases()
            events, core._events = core._events, []
            core._unsent_submits.clear()
            if core._running_events:  # tasks still running at this flush: say so now
                running, core._running_events = core._running_events, {}
                attrs = {"node_id": core.node_id, "worker_id": core.worker_id,
                         "worker_pid": core.pid}
                events.extend((tid.hex(), "RUNNING", ts, attrs) for tid, ts in running.items())
            unmaps = self.take_unmaps()
        for node_id, oids in peer_decrefs.items():
            self.send_peer(node_id, (M.DECREF, oids))
        for peer_id, oids in blobs.items():
            self.send_peer(peer_id, (M.DECREF, oids, core.worker_id + ":blob"))
        msgs: list[tuple] = unmaps
        if decrefs:
            msgs.append((M.DECREF, decrefs))
        if local_blobs:
            msgs.append((M.DECREF, local_blobs, core.worker_id + ":blob"))
        if events:
            msgs.append((M.EVENTS, events))
        if msgs:
            try:
                core.daemon.send_many(msgs)
            except ConnectionClosed:
                pass

    def send_peer(self, node_id: str, msg: tuple) -> None:
        core = self.core
        conn = core.peers.get(node_id)
        if conn is not None and not conn.closed:
            try:
                conn.send(msg)
            except ConnectionClosed:
                pass


def _drain(items: list) -> list:
    """Take what a list holds now (others may append meanwhile: slicing is atomic)."""
    n = len(items)
    if not n:
        return []
    out, items[:n] = items[:n], []
    return out
