"""CoreWorker: the per-process engine that drivers and workers share.

Theory of operation. Each process that uses carme (a driver, or a worker whose tasks
submit tasks or get objects) has one CoreWorker. It owns:
  * a connection to its node daemon (requests with ids, answered by REPLY; `_rpc.py`);
  * direct connections to the workers it leased and the actors it calls;
  * one I/O thread running a selector loop that reads every connection and dispatches
    results, replies and log lines; user threads send directly (each connection has a
    send lock), so a task push costs one write and no thread hand-off. A thread that
    waits for a message (a worker's idle main thread, a main thread in `get`) can hold
    the *poll role* and run the loop's steps itself (`_poll_role.py`): its answer then
    wakes it directly, and while answers come quickly it checks for them a moment
    before it sleeps (`_select_soon`). A push or result
    its peer does not wait for (the peer is busy with earlier work) is posted instead:
    the I/O thread sends a connection's posted frames together just before it next waits
    (`flush_soon`), so a burst costs a write per batch, not per message;
  * the object table: the objects this process owns (task returns, puts) and the ones it
    borrows, with local reference counts and waiters. Its logic is `Ownership`
    (`_ownership.py`, pure: decisions and queued releases); this module holds the lock
    around it, sends what it decides and runs the waiters it hands back;
  * the task submitter (`_submit.py`) and actor submitter (`_actor_submit.py`);
  * values in and out of payloads and the store (`_values.py`).

Reference counting. Every ObjectRef counts itself in `refs`. An object only this
process knows stays local (inline value in `objects`). Once a reference leaves the
process (nested in an argument, a put value or a return value), the object is exported
to the node daemon, which from then on counts one hold per process and per stored value
that contains it, and frees it at zero. Holds are taken synchronously (the export/incref
round trip completes before the reference leaves or is used), so a hold can never arrive
after the release it protects; releases are batched and flushed before the next request.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from . import _messages as M
from . import exceptions as exc
from ._events import TERMINAL_STATES
from ._ownership import LocalObject, Ownership, PayloadSet
from ._poll_role import DeferredInterrupt, PollRole
from ._protocol import Connection, ConnectionClosed, TokenRefused, connect, first_reply
from ._rpc import Countdown, Rpc, _io_wakes, _Waiter, defer_wakes, error_from_reply, wake_deferred
from ._serialization import dumps, inline_payload
from ._store import SharedArena
from ._values import Values, error_payload, lost_payload

_now = time.time
# a holder checks for its answer SPIN s before it sleeps, while its waits end within
# QUICK s (`_select_soon`)
SPIN = 0.0002
FLUSH_RETRY = 0.0002  # s before posted frames are tried again when another thread was sending
QUICK = 0.001


def _no_notice() -> None:
    pass


class RefTable:
    """Local counts of live ObjectRef instances (and zero-copy views) per object id: the
    thread-safe shell over `Ownership`'s counts (ObjectRefs die on any thread)."""

    def __init__(self, own: Ownership, on_zero: Callable[[bytes], None]) -> None:
        self.own = own
        self.counts = own.counts
        self.lock = threading.RLock()
        self.on_zero = on_zero

    def add(self, oid: bytes) -> None:
        with self.lock:
            self.own.add(oid)

    def remove(self, oid: bytes) -> None:
        with self.lock:
            zero = self.own.remove(oid)
        if zero:
            self.on_zero(oid)

    def count(self, oid: bytes) -> int:
        return self.own.count(oid)


class TaskLocal(threading.local):
    """What the task running on this thread is (set by the worker's executor). Unset
    names read as None from the class: a plain lookup, where `getattr(local, name, None)`
    on a bare `threading.local` raised and caught an AttributeError (the submit path
    reads `task_id` once per call)."""

    task_id: bytes | None = None
    lease_id: str | None = None
    submitter: Any = None
    actor_id: bytes | None = None
    gpu_ids: list | None = None
    resources: dict | None = None
    restarts: int | None = None
    pg_id: str | None = None
    pg_capture: bool | None = None


class CoreWorker:
    def __init__(self, *, role: str, daemon_conn: Connection, info: dict, worker_id: str,
                 job_id: str, namespace: str, token: bytes) -> None:
        self.role = role
        self.daemon = daemon_conn
        self.info = info
        self.node_id: str = info["node_id"]
        self.worker_id = worker_id
        self.job_id = job_id
        self.namespace = namespace
        self.token = token
        self.pid = os.getpid()
        self.arena = SharedArena(info["store_file"])
        self.values = Values(self)
        self.own = Ownership(self.node_id)
        self.objects = self.own.objects
        self.refs = RefTable(self.own, self._on_ref_zero)
        self.lock = threading.RLock()
        self.rpc = Rpc(self)
        self.rpc.maps.idle_limit = self.arena.capacity // 8  # idle mappings keep little from spilling
        self.peers: dict[str, Connection] = {}
        self._events: list[tuple] = []
        self._unsent_submits: dict[bytes, int] = {}  # task id -> its SUBMITTED in _events
        # RUNNING events of tasks this worker runs now, sent only if a flush comes before
        # the task ends (its submitter reports RUNNING with the result anyway): a short
        # task costs its node one event fewer
        self._running_events: dict[bytes, float] = {}
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending_register: list[tuple[Connection, Callable]] = []
        # connections with posted frames for the I/O thread to send (`flush_soon`); it sets
        # _io_idle before it takes them and waits, so a poster either sees it set and wakes
        # it, or its connection is taken before the wait
        self._to_flush: deque[Connection] = deque()
        self._io_idle = False
        # the thread running a step of the I/O loop now, the I/O thread's ident, and
        # which thread polls (the I/O thread, or one that waits for a message itself)
        self._stepping: int | None = None
        self._io_ident: int | None = None
        self._role = PollRole()
        self._main_ident = threading.main_thread().ident
        self._answers_quick = False  # a holder's last wait was short (`_select_soon`)
        self._spin_skip = 0
        self._spin_misses = 0
        self.register(self.daemon, self._on_daemon_msgs)
        self.running = True
        self.log_handler: Callable[[dict | None, str, str], None] | None = None
        self.tag_provider: Callable[[], dict | None] | None = None
        self.executor: Any = None  # set in worker processes
        self.job_runtime_env: dict | None = None
        self.node: Any = None  # the embedded node a driver started
        self.quiet_logs = False
        self.current_task: TaskLocal = TaskLocal()
        self.actor_context: dict[str, Any] = {}  # actor-wide values for any of its threads
        self._unprotected: set[bytes] = set()
        # arguments read under their submitter's map (`resolve_args`), and those of them
        # this process mapped itself because views of them outlived their task
        self._held_reads: set[bytes] = set()
        self._late_maps: set[bytes] = set()
        self.daemon_lost = False
        from ._actor_submit import ActorSubmitter
        from ._submit import TaskSubmitter
        self.submitter = TaskSubmitter(self)
        self.actor_submitter = ActorSubmitter(self)
        self._io = threading.Thread(target=self._io_loop, name="carme-io", daemon=True)
        self._io.start()
        self.call_later(0.1, self._flush_periodic)

    # ------------------------------------------------------------------ I/O thread
    def register(self, conn: Connection, handler: Callable[[Connection, list], None]) -> None:
        if self.on_loop_thread():
            self._register_now(conn, handler)
        else:
            with self.lock:
                self._pending_register.append((conn, handler))
            self.wake()

    def _register_now(self, conn: Connection, handler: Any) -> None:
        if conn.closed:
            return
        try:
            self.sel.register(conn.sock, selectors.EVENT_READ, (conn, handler))
        except KeyError:  # a stale registration of a reused descriptor
            self.sel.unregister(conn.sock.fileno())
            self.sel.register(conn.sock, selectors.EVENT_READ, (conn, handler))

    def close_conn(self, conn: Connection) -> None:
        """Close a connection the I/O thread may be watching (unregister it first)."""
        if self.on_loop_thread():
            try:
                self.sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.close()
        else:
            self.call_later(0, lambda: self.close_conn(conn))

    def add_listener(self, sock: Any, on_accept: Callable[[], None]) -> None:
        self.sel.register(sock, selectors.EVENT_READ, ("listen", on_accept))
        self.wake()

    def wake(self) -> None:
        """Have the I/O loop run a step soon: its select returns; a holder of the poll role
        that is parked (another thread) gives the role back to the I/O thread."""
        if self._role.parked_elsewhere():
            self._role.kick()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def flush_soon(self, conn: Connection) -> None:
        """Have the I/O thread send `conn`'s posted frames before it next waits for I/O."""
        self._to_flush.append(conn)
        if self.on_loop_thread():
            return
        role = self._role
        if role.holds():  # parked: the I/O thread takes the loop back, to send them soon
            role.kick()
        elif self._io_idle or role.parked_elsewhere():
            self.wake()

    def _flush_posted(self) -> None:
        while self._to_flush:
            self._flush(self._to_flush.popleft(), False)

    def _flush(self, conn: Connection, watched: bool) -> None:
        """Send `conn`'s posted frames; what the socket does not take waits for it to be
        writable (`watched`: it is watched for that now). Another thread sending on it:
        tried again after FLUSH_RETRY, this thread reading meanwhile (never waiting for
        that send: it may wait for the peer, and the peer for us to read)."""
        try:
            done = conn.flush_later()
        except ConnectionClosed:
            done = True  # (its reader sees the close)
        if done is None:
            self.call_later(FLUSH_RETRY, lambda: self._to_flush.append(conn))
            done = True  # (not watched meanwhile: writable, it would only spin)
        if done == watched:
            self._watch_writable(conn, not done)

    def send_posted(self) -> None:
        """Send every posted frame now, blocking (before this process exits on purpose)."""
        while self._to_flush:
            try:
                self._to_flush.popleft().send_raw_frames()
            except ConnectionClosed:
                pass

    def _watch_writable(self, conn: Connection, on: bool) -> None:
        try:
            key = self.sel.get_key(conn.sock)
            self.sel.modify(conn.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0), key.data)
        except (KeyError, ValueError, OSError):
            pass  # not watched (closed, or never registered): nothing waits on it

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self.lock:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_seq), fn))
        if not self.on_loop_thread():
            self.wake()

    def _io_loop(self) -> None:
        self._io_ident = threading.get_ident()
        woken = defer_wakes()
        role = self._role
        try:
            while self.running:
                if role.io_holds():
                    self._step(woken, None)
                else:
                    role.nap()
        finally:
            wake_deferred(woken)

    def on_loop_thread(self) -> bool:
        """Whether this thread runs the I/O loop's step now (the I/O thread, or a thread
        holding the poll role): it must never block waiting for the loop."""
        return self._stepping == threading.get_ident()

    def poll_until(self, ready: Callable[[], bool], deadline: float | None = None,
                   guard: DeferredInterrupt | None = None, spin: bool = True) -> bool:
        """Run the I/O loop on this thread until `ready()` (or the deadline), while this
        thread holds the poll role (`_poll_role.py`). False when it does not (then the
        caller waits as before: the I/O thread reads for it)."""
        role = self._role
        woken = _io_wakes.pending = []
        try:
            while not ready():
                if not self.running or not role.begin():
                    return False
                try:
                    self._step(woken, deadline, guard, spin)
                finally:
                    if woken:
                        wake_deferred(woken)
                    role.end()
                if guard is not None and guard.pending is not None:
                    guard.deliver()
                if deadline is not None and time.monotonic() >= deadline:
                    return ready()
            return True
        finally:
            _io_wakes.pending = None

    def wait_for(self, w: _Waiter, timeout: float | None) -> bool:
        """Block until `w` is set (False after `timeout` s). The main thread, holding the
        poll role, runs the loop's steps itself until then; any other thread (or the main
        thread without the role, which it then asks for) waits for the loop to set it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if threading.get_ident() == self._main_ident and self._poll_here(w, deadline):
            return True
        role = self._role
        role.need_loop()
        try:
            return w.wait(None if deadline is None else deadline - time.monotonic())
        finally:
            role.loop_done()

    def _poll_here(self, w: _Waiter, deadline: float | None) -> bool:
        role = self._role
        if not role.holds():
            if role.lent_to is None:  # lent with this wait's result: for the next wait
                role.ask(_no_notice, w)
            return False
        with DeferredInterrupt() as guard:
            return self.poll_until(w.is_set, deadline, guard)

    def _step(self, woken: list, deadline: float | None,
              guard: DeferredInterrupt | None = None, spin: bool = False) -> None:
        """One turn of the I/O loop: registrations, due timers, posted frames, the
        wake-ups owed, one wait for I/O (until the next timer or `deadline`) and what it
        read. `woken` collects the wake-ups owed to other threads (`_rpc._io_wakes`)."""
        me = threading.get_ident()
        self._stepping = me
        try:
            timeout = self._due_timers()
            if deadline is not None:
                left = max(0.0, deadline - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
            self._io_idle = True
            if self._to_flush:
                self._flush_posted()
            if me == self._io_ident:
                notice = self._role.lend_if_asked()
                if notice is not None:  # a thread polls for itself now: it is told, we nap
                    woken.append(notice)
                    self._io_idle = False
            if woken:  # (as this thread lets go of the GIL to wait: `_rpc._io_wakes`)
                wake_deferred(woken)
            if not self._io_idle:
                return
            if guard is not None:  # an interrupt may end the wait, not what comes after it
                guard.in_select = True
            try:
                ready = self._select_soon(timeout) if spin else self.sel.select(timeout)
            except (OSError, ValueError):
                return
            finally:
                self._io_idle = False
                if guard is not None:
                    guard.in_select = False
            self._dispatch(ready)
        finally:
            self._stepping = None

    def _select_soon(self, timeout: float | None) -> list:
        """A holder's wait for I/O. While its answers come quickly (a call at a time: its
        last wait ended within QUICK s), it checks without sleeping for up to SPIN s
        before it sleeps: a thread put to sleep and woken again costs tens of µs here,
        as much as its peer may need to answer a short call. After two checks in a row
        that found nothing (a loaded machine, a slower peer) the next is tried only
        after 2, 4 ... 16 waits."""
        sel = self.sel
        start = time.perf_counter()
        if self._answers_quick and timeout != 0:
            if self._spin_skip:
                self._spin_skip -= 1
            else:
                spin = SPIN if timeout is None else min(SPIN, timeout)
                end = start + spin
                while True:
                    ready = sel.select(0)
                    if ready:
                        self._spin_misses = 0
                        return ready
                    if time.perf_counter() >= end:
                        break
                if spin == SPIN:  # (not a check cut short by a timer that is due)
                    self._spin_misses += 1
                    if self._spin_misses >= 2:
                        self._spin_skip = 1 << min(self._spin_misses - 1, 4)
                if timeout is not None:
                    timeout = max(0.0, timeout - spin)
        ready = sel.select(timeout)
        self._answers_quick = time.perf_counter() - start < QUICK
        return ready

    def _due_timers(self) -> float | None:
        """Register what waits to be, run the timers that are due; the wait until the next."""
        with self.lock:
            if self._pending_register:
                for conn, handler in self._pending_register:
                    self._register_now(conn, handler)
                self._pending_register.clear()
            now = time.monotonic()
            due = []
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
            if not due:
                return max(0.0, self._timers[0][0] - now) if self._timers else None
        for fn in due:
            try:
                fn()
            except Exception:
                self._report_bug()
        # they may have set timers (the periodic flush sets its next one)
        with self.lock:
            return max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else None

    def _dispatch(self, ready: list) -> None:
        for key, events in ready:
            if key.data is None:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    pass
                continue
            if key.data[0] == "listen":
                key.data[1]()
                continue
            conn, handler = key.data
            if events & selectors.EVENT_WRITE:
                self._flush(conn, True)
                if not events & selectors.EVENT_READ:
                    continue
            try:
                msgs = conn.feed()
            except Exception as e:  # closed, or a peer failed authentication
                try:
                    self.sel.unregister(conn.sock)
                except (KeyError, ValueError):
                    pass
                conn.close()
                try:
                    handler(conn, None)
                except Exception:
                    self._report_bug()
                if conn is self.daemon and self.running:
                    self._on_daemon_lost(e)
                continue
            try:
                handler(conn, msgs)
            except Exception:
                self._report_bug()

    def _report_bug(self) -> None:
        import traceback
        traceback.print_exc()

    def _on_daemon_lost(self, e: Exception) -> None:
        """Our node daemon is gone. A worker ends; a driver fails every request and every
        object still pending with LocalRayletDiedError (nothing could produce them now)
        and keeps its I/O loop serving its other connections."""
        if self.role == "worker":
            os._exit(1)
        self.daemon_lost = True
        with self.lock:
            reqs = dict(self.rpc.requests)
            self.rpc.requests.clear()
            pending = self.own.pending()
        self._answer_failed(list(reqs.values()), exc.LocalRayletDiedError())
        lost = error_payload(exc.LocalRayletDiedError())
        for oid in pending:
            self.set_payload(oid, lost)

    # ------------------------------------------------------------------ requests (_rpc.py)
    @property
    def _requests(self) -> dict[int, Any]:
        return self.rpc.requests

    def _fail_requests(self, conn: Connection) -> None:
        self.rpc.fail_requests(conn)

    def _answer_failed(self, callbacks: list, err: Any) -> None:
        self.rpc.answer_failed(callbacks, err)

    def _on_daemon_msgs(self, conn: Connection, msgs: list | None) -> None:
        self.rpc.on_daemon_msgs(conn, msgs)

    def daemon_send(self, msg: tuple) -> None:
        self.rpc.daemon_send(msg)

    def control(self) -> Connection:
        return self.rpc.control()

    def request(self, kind: int, *args: Any, timeout: float | None = None,
                conn: Connection | None = None) -> Any:
        return self.rpc.request(kind, *args, timeout=timeout, conn=conn)

    def request_async(self, kind: int, args: tuple, callback: Callable[[bool, Any], None],
                      conn: Connection | None = None) -> None:
        self.rpc.request_async(kind, args, callback, conn)

    def peer(self, node_id: str, address: str | None = None) -> Connection:
        return self.rpc.peer(node_id, address)

    def flush(self) -> None:
        self.rpc.flush()

    def _flush_periodic(self) -> None:
        self.flush()
        if self.running:
            self.call_later(0.1, self._flush_periodic)

    def record(self, task_id: bytes, state: str, ts: float | None = None, **attrs: Any) -> None:
        """A task event, sent with the next flush. A task that ends before its SUBMITTED
        went out sends one event for both: the final one with `submitted` (and the
        submission's attributes), which the event log reads as the two."""
        if state == "SUBMITTED":
            with self.lock:
                self._unsent_submits[task_id] = len(self._events)
                self._events.append((task_id.hex(), state, ts or _now(), attrs))
            return
        if state in TERMINAL_STATES:
            with self.lock:
                i = self._unsent_submits.pop(task_id, None)
                if i is not None:
                    hex_id, _, submitted, merged = self._events[i]
                    merged.update(attrs)
                    merged["submitted"] = submitted
                    self._events[i] = (hex_id, state, ts or _now(), merged)
                    return
        self._events.append((task_id.hex(), state, ts or _now(), attrs))

    def record_running(self, task_id: bytes, ts: float) -> None:
        """A task started here: its RUNNING event (this node, worker and process) goes
        out with the next flush, unless the task ends first (`ran`). No lock: one dict
        operation each (atomic), and the flush swaps the dict; an event that lands in the
        swapped-out dict a moment late is only lost for the running view (the submitter
        records RUNNING anyway)."""
        self._running_events[task_id] = ts

    def ran(self, task_id: bytes) -> None:
        self._running_events.pop(task_id, None)

    # ------------------------------------------------------------------ references
    def unmap_later(self, oid: bytes) -> None:
        """We no longer read `oid` here (no views left): the daemon may spill it."""
        self.rpc.unmap_later(oid)

    def _on_ref_zero(self, oid: bytes) -> None:
        with self.lock:
            self.own.ref_zero(oid)

    def release_blob_holds(self, oids: Sequence[bytes], node_id: str | None) -> None:
        """Queue releases of holds a worker took for us on references inside a value."""
        with self.lock:
            self.own.release_blob_holds(oids, node_id)

    def release_holds(self, oids: list[bytes], node_id: str | None) -> None:
        """Queue releases of our holds at `node_id`'s daemon (None: our node's)."""
        with self.lock:
            self.own.release_holds(oids, node_id)

    def new_owned(self, oid: bytes, name: str = "") -> LocalObject:
        with self.lock:
            return self.own.new_owned(oid, name)

    def export(self, refs: Sequence) -> None:
        """Make the objects behind `refs` known to the daemon with a hold of ours, before
        a reference to them leaves this process."""
        for ref in refs:
            oid = ref._id
            with self.lock:
                plan = self.own.begin_export(oid)
            if plan is None:
                continue
            contained = list(plan.blob_holds)
            homes = dict.fromkeys(plan.blob_holds, plan.home or self.node_id)
            if plan.keep:
                self.export(plan.keep)
                contained += [r._id for r in plan.keep]
                homes.update((r._id, self.home_of(r._id)) for r in plan.keep)
            self.hold_remote_contained(oid, homes)
            # the daemon's copy holds the contained refs from now on; our blob holds
            # (taken by a worker for a return value) go once it has them
            self.request(M.EXPORT, oid, plan.payload, contained, 1, plan.type_name)
            with self.lock:
                due = self.own.export_sent(oid)
            if due is not None:  # its value came while the EXPORT was on its way
                self._seal(oid, due)
            if plan.blob_holds:
                self.release_blob_holds(plan.blob_holds, plan.home)

    def seal_exported(self, oid: bytes, entry: LocalObject) -> None:
        """A pending object that was exported got its value: tell the daemon."""
        contained = list(entry.contained_ids)  # (a list on the wire)
        entry.contained_ids = ()
        if contained and entry.home and entry.home != self.node_id:
            self.hold_remote_contained(oid, dict.fromkeys(contained, entry.home))
        self.daemon_send((M.EXPORT, None, oid, entry.payload, contained, 0, entry.type_name))
        if contained:
            self.release_blob_holds(contained, entry.home)

    def home_of(self, oid: bytes) -> str:
        with self.lock:
            return self.own.home_of(oid)

    def remote_homes(self, refs: list) -> dict[bytes, str] | None:
        """The homes of `refs` (as read from a value) that are not our node, or None."""
        homes = {r._id: h for r in refs if (h := getattr(r, "_home", "")) and h != self.node_id}
        return homes or None

    def hold_remote_contained(self, oid: bytes, homes: dict[bytes, str]) -> None:
        """Before a value that refers to other nodes' objects is stored at our daemon:
        the value's holds on those (`obj:<oid>`, proxied to their homes) are taken first;
        the EXPORT's own holds then skip them."""
        remote = {c: h for c, h in homes.items() if h != self.node_id}
        if remote:
            self.request(M.INCREF, list(remote), "obj:" + oid.hex(), remote)

    def borrow(self, refs: list) -> None:
        """Refs just deserialized: take a daemon hold on those this process did not know
        (those whose entry lives on another node: held there through our daemon)."""
        self._borrow_ids([r._id for r in refs], self.remote_homes(refs))

    def _borrow_ids(self, oids: list[bytes], homes: dict[bytes, str] | None = None) -> None:
        with self.lock:
            new = self.own.borrow(oids)
        if new:
            want = None if homes is None else {o: homes[o] for o in new if o in homes} or None
            missing = self.request(M.INCREF, new, None, want) if want else self.request(M.INCREF, new)
            with self.lock:
                self.own.missing(missing, lost_payload)

    # ------------------------------------------------------------------ values (_values.py)
    def serialize(self, value: Any, oid: bytes | None = None, *, is_error: bool = False,
                  hold_contained: bool = False) -> tuple[tuple, list]:
        return self.values.serialize(value, oid, is_error=is_error, hold_contained=hold_contained)

    def protect_views(self) -> None:
        self.values.protect_views()

    def localize(self, oid: bytes, payload: tuple) -> tuple:
        return self.values.localize(oid, payload)

    def deserialize(self, oid: bytes, payload: tuple, held: bool = False) -> Any:
        return self.values.deserialize(oid, payload, held)

    def put(self, value: Any, _owner: Any = None) -> Any:
        return self.values.put(value, _owner)

    # ------------------------------------------------------------------ readiness
    def when_ready(self, oid: bytes, cb: Callable[[], None]) -> bool:
        """Call `cb` (from some thread) once the object has a payload; True if it has one now."""
        with self.lock:
            ready = self.own.when_ready(oid, cb)
        if ready == "fetch":
            self._fetch(oid)
        return ready == "now"

    def _fetch(self, oid: bytes) -> None:
        def done(ok: bool, value: Any) -> None:
            self.set_payload(oid, value if ok else error_payload(error_from_reply(value)))
        self.request_async(M.GET_OBJECT, (oid,), done)

    def set_payload(self, oid: bytes, payload: tuple) -> None:
        with self.lock:
            done = self.own.set_payload(oid, payload, self.daemon_lost)
            entry = self.objects.get(oid)
        self.payload_set(oid, entry, done)

    def payload_set(self, oid: bytes, entry: LocalObject | None, done: PayloadSet | None) -> None:
        """After `Ownership.set_payload` (under the lock): seal, and run the waiters."""
        if done is None or entry is None:
            return
        if done.seal:
            self._seal(oid, entry)
        for cb in done.waiters:
            try:
                cb()
            except Exception:
                self._report_bug()

    def _seal(self, oid: bytes, entry: LocalObject) -> None:
        self.seal_exported(oid, entry)
        with self.lock:
            orphan = self.own.sealed(oid, entry)
        if orphan:
            self._on_ref_zero(oid)

    def wait_payload(self, oid: bytes) -> tuple:
        """Block until the object has a payload again (it is being rebuilt) and return it."""
        w = _Waiter()
        if self.when_ready(oid, lambda: w.set(True, None)):
            w.set(True, None)
        self.wait_for(w, None)
        return self.payload_of(oid) or lost_payload(oid)

    def payload_of(self, oid: bytes) -> tuple | None:
        entry = self.objects.get(oid)
        if entry is None:
            return lost_payload(oid)
        return entry.payload

    def resolve_args(self, arg_refs: Sequence, node_id: str | None) -> tuple[list, list[bytes] | None]:
        """The resolved ref arguments of a task pushed to a worker on `node_id`: (object
        id, payload) each, and the ids of those sent as (id, payload, True).

        Those are objects in our node's store that this process maps (a value it put, or
        read a short while ago) while the worker is on our node: we keep each mapped,
        one more user, until the task's result (`release_maps`), so the worker reads it
        at once instead of first asking the daemon where it lives (a round trip per
        object and worker): the daemon spills no object a process maps."""
        if not arg_refs:
            return [], None
        out: list = []
        held: list[bytes] = []
        with self.lock:
            for r in arg_refs:
                oid = r._id
                payload = self.payload_of(oid)
                if (node_id == self.node_id and payload is not None and payload[0] == M.SHARED
                        and len(payload) > 4 and payload[4] == node_id):
                    mapped = self.rpc.maps.acquire(oid)
                    if mapped is not None:
                        out.append((oid, mapped, True))
                        held.append(oid)
                        continue
                out.append((oid, payload))
        return out, held

    def release_maps(self, oids: list[bytes] | None) -> None:
        """The task those maps were held for has its result (or its worker is gone)."""
        for oid in oids or ():
            self.rpc.unmap_later(oid)

    def _blocked(self) -> Callable[[], None] | None:
        """In a worker running a task: lend the task's CPU while it waits."""
        lease = getattr(self.current_task, "lease_id", None)
        if self.role != "worker" or not lease:
            return None
        self.daemon_send((M.BLOCKED, lease))
        return lambda: self.daemon_send((M.UNBLOCKED, lease))

    def get(self, refs: list, timeout: float | None) -> list:
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = [r._id for r in refs if self.payload_of(r._id) is None]
        if pending:
            ids = set(pending) if len(pending) > 1 else pending
            w = _Waiter()
            one = Countdown(len(ids), lambda: w.set(True, None))
            for oid in ids:
                if self.when_ready(oid, one):
                    one()
            unblock = self._blocked() if one.left else None
            try:
                if not self.wait_for(w, None if deadline is None else deadline - time.monotonic()):
                    raise exc.GetTimeoutError(
                        f"Get timed out: some object(s) not ready after {timeout} s "
                        f"({one.left} of {len(ids)} still pending).")
            finally:
                if unblock:
                    unblock()
        return [self.deserialize(r._id, self.payload_of(r._id)) for r in refs]  # type: ignore[arg-type]

    def wait(self, refs: list, num_returns: int, timeout: float | None) -> tuple[list, list]:
        """Refs, or ObjectRefGenerators (ready when their next item, or their end, is
        there), split into (ready, not ready)."""
        cond = threading.Condition()
        ready_ids: set[Any] = set()

        def key(r: Any) -> Any:
            return r._id if hasattr(r, "_id") else ("generator", r._task_id)

        def mark(k: Any) -> Callable[[], None]:
            def cb() -> None:
                with cond:
                    ready_ids.add(k)
                    cond.notify_all()
            return cb

        for r in refs:
            k = key(r)
            if k in ready_ids:
                continue
            now = (self.when_ready(r._id, mark(k)) if hasattr(r, "_id")
                   else r._state.when_ready(mark(k)))
            if now:
                ready_ids.add(k)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._role.need_loop()
        try:
            with cond:
                while sum(1 for r in refs if key(r) in ready_ids) < num_returns:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    cond.wait(left)
                snapshot = set(ready_ids)
        finally:
            self._role.loop_done()
        ready: list = []
        not_ready: list = []
        for r in refs:
            (ready if key(r) in snapshot and len(ready) < num_returns else not_ready).append(r)
        return ready, not_ready

    def future_for(self, ref: Any) -> Any:
        import concurrent.futures
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def done() -> None:
            payload = self.payload_of(ref._id)
            if self.on_loop_thread() and payload is not None and payload[0] == M.SHARED:
                # reading from the store asks the daemon where the value is: never on the
                # I/O thread, which must stay free to read that answer
                threading.Thread(target=finish, daemon=True).start()
            else:
                finish()

        def finish() -> None:
            try:
                fut.set_result(self.deserialize(ref._id, self.payload_of(ref._id)))  # type: ignore[arg-type]
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting code
                fut.set_exception(e)

        if self.when_ready(ref._id, done):
            done()
        return fut

    # ------------------------------------------------------------------ logs
    def on_log(self, task_id: bytes | None, stream: str, text: str, label: Any) -> None:
        tag = None
        if task_id is not None:
            tag = self.submitter.tag_of(task_id)
        handler = self.log_handler
        if handler is not None:
            try:
                handler(tag, stream, text)
                return
            except Exception:
                self._report_bug()
        import sys
        prefix = f"({label}) " if isinstance(label, str) else f"(pid={label.get('pid')}) " if label else ""
        out = sys.stderr if stream == "stderr" else sys.stdout
        lines = text.splitlines(True)
        out.write("".join(prefix + ln if ln.strip() else ln for ln in lines))
        if lines and not lines[-1].endswith("\n"):
            out.write("\n")
        out.flush()

    # ------------------------------------------------------------------ state
    def state_rows(self, kind: str) -> Any:
        self.flush()
        rows = self.request(M.STATE, kind)
        if kind == "objects":
            seen = {r["object_id"] for r in rows}
            with self.lock:
                for oid, e in self.objects.items():
                    if e.owned and oid.hex() not in seen:
                        rows.append({
                            "object_id": oid.hex(), "object_size": e.size if e.payload else None,
                            "reference_count": self.refs.count(oid),
                            "task_status": "FINISHED" if e.payload is not None else "PENDING",
                            "location": "shared_memory" if e.payload and e.payload[0] == M.SHARED else "inline",
                            "pid": self.pid, "node_id": self.node_id, "ip": "127.0.0.1",
                            "type": e.type_name, "spilled": False, "call_site": e.task_name,
                            "created_ms": int(e.created * 1000)})
        return rows

    # ------------------------------------------------------------------ placement groups
    def create_placement_group(self, bundles: list, strategy: str, name: str, lifetime: str | None) -> str:
        import secrets
        pg_id = secrets.token_hex(18)
        return self.request(M.PG_CREATE, pg_id, bundles, strategy, name, conn=self.control())  # type: ignore[no-any-return]

    def remove_placement_group(self, pg_id: str) -> None:
        self.request(M.PG_REMOVE, pg_id, conn=self.control())

    def placement_group_info(self, pg_id: str | None = None, name: str | None = None) -> Any:
        return self.request(M.PG_INFO, pg_id, name, conn=self.control())

    def wait_placement_group(self, pg_id: str, timeout: float | None) -> bool:
        w = _Waiter()
        req = next(self.rpc.req_ids)
        self._requests[req] = w
        conn = self.control()
        if conn is self.daemon:
            self.daemon_send((M.PG_WAIT, req, pg_id))
        else:
            conn.send((M.PG_WAIT, req, pg_id))
        if not self.wait_for(w, timeout):
            self._requests.pop(req, None)
            return False
        return bool(w.ok)

    def placement_group_ready(self, pg_id: str) -> Any:
        from ._ids import put_id
        from ._objects import ObjectRef
        oid = put_id()
        self.new_owned(oid, "placement_group.ready")
        ref = ObjectRef(oid, self.worker_id)

        def done(ok: bool, state: Any) -> None:
            if ok:
                data, bufs, _ = dumps(True)
                payload = inline_payload(data, bufs)
            else:
                payload = error_payload(exc.RaySystemError(
                    f"placement group {pg_id} was removed before it was ready"))
            self.set_payload(oid, payload)

        self.request_async(M.PG_WAIT, (pg_id,), done, conn=self.control())
        return ref

    def task_attr(self, name: str) -> Any:
        """What the running task (or, in an actor, the actor) has for `name`."""
        value = getattr(self.current_task, name, None)
        if value is None:
            value = self.actor_context.get(name)
        return value

    def current_placement_group_id(self) -> str | None:
        return self.task_attr("pg_id")  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        self.running = False
        self.wake()
        self._role.release_all()
        try:
            self.flush()
        except Exception:
            pass
        self.submitter.close()
        self.actor_submitter.close()
        if self._io is not threading.current_thread():
            self._io.join(timeout=2)
        self.daemon.close()
        self.arena.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def connect_core(*, address: str, token: bytes, role: str, worker_id: str, job_id: str,
                 namespace: str) -> CoreWorker:
    conn = connect(address, token)
    try:
        reply = first_reply(conn, (M.HELLO, 0, role, os.getpid(), {"worker_id": worker_id}))
    except TokenRefused:
        from .cluster import token_refused
        raise token_refused(address) from None
    except ConnectionClosed as e:
        raise ConnectionError(f"the carme node at {address} closed the connection before "
                              f"answering ({e})") from e
    info = reply[3]
    if not os.path.exists(info["store_file"]):
        conn.close()
        raise ConnectionError(
            f"the carme node at {address} runs on another machine (its object store "
            f"{info['store_file']} is not on this one); a driver connects to a node on its own "
            f"machine. Start one here with `carme start --address HEAD:PORT --host "
            f"<this machine's address>` (--num-cpus 0 keeps tasks off it) and pass the address "
            f"it prints to carme.init()")
    return CoreWorker(role=role, daemon_conn=conn, info=info, worker_id=worker_id,
                      job_id=job_id or info["job_id"], namespace=namespace or info["namespace"],
                      token=token)
