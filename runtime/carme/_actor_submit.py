"""Actor-call submission: one ordered stream of calls per (caller, actor).

Theory of operation. A caller keeps, per actor, a queue of calls in submission order and
one direct connection to the actor's worker. Calls are sent strictly in order, each
once its top-level ObjectRef arguments have values; the single connection keeps that
order on the wire and the actor runs them in that order (concurrency > 1 excepted, as
in Ray). Until the actor's address is known, and while it restarts, calls wait in the
queue; the node daemon answers ACTOR_INFO when the actor is alive or dead. When the
connection drops, calls in flight are retried (max_task_retries) or fail with
ActorDiedError, and the caller asks the daemon again.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from . import _messages as M
from . import exceptions as exc
from ._protocol import Connection, ConnectionClosed, connect_first, worker_addresses
from ._submit import POST_AFTER, TaskSpec, landed
from ._task_messages import ActorCall, Result
from ._task_tags import TaskTags

UNREACHABLE_TRIES = 8  # actor lookups in a row that cannot reach the actor (pauses add up to ~5 s)


class ActorState:
    __slots__ = ("actor_id", "actor_hex", "conn", "status", "queue", "inflight", "death", "class_name",
                 "max_task_retries", "pid", "ordered", "lost_pid", "unreachable", "worker_id", "node_id")

    def __init__(self, actor_id: bytes, class_name: str, max_task_retries: int) -> None:
        self.actor_id = actor_id
        self.actor_hex = actor_id.hex()  # (each call's event names it)
        self.conn: Connection | None = None
        self.status = "unresolved"  # resolving, connected, dead
        self.queue: deque[TaskSpec] = deque()
        self.inflight: dict[bytes, TaskSpec] = {}
        self.death: BaseException | None = None
        self.class_name = class_name
        self.max_task_retries = max_task_retries
        self.pid: int | None = None
        self.lost_pid: int | None = None  # the worker whose connection we saw drop
        self.worker_id: str | None = None  # its worker, and that worker's node (to ask why it died)
        self.node_id: str | None = None
        # a sync actor runs calls in submission order, so each waits for the one before;
        # an async or threaded one gets every call as soon as its arguments are ready
        self.ordered = True
        self.unreachable = 0  # lookups in a row whose worker address could not be connected to


class ActorSubmitter:
    def __init__(self, core: Any) -> None:
        self.core = core
        self.lock = core.lock
        self.actors: dict[bytes, ActorState] = {}
        self.tags = TaskTags()
        self.ready: set[bytes] = set()

    def state(self, actor_id: bytes, class_name: str = "", max_task_retries: int = 0) -> ActorState:
        st = self.actors.get(actor_id)  # (one dict read: no lock for an actor we know)
        if st is not None:
            return st
        with self.lock:
            st = self.actors.get(actor_id)
            if st is None:
                st = self.actors[actor_id] = ActorState(actor_id, class_name, max_task_retries)
            return st

    def submit(self, spec: TaskSpec, class_name: str, max_task_retries: int,
               ordered: bool = True) -> None:
        core = self.core
        assert spec.actor_id is not None
        st = self.state(spec.actor_id, class_name, max_task_retries)
        st.ordered = ordered
        if st.status == "unresolved":
            # learn where the head is here, on the caller's thread: the I/O thread that
            # resolves the actor later cannot wait for a reply it must read itself
            core.control()
        spec.retries_left = spec.max_task_retries if spec.max_task_retries is not None else st.max_task_retries
        core.record(spec.task_id, "SUBMITTED", name=spec.name, func_name=spec.name,
                    type="ACTOR_TASK", job_id=core.job_id, tag=spec.tag,
                    actor_id=st.actor_hex, parent_task_id=spec.parent)
        ready = not spec.arg_refs  # (nothing to wait for: ready in the same turn of the lock)
        with self.lock:
            self.tags[spec.task_id] = (spec.tag, spec.name)
            core.submitter.tasks[spec.task_id] = spec
            # the common call: no ref arguments, the actor connected, no call waiting
            # before it: in flight at once (what `drain` would do, without the queue)
            direct = ready and not st.queue and st.status == "connected" and st.conn is not None
            if direct:
                st.inflight[spec.task_id] = spec
                busy = len(st.inflight) > POST_AFTER  # (as in `drain`: earlier calls in hand)
            else:
                st.queue.append(spec)
                if ready:
                    self.ready.add(spec.task_id)
        if direct:
            self._post(st, [ActorCall(M.ACTOR_CALL, spec.task_id, spec.method, spec.args, spec.ref_pos, [],
                                      spec.wire_returns, spec.streaming, spec.name, spec.attempt).wire()],
                       busy)
        elif ready:
            self.drain(st)
        else:
            core.submitter.resolve_then(spec, lambda s: self.mark_ready(st, s))

    def _post(self, st: ActorState, msgs: list, busy: bool) -> None:
        """Send calls to the actor: posted (sent with others soon) while it has earlier
        calls of ours in hand, else at once."""
        conn = st.conn
        if conn is None:
            return  # (lost meanwhile: `on_lost` retries or fails what is in flight)
        try:
            conn.post(msgs, self.core.flush_soon if busy else None)
        except ConnectionClosed:
            pass

    def mark_ready(self, st: ActorState, spec: TaskSpec) -> None:
        with self.lock:
            self.ready.add(spec.task_id)
        self.drain(st)

    def drain(self, st: ActorState) -> None:
        sends = []
        fails: list[tuple[TaskSpec, BaseException]] = []
        resolve = False
        with self.lock:
            if st.status == "dead":
                while st.queue:
                    fails.append((st.queue.popleft(), st.death or exc.ActorDiedError("the actor is dead")))
            elif st.status == "connected":
                for spec in self._sendable(st):
                    self.ready.discard(spec.task_id)
                    if spec.cancelled:
                        fails.append((spec, exc.TaskCancelledError(spec.task_id.hex())))
                        continue
                    err = self.core.submitter.dep_error(spec)
                    if err is not None:
                        self.core.submitter.finish(spec, [err] * max(spec.num_returns, 1), None)
                        continue
                    st.inflight[spec.task_id] = spec
                    sends.append(spec)
            elif st.status == "unresolved" and st.queue:
                st.status = "resolving"
                resolve = True
        for spec, err in fails:
            self.ready.discard(spec.task_id)
            self.core.submitter.fail(spec, err)
        if sends and st.conn is not None:
            msgs = []
            with self.lock:  # holds only while it is in flight (see TaskSubmitter.push)
                for spec in sends:
                    landed(self.core, spec)
                    live = st.inflight.get(spec.task_id) is spec
                    resolved, spec.maps = self.core.resolve_args(spec.arg_refs, st.node_id if live else None)
                    msgs.append(ActorCall(M.ACTOR_CALL, spec.task_id, spec.method, spec.args, spec.ref_pos,
                                          resolved, spec.wire_returns, spec.streaming, spec.name,
                                          spec.attempt).wire())
                # the actor has earlier calls of ours to run first: these can go with others
                busy = len(st.inflight) - len(sends) >= POST_AFTER
            self._post(st, msgs, busy)
        if resolve:
            self.resolve(st)

    def _sendable(self, st: ActorState) -> list[TaskSpec]:
        """Take the calls that can go now off the queue (under the lock): the ready ones
        at its head, or for an unordered actor every ready one."""
        out = []
        if st.ordered:
            while st.queue and st.queue[0].task_id in self.ready:
                out.append(st.queue.popleft())
        else:
            out = [s for s in st.queue if s.task_id in self.ready]
            if out:
                st.queue = deque(s for s in st.queue if s.task_id not in self.ready)
        return out

    def resolve(self, st: ActorState) -> None:
        def answered(ok: bool, info: Any, redirected: str | None = None) -> None:
            if ok and info.get("redirect"):
                # it runs on another node: ask that node's daemon (it waits until it is up)
                node = info["redirect"]
                try:
                    peer = self.core.peer(node, info.get("address"))
                    self.core.request_async(M.ACTOR_INFO, (st.actor_id, None, None, True),
                                            lambda ok, info: answered(ok, info, node), conn=peer)
                    return
                except (OSError, ConnectionClosed):
                    ok, info = False, ("NodeDiedError", "the actor's node is unreachable")
            if not ok and redirected and _not_arrived(info):
                # the owner forwarded the creation to that node over its own connection, and
                # our lookup overtook it there (no order between two connections): ask again
                self.unreachable(st, f"node {redirected[:12]} did not know the actor yet")
                return
            if not ok and isinstance(info, tuple) and info[0] == "NodeDiedError":
                with self.lock:
                    st.status = "unresolved"
                self.core.call_later(0.3, lambda: self.drain(st))
                return
            if not ok:
                from ._rpc import error_from_reply
                self.set_dead(st, error_from_reply(info))
                return
            if info["state"] != "ALIVE":
                self.set_dead(st, death_error(st, info))
                return
            try:
                conn = connect_first(worker_addresses(info, self.core.node_id), self.core.token,
                                     M.Peer(self.core.worker_id).wire())
            except OSError as e:
                self.unreachable(st, f"its worker on node {str(info.get('node_id'))[:12]} could not "
                                     f"be connected to: {e}. A node that others reach over the network "
                                     f"must be started with the address they reach it by "
                                     f"(`carme start --host ADDRESS`)")
                return
            with self.lock:
                st.conn = conn
                st.pid = info.get("pid")
                st.lost_pid = None
                st.worker_id, st.node_id = info.get("worker_id"), info.get("node_id")
                st.status = "connected"
                st.unreachable = 0
            self.core.register(conn, lambda c, msgs: self.on_msgs(st, c, msgs))
            self.drain(st)

        self.core.request_async(M.ACTOR_INFO, (st.actor_id, None, None, True), answered,
                                conn=self.core.control())

    def unreachable(self, st: ActorState, why: str) -> None:
        """The actor could not be reached (`why`): its worker may be going away (the
        daemon answers once it knows), or its creation is still on its way to its node.
        Ask again after a pause that grows. After UNREACHABLE_TRIES lookups in a row the
        queued calls fail with ActorUnavailableError saying why; a later call looks the
        actor up afresh."""
        fails: list[TaskSpec] = []
        with self.lock:
            st.status = "unresolved"
            st.unreachable += 1
            tries = st.unreachable
            if tries >= UNREACHABLE_TRIES:
                st.unreachable = 0
                fails, st.queue = list(st.queue), deque()
        if not fails:
            self.core.call_later(min(0.05 * 2 ** (tries - 1), 2.0), lambda: self.drain(st))
            return
        error = exc.ActorUnavailableError(
            f"actor {st.class_name} could not be reached {UNREACHABLE_TRIES} times in a row; "
            f"the last time {why}.", st.actor_id.hex(), st.class_name)
        for spec in fails:
            self.ready.discard(spec.task_id)
            self.core.submitter.fail(spec, error)

    def set_dead(self, st: ActorState, err: BaseException) -> None:
        with self.lock:
            st.status = "dead"
            st.death = err
        self.drain(st)

    def on_msgs(self, st: ActorState, conn: Connection, msgs: list | None) -> None:
        sub = self.core.submitter
        if msgs is None:
            self.on_lost(st, conn)
            return
        sub.on_replies(st.inflight, msgs, lambda result: self.on_result(st, result))

    def on_result(self, st: ActorState, result: Result) -> None:
        with self.lock:
            spec = st.inflight.pop(result.task_id, None)
            landed(self.core, spec)
        if spec is not None:
            self.core.submitter.handle_result(spec, result.payloads, result.contained, result.info,
                                              (st.node_id, st.worker_id, st.pid))

    def on_lost(self, st: ActorState, conn: Connection) -> None:
        with self.lock:
            if st.conn is not conn:
                return
            st.conn = None
            st.status = "unresolved"
            st.lost_pid = st.pid
            lost = sorted(st.inflight.values(), key=lambda s: s.seq)
            st.inflight.clear()
            for spec in lost:
                landed(self.core, spec)
            retry = [s for s in lost if s.retries_left != 0 and not s.cancelled]
            for s in reversed(retry):
                if s.retries_left > 0:
                    s.retries_left -= 1
                s.attempt += 1
                st.queue.appendleft(s)
                self.ready.add(s.task_id)
        failed = [s for s in lost if s not in retry]
        for s in failed:
            if s.cancelled:
                self.core.submitter.fail(s, exc.TaskCancelledError(s.task_id.hex()))
        failed = [s for s in failed if not s.cancelled]
        if failed:
            self.fail_died(st, failed)
        with self.lock:
            pending = bool(st.queue)
        if pending:
            self.drain(st)

    def fail_died(self, st: ActorState, failed: list[TaskSpec]) -> None:
        """Calls that were running when the actor's worker died: they fail with
        `ActorDiedError`, saying why when the worker's node knows (its memory monitor)."""
        pid = st.pid

        def decide(ok: bool, reason: Any) -> None:
            why = f" Its node's memory monitor killed it: {reason}" if ok and isinstance(reason, str) else ""
            for s in failed:
                self.core.submitter.fail(s, exc.ActorDiedError(
                    f"The actor {st.class_name} (pid {pid}) died while running {s.name!r}; "
                    f"the call has no retries left (max_task_retries).{why}"))

        daemon = None if st.node_id in (None, self.core.node_id) else self.core.peers.get(st.node_id)
        if st.worker_id is None or (st.node_id not in (None, self.core.node_id) and daemon is None):
            decide(False, None)
            return
        try:
            self.core.request_async(M.WORKER_DEATH, (st.worker_id,), decide, conn=daemon)
        except ConnectionClosed:
            decide(False, None)

    def cancel(self, spec: TaskSpec, force: bool, recursive: bool) -> bool:
        st = self.actors.get(spec.actor_id or b"")
        if st is None:
            return False
        with self.lock:
            spec.cancelled = True
            if spec in st.queue:
                st.queue.remove(spec)
                queued = True
            else:
                queued = False
            conn = st.conn
        if queued:
            self.core.submitter.fail(spec, exc.TaskCancelledError(spec.task_id.hex()))
            return True
        if conn is not None:
            try:
                conn.send(M.Cancel(spec.task_id, bool(force), bool(recursive)).wire())
            except ConnectionClosed:
                pass
        return True

    def close(self) -> None:
        for st in self.actors.values():
            if st.conn is not None:
                st.conn.close()


def death_error(st: ActorState, info: dict) -> BaseException:
    death = info.get("death") or ("ActorDiedError", "the actor died")
    kind, message = death
    cls = getattr(exc, kind, exc.ActorDiedError)
    try:
        return cls(message)  # type: ignore[no-any-return]
    except TypeError:
        return exc.ActorDiedError(message)


def _not_arrived(reply: Any) -> bool:
    """A daemon's failed ACTOR_INFO reply saying it does not know the actor."""
    text = reply[1] if isinstance(reply, tuple) and len(reply) == 2 else reply
    return isinstance(reply, (tuple, ValueError)) and str(text).startswith("unknown actor")
