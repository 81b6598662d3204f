"""The node daemon: one per machine, an I/O shell around carme's pure logic.

Theory of operation. A single thread runs a selector loop over: the listening socket
(drivers and workers connect, authenticate with the cluster token, then send requests),
the control socketpair of every worker it forked, the pipes carrying the workers'
file-descriptor output, and its stdin. In the embedded cluster stdin is a pipe from the
driver: end-of-file there (or the driver's process going away, seen as a new parent)
means the driver is gone, and the daemon kills its workers, unlinks its shared memory
and socket directory, and exits. It runs in a process group of its own, so a kill of
the driver's process group (a forced Jupyter kernel restart) does not take it down before
it has cleaned up; its zygote removes the same files if the daemon itself is killed.

Every message is decoded at the boundary into its typed form (`_messages.decode`):
malformed input is answered with a clear error and never stored. Sockets are
non-blocking with an outgoing buffer per connection (`Connection(buffered=True)`): a
peer that does not read delays only itself and is dropped once too much waits for it
or it makes no progress for `stall_timeout` seconds. Before authentication a peer may
send nothing but the token, within `auth_timeout` seconds, and at most
`max_unauthenticated` such peers are kept.

The node's state lives in pure modules that the handlers here drive:
  * leases: `ClusterScheduler` decides, `LeaseTable` (`_node_leases.py`) turns its
    decisions into effects (grant here, spillback, refusal); `WorkerPool`
    (`_node_workers.py`) tracks workers, which the daemon forks from its zygote;
  * objects: `ObjectTable` (`_node_objects.py`: payloads, holds, waiters, a short story
    per object) and `Arena` (offsets in the shared-memory file);
  * actors: `ActorDirectory` (`_node_actors.py`: names, restarts, deaths); placement and
    creation on a dedicated worker, or forwarding to another node, happen here;
  * task events (`TaskEventLog`) and the rows of the state API.
It never sits on the per-task path: drivers push tasks straight to leased workers.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import queue
import selectors
import shutil
import signal
import socket
import sys
import time
from typing import Any

from . import _messages as M
from . import exceptions as exc
from ._events import TaskEventLog
from ._node_actors import ActorDirectory, ActorRec
from ._node_core import (
    CheckPlacementGroups,
    Client,
    Event,
    Kill,
    LeaseRequested,
    NodeCore,
    Note,
    Retire,
    ToPeer,
    WorkerFound,
    as_error,
)
from ._node_leases import ActorGrant, ActorInfeasible, LeaseTable, NeedWorker, Refuse, Spill
from ._node_objects import Answer, ObjectTable
from ._node_workers import WorkerPool, WorkerRec
from ._protocol import AuthenticationError, Connection, ConnectionClosed, listen
from ._scheduler import ClusterScheduler, Grant, LeaseRequest
from ._store import Arena, create_store_file, store_path

AUTH_TIMEOUT = 5.0          # seconds a new connection has to present the token
MAX_UNAUTHENTICATED = 64    # connections waiting to authenticate at one time
STALL_TIMEOUT = 300.0       # seconds a peer may leave our output unread before it is dropped
LOG_BACKLOG = 8 << 20       # a driver with this much unread output gets no more worker output


class NodeDaemon:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.session_dir: str = config["session_dir"]
        self.session: str = config["session"]
        self.token: bytes = bytes.fromhex(config["token"])
        self.node_id: str = config["node_id"]
        self.resources: dict[str, float] = config["resources"]
        self.job_id: str = config.get("job_id", "01000000")
        self.namespace: str = config.get("namespace") or "default"
        # first, while this process has no threads: the zygote that forks workers
        from ._zygote import Zygote
        self.zygote = Zygote(cleanup=(store_path(self.session), self.session_dir))
        self.sel = selectors.DefaultSelector()
        self.scheduler = ClusterScheduler()
        self.scheduler.add_node(self.node_id, self.resources, config.get("labels") or {})
        self.capacity = int(config["object_store_memory"])
        self.store_file = store_path(self.session)
        create_store_file(self.store_file, self.capacity)
        self.arena = Arena(self.capacity)
        self.table = ObjectTable(self.arena, self.node_id)
        self.functions: dict[bytes, bytes] = {}
        self.pool = WorkerPool(max_idle=max(2, int(self.resources.get("CPU", 1)) + 1))
        self.workers = self.pool.workers  # (the same dict: records by worker id)
        self.lease_table = LeaseTable(self.scheduler, self.node_id)
        self.leases = self.lease_table.leases  # (the same dicts)
        self.pending_leases = self.lease_table.pending
        self.directory = ActorDirectory(self.namespace)
        self.actors = self.directory.actors  # (the same dict: records by actor id)
        self.pg_waiters: dict[str, list[tuple[Connection, int]]] = {}
        self.events = TaskEventLog()
        from ._metrics import GpuMonitor
        self.gpus = GpuMonitor()
        self.envs: dict[str, dict] = {}
        self.worker_count = 0
        self.drivers: list[Connection] = []
        self.running = True
        self.started = time.time()
        self.address = f"unix:{self.session_dir}/node.sock"
        self.listener = listen(self.address)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, ("accept", self.listener))
        self.standalone = bool(config.get("standalone"))
        self.host: str = config.get("host") or "127.0.0.1"
        self.cluster_mode = bool(config.get("cluster"))
        self.peers: dict[str, dict[str, Any]] = {}  # other nodes, from the head's view
        self.core = NodeCore(self.table, self.lease_table, self.pool, self.directory,
                             self.node_id, self.peers)
        self.view_nodes: list[dict[str, Any]] = []
        self.pulls: dict[bytes, str] = {}
        self.peer_conns: dict[str, Connection] = {}
        self.peer_reqs: dict[int, Any] = {}
        self.peer_req_ids = itertools.count(1)
        # connections that have not presented the token yet -> when they connected
        self.unauthenticated: dict[Connection, float] = {}
        # connections with output waiting for the peer -> when it last made progress
        self.backlogged: dict[Connection, float] = {}
        self.auth_timeout = float(config.get("auth_timeout") or AUTH_TIMEOUT)
        self.max_unauthenticated = int(config.get("max_unauthenticated") or MAX_UNAUTHENTICATED)
        self.stall_timeout = float(config.get("stall_timeout") or STALL_TIMEOUT)
        self.max_backlog = int(config.get("max_backlog") or (64 << 20))
        self.parent_pid = os.getppid()
        # functions that threads (state queries) hand to the loop
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        # workers of a node that others reach over the network listen on TCP too
        self.worker_tcp_host: str | None = self.host if self.cluster_mode else None
        self.tcp_address = ""
        self.tcp_listener: socket.socket | None = None
        if config.get("tcp"):
            self.tcp_listener = listen(config["tcp"])
            self.tcp_listener.setblocking(False)
            host, port = self.tcp_listener.getsockname()[:2]
            self.tcp_address = f"{host}:{port}"
            self.sel.register(self.tcp_listener, selectors.EVENT_READ, ("accept", self.tcp_listener))
        if not self.standalone:
            # embedded: the driver's pipe; end-of-file means the driver is gone
            self.sel.register(sys.stdin.fileno(), selectors.EVENT_READ, ("parent", None))
        # a signal (SIGTERM from `carme stop` or the parent-death signal) wakes the loop
        self._sig_r, sig_w = os.pipe()
        os.set_blocking(self._sig_r, False)
        os.set_blocking(sig_w, False)
        signal.set_wakeup_fd(sig_w)
        self._wake_w = sig_w
        self.sel.register(self._sig_r, selectors.EVENT_READ, ("signal", None))
        self.link: Any = None
        if self.cluster_mode:
            from ._link import ClusterLink
            self.link = ClusterLink(self, head_address=config.get("head_address"), host=self.host,
                                    port=int(config.get("grpc_port") or 0))
            self.sel.register(self.link.wake_r, selectors.EVENT_READ, ("link", None))
        self._handlers: dict[type, Any] = {
            M.Hello: self.on_hello, M.Lease: self.on_lease, M.FnPut: self.on_fn_put,
            M.FnGet: self.on_fn_get, M.CreateActor: self.on_create_actor,

            M.Events: self.on_events, M.State: self.on_state,
            M.PgCreate: self.on_pg_create, M.PgRemove: self.on_pg_remove,
            M.PgInfo: self.on_pg_info, M.PgWait: self.on_pg_wait,
            M.GetRemote: self.on_get_remote, M.NodeAddress: self.on_node_address,
            M.Reply: self.on_reply,
            M.WorkerReady: self.on_worker_ready,
        }

    # ------------------------------------------------------------------ loop
    def serve(self) -> None:
        for _ in range(int(self.config.get("prestart_workers", 1))):
            self.spawn_worker("")
        if self.link is not None:
            self.link.start()
        print(json.dumps({"ready": True, "address": self.address, "tcp": self.tcp_address,
                          "pid": os.getpid(),
                          "grpc": self.link.grpc_address if self.link else None,
                          "head": self.link.head_address if self.link else None}), flush=True)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # nobody reads our stdout after the ready line
        os.close(devnull)
        while self.running:
            for key, mask in self.sel.select(timeout=1.0):
                kind, obj = key.data
                try:
                    if kind == "conn":
                        if mask & selectors.EVENT_WRITE:
                            self.on_writable(obj)
                        if mask & selectors.EVENT_READ and not obj.closed:
                            self.on_readable(obj)
                    elif kind == "accept":
                        self.on_accept(obj)
                    elif kind == "out":
                        self.on_worker_output(*obj)
                    elif kind == "link":
                        self.link.drain()
                    elif kind == "signal":
                        os.read(self._sig_r, 512)
                        self.run_inbox()
                    elif kind == "parent":
                        if not os.read(sys.stdin.fileno(), 4096):
                            self.running = False
                except Exception:  # a bug must not take the node down silently
                    import traceback
                    traceback.print_exc()
            self.reap()
            self.tick(time.monotonic())
        self.shutdown()

    def tick(self, now: float) -> None:
        """Once a loop turn: deadlines of unauthenticated and stalled peers, the parent."""
        for conn, since in list(self.unauthenticated.items()):
            if now - since > self.auth_timeout:
                self.on_disconnect(conn)
        for conn, since in list(self.backlogged.items()):
            if now - since > self.stall_timeout:
                self.log(f"dropping {conn.peer}: it read none of {conn.backlog:,} waiting bytes "
                         f"for {self.stall_timeout:.0f} s")
                self.on_disconnect(conn)
        if not self.standalone and os.getppid() != self.parent_pid:
            self.running = False  # the driver that started us is gone

    def log(self, text: str) -> None:
        print(f"carme node daemon: {text}", file=sys.stderr, flush=True)

    def post(self, fn: Any) -> None:
        """From another thread: run `fn` in the loop."""
        self.inbox.put(fn)
        try:
            os.write(self._wake_w, b"p")
        except OSError:
            pass

    def run_inbox(self) -> None:
        while True:
            try:
                fn = self.inbox.get_nowait()
            except queue.Empty:
                return
            fn()

    def adopt(self, sock: socket.socket, peer: str, token: bytes | None = None) -> Connection:
        """A socket of ours becomes a buffered connection watched by the loop."""
        conn = Connection(sock, peer, expect_token=token, buffered=True,
                          max_frame=int(self.config.get("max_frame") or (512 << 20)),
                          max_backlog=self.max_backlog)
        conn.on_backlog = self._on_backlog
        self.sel.register(sock, selectors.EVENT_READ, ("conn", conn))
        return conn

    def _on_backlog(self, conn: Connection) -> None:
        if conn not in self.backlogged and not conn.closed:
            self.backlogged[conn] = time.monotonic()
            try:
                self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, ("conn", conn))
            except (KeyError, ValueError):
                pass

    def on_writable(self, conn: Connection) -> None:
        before = conn.backlog
        try:
            done = conn.flush_out()
        except ConnectionClosed:
            self.on_disconnect(conn)
            return
        if done:
            self.backlogged.pop(conn, None)
            try:
                self.sel.modify(conn.sock, selectors.EVENT_READ, ("conn", conn))
            except (KeyError, ValueError):
                pass
        elif conn.backlog < before:
            self.backlogged[conn] = time.monotonic()

    def send(self, conn: Connection, msg: tuple) -> bool:
        """Queue a message for `conn` (never blocks); a peer that cannot take it is dropped."""
        if conn.closed:
            return False
        try:
            conn.send(msg)
            return True
        except ConnectionClosed as e:
            if conn.backlog:
                self.log(f"dropping {conn.peer}: {e}")
            self.post(lambda: self.on_disconnect(conn))
            return False

    def on_accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        if len(self.unauthenticated) >= self.max_unauthenticated:
            sock.close()  # too many peers are still to show the token
            return
        if sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = self.adopt(sock, "client", token=self.token)
        conn.meta["role"] = "unknown"
        self.unauthenticated[conn] = time.monotonic()

    def on_readable(self, conn: Connection) -> None:
        try:
            msgs = conn.feed()
        except (ConnectionClosed, AuthenticationError):
            self.on_disconnect(conn)
            return
        if conn.expect_token is None and conn in self.unauthenticated:
            del self.unauthenticated[conn]
        handlers = self._handlers
        for raw in msgs:
            try:
                msg = M.decode(raw)
            except M.BadMessage as e:
                self.reject(conn, raw, e)
                continue
            handler = handlers.get(type(msg))
            if handler is None:  # the object and lease messages: the pure core decides
                self.carry_out(self.core.handle(self.client_of(conn), msg))
            else:
                handler(conn, msg)

    def reject(self, conn: Connection, raw: Any, err: M.BadMessage) -> None:
        """A malformed message: the sender hears why (if it waits for an answer); nothing
        of it is kept."""
        req = M.request_id(raw)
        self.log(f"refused a malformed message from {conn.meta.get('role')} "
                 f"pid {conn.meta.get('pid')}: {err}")
        if req is not None:
            self.reply(conn, req, False, err)

    def reply(self, conn: Connection, req: int, ok: bool, value: Any) -> None:
        self.send(conn, M.Reply(req, ok, value).wire())

    def fail(self, conn: Connection, req: int, err: BaseException) -> None:
        self.send(conn, M.Reply(req, False, err).wire())

    def answer(self, effects: list[Answer]) -> None:
        self.carry_out(effects)  # type: ignore[arg-type]

    def on_disconnect(self, conn: Connection) -> None:
        self.unauthenticated.pop(conn, None)
        self.backlogged.pop(conn, None)
        if conn.meta.get("gone"):
            return
        conn.meta["gone"] = True
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.close()
        w: WorkerRec | None = conn.meta.get("worker")
        if w is not None:
            self.on_worker_died(w)
        for nid, pc in list(self.peer_conns.items()):
            if pc is conn:
                del self.peer_conns[nid]
                for req, (rnid, cb) in list(self.peer_reqs.items()):
                    if rnid == nid:
                        del self.peer_reqs[req]
                        cb(False, exc.NodeDiedError(f"node {nid[:8]} went away"))
        if conn in self.drivers:
            self.drivers.remove(conn)
        self.table.drop_client(conn)
        holder = conn.meta.get("holder")
        if holder:
            self.answer(self.table.release_holder(holder))
            self.answer(self.table.release_holder(holder + ":blob"))
        # leases held by this client go back; non-detached actors it owns die with it
        for lease_id in self.lease_table.client_gone(conn, keep=lambda w: w.state == "ACTOR"):
            self.release_lease(lease_id, kill=False)
        for actor in self.directory.owned_by(conn):
            actor.no_restart = True
            self.kill_actor(actor, "the actor's owner exited")

    # ------------------------------------------------------------------ workers
    def spawn_worker(self, env_key: str) -> WorkerRec:
        self.worker_count += 1
        worker_id = os.urandom(14).hex()
        parent, child = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = self.zygote.fork_worker({
            "worker_id": worker_id, "node_id": self.node_id,
            "session_dir": self.session_dir, "store_file": self.store_file,
            "token": self.token.hex(), "daemon_address": self.address,
            "job_id": self.job_id, "namespace": self.namespace,
            "env": self.envs.get(env_key), "env_key": env_key,
            "tcp_host": self.worker_tcp_host,
        }, child, out_w, err_w)
        child.close()
        os.close(out_w)
        os.close(err_w)
        conn = self.adopt(parent, f"worker:{pid}")
        w = WorkerRec(worker_id, pid, conn, env_key, out_fds=(out_r, err_r))
        conn.meta["worker"] = w
        conn.meta["role"] = "worker"
        conn.meta["holder"] = worker_id
        self.pool.add(w)
        self.sel.register(out_r, selectors.EVENT_READ, ("out", (w, "stdout", out_r)))
        self.sel.register(err_r, selectors.EVENT_READ, ("out", (w, "stderr", err_r)))
        return w

    def on_worker_output(self, w: WorkerRec, stream: str, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(fd)
            os.close(fd)
            return
        text = data.decode("utf-8", "replace")
        label = {"actor": w.actor_id.hex() if w.actor_id else None, "pid": w.pid}
        for d in list(self.drivers):
            if d.backlog > LOG_BACKLOG:
                # a driver that does not read loses output rather than its connection
                d.meta["dropped_output"] = d.meta.get("dropped_output", 0) + len(data)
                continue
            self.send(d, M.Log(None, stream, text, label).wire())

    def on_worker_ready(self, conn: Connection, msg: M.WorkerReady) -> None:
        w: WorkerRec | None = conn.meta.get("worker")
        if w is None:
            return  # only a worker's own control connection says so
        for then in self.pool.ready(w, msg.address):
            then(w)

    def take_worker(self, env_key: str, then: Any) -> None:
        w = self.pool.take(env_key)
        if w is not None:
            then(w)
            return
        w = self.spawn_worker(env_key)
        self.pool.wait_for(w, then)

    def on_worker_died(self, w: WorkerRec) -> None:
        prev = self.pool.remove(w)
        self.on_disconnect(w.conn)
        if prev == "DEAD":
            return
        if w.lease_id is not None:
            self.lease_table.release(w.lease_id)  # (and no longer counted as blocked)
        if prev == "ACTOR" or w.actor_id is not None:
            actor = self.actors.get(w.actor_id) if w.actor_id else None
            if actor is not None and actor.worker is w:
                self.on_actor_worker_died(actor)
        self.pump()

    def reap(self) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.zygote.pid:
                self.running = False  # without a zygote this node cannot make workers

    # ------------------------------------------------------------------ hello / functions
    def on_hello(self, conn: Connection, msg: M.Hello) -> None:
        if conn.meta.get("role") != "worker":  # a worker's control connection keeps its identity
            conn.meta["role"] = msg.role
            conn.meta["pid"] = msg.pid
            conn.meta["holder"] = msg.info.get("worker_id") or f"conn-{id(conn)}"
            conn.meta.pop("client", None)
            if msg.role == "driver" and conn not in self.drivers:
                self.drivers.append(conn)
        self.reply(conn, msg.req, True, {
            "node_id": self.node_id, "store_file": self.store_file, "job_id": self.job_id,
            "resources": self.resources, "session_dir": self.session_dir,
            "namespace": self.namespace, "address": self.address, "tcp": self.tcp_address,
            "head_grpc": self.link.head_address if self.link else None,
            **self.head_node(),
        })

    def on_fn_put(self, conn: Connection, msg: M.FnPut) -> None:
        self.functions[msg.key] = msg.blob

    def on_fn_get(self, conn: Connection, msg: M.FnGet) -> None:
        blob = self.functions.get(msg.key)
        if blob is None:
            self.fail(conn, msg.req, KeyError(f"no function {msg.key.hex()} on this node"))
        else:
            self.reply(conn, msg.req, True, blob)

    # ------------------------------------------------------------------ leases
    def env_key_for(self, runtime_env: dict | None) -> str:
        if not runtime_env:
            return ""
        key = json.dumps(runtime_env, sort_keys=True, default=str)
        if key not in self.envs:
            self.envs[key] = self.prepare_env(runtime_env, len(self.envs))
        return key

    def prepare_env(self, env: dict, index: int) -> dict:
        """Copy working_dir and py_modules into the session so later edits don't leak in."""
        out: dict[str, Any] = {"env_vars": dict(env.get("env_vars") or {}), "sys_path": [], "cwd": None}
        base = os.path.join(self.session_dir, f"env{index}")
        wd = env.get("working_dir")
        if wd:
            dst = os.path.join(base, "working_dir")
            shutil.copytree(wd, dst, dirs_exist_ok=True)
            out["cwd"] = dst
            out["sys_path"].append(dst)
        for i, mod in enumerate(env.get("py_modules") or []):
            path = mod if isinstance(mod, str) else os.path.dirname(mod)
            dst = os.path.join(base, f"py_modules{i}")
            os.makedirs(dst, exist_ok=True)
            if os.path.isdir(path):
                shutil.copytree(path, os.path.join(dst, os.path.basename(path.rstrip("/"))),
                                dirs_exist_ok=True)
            else:
                shutil.copy(path, dst)
            out["sys_path"].append(dst)
        return out

    def on_lease(self, conn: Connection, msg: M.Lease) -> None:
        req, shape, strategy, runtime_env, desc = msg.req, msg.shape, msg.strategy, msg.runtime_env, msg.desc
        if msg.no_spill:
            # another node sent this request here: grant it here (or wait), never bounce it
            from ._scheduler import NodeAffinity
            strategy = NodeAffinity(self.node_id, False)
        try:
            env_key = self.env_key_for(runtime_env)
        except OSError as e:
            self.fail(conn, req, exc.RuntimeEnvSetupError(f"could not set up runtime_env: {e}"))
            return
        request_id = f"lease-{os.urandom(8).hex()}"
        self.carry_out(self.core.handle(self.client_of(conn), LeaseRequested(
            req, env_key, LeaseRequest(request_id, shape, strategy, self.node_id, desc))))

    def pump(self) -> None:
        """Carry out what the scheduler decided (through the lease table)."""
        self.carry_out(self.core.poll())

    def fulfil(self, need: NeedWorker, w: WorkerRec) -> None:
        self.carry_out(self.core.handle(self.client_of(need.client), WorkerFound(need, w)))

    def return_to_pool(self, w: WorkerRec) -> None:
        self.carry_out(self.core.give_back(w))

    def release_lease(self, lease_id: str, kill: bool) -> None:
        self.carry_out(self.core.release_lease(lease_id, kill))

    def kill_pid(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # ------------------------------------------------------------------ objects
    def client_of(self, conn: Connection) -> Client:
        """Who a connection is, for `NodeCore` (refreshed when it says hello)."""
        client: Client | None = conn.meta.get("client")
        if client is None:
            holder = conn.meta.get("holder") or f"conn-{id(conn)}"
            conn.meta["holder"] = holder
            client = conn.meta["client"] = Client(conn, holder, conn.meta.get("pid", 0))
        return client

    def carry_out(self, effects: list[Any]) -> None:
        """Do what the pure core decided, in order."""
        for eff in effects:
            if isinstance(eff, Answer):
                self.send(eff.client, M.Reply(eff.req, eff.ok, eff.value).wire())
            elif isinstance(eff, Note):
                self.log(eff.text)
            elif isinstance(eff, NeedWorker):
                self.take_worker(eff.env_key, functools.partial(self.fulfil, eff))
            elif isinstance(eff, Spill):
                # another node fits: send the requester there (spillback)
                peer = self.peers.get(eff.node_id, {})
                self.reply(eff.client, eff.req, True, {"spillback": eff.node_id,
                                                       "address": peer.get("address")})
            elif isinstance(eff, Refuse):
                self.fail(eff.client, eff.req, eff.error)
            elif isinstance(eff, ActorGrant):
                self.on_actor_grant(eff.grant)
            elif isinstance(eff, ActorInfeasible):
                actor = self.actors.get(eff.actor_id)
                if actor is not None:
                    self.actor_dead(actor, exc.ActorUnschedulableError(eff.message))
            elif isinstance(eff, CheckPlacementGroups):
                self.check_pg_waiters()
            elif isinstance(eff, Retire):
                self.send(eff.worker.conn, M.Exit().wire())  # enough idle workers: this one retires
            elif isinstance(eff, Kill):
                self.kill_pid(eff.pid)
            elif isinstance(eff, ToPeer):
                try:
                    self.send(self.peer_conn(eff.node_id), eff.msg)
                except (OSError, ConnectionClosed, KeyError):
                    pass
            elif isinstance(eff, Event):
                self.record_event(eff.task_id, eff.state, time.time(), **eff.attrs)
            else:
                raise TypeError(f"the daemon cannot carry out {eff!r}")

    # ------------------------------------------------------------------ actors
    def on_create_actor(self, conn: Connection, msg: M.CreateActor) -> None:
        req, actor_id, spec = msg.req, msg.actor_id, dict(msg.spec)
        try:
            spec["env_key"] = self.env_key_for(spec.get("runtime_env"))
        except OSError as e:
            self.fail(conn, req, exc.RuntimeEnvSetupError(str(e)))
            return
        try:
            actor, existing = self.directory.create(actor_id, spec, conn)
        except ValueError as e:  # ActorAlreadyExistsError is one
            self.fail(conn, req, e)
            return
        if existing:
            self.reply(conn, req, True, {"actor_id": actor.actor_id, "existing": True,
                                         "spec": self.core.public_spec(actor)})
            return
        self.reply(conn, req, True, {"actor_id": actor_id, "existing": False})
        self.schedule_actor(actor)

    def schedule_actor(self, actor: ActorRec) -> None:
        self.carry_out(self.core.schedule_actor(actor))

    def on_actor_grant(self, g: Grant) -> None:
        actor = self.actors.get(bytes.fromhex(g.request_id[6:]))
        if actor is None or actor.state == "DEAD":
            self.scheduler.release(g.lease_id)
            return
        if g.node_id != self.node_id:
            self.scheduler.release(g.lease_id)
            self.place_remote(actor, g.node_id)
            return
        actor.lease_id = g.lease_id

        def start(w: WorkerRec) -> None:
            if actor.state == "DEAD":
                self.return_to_pool(w)
                self.scheduler.release(g.lease_id)
                return
            w.state = "ACTOR"
            w.actor_id = actor.actor_id
            actor.worker = w
            self.leases[g.lease_id] = (w, actor.owner, 0)  # type: ignore[assignment]
            w.lease_id = g.lease_id
            self.send(w.conn, M.RunActor(actor.actor_id, actor.spec, list(g.gpu_ids),
                                         actor.restarts).wire())

        self.take_worker(actor.spec["env_key"], start)

    # ------------------------------------------------------------------ actors on other nodes
    def peer_conn(self, node_id: str) -> Connection:
        conn = self.peer_conns.get(node_id)
        if conn is not None and not conn.closed:
            return conn
        from ._protocol import connect
        first = connect(self.peers[node_id]["address"], self.token)
        conn = self.adopt(first.sock, f"node:{node_id[:8]}")
        conn.meta["role"] = "peer"
        conn.meta["holder"] = "node:" + node_id
        self.send(conn, (M.HELLO, 0, "peer", os.getpid(), {"worker_id": "node:" + self.node_id}))
        self.peer_conns[node_id] = conn
        return conn

    def peer_request(self, node_id: str, kind: int, args: tuple, callback: Any) -> None:
        req = next(self.peer_req_ids)
        self.peer_reqs[req] = (node_id, callback)
        try:
            sent = self.send(self.peer_conn(node_id), (kind, req, *args))
        except (OSError, ConnectionClosed) as e:
            sent = False
            why = str(e)
        else:
            why = "its connection dropped"
        if not sent:
            self.peer_reqs.pop(req, None)
            callback(False, exc.NodeDiedError(f"node {node_id[:8]} is unreachable: {why}"))

    def on_reply(self, conn: Connection, msg: M.Reply) -> None:
        entry = self.peer_reqs.get(msg.req)
        if entry is not None and self.peer_conns.get(entry[0]) is conn:
            del self.peer_reqs[msg.req]
            entry[1](msg.ok, msg.value)

    def place_remote(self, actor: ActorRec, node_id: str) -> None:
        """The scheduler chose another node: that node's daemon runs (and restarts) it."""
        from ._scheduler import NodeAffinity
        actor.remote_node = node_id
        spec = dict(actor.spec, name=None, get_if_exists=False, display_name=actor.spec.get("name"),
                    strategy=NodeAffinity(node_id, False), forwarded=True)

        def created(ok: bool, value: Any) -> None:
            if not ok:
                actor.no_restart = True
                self.actor_dead(actor, as_error(value))
                return
            waiters, actor.waiters = actor.waiters, []
            for wconn, wreq in waiters:
                self.reply(wconn, wreq, True, self.actor_info(actor))

        self.peer_request(node_id, M.CREATE_ACTOR, (actor.actor_id, spec), created)

    def on_peer_died(self, node_id: str) -> None:
        conn = self.peer_conns.pop(node_id, None)
        if conn is not None:
            self.on_disconnect(conn)
        for actor in list(self.actors.values()):
            if actor.remote_node == node_id and actor.state != "DEAD":
                actor.remote_node = None
                actor.spec["kill_reason"] = f"the actor's node {node_id[:8]} died"
                self.on_actor_worker_died(actor)

    def actor_info(self, actor: ActorRec) -> dict:
        return self.core.actor_info(actor)

    def kill_actor(self, actor: ActorRec, reason: str) -> None:
        self.carry_out(self.core.kill_actor(actor, reason))

    def on_actor_worker_died(self, actor: ActorRec) -> None:
        self.carry_out(self.core.actor_worker_died(actor))

    def release_actor_lease(self, actor: ActorRec) -> None:
        self.core.release_actor_lease(actor)

    def actor_dead(self, actor: ActorRec, error: BaseException) -> None:
        self.carry_out(self.core.actor_dead(actor, error))

    # ------------------------------------------------------------------ placement groups
    def on_pg_create(self, conn: Connection, msg: M.PgCreate) -> None:
        try:
            self.scheduler.create_placement_group(msg.pg_id, msg.bundles, msg.strategy, msg.name or "")
        except ValueError as e:
            self.fail(conn, msg.req, ValueError(str(e)))
            return
        self.reply(conn, msg.req, True, msg.pg_id)
        self.pump()

    def on_pg_remove(self, conn: Connection, msg: M.PgRemove) -> None:
        req = msg.req
        lost = self.scheduler.remove_placement_group(msg.pg_id)
        for lease_id in lost:
            entry = self.leases.get(lease_id)
            if entry and entry[0] is not None:
                self.kill_pid(entry[0].pid)
        for actor in self.actors.values():
            if actor.lease_id in lost:
                actor.no_restart = True
        self.reply(conn, req, True, None)
        self.pump()

    def on_pg_info(self, conn: Connection, msg: M.PgInfo) -> None:
        req, pg_id, name = msg.req, msg.pg_id, msg.name
        if pg_id is None and name is None:
            self.reply(conn, req, True, self.scheduler.placement_groups())
            return
        for pg in self.scheduler.placement_groups():
            if pg["placement_group_id"] == pg_id or (name and pg.get("name") == name and pg["state"] != "REMOVED"):
                self.reply(conn, req, True, pg)
                return
        self.fail(conn, req, ValueError(f"no placement group {pg_id or name!r}"))

    def on_pg_wait(self, conn: Connection, msg: M.PgWait) -> None:
        self.pg_waiters.setdefault(msg.pg_id, []).append((conn, msg.req))
        self.check_pg_waiters()

    def check_pg_waiters(self) -> None:
        for pg_id in list(self.pg_waiters):
            try:
                state = self.scheduler.placement_group(pg_id)["state"]
            except KeyError:
                state = "REMOVED"
            if state in ("CREATED", "REMOVED"):
                for wconn, wreq in self.pg_waiters.pop(pg_id):
                    self.reply(wconn, wreq, state == "CREATED", state)

    # ------------------------------------------------------------------ events / state
    def record_event(self, task_id: str, state: str, ts: float, **attrs: Any) -> None:
        self.record_events([(task_id, state, ts, attrs)])

    def record_events(self, events: list) -> None:
        self.events.record_many(events)
        if self.link is not None:
            self.link.forward_events(events)

    def on_events(self, conn: Connection, msg: M.Events) -> None:
        self.record_events(msg.events)  # checked at decoding: nothing malformed is stored

    STATE_KINDS = ("tasks", "timeline", "summary", "nodes", "workers", "actors", "objects",
                   "placement_groups", "jobs", "store")

    def on_state(self, conn: Connection, msg: M.State) -> None:
        req, kind = msg.req, msg.kind
        if kind not in self.STATE_KINDS:
            self.fail(conn, req, ValueError(f"unknown state kind {kind!r}; expected one of "
                                            f"{', '.join(self.STATE_KINDS)}"))
            return
        if self.link is not None and kind in ("tasks", "timeline", "summary", "workers", "objects", "actors", "nodes"):
            import threading
            threading.Thread(target=self.cluster_state, args=(conn, req, kind), daemon=True).start()
            return
        self.reply(conn, req, True, self.local_rows(kind))

    # ------------------------------------------------------------------ cluster
    def cluster_state(self, conn: Connection, req: int, kind: str) -> None:
        """In a thread: the cluster-wide rows of `kind` (the head's events, every node's rows)."""
        try:
            if kind in ("tasks", "timeline", "summary"):
                rows: Any = self.link.head_rows(kind)
            elif kind == "nodes":
                rows = self.link.call(self.rows_nodes)
            else:
                rows = self.link.call(lambda: self.local_rows(kind))
                for peer in list(self.peers.values()):
                    if peer["state"] == "ALIVE":
                        try:
                            rows += self.link.peer_rows(peer["grpc_address"], kind)
                        except Exception:  # noqa: BLE001 - a node going away drops out of the rows
                            pass
            self.post(lambda: self.reply(conn, req, True, rows))
        except Exception as e:  # noqa: BLE001
            err = exc.RaySystemError(f"state query failed: {e}")
            self.post(lambda: self.fail(conn, req, err))

    def local_rows(self, kind: str) -> Any:
        return getattr(self, f"rows_{kind}")()

    def heartbeat_snapshot(self) -> dict:
        from ._metrics import node_metrics
        m = node_metrics([w.pid for w in self.workers.values()], self.gpus)
        m["object_store"] = {"capacity": self.capacity, "used": self.arena.used_bytes}
        return {"available": self.scheduler.available(self.node_id), "metrics": m,
                "pending": len(self.pending_leases)}

    def apply_view(self, view: Any) -> None:
        known = set(self.scheduler.nodes())
        nodes = []
        for ns in view.nodes:
            info = ns.info
            nid = info.node_id
            try:
                total = json.loads(info.resources_json)
                available = json.loads(ns.available_json or "{}")
                labels = json.loads(info.labels_json or "{}")
                metrics = json.loads(ns.metrics_json or "{}")
                M.check_shape(f"node {nid[:8]} resources", total)
                M.check_shape(f"node {nid[:8]} available resources", available)
            except (ValueError, M.BadMessage) as e:  # the head checks too; never trust twice-removed data
                self.log(f"ignoring node {nid[:8]} in the cluster view: {e}")
                continue
            row = {"node_id": nid, "address": info.address, "grpc_address": info.grpc_address,
                   "host": info.host, "state": ns.state, "total": total,
                   "available": available,
                   "metrics": metrics, "is_head": info.is_head,
                   "labels": labels, "start_time": info.start_time,
                   "store_capacity": info.object_store_memory}
            nodes.append(row)
            if nid == self.node_id:
                continue
            self.peers[nid] = row
            if ns.state == "ALIVE":
                if nid not in known:
                    self.scheduler.add_node(nid, total, row["labels"])
                self.scheduler.set_remote_usage(nid, row["available"])
            elif nid in known:
                self.scheduler.remove_node(nid)
                self.on_peer_died(nid)
        self.view_nodes = nodes
        self.pump()

    def head_node(self) -> dict:
        """The head node's id and driver address, once the cluster view names it."""
        if self.link is None or self.link.is_head:
            return {"head_node": self.node_id, "head_address": self.tcp_address or self.address}
        for nid, peer in self.peers.items():
            if peer.get("is_head") and peer.get("state") == "ALIVE":
                return {"head_node": nid, "head_address": peer["address"]}
        return {}

    def on_node_address(self, conn: Connection, msg: M.NodeAddress) -> None:
        peer = self.peers.get(msg.node_id)
        if peer is None:
            self.fail(conn, msg.req, ValueError(f"unknown node {msg.node_id}"))
        else:
            self.reply(conn, msg.req, True, peer["address"])

    def pin_for_pull(self, oid: bytes) -> tuple | None:
        key = "pull:" + os.urandom(6).hex()
        pinned = self.table.pin_for_pull(oid, key)
        return None if pinned is None else (key, *pinned)

    def unpin_pull(self, oid: bytes, key: str) -> None:
        self.answer(self.table.unhold(oid, key))

    def on_get_remote(self, conn: Connection, msg: M.GetRemote) -> None:
        req, oid, node_id = msg.req, msg.oid, msg.node_id
        holder = conn.meta["holder"]
        e = self.table.get_entry(oid)
        if e is not None and e.payload is not None and self.table.is_local(e.payload):
            self.table.hold(oid, holder)
            self.reply(conn, req, True, e.payload)
            return
        if e is None:
            peer = self.peers.get(node_id)
            if peer is None or peer["state"] != "ALIVE" or self.link is None:
                self.fail(conn, req, self.table.lost(
                    oid, f"It lives on node {node_id[:8]}, which is not alive."))
                return
            e = self.table.start_pull(oid)
            self.pulls[oid] = node_id
            self.link.pull(oid, peer["grpc_address"])
        self.table.hold(oid, holder)
        e.waiters.append((conn, req))

    def alloc_secondary(self, oid: bytes, total: int) -> int | None:
        return self.table.alloc_secondary(oid, total)

    def on_pulled(self, oid: bytes, offset: int | None, total: int, is_error: bool, err: str | None) -> None:
        self.pulls.pop(oid, None)
        self.answer(self.table.pulled(oid, offset, total, is_error, err))

    def rows_tasks(self) -> list[dict]:
        return self.events.rows()

    def rows_timeline(self) -> list[dict]:
        return self.events.timeline()

    def rows_summary(self) -> dict:
        return self.events.summarize()

    def rows_nodes(self) -> list[dict]:
        if self.link is not None and self.view_nodes:
            return [{
                "node_id": n["node_id"], "node_ip": n["host"], "is_head_node": n["is_head"],
                "state": n["state"], "node_name": n["host"], "address": n["address"],
                "resources_total": n["total"], "resources_available": n["available"],
                "labels": n["labels"], "start_time_ms": int(n["start_time"] * 1000),
                "object_store": n["metrics"].get("object_store") or {"capacity": n["store_capacity"], "used": 0},
                "metrics": n["metrics"],
            } if n["node_id"] != self.node_id else self._own_node_row() for n in self.view_nodes]
        return [self._own_node_row()]

    def _own_node_row(self) -> dict:
        from ._metrics import node_metrics
        return {
            "node_id": self.node_id, "node_ip": self.host,
            "state": "ALIVE", "node_name": socket.gethostname(),
            "address": self.tcp_address or self.address,
            "resources_total": self.scheduler.total(self.node_id),
            "resources_available": self.scheduler.available(self.node_id),
            "labels": self.config.get("labels") or {},
            "start_time_ms": int(self.started * 1000),
            "object_store": {"capacity": self.capacity, "used": self.arena.used_bytes},
            "metrics": node_metrics([w.pid for w in self.workers.values()], self.gpus),
            "is_head_node": self.link is None or self.link.is_head,
        }

    def rows_workers(self) -> list[dict]:
        return [{"worker_id": w.worker_id, "is_alive": w.state != "DEAD", "worker_type": "WORKER",
                 "pid": w.pid, "node_id": self.node_id, "state": w.state,
                 "actor_id": w.actor_id.hex() if w.actor_id else None,
                 "start_time_ms": int(w.started * 1000)} for w in self.workers.values()]

    def rows_actors(self) -> list[dict]:
        out = []
        for a in self.actors.values():
            if a.remote_node is not None and a.state != "DEAD":
                continue  # its node lists it
            name_ns = self.directory.name_of(a)
            out.append({"actor_id": a.actor_id.hex(), "class_name": a.spec["class_name"],
                        "state": a.state, "job_id": self.job_id, "name": name_ns[1],
                        "ray_namespace": name_ns[0], "namespace": name_ns[0],
                        "node_id": self.node_id, "pid": a.worker.pid if a.worker else None,
                        "num_restarts": a.restarts, "required_resources": a.spec.get("running_shape", {}),
                        "is_detached": a.spec.get("lifetime") == "detached",
                        "death_cause": a.death[1] if a.death else None,
                        "cell": a.spec.get("tag")})
        return out

    def rows_objects(self) -> list[dict]:
        return self.table.rows(self.node_id)

    def rows_placement_groups(self) -> list[dict]:
        return self.scheduler.placement_groups()

    def rows_jobs(self) -> list[dict]:
        return [{"job_id": self.job_id, "status": "RUNNING", "start_time": int(self.started * 1000),
                 "driver_pid": d.meta.get("pid")} for d in self.drivers]

    def rows_store(self) -> dict:
        return {"capacity": self.capacity, "used": self.arena.used_bytes}

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        import psutil
        if self.link is not None:
            try:
                self.link.stop()
            except Exception:  # noqa: BLE001
                pass
        # the shared memory and sockets go first: they are what outlives us otherwise
        try:
            os.unlink(self.store_file)
        except FileNotFoundError:
            pass
        shutil.rmtree(self.session_dir, ignore_errors=True)
        pids = self.pool.pids()
        for pid in pids:
            self.kill_pid(pid)
        self.zygote.close()

        def alive(pid: int) -> bool:  # orphaned workers may linger as zombies: those are gone
            try:
                return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                return False

        deadline = time.time() + 2
        while time.time() < deadline and any(alive(p) for p in pids):
            time.sleep(0.01)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver's Ctrl-C is not ours
    # A process group of our own: Jupyter restarts a kernel by killing the kernel's whole
    # process group, and the embedded daemon must outlive that kill to notice its driver
    # is gone and clean up. Not a session of our own: the kernel's CPU scheduler groups
    # processes by session (autogroup), and a driver and its workers in different groups
    # answer each other markedly slower. In a background group, writing to a terminal
    # with `tostop` set would stop us: SIGTTOU is ignored (our children inherit that).
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    if os.getpgid(0) != os.getpid():
        os.setpgid(0, 0)
    config = json.loads(sys.stdin.readline())
    # No parent-death signal for the embedded daemon: the kernel sends it when the
    # *thread* that started us ends (carme.init() from a thread that then returns), not
    # the driver. The end of stdin and a change of parent tell us the driver is gone.
    daemon = NodeDaemon(config)
    signal.signal(signal.SIGTERM, lambda *_: setattr(daemon, "running", False))
    try:
        daemon.serve()
    finally:
        if daemon.running:
            daemon.shutdown()


if __name__ == "__main__":
    main()
