"""Worker process: runs tasks and hosts an actor.

Theory of operation. The node daemon forks a worker and keeps one end of a socketpair
as its control channel (the worker uses it for its own daemon requests too). The worker
listens on a Unix socket of its own; submitters connect there (token first) and push
tasks or actor calls. The CoreWorker's I/O thread reads those connections and hands the
work to the main thread through a queue — or, for a threaded actor, to a thread pool;
for an async actor, to an asyncio loop in its own thread. Results go straight back on
the submitter's connection. While a task runs, `print` output is sent to its submitter,
line by line, tagged with the task (so a notebook shows it in the cell that launched
it). Cancelling a running task delivers SIGINT to the main thread, which raises
KeyboardInterrupt inside the task only when that task is the one being cancelled.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import io
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import _context
from . import _messages as M
from . import exceptions as exc
from ._core import CoreWorker
from ._ids import return_id
from ._messages import _short
from ._protocol import Connection, ConnectionClosed, listen
from ._rpc import hand_over
from ._serialization import NO_ARGS_DATA, loads
from ._task_messages import ActorCall, Item, Push, Result
from ._values import error_payload


class TaskContext:
    __slots__ = ("task_id", "conn", "name", "lease_id", "gpu_ids", "label", "actor_id", "buffers")

    def __init__(self, task_id: bytes, conn: Connection | None, name: str, lease_id: str | None,
                 gpu_ids: list, label: str, actor_id: bytes | None = None) -> None:
        self.task_id = task_id
        self.conn = conn
        self.name = name
        self.lease_id = lease_id
        self.gpu_ids = gpu_ids
        self.label = label
        self.actor_id = actor_id
        self.buffers: dict[str, str] = {}


CURRENT: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("carme_task", default=None)


class TaskStream(io.TextIOBase):
    """sys.stdout/sys.stderr of a worker: lines go to the submitter of the running task."""

    def __init__(self, stream: str, fallback: Any) -> None:
        self.stream = stream
        self.fallback = fallback

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        ctx = CURRENT.get()
        if ctx is None or ctx.conn is None:
            self.fallback.write(text)
            self.fallback.flush()
            return len(text)
        buf = ctx.buffers.get(self.stream, "") + text
        cut = buf.rfind("\n") + 1
        if cut:
            self._send(ctx, buf[:cut])
            buf = buf[cut:]
        ctx.buffers[self.stream] = buf
        return len(text)

    def flush(self) -> None:
        ctx = CURRENT.get()
        if ctx is None or ctx.conn is None:
            self.fallback.flush()
            return
        buf = ctx.buffers.pop(self.stream, "")
        if buf:
            self._send(ctx, buf)

    def _send(self, ctx: TaskContext, text: str) -> None:
        try:
            ctx.conn.send(M.Log(ctx.task_id, self.stream, text, ctx.label).wire())  # type: ignore[union-attr]
        except ConnectionClosed:
            self.fallback.write(text)

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


class Executor:
    def __init__(self, core: CoreWorker, cfg: dict) -> None:
        self.core = core
        self.cfg = cfg
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        # one entry per role notice in `q` (`_role_lent`): they are not work (`_queued`)
        self.notices: deque[None] = deque()
        self.functions: dict[bytes, Any] = {}
        self.calls: dict[bytes, int] = {}
        self.cancelled: set[bytes] = set()
        self.running: TaskContext | None = None
        self.cancel_running = False
        self.main_ident = threading.get_ident()
        self.actor: Any = None
        self.actor_id: bytes | None = None
        self.actor_name = ""
        self.pool: ThreadPoolExecutor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # an async actor runs at most async_limit calls at once; the rest wait here
        self.async_limit = 1
        self.async_running = 0
        self.async_waiting: deque[tuple[Connection, ActorCall]] = deque()
        self.async_tasks: dict[bytes, Any] = {}
        self.pid = os.getpid()
        self.stdout = TaskStream("stdout", sys.__stdout__)
        self.stderr = TaskStream("stderr", sys.__stderr__)
        self.cancel_requested: set[bytes] = set()  # carme.cancel() reached these tasks
        self.set_title = _title_setter()
        self.title = ""
        self.retitle("ray::IDLE")

    def retitle(self, title: str) -> None:
        """The process title (`ray::<task>` while a task runs, as Ray's): set only when it
        changes, so a worker running a stream of one function's tasks sets it once."""
        if title != self.title:
            self.title = title
            self.set_title(title)

    def is_canceled(self) -> bool:
        ctx = CURRENT.get()
        return ctx is not None and ctx.task_id in self.cancel_requested

    # ------------------------------------------------------------------ incoming
    def on_daemon_message(self, msg: tuple) -> None:
        if msg[0] == M.RUN_ACTOR:
            self.q.put((None, msg))
        elif msg[0] == M.EXIT:
            self.core.send_posted()
            os._exit(0)

    def on_conn_msgs(self, conn: Connection, msgs: list | None) -> None:
        if msgs is None:
            return
        for msg in msgs:
            kind = msg[0]
            if kind == M.PEER:
                conn.meta["peer"] = M.read(msg).worker_id
            elif kind == M.CANCEL:
                c = M.read(msg)
                self.on_cancel(c.task_id, c.force, c.recursive)
            elif kind == M.PUSH or kind == M.ACTOR_CALL:
                task: Push | ActorCall
                try:
                    task = Push.read(msg) if kind == M.PUSH else ActorCall.read(msg)
                except M.BadMessage as e:
                    self.refuse(conn, msg, e)
                    continue
                if type(task) is ActorCall and self.loop is not None:
                    self.loop.call_soon_threadsafe(self.start_async_call, conn, task)
                elif type(task) is ActorCall and self.pool is not None:
                    self.pool.submit(self.run_actor_call, conn, task)
                else:
                    hand_over(self.q.put, (conn, task))  # (main thread)
            else:
                self.refuse(conn, msg, M.BadMessage(
                    f"a worker accepts PEER, CANCEL, PUSH and ACTOR_CALL from a submitter, "
                    f"not {_kind(msg)}"))

    def refuse(self, conn: Connection, msg: Any, err: M.BadMessage) -> None:
        """A malformed message from a submitter: its task (when it names one) fails with
        the reason, so the caller's get does not wait for it; nothing of it is kept."""
        print(f"carme worker {self.pid}: refused a message: {err}", file=sys.__stderr__, flush=True)
        if type(msg) is tuple and len(msg) > 1 and type(msg[1]) is bytes:
            failed = error_payload(exc.RaySystemError(f"the worker refused this task: {err}"))
            try:
                conn.send(Result(M.RESULT, msg[1], [failed], [], {"error_type": "RaySystemError"}).wire())
            except ConnectionClosed:
                pass

    def on_cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        self.cancel_requested.add(task_id)
        if recursive:
            self.core.submitter.cancel_children(task_id.hex())
        t = self.async_tasks.get(task_id)
        if t is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(t.cancel)
            return
        running = self.running
        if running is not None and running.task_id == task_id:
            self.cancel_running = True
            signal.pthread_kill(self.main_ident, signal.SIGINT)
        else:
            self.cancelled.add(task_id)

    def _sigint(self, signum: int, frame: Any) -> None:
        if self.cancel_running:
            self.cancel_running = False
            raise KeyboardInterrupt("task cancelled by carme.cancel()")

    # ------------------------------------------------------------------ main loop
    def serve(self) -> None:
        signal.signal(signal.SIGINT, self._sigint)
        q, core = self.q, self.core
        alone = False
        while True:
            if q.empty():  # idle until the next task: say so, and read for it ourselves
                self.retitle(f"ray::{self.actor_name}" if self.actor_id else "ray::IDLE")
                # holding the poll role, this thread reads its next task itself (one
                # thread wake-up fewer per call); else it asks for the role, which the
                # I/O thread lends when it next waits (it reads this next one for us).
                # Only after a task that came alone (a call at a time) does it look for
                # the next one a moment before it sleeps: in a burst, those moments are
                # the submitter's CPU time
                if not core.poll_until(self._has_work, spin=alone):
                    core._role.ask(self._role_lent)
            conn, msg = q.get()
            if msg is None:  # the role was lent: the next turn uses it
                self.notices.popleft()
                continue
            alone = not self._queued()
            if type(msg) is Push:
                self.run_task(conn, msg)
            elif type(msg) is ActorCall:
                self.run_actor_call(conn, msg)
            elif msg[0] == M.RUN_ACTOR:
                run = M.read(msg)
                self.create_actor(run.actor_id, run.spec, run.gpu_ids, run.restarts)

    def _has_work(self) -> bool:
        return not self.q.empty()

    def _queued(self) -> int:
        """Tasks (or calls) waiting in `q` behind the one that runs, role notices not
        counted: a notice taken for work would have each result posted (the I/O thread
        sends it, kicked to take the role back) and lend the role again, a loop of thread
        hand-offs that kept one call at a time on the slow path. (A notice counted in
        `notices` a moment before it is in `q`, or after it left, only undercounts.)"""
        return self.q.qsize() - len(self.notices)

    def _role_lent(self) -> None:
        self.notices.append(None)
        self.q.put((None, None))

    def build_args(self, args: tuple, ref_pos: list | tuple, resolved: list) -> tuple[list, dict]:
        core = self.core
        if args[1] == NO_ARGS_DATA and not args[2] and not ref_pos:
            return [], {}  # (a call without arguments: nothing to unpickle)
        (a, kw), loaded = loads(args[1], args[2])
        if loaded:
            core.borrow(loaded)
        a = list(a)
        for (is_kw, key), item in zip(ref_pos, resolved, strict=True):
            # (id, payload, True): the submitter keeps it mapped until our result
            value = core.deserialize(item[0], item[1], len(item) == 3)
            if is_kw:
                kw[key] = value
            else:
                a[key] = value
        return a, kw

    def function(self, key: bytes, blob: bytes | None) -> Any:
        fn = self.functions.get(key)
        if fn is None:
            if blob is None:
                raise exc.RaySystemError("the task's function was not sent to this worker")
            fn, captured = loads(blob)
            if captured:
                self.core.borrow(captured)  # refs in its closure or globals
            self.functions[key] = fn
        return fn

    def run_task(self, conn: Connection, push: Push) -> None:
        current = self.core.current_task
        current.resources = push.shape
        current.pg_id = push.pg_id
        current.pg_capture = push.pg_capture
        ctx = TaskContext(push.task_id, conn, push.name, push.lease_id, push.gpu_ids,
                          f"{push.name} pid={self.pid}")
        if push.gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in push.gpu_ids)
        elif "CUDA_VISIBLE_DEVICES" in os.environ:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        self.execute(conn, ctx, lambda: self.function(push.fn_key, push.fn_blob), push.args,
                     push.ref_pos, push.resolved, push.num_returns, push.streaming, main_thread=True)
        if push.max_calls:
            n = self.calls[push.fn_key] = self.calls.get(push.fn_key, 0) + 1
            if n >= push.max_calls:
                # max_calls reached: this worker retires (a new one serves the next call)
                self.core.send_posted()
                self.core.flush()
                os._exit(0)

    def execute(self, conn: Connection, ctx: TaskContext, get_fn: Any, args: tuple, ref_pos: list | tuple,
                resolved: list, num_returns: Any, streaming: bool, main_thread: bool) -> None:
        core = self.core
        task_id = ctx.task_id
        start = time.time()
        info: dict[str, Any] = {"start": start}  # (its submitter knows this worker)
        token = CURRENT.set(ctx)
        core.record_running(task_id, start)
        core.current_task.submitter = conn.meta.get("peer")
        core.current_task.lease_id = ctx.lease_id
        core.current_task.task_id = task_id
        core.current_task.gpu_ids = ctx.gpu_ids
        payloads: list = []
        contained: list = []
        try:
            if task_id in self.cancelled:
                self.cancelled.discard(task_id)
                raise exc.TaskCancelledError(task_id.hex())
            fn = get_fn()
            a, kw = self.build_args(args, ref_pos, resolved)
            if main_thread:
                self.running = ctx
                self.retitle(f"ray::{ctx.name}")
            try:
                result = fn(*a, **kw)
                if streaming:
                    self.stream_items(conn, ctx, result)
                    result = None
            finally:
                if main_thread:
                    self.running = None
                    self.cancel_running = False
            payloads, contained = self.pack_returns(task_id, result, num_returns, streaming, ctx.name)
        except KeyboardInterrupt:
            payloads = [error_payload(exc.TaskCancelledError(task_id.hex()))] * max(num_returns if isinstance(num_returns, int) else 1, 1)
            info["error_type"] = "TaskCancelledError"
        except exc.TaskCancelledError as e:
            payloads = [error_payload(e)] * max(num_returns if isinstance(num_returns, int) else 1, 1)
            info["error_type"] = "TaskCancelledError"
        except BaseException as e:  # noqa: BLE001 - the task's error goes to its caller
            if isinstance(e, SystemExit) and self.actor is not None:
                self.terminate()  # exit_actor()
            payloads = [self.error_payload(e, ctx.name)] * max(num_returns if isinstance(num_returns, int) else 1, 1)
            info["retryable"] = True
            info["error_type"] = type(e).__name__
            info["error_message"] = str(e)[:500]
        finally:
            for stream in (self.stdout, self.stderr):
                stream.flush()
            CURRENT.reset(token)
            core.current_task.lease_id = None
            self.cancel_requested.discard(task_id)
        info["end"] = time.time()
        a, kw, result = [], {}, None  # the task's own references to its arguments end here
        core.protect_views()
        core.ran(task_id)  # its submitter records RUNNING with the result
        try:
            # with more work queued here the result goes with the next ones (the I/O
            # thread sends them together before it next waits: soon, whatever runs next)
            conn.post([Result(M.RESULT, task_id, payloads, contained, info).wire()],
                      core.flush_soon if main_thread and self._queued() > 0 else None)
        except ConnectionClosed:
            pass

    def error_payload(self, e: BaseException, name: str) -> tuple:
        if isinstance(e, (exc.RayTaskError, exc.ObjectStoreFullError, exc.ObjectLostError)):
            err: BaseException = e  # carme's own errors reach the caller as they are
        else:
            err = exc.RayTaskError.from_exception(e, name, pid=self.pid, ip="127.0.0.1")
        try:
            return error_payload(err)
        except Exception as pe:  # noqa: BLE001
            return error_payload(exc.RaySystemError(f"{type(e).__name__}: {e} (could not pickle it: {pe})"))

    def pack_returns(self, task_id: bytes, result: Any, num_returns: Any, streaming: bool,
                     name: str) -> tuple[list, list]:
        if streaming:
            return [], []
        if num_returns == "dynamic":
            # each yielded value becomes an object of this worker's; the caller's one
            # return holds them through the generator of their refs (as in Ray)
            if not hasattr(result, "__next__"):
                raise TypeError(f"a num_returns='dynamic' task must be a generator function; "
                                f"{name!r} returned {type(result).__name__}")
            from ._objects import DynamicObjectRefGenerator
            values = [DynamicObjectRefGenerator([self.core.put(v) for v in result])]
        elif num_returns == 1:
            values = [result]
        elif num_returns == 0:
            return [], []
        else:
            if inspect.isgenerator(result):
                result = list(result)  # a generator with num_returns=N: its N yields
            if not isinstance(result, (tuple, list)) or len(result) != num_returns:
                raise ValueError(
                    f"Task {name!r} declared num_returns={num_returns} but returned "
                    f"{type(result).__name__}{'' if not hasattr(result, '__len__') else f' of length {len(result)}'}; "
                    f"return a tuple or list of {num_returns} values.")
            values = list(result)
        payloads, contained = [], []
        for i, v in enumerate(values):
            p, c = self.core.serialize(v, return_id(task_id, i + 1), hold_contained=True)
            payloads.append(p)
            contained.append([r._id for r in c])
        return payloads, contained

    def stream_items(self, conn: Connection, ctx: TaskContext, gen: Any) -> None:
        if not inspect.isgenerator(gen) and not hasattr(gen, "__next__"):
            raise TypeError(f"a num_returns='streaming' task must be a generator function; {ctx.name!r} returned {type(gen).__name__}")
        for i, value in enumerate(gen):
            p, c = self.core.serialize(value, return_id(ctx.task_id, i + 1), hold_contained=True)
            conn.send(Item(M.ITEM, ctx.task_id, i, p, [r._id for r in c]).wire())

    # ------------------------------------------------------------------ actors
    def create_actor(self, actor_id: bytes, spec: dict, gpu_ids: list, restarts: int) -> None:
        core = self.core
        self.actor_id = actor_id
        self.actor_name = spec["class_name"]
        core.current_task.actor_id = actor_id
        core.current_task.gpu_ids = gpu_ids
        core.current_task.resources = spec.get("running_shape") or {}
        core.current_task.restarts = restarts
        core.current_task.pg_id = getattr(spec.get("strategy"), "pg_id", None)
        core.current_task.pg_capture = bool(spec.get("pg_capture"))
        core.actor_context.update(actor_id=actor_id, gpu_ids=gpu_ids, restarts=restarts,
                                  resources=core.current_task.resources,
                                  pg_id=core.current_task.pg_id,
                                  pg_capture=core.current_task.pg_capture)
        if gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
        ctx = TaskContext(actor_id, spec.get("owner_conn"), f"{self.actor_name}.__init__", None,
                          gpu_ids, f"{self.actor_name} pid={self.pid}", actor_id)
        token = CURRENT.set(ctx)
        try:
            cls, captured = loads(spec["class_blob"])
            if captured:
                core.borrow(captured)  # refs in its closure or globals
            a, kw = self.build_args(spec["args"], spec["ref_pos"], spec["resolved"])
            self.actor = cls.__new__(cls)
            self.actor.__init__(*a, **kw)
        except BaseException as e:  # noqa: BLE001
            import traceback
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            core.daemon_send((M.ACTOR_FAILED, actor_id, (
                "ActorDiedError",
                f"The actor died because of an error raised in its creation task, "
                f"{self.actor_name}.__init__() (pid={self.pid}):\n{tb}")))
            return
        finally:
            for stream in (self.stdout, self.stderr):
                stream.flush()
            CURRENT.reset(token)
        self.retitle(f"ray::{self.actor_name}")
        conc = spec.get("max_concurrency")
        if spec.get("is_async"):
            self.start_loop(conc or 1000)
        elif conc and conc > 1:
            self.pool = ThreadPoolExecutor(conc, thread_name_prefix="carme-actor")
        core.daemon_send((M.ACTOR_READY, actor_id))

    def terminate(self) -> None:
        """End this actor for good, gracefully (__ray_terminate__, exit_actor(), its last
        handle gone): its __ray_shutdown__ and atexit handlers run, it is not restarted."""
        import atexit
        import traceback
        hook = getattr(self.actor, "__ray_shutdown__", None)
        try:
            if callable(hook):
                hook()
        except Exception:  # noqa: BLE001 - a failing hook must not keep the actor alive
            traceback.print_exc()
        atexit._run_exitfuncs()
        for stream in (self.stdout, self.stderr):
            stream.flush()
        core = self.core
        msg = (M.KILL_ACTOR, self.actor_id, True)
        try:
            core.send_posted()  # earlier calls' results, waiting to go with others
            conn = core.control()
            if conn is core.daemon:
                core.daemon_send(msg)
            else:
                conn.send(msg)
            core.flush()
        except Exception:  # noqa: BLE001 - the daemon gone: the exit says enough
            pass
        os._exit(0)

    def method(self, name: str) -> Any:
        if name == "__ray_terminate__":
            return self.terminate
        if name == "__carme_ready__":
            return lambda: True
        return getattr(self.actor, name)

    def run_actor_call(self, conn: Connection, call: ActorCall) -> None:
        ctx = TaskContext(call.task_id, conn, call.name, None,
                          self.core.current_task.__dict__.get("gpu_ids", []),
                          f"{self.actor_name} pid={self.pid}", self.actor_id)
        self.execute(conn, ctx, lambda: self.method(call.method), call.args, call.ref_pos,
                     call.resolved, call.num_returns, call.streaming, main_thread=self.pool is None)

    def start_loop(self, concurrency: int) -> None:
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.async_limit = concurrency
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, name="carme-actor-loop", daemon=True).start()
        ready.wait()

    def start_async_call(self, conn: Connection, call: ActorCall) -> None:
        """On the loop: start the call if a slot is free, else queue it.

        A freed slot starts the next call from the end of the loop's ready queue
        (call_soon), so coroutines already woken (by an asyncio.Event, say) resume
        first, as in Ray; a semaphore acquired inside the call would let the next
        call overtake them."""
        if self.async_running < self.async_limit:
            self._launch_async(conn, call)
        else:
            self.async_waiting.append((conn, call))

    def _launch_async(self, conn: Connection, call: ActorCall) -> None:
        assert self.loop is not None
        self.async_running += 1
        self.async_tasks[call.task_id] = self.loop.create_task(self.async_call(conn, call))

    def _async_slot_freed(self) -> None:
        assert self.loop is not None
        self.async_running -= 1
        self.loop.call_soon(self._start_waiting_async)

    def _start_waiting_async(self) -> None:
        while self.async_waiting and self.async_running < self.async_limit:
            self._launch_async(*self.async_waiting.popleft())

    async def async_call(self, conn: Connection, call: ActorCall) -> None:
        try:
            await self._async_call(conn, call)
        finally:
            self._async_slot_freed()

    async def _async_call(self, conn: Connection, call: ActorCall) -> None:
        task_id, name, num_returns, streaming = call.task_id, call.name, call.num_returns, call.streaming
        ctx = TaskContext(task_id, conn, name, None, [], f"{self.actor_name} pid={self.pid}", self.actor_id)
        token = CURRENT.set(ctx)
        start = time.time()
        info: dict[str, Any] = {"start": start}
        self.core.record_running(task_id, start)
        payloads: list = []
        contained: list = []
        n = max(num_returns if isinstance(num_returns, int) else 1, 1)
        try:
            if task_id in self.cancelled:  # cancelled while it waited for a slot
                self.cancelled.discard(task_id)
                raise asyncio.CancelledError
            fn = self.method(call.method)
            a, kw = self.build_args(call.args, call.ref_pos, call.resolved)
            result = fn(*a, **kw)
            if inspect.isawaitable(result):
                result = await result
            self.core.current_task.submitter = conn.meta.get("peer")
            if streaming:
                if hasattr(result, "__aiter__"):
                    i = 0
                    async for value in result:
                        self.core.current_task.submitter = conn.meta.get("peer")
                        p, c = self.core.serialize(value, return_id(task_id, i + 1), hold_contained=True)
                        conn.send(Item(M.ITEM, task_id, i, p, [r._id for r in c]).wire())
                        i += 1
                else:
                    self.stream_items(conn, ctx, result)
                result = None
            payloads, contained = self.pack_returns(task_id, result, num_returns, streaming, name)
        except asyncio.CancelledError:
            payloads = [error_payload(exc.TaskCancelledError(task_id.hex()))] * n
        except SystemExit:
            self.terminate()  # exit_actor() in an async method
        except BaseException as e:  # noqa: BLE001
            payloads = [self.error_payload(e, name)] * n
            info["retryable"] = True
            info["error_type"] = type(e).__name__
        finally:
            self.async_tasks.pop(task_id, None)
            self.cancel_requested.discard(task_id)
            for stream in (self.stdout, self.stderr):
                stream.flush()
            CURRENT.reset(token)
        info["end"] = time.time()
        a, kw, result = [], {}, None  # the call's own references to its arguments end here
        self.core.protect_views()
        self.core.ran(task_id)
        try:
            conn.send(Result(M.RESULT, task_id, payloads, contained, info).wire())
        except ConnectionClosed:
            pass


def _kind(msg: Any) -> str:
    kind = msg[0] if type(msg) is tuple and msg else msg
    return f"a message of kind {_short(kind)}"


def _title_setter() -> Any:
    """setproctitle when it is installed (process titles `ray::<task>`, as Ray's workers
    show in ps/top), else nothing."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        return lambda title: None
    return setproctitle


def apply_env(env: dict | None) -> None:
    if not env:
        return
    os.environ.update(env.get("env_vars") or {})
    for p in reversed(env.get("sys_path") or []):
        sys.path.insert(0, p)
    if env.get("cwd"):
        os.chdir(env["cwd"])


def worker_main(ctrl: socket.socket, cfg: dict) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    apply_env(cfg.get("env"))
    token = bytes.fromhex(cfg["token"])
    daemon = Connection(ctrl, "daemon")
    info = {"node_id": cfg["node_id"], "store_file": cfg["store_file"], "job_id": cfg["job_id"],
            "namespace": cfg["namespace"], "session_dir": cfg["session_dir"]}
    core = CoreWorker(role="worker", daemon_conn=daemon, info=info, worker_id=cfg["worker_id"],
                      job_id=cfg["job_id"], namespace=cfg["namespace"], token=token)
    _context.STATE.core = core
    executor = Executor(core, cfg)
    core.executor = executor
    sys.stdout = executor.stdout
    sys.stderr = executor.stderr
    address = f"unix:{cfg['session_dir']}/w-{cfg['worker_id'][:12]}.sock"
    listeners = [listen(address)]
    tcp = ""
    if cfg.get("tcp_host"):  # a cluster node: submitters on other nodes come over TCP
        listeners.append(listen(f"{cfg['tcp_host']}:0"))
        host, port = listeners[-1].getsockname()[:2]
        tcp = f"{host}:{port}"
    for lsock in listeners:
        lsock.setblocking(False)
        core.add_listener(lsock, Acceptor(core, executor, lsock, token).accept)
    daemon.send((M.WORKER_READY, address, tcp))
    executor.serve()


class Acceptor:
    """Submitters connecting to one listening socket, admitted as the daemon admits its
    peers: the token first (checked before anything is unpickled), within AUTH_TIMEOUT,
    and at most MAX_UNAUTHENTICATED connections waiting to present it; others are closed."""

    AUTH_TIMEOUT = 5.0
    MAX_UNAUTHENTICATED = 64

    def __init__(self, core: CoreWorker, executor: Executor, lsock: socket.socket, token: bytes) -> None:
        self.core, self.executor, self.lsock, self.token = core, executor, lsock, token
        self.waiting: list[Connection] = []  # accepted, token not seen yet (I/O thread only)

    def accept(self) -> None:
        try:
            s, _ = self.lsock.accept()
        except BlockingIOError:
            return
        self.waiting = [c for c in self.waiting if c.expect_token is not None and not c.closed]
        if len(self.waiting) >= self.MAX_UNAUTHENTICATED:
            s.close()
            return
        s.setblocking(True)
        if s.family != socket.AF_UNIX:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(s, "submitter", expect_token=self.token)
        self.waiting.append(conn)
        self.core.register(conn, self.executor.on_conn_msgs)
        self.core.call_later(self.AUTH_TIMEOUT, functools.partial(self.deadline, conn))

    def deadline(self, conn: Connection) -> None:
        if conn.expect_token is not None and not conn.closed:
            self.core.close_conn(conn)
