"""Normal-task submission: dependency resolution, worker leases, push, results, retries.

Theory of operation. A submitted task waits until its top-level ObjectRef arguments have
values (their payloads travel with the task, so the worker needs no lookups), then joins
the queue of its scheduling key (resource shape, strategy, runtime_env). Each queue asks
the node daemon for worker leases one at a time while it has a backlog, pipelines up to
PIPELINE tasks on each leased worker over a direct socket, and gives an idle lease back
after LEASE_IDLE seconds so a loop of one-at-a-time tasks reuses its worker. When a
worker's connection drops, its in-flight tasks are retried (max_retries) or failed with
WorkerCrashedError; a cancelled task is never retried.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import _messages as M
from . import exceptions as exc
from ._ids import return_id
from ._lineage import keeps_lineage, plan_rebuild
from ._protocol import Connection, ConnectionClosed, connect_first, worker_addresses
from ._rpc import Countdown
from ._task_messages import Item, Push, Result, read_from_worker
from ._task_tags import TaskTags

PIPELINE = 32
SHORT_TASK = 0.002
# a worker (or actor) holding this many earlier calls of ours gets the next ones posted
# (`Connection.post`): it has work queued while they wait for the batch
POST_AFTER = 4
UNREACHABLE_TRIES = 5  # granted workers in a row that cannot be reached before the tasks fail
NODE_UNREACHABLE_TRIES = 100  # lease requests in a row (0.3 s apart) to a node we cannot reach
LEASE_IDLE = 0.05


def landed(core: Any, spec: TaskSpec | None) -> None:
    """(Under the lock) `spec` left its worker's in-flight set: its result came, or the
    worker is gone. The maps held for its push (`CoreWorker.resolve_args`) go back."""
    if spec is not None and spec.maps:
        core.release_maps(spec.maps)
        spec.maps = None


def _home(payload: tuple, lease: Any) -> str | None:
    """The node whose daemon has the hold on a return value (where it was made)."""
    if payload[0] == M.SHARED and len(payload) > 4:
        return payload[4]  # type: ignore[no-any-return]
    return None


class TaskSpec:
    """One task or actor call, as its submitter tracks it until its result arrives.

    Slotted: tens of thousands may be queued at once, and an instance dict with this many
    keys outgrows CPython's shared-key limit (over 1 KB a task).
    """

    __slots__ = ("task_id", "name", "fn_key", "fn_blob", "args", "ref_pos", "arg_refs",
                 "num_returns", "streaming", "retries_left", "retry_exceptions", "queue_key",
                 "shape", "strategy", "runtime_env", "tag", "return_ids", "parent", "method",
                 "actor_id", "seq", "max_task_retries", "max_calls", "cancelled", "lease",
                 "attempt", "done", "stream", "keep", "pg_capture", "dynamic", "maps")

    task_id: bytes
    name: str
    fn_key: bytes
    fn_blob: bytes | None
    args: tuple
    ref_pos: list | tuple
    arg_refs: list | tuple
    num_returns: int
    streaming: bool
    retries_left: int
    retry_exceptions: Any
    queue_key: Any
    shape: dict
    strategy: Any
    runtime_env: dict | None
    tag: Any
    return_ids: tuple
    parent: str | None
    method: str

    def __init__(self) -> None:
        self.actor_id: bytes | None = None
        self.seq = 0
        self.max_task_retries: int | None = None
        self.max_calls = 0
        self.cancelled = False
        self.lease: Lease | None = None
        self.attempt = 0
        self.done = False
        self.stream: StreamState | None = None
        self.keep: list | tuple = ()
        self.pg_capture = False  # its children go into its placement group
        self.dynamic = False  # num_returns="dynamic": one DynamicObjectRefGenerator
        self.maps: list[bytes] | None = None  # arguments kept mapped for its push (`resolve_args`)

    @property
    def wire_returns(self) -> Any:
        """num_returns as the worker reads it."""
        return "dynamic" if self.dynamic else self.num_returns


class StreamState:
    """Items of a streaming generator task as they arrive."""

    def __init__(self, core: Any, task_id: bytes) -> None:
        self.core = core
        self.task_id = task_id
        self.cond = threading.Condition()
        self.items: deque = deque()
        self.count = 0
        self.finished = False
        self.completed_ref: Any = None
        self.waiters: list = []

    def add(self, ref: Any) -> None:
        with self.cond:
            self.items.append(ref)
            self.count += 1
            self.cond.notify_all()
        self._wake()

    def finish(self) -> None:
        with self.cond:
            self.finished = True
            self.cond.notify_all()
        self._wake()

    def when_ready(self, cb: Any) -> bool:
        """Call `cb` once a next item (or the end) is there; True if it is now (wait())."""
        with self.cond:
            if self.items or self.finished:
                return True
            self.waiters.append(cb)
            return False

    def _wake(self) -> None:
        with self.cond:
            waiters, self.waiters = self.waiters, []
        for cb in waiters:
            cb()

    def next(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        role = self.core._role
        role.need_loop()
        try:
            with self.cond:
                while not self.items:
                    if self.finished:
                        raise StopIteration
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise exc.GetTimeoutError("no new item within the timeout")
                    self.cond.wait(left)
                return self.items.popleft()
        finally:
            role.loop_done()


class Lease:
    __slots__ = ("lease_id", "worker_id", "address", "pid", "gpu_ids", "conn", "inflight",
                 "sent_fns", "queue", "dead", "node_id", "idle_since", "idle_timer", "daemon")

    def __init__(self, grant: dict, conn: Connection, queue: Any) -> None:
        self.lease_id = grant["lease_id"]
        self.worker_id = grant["worker_id"]
        self.address = grant["address"]
        self.pid = grant["pid"]
        self.gpu_ids = grant["gpu_ids"]
        self.node_id = grant["node_id"]
        self.conn = conn
        self.inflight: dict[bytes, TaskSpec] = {}
        self.sent_fns: set[bytes] = set()
        self.queue = queue
        self.dead = False
        self.idle_since = 0.0  # when it last went idle (`maybe_idle`)
        self.idle_timer = False  # its idle check is set (one at a time)
        self.daemon: Connection | None = None  # the node daemon that granted it


class SchedQueue:
    __slots__ = ("key", "shape", "strategy", "runtime_env", "tasks", "leases", "requesting", "desc",
                 "avg_duration", "unreachable", "unreachable_nodes", "retriable")

    def __init__(self, key: Any, spec: TaskSpec) -> None:
        self.key = key
        self.shape = spec.shape
        self.strategy = spec.strategy
        self.runtime_env = spec.runtime_env
        self.tasks: deque[TaskSpec] = deque()
        self.leases: list[Lease] = []
        self.requesting = False
        self.desc = f"task {spec.name}"
        self.retriable = spec.retries_left != 0  # (part of the key: every task of the queue)
        self.avg_duration = 1.0  # unknown until the first result: assume long
        self.unreachable = 0  # granted workers in a row that could not be connected to
        self.unreachable_nodes = 0  # lease requests in a row whose node could not be reached


class TaskSubmitter:
    def __init__(self, core: Any) -> None:
        self.core = core
        self.lock = core.lock
        self.queues: dict[Any, SchedQueue] = {}
        self.tasks: dict[bytes, TaskSpec] = {}
        self.tags = TaskTags()

    # ------------------------------------------------------------------ submit
    def submit(self, spec: TaskSpec) -> None:
        core = self.core
        with self.lock:
            self.tasks[spec.task_id] = spec
            if spec.tag is not None or spec.name:
                self.tags[spec.task_id] = (spec.tag, spec.name)
        core.record(spec.task_id, "SUBMITTED", name=spec.name, func_name=spec.name,
                    type="NORMAL_TASK", job_id=core.job_id, tag=spec.tag,
                    parent_task_id=spec.parent, required_resources=spec.shape,
                    attempt=spec.attempt)
        self.resolve_then(spec, self.enqueue)

    def resolve_then(self, spec: TaskSpec, then: Any) -> None:
        refs = spec.arg_refs
        if not refs:
            then(spec)
            return
        missing = [r._id for r in refs if self.core.payload_of(r._id) is None]
        if not missing:
            then(spec)
            return
        ids = set(missing)
        one = Countdown(len(ids), lambda: then(spec))
        for oid in ids:
            if self.core.when_ready(oid, one):
                one()

    def dep_error(self, spec: TaskSpec) -> tuple | None:
        for r in spec.arg_refs:
            p = self.core.payload_of(r._id)
            if p is not None and p[3]:
                return p
        return None

    def enqueue(self, spec: TaskSpec) -> None:
        if spec.done:
            return
        if spec.cancelled:
            self.fail(spec, exc.TaskCancelledError(spec.task_id.hex()))
            return
        err = self.dep_error(spec)
        if err is not None:
            # an argument failed: this task fails with that error, without running
            self.core.record(spec.task_id, "FAILED", error_type="RayTaskError",
                             error_message="an argument of this task failed")
            self.finish(spec, [err] * max(spec.num_returns, 1), None)
            return
        with self.lock:
            q = self.queues.get(spec.queue_key)
            if q is None:
                q = self.queues[spec.queue_key] = SchedQueue(spec.queue_key, spec)
            q.tasks.append(spec)
        self.dispatch(q)

    def dispatch(self, q: SchedQueue) -> None:
        """Push queued tasks onto leased workers; ask for one more lease when all are busy.

        A worker gets more than one task at a time only when this queue's tasks are
        short (PIPELINE when they take under SHORT_TASK seconds, else 1), so long tasks
        spread over workers while tiny ones are not held up by round trips."""
        sends: list[tuple[Lease, TaskSpec]] = []
        request = False
        with self.lock:
            depth = PIPELINE if q.avg_duration < SHORT_TASK else 1
            live = [ls for ls in q.leases if not ls.dead]
            while q.tasks:
                lease = min(live, key=lambda ls: len(ls.inflight), default=None)
                if lease is None or len(lease.inflight) >= depth:
                    break
                if lease.inflight and not q.requesting:
                    q.requesting = request = True
                spec = q.tasks.popleft()
                spec.lease = lease
                lease.inflight[spec.task_id] = spec
                sends.append((lease, spec))
            if q.tasks and not q.requesting:
                q.requesting = request = True
        for lease, spec in sends:
            self.push(lease, spec)
        if request:
            self.request_lease(q)

    def request_lease(self, q: SchedQueue) -> None:
        def granted(ok: bool, value: Any) -> None:
            if ok and "spillback" in value:
                # another node fits: ask it (it grants there or queues, never bounces)
                try:
                    peer = self.core.peer(value["spillback"], value.get("address"))
                    self.core.request_async(M.LEASE, (q.shape, q.strategy, q.runtime_env, q.desc, True,
                                                      q.retriable),
                                            granted, conn=peer)
                    return
                except (OSError, ConnectionClosed) as e:
                    ok, value = False, ("NodeDiedError", f"could not reach node {value['spillback'][:8]}: {e}")
            if not ok and isinstance(value, tuple) and value[0] == "NodeDiedError":
                # that node is gone; once the cluster view says so (NODE_TIMEOUT, 5 s), the
                # lease goes elsewhere. A node that stays in the view but cannot be reached
                # from here was started with an address this machine cannot reach.
                with self.lock:
                    q.requesting = False
                    q.unreachable_nodes += 1
                    failed: list[TaskSpec] = []
                    if q.unreachable_nodes >= NODE_UNREACHABLE_TRIES:
                        q.unreachable_nodes = 0
                        failed = list(q.tasks)
                        q.tasks.clear()
                if not failed:
                    self.core.call_later(0.3, lambda: self.dispatch(q))
                    return
                error = exc.NodeDiedError(
                    f"{q.desc}: the node chosen for it could not be reached from this process "
                    f"{NODE_UNREACHABLE_TRIES} times in a row over about "
                    f"{NODE_UNREACHABLE_TRIES * 0.3:.0f} s while the cluster still lists it as "
                    f"alive ({value[1]}). A node that others reach over the network must listen "
                    f"on an address they can reach: `carme start --address HEAD:PORT --host "
                    f"<that address>` (by default it takes the address it reaches the head from)")
                for spec in failed:
                    self.fail(spec, error)
                return
            if not ok:
                with self.lock:
                    q.requesting = False
                    failed = list(q.tasks)
                    q.tasks.clear()
                from ._rpc import error_from_reply
                err = error_from_reply(value)
                for spec in failed:
                    self.fail(spec, err)
                return
            try:
                conn = connect_first(worker_addresses(value, self.core.node_id), self.core.token,
                                     M.Peer(self.core.worker_id).wire())
            except OSError as e:
                self.unreachable(q, value, e)
                return
            lease = Lease(value, conn, q)
            lease.daemon = self.core.peers.get(value["node_id"]) if value["node_id"] != self.core.node_id else None
            with self.lock:
                q.requesting = False
                q.unreachable = q.unreachable_nodes = 0
                q.leases.append(lease)
            self.core.register(conn, lambda c, msgs, lease=lease: self.on_worker_msgs(lease, msgs))
            self.dispatch(q)
            self.maybe_idle(lease)

        try:
            self.core.request_async(M.LEASE, (q.shape, q.strategy, q.runtime_env, q.desc, False,
                                              q.retriable), granted)
        except ConnectionClosed:
            granted(False, ("LocalRayletDiedError", "the node daemon is gone"))

    def unreachable(self, q: SchedQueue, grant: dict, err: OSError) -> None:
        """A granted worker could not be connected to: give the lease back and ask again
        after a pause that grows, at most UNREACHABLE_TRIES times in a row; then the
        queued tasks fail saying where the worker was and why it could not be reached
        (never a loop of leases that fork workers nobody can use)."""
        holder = self.core.peers.get(grant["node_id"]) if grant["node_id"] != self.core.node_id else None
        try:
            if holder is not None:
                holder.send((M.RETURN_LEASE, grant["lease_id"], False))
            else:
                self.core.daemon_send((M.RETURN_LEASE, grant["lease_id"], False))
        except (ConnectionClosed, exc.RayError):
            pass  # that daemon is gone, and the lease with it
        with self.lock:
            q.requesting = False
            q.unreachable += 1
            tries = q.unreachable
            failed: list[TaskSpec] = []
            if tries >= UNREACHABLE_TRIES:
                q.unreachable = 0
                failed = list(q.tasks)
                q.tasks.clear()
        if not failed:
            self.core.call_later(0.1 * 2 ** (tries - 1), lambda: self.dispatch(q))
            return
        error = exc.RaySystemError(
            f"{q.desc}: node {grant['node_id'][:12]} granted a worker {UNREACHABLE_TRIES} times in "
            f"a row that this process could not connect to ({err}). A node that others reach "
            f"over the network must be started with the address they reach it by "
            f"(`carme start --host ADDRESS`), and that address must be reachable from here.")
        for spec in failed:
            self.fail(spec, error)

    def push(self, lease: Lease, spec: TaskSpec) -> None:
        fn_blob = None
        if spec.fn_key not in lease.sent_fns:
            fn_blob = spec.fn_blob
            lease.sent_fns.add(spec.fn_key)
        with self.lock:  # holds only while it is in flight: leaving in-flight gives them back
            landed(self.core, spec)
            live = lease.inflight.get(spec.task_id) is spec
            resolved, spec.maps = self.core.resolve_args(spec.arg_refs, lease.node_id if live else None)
            # the worker has earlier tasks of ours to run first: this one can go with others
            busy = len(lease.inflight) > POST_AFTER
        try:
            lease.conn.post([Push(M.PUSH, spec.task_id, spec.fn_key, fn_blob, spec.args, spec.ref_pos,
                                  resolved, spec.wire_returns, spec.streaming, spec.name,
                                  lease.lease_id, lease.gpu_ids, spec.attempt, spec.shape,
                                  getattr(spec.strategy, "pg_id", None), spec.max_calls,
                                  spec.pg_capture).wire()],
                            self.core.flush_soon if busy else None)
        except ConnectionClosed:
            pass  # the reader sees the close and retries the in-flight tasks

    # ------------------------------------------------------------------ results
    def on_worker_msgs(self, lease: Lease, msgs: list | None) -> None:
        if msgs is None:
            self.on_worker_lost(lease)
            return
        self.on_replies(lease.inflight, msgs, lambda result: self.on_result(lease, result))

    def on_replies(self, inflight: dict, msgs: list, on_result: Callable[[Result], None]) -> None:
        """A worker connection's messages (this submitter's or the actor submitter's):
        each read and checked at the boundary, then handed on by kind."""
        for msg in msgs:
            try:
                typed = read_from_worker(msg)
            except M.BadMessage as e:
                self.refused(inflight, msg, e)
                continue
            if isinstance(typed, Result):
                on_result(typed)
            elif isinstance(typed, Item):
                self.on_item(typed)
            else:
                self.core.on_log(typed.task_id, typed.stream, typed.text, typed.label)

    def refused(self, inflight: dict, msg: Any, err: Exception) -> None:
        """A malformed message from a worker: nothing of it is stored; the task it names
        (one of this connection's in-flight tasks) fails with the reason."""
        print(f"carme: refused a message from a worker: {err}", file=sys.__stderr__, flush=True)
        task_id = msg[1] if type(msg) is tuple and len(msg) > 1 and type(msg[1]) is bytes else None
        with self.lock:
            spec = inflight.pop(task_id, None)
            landed(self.core, spec)
        if spec is not None:
            self.fail(spec, exc.RaySystemError(f"a malformed reply from the task's worker was refused: {err}"))

    def on_item(self, item: Item) -> None:
        task_id, index, payload, contained = item.task_id, item.position, item.payload, item.contained
        spec = self.tasks.get(task_id)
        if spec is None or spec.stream is None:
            if contained:
                self.core.release_blob_holds(contained, None)
            return
        from ._objects import ObjectRef
        oid = return_id(task_id, index + 1)
        entry = self.core.new_owned(oid, spec.name)
        entry.contained_ids = contained
        entry.held = entry.exported = payload[0] == M.SHARED
        entry.home = _home(payload, spec.lease)
        entry.payload = payload
        spec.stream.add(ObjectRef(oid, self.core.worker_id))

    def on_result(self, lease: Lease, result: Result) -> None:
        info = result.info
        with self.lock:
            spec = lease.inflight.pop(result.task_id, None)
            landed(self.core, spec)
        if spec is not None:
            q = lease.queue
            if info.get("end") and info.get("start"):
                q.avg_duration = 0.7 * min(q.avg_duration, 0.1) + 0.3 * (info["end"] - info["start"])
            self.handle_result(spec, result.payloads, result.contained, info,
                               (lease.node_id, lease.worker_id, lease.pid))
        if lease.queue.tasks:  # (else nothing to push: a task queued meanwhile dispatches itself)
            self.dispatch(lease.queue)
        self.maybe_idle(lease)

    def handle_result(self, spec: TaskSpec, payloads: list, contained: list, info: dict,
                      ran_by: tuple[str | None, str | None, int | None]) -> None:
        """A result from the worker `ran_by` (node id, worker id, pid) for `spec`."""
        core = self.core
        node_id, worker_id, pid = ran_by
        failed = bool(payloads) and payloads[0][3]
        if (failed and str(info.get("error_type", "")).startswith("Object") and not spec.cancelled
                and self._rebuild_lost_arg(spec, payloads[0])):
            for c in contained:
                if c:
                    core.release_blob_holds(c, node_id)
            return
        if failed and info.get("retryable") and not spec.cancelled and self._retry_ok(spec, payloads[0]):
            for c in contained:
                if c:
                    core.release_blob_holds(c, node_id)
            self.retry(spec)
            return
        # one event for RUNNING (`started`) and the end; the worker reported RUNNING only
        # if the task ran past its flush, with the same time, and the log keeps one of them
        if failed:
            core.record(spec.task_id, "FAILED", ts=info.get("end"), started=info.get("start"),
                        node_id=node_id, worker_id=worker_id, worker_pid=pid,
                        error_type=info.get("error_type"), error_message=info.get("error_message"))
        else:  # (no error fields: fewer to merge, send and store, per task)
            core.record(spec.task_id, "FINISHED", ts=info.get("end"), started=info.get("start"),
                        node_id=node_id, worker_id=worker_id, worker_pid=pid)
        self.finish(spec, payloads, contained, node_id)

    def _rebuild_lost_arg(self, spec: TaskSpec, payload: tuple) -> bool:
        """The task failed because an argument of ours was lost with its node: make the
        argument again from its lineage and run the task once it is back (the task's own
        retries are not spent; the argument's task spends one of its own). False when
        that is not what happened, or the argument cannot be rebuilt."""
        try:
            self.core.deserialize(b"", payload)
        except exc.ObjectLostError as lost:
            try:
                oid = bytes.fromhex(lost.object_ref_hex)
            except ValueError:
                return False
            if all(r._id != oid for r in spec.arg_refs):
                return False
            try:
                self.rebuild(oid, lost)
            except exc.ObjectLostError:
                return False
            spec.attempt += 1
            spec.lease = None
            self.core.record(spec.task_id, "SUBMITTED", attempt=spec.attempt)
            self.resolve_then(spec, self.enqueue)
            return True
        except BaseException:  # noqa: BLE001 - any other error: the task's own failure
            return False
        return False

    def _retry_ok(self, spec: TaskSpec, payload: tuple) -> bool:
        if spec.retries_left == 0 or not spec.retry_exceptions:
            return False
        if spec.retry_exceptions is True:
            return True
        try:
            self.core.deserialize(b"", payload)
        except BaseException as e:  # noqa: BLE001
            cause = getattr(e, "cause", e)
            return isinstance(cause, tuple(spec.retry_exceptions))
        return False

    def retry(self, spec: TaskSpec) -> None:
        if spec.retries_left > 0:
            spec.retries_left -= 1
        spec.attempt += 1
        spec.lease = None
        self.core.record(spec.task_id, "SUBMITTED", attempt=spec.attempt)
        self.enqueue(spec)

    def finish(self, spec: TaskSpec, payloads: list, contained: list | None,
               info_node: str | None = None) -> None:
        core = self.core
        spec.done = True
        with self.lock:
            self.tasks.pop(spec.task_id, None)
            (self.tags if spec.actor_id is None else self.core.actor_submitter.tags).finished(spec.task_id)
        if spec.stream is not None:
            if payloads and payloads[0][3]:
                # an error before or during generation: it is the next item
                from ._objects import ObjectRef
                oid = return_id(spec.task_id, spec.stream.count + 1)
                entry = core.new_owned(oid, spec.name)
                entry.payload = payloads[0]
                spec.stream.add(ObjectRef(oid, core.worker_id))
            spec.stream.finish()
            spec.keep = ()
            return
        lineage = spec if keeps_lineage(spec, payloads) else None
        if lineage is not None:
            spec.lease = None  # what a re-run needs is the spec, not the worker it ran on
        for i, oid in enumerate(spec.return_ids):
            payload = payloads[i] if i < len(payloads) else payloads[0]
            with core.lock:
                entry = core.objects.get(oid)
                home = _home(payload, spec.lease) or info_node
                if entry is None:
                    # nobody holds the return any more: drop what the worker made for it
                    if payload[0] == M.SHARED:
                        core.release_holds([oid], home)
                    if contained and i < len(contained) and contained[i]:
                        core.release_blob_holds(contained[i], home)
                    continue
                if entry.exported and entry.home is None and payload[0] == M.SHARED \
                        and home and home != core.node_id:
                    core.own.held_here.add(oid)  # (our daemon's entry holds the copy on `home`)
                entry.home = home
                entry.lineage = lineage
                entry.actor_return = spec.actor_id is not None
                if contained and i < len(contained) and contained[i]:
                    entry.contained_ids = contained[i]
                done = core.own.returned(oid, entry, payload, home, core.daemon_lost)
            core.payload_set(oid, entry, done)
        if lineage is None:
            spec.keep = ()
            spec.arg_refs = ()

    def rebuild(self, oid: bytes, lost: exc.ObjectLostError) -> None:
        """`oid`'s only copy was lost with its node: run the tasks that make it again
        (`_lineage.py`), or raise the error that says why it cannot be rebuilt. Returns
        once they are resubmitted; the object is pending until its new value comes."""
        with self.core.lock:
            plan = plan_rebuild(self.core.objects, oid, lost)
        for spec in plan:
            spec.retries_left -= 1 if spec.retries_left > 0 else 0
            spec.attempt += 1
            spec.done = spec.cancelled = False
            spec.lease = None
            with self.lock:
                self.tasks[spec.task_id] = spec
                if spec.tag is not None or spec.name:
                    self.tags[spec.task_id] = (spec.tag, spec.name)
            self.core.record(spec.task_id, "SUBMITTED", attempt=spec.attempt)
            self.resolve_then(spec, self.enqueue)

    def fail(self, spec: TaskSpec, err: BaseException) -> None:
        from ._values import error_payload
        payload = error_payload(err)
        self.core.record(spec.task_id, "FAILED", error_type=type(err).__name__, error_message=str(err)[:500])
        self.finish(spec, [payload] * max(spec.num_returns, 1), None)

    def on_worker_lost(self, lease: Lease) -> None:
        with self.lock:
            lease.dead = True
            q = lease.queue
            if lease in q.leases:
                q.leases.remove(lease)
            lost = list(lease.inflight.values())
            lease.inflight.clear()
            for spec in lost:
                landed(self.core, spec)
        if not lost:
            self.dispatch(q)
            return

        def decide(ok: bool, oom_reason: Any) -> None:
            # the worker's node says whether its memory monitor killed it (and why)
            oom = oom_reason if ok and isinstance(oom_reason, str) else None
            for spec in lost:
                if spec.cancelled:
                    self.fail(spec, exc.TaskCancelledError(spec.task_id.hex()))
                elif spec.retries_left != 0:  # OOM kills too: Ray retries them up to max_retries
                    self.retry(spec)
                elif oom is not None:
                    self.fail(spec, exc.OutOfMemoryError(
                        f"Task {spec.name!r} failed and has no retries left (max_retries). {oom}"))
                else:
                    self.fail(spec, exc.WorkerCrashedError(
                        f"The worker running task {spec.name!r} (pid {lease.pid}) died unexpectedly "
                        f"and the task has no retries left (max_retries)."))
            self.dispatch(q)

        self.core.request_async(M.WORKER_DEATH, (lease.worker_id,), decide, conn=lease.daemon)

    def maybe_idle(self, lease: Lease) -> None:
        """`lease` may have gone idle: it goes back LEASE_IDLE s after it last did, unless
        work came meanwhile. One check is set per lease at a time (a timer per result
        would end a waiting `get`'s step every call, about when its answer comes)."""
        if lease.inflight or lease.dead:
            return
        with self.lock:
            lease.idle_since = time.monotonic()
            if lease.idle_timer:
                return
            lease.idle_timer = True
        self.core.call_later(LEASE_IDLE, functools.partial(self._idle_check, lease))

    def _idle_check(self, lease: Lease) -> None:
        with self.lock:
            if lease.dead or lease.inflight or lease.queue.tasks:
                lease.idle_timer = False  # busy: the next `maybe_idle` sets a new check
                return
            left = lease.idle_since + LEASE_IDLE - time.monotonic()
            if left > 0:  # busy and idle again since this check was set
                self.core.call_later(left, functools.partial(self._idle_check, lease))
                return
            lease.idle_timer = False
            lease.dead = True
            if lease in lease.queue.leases:
                lease.queue.leases.remove(lease)
        self.core.close_conn(lease.conn)
        try:
            if lease.daemon is not None:
                lease.daemon.send((M.RETURN_LEASE, lease.lease_id, True))
            else:
                self.core.daemon_send((M.RETURN_LEASE, lease.lease_id, True))
        except ConnectionClosed:
            pass

    # ------------------------------------------------------------------ cancel
    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> bool:
        with self.lock:
            spec = self.tasks.get(task_id)
            if spec is None or spec.done:
                return False
            if spec.actor_id is not None:
                return self.core.actor_submitter.cancel(spec, force, recursive)  # type: ignore[no-any-return]
            spec.cancelled = True
            lease = spec.lease
            queued = False
            for q in self.queues.values():
                if spec in q.tasks:
                    q.tasks.remove(spec)
                    queued = True
        if queued or lease is None:
            # queued, or still waiting on its arguments: fail it now; enqueue() skips it
            self.fail(spec, exc.TaskCancelledError(task_id.hex()))
            return True
        if force:
            if lease.daemon is not None:
                lease.daemon.send((M.KILL_WORKER, lease.worker_id))
            else:
                self.core.daemon_send((M.KILL_WORKER, lease.worker_id))
        else:
            try:
                lease.conn.send(M.Cancel(task_id, bool(force), bool(recursive)).wire())
            except ConnectionClosed:
                pass
        return True

    def cancel_children(self, parent: str) -> None:
        for spec in list(self.tasks.values()):
            if spec.parent == parent:
                self.cancel(spec.task_id, False, True)

    def cancel_matching(self, match: Any, force: bool) -> int:
        n = 0
        for spec in list(self.tasks.values()):
            if match(spec.tag) and self.cancel(spec.task_id, force, True):
                n += 1
        return n

    def tag_of(self, task_id: bytes) -> Any:
        t = self.tags.get(task_id)
        if t is None:
            t = self.core.actor_submitter.tags.get(task_id)
        return t[0] if t else None

    def name_of(self, task_id: bytes) -> str:
        t = self.tags.get(task_id) or self.core.actor_submitter.tags.get(task_id)
        return t[1] if t else ""

    def close(self) -> None:
        for q in self.queues.values():
            for lease in q.leases:
                lease.conn.close()
