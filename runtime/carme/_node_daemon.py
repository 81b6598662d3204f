"""The node daemon: one per machine, the I/O shell around the node's pure state machine.

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
malformed input is answered with a clear error and never stored. The sockets, their
buffers and the deadlines of slow or unauthenticated peers are `_node_conns.Sockets`.

The node's state is `NodeCore` (`_node_core.py`, pure): decoded messages and the events
seen here (a connection closed, a worker forked, the head's cluster view, a pull done)
go in through `handle`, effects come out and `carry_out` performs them — send, fork a
worker (`_zygote.py`), kill, pull over gRPC or talk to another node (`_link.py`, peer
connections), record a task event. What stays here is what is I/O by nature: the few
messages that need files or threads (a runtime env set up, `_node_envs.py`; state rows
gathered across the cluster), the workers' output, and shutdown. It never sits on the
per-task path: drivers push tasks straight to leased workers.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any

from . import _messages as M
from . import _node_effects as E
from . import exceptions as exc
from ._events import TaskEventLog
from ._node_actors import ActorDirectory
from ._node_conns import Sockets, log
from ._node_core import NodeCore
from ._node_envs import RuntimeEnvs
from ._node_leases import LeaseTable, Refuse, Spill
from ._node_memory import (
    DEFAULT_REFRESH_MS,
    DEFAULT_THRESHOLD,
    MemoryMonitor,
    MemoryReading,
    WorkerUse,
)
from ._node_objects import ObjectTable
from ._node_spill import SpillSpace
from ._node_state import CLUSTER_KINDS, NodeFacts, NodeRows, head_node, parse_view, unknown_kind
from ._node_workers import WorkerPool, WorkerRec
from ._protocol import Connection, ConnectionClosed, connect
from ._scheduler import BundleStrategy, ClusterScheduler, LeaseRequest, NodeAffinity
from ._spill_files import Spiller, SpillFiles
from ._store import Arena, Prefaulter, create_store_file, spill_directory, store_path
from ._zygote import Zygote, kill_pid, wait_gone

LOG_BACKLOG = 8 << 20  # a driver with this much unread output gets no more worker output


class NodeDaemon:
    def __init__(self, config: dict, zygote: Zygote) -> None:
        self.config = config
        self.session_dir: str = config["session_dir"]
        self.session: str = config["session"]
        self.token: bytes = bytes.fromhex(config["token"])
        self.node_id: str = config["node_id"]
        self.resources: dict[str, float] = config["resources"]
        self.job_id: str = config.get("job_id", "01000000")
        self.namespace: str = config.get("namespace") or "default"
        self.spill_dir = spill_directory(self.session_dir, self.session,
                                         config.get("object_spilling_directory"))
        self.zygote = zygote  # forked by `_daemon.main` before this module was imported
        self.io = Sockets(self.token, config, gone=self.on_disconnect)
        self.send = self.io.send  # queue a message for a connection (never blocks)
        self.scheduler = ClusterScheduler()
        self.scheduler.add_node(self.node_id, self.resources, config.get("labels") or {})
        self.capacity = int(config["object_store_memory"])
        self.store_file = store_path(self.session)
        create_store_file(self.store_file, self.capacity)
        self.arena = Arena(self.capacity)
        self.prefaulter = Prefaulter(self.store_file, self.capacity)
        limit = config.get("object_spilling_max_bytes")
        self.table = ObjectTable(self.arena, self.node_id,
                                 SpillSpace(None if limit is None else int(limit)), self.spill_dir)
        self.spiller = Spiller(self.table, SpillFiles(self.spill_dir, self.store_file), self.io.post,
                               self.carry_out, log)
        self.functions: dict[bytes, bytes] = {}
        self.pool = WorkerPool(max_idle=max(2, int(self.resources.get("CPU", 1)) + 1))
        self.directory = ActorDirectory(self.namespace)
        self.events = TaskEventLog()
        from ._metrics import GpuMonitor
        self.gpus = GpuMonitor()
        self.envs = RuntimeEnvs(self.session_dir)
        # the memory monitor (`_node_memory.py`); `_memory_reading_file` is for tests only
        self.memory = MemoryMonitor(config.get("memory_usage_threshold", DEFAULT_THRESHOLD),
                                    config.get("memory_monitor_refresh_ms", DEFAULT_REFRESH_MS))
        self.memory_file: str | None = config.get("_memory_reading_file")
        self.next_memory_check = 0.0
        self.lease_started: dict[str, float] = {}  # lease id -> when this daemon first saw it held
        # lease requests whose tasks cannot run again (max_retries=0), newest last
        self.nonretriable: OrderedDict[str, None] = OrderedDict()
        self.drivers: list[Connection] = []
        self.running = True
        self.started = time.time()
        self.address = f"unix:{self.session_dir}/node.sock"
        self.io.listen(self.address)
        self.standalone = bool(config.get("standalone"))
        self.host: str = config.get("host") or "127.0.0.1"
        self.cluster_mode = bool(config.get("cluster"))
        self.peer_conns: dict[str, Connection] = {}  # our connections to other nodes' daemons
        self.parent_pid = os.getppid()
        self.tcp_address = ""
        if config.get("tcp"):
            host, port = self.io.listen(config["tcp"]).getsockname()[:2]
            self.tcp_address = f"{host}:{port}"
        if not self.standalone:
            # embedded: the driver's pipe; end-of-file means the driver is gone
            self.io.watch(sys.stdin.fileno(), "parent", None)
        self.link: Any = None
        if self.cluster_mode:
            from ._link import ClusterLink
            self.link = ClusterLink(self, head_address=config.get("head_address"), host=self.host,
                                    port=int(config.get("grpc_port") or 0))
            self.io.watch(self.link.wake_r, "link", None)
        self.core = NodeCore(self.table, LeaseTable(self.scheduler, self.node_id), self.pool,
                             self.directory, self.node_id, linked=self.link is not None)
        self.peers = self.core.peers  # other nodes, from the head's view
        self.facts = NodeFacts(self.node_id, self.host, socket.gethostname(),
                               self.tcp_address or self.address, self.job_id, self.started,
                               config.get("labels") or {}, self.link is None or self.link.is_head,
                               self.link is not None)
        self.state = NodeRows(self.facts, self.events, self.table, self.directory, self.pool,
                              self.scheduler, self.drivers)
        self._handlers: dict[type, Any] = {
            M.Hello: self.on_hello, M.Lease: self.on_lease, M.CreateActor: self.on_create_actor,
            M.FnPut: lambda conn, msg: self.functions.__setitem__(msg.key, msg.blob),
            M.FnGet: self.on_fn_get, M.Events: lambda conn, msg: self.record_events(msg.events),
            M.State: self.on_state, M.WorkerDeath: self.on_worker_death,
            M.PullObject: self.on_pull_object,
            M.Alloc: self.on_alloc, M.MapObject: self.on_map,
        }

    # ------------------------------------------------------------------ loop
    def serve(self) -> None:
        for _ in range(int(self.config.get("prestart_workers", 1))):
            self.feed(E.WorkerStarted(self.spawn_worker(""), None))  # into the pool, as any worker
        if self.link is not None:
            self.link.start()
        self.metrics_server: Any = None
        if self.config.get("metrics_port") is not None:  # Prometheus text on its own thread
            from ._metrics_http import MetricsServer
            self.metrics_server = MetricsServer(int(self.config["metrics_port"]), self.fetch_snapshot,
                                                self.config.get("metrics_host") or "127.0.0.1")
        print(json.dumps({"ready": True, "address": self.address, "tcp": self.tcp_address,
                          "pid": os.getpid(),
                          "grpc": self.link.grpc_address if self.link else None,
                          "head": self.link.head_address if self.link else None,
                          "metrics_port": self.metrics_server.port if self.metrics_server else None}),
              flush=True)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # nobody reads our stdout after the ready line
        os.close(devnull)
        wait = min(1.0, self.memory.refresh_ms / 1000) if self.memory.enabled else 1.0
        while self.running:
            for key, mask in self.io.sel.select(timeout=wait):
                kind, obj = key.data
                try:
                    if kind == "conn":
                        if mask & selectors.EVENT_WRITE:
                            self.io.writable(obj)
                        if mask & selectors.EVENT_READ and not obj.closed:
                            self.on_readable(obj)
                    elif kind == "accept":
                        self.io.accept(obj)
                    elif kind == "out":
                        self.on_worker_output(*obj)
                    elif kind == "link":
                        self.link.drain()
                    elif kind == "signal":
                        self.io.woken()
                    elif kind == "parent":
                        if not os.read(sys.stdin.fileno(), 4096):
                            self.running = False
                except Exception:  # a bug must not take the node down silently
                    import traceback
                    traceback.print_exc()
            self.reap()
            self.io.tick(time.monotonic())
            self.check_memory(time.monotonic())
            if not self.standalone and os.getppid() != self.parent_pid:
                self.running = False  # the driver that started us is gone
        self.shutdown()

    def on_readable(self, conn: Connection) -> None:
        handlers = self._handlers
        for raw in self.io.read(conn):
            try:
                msg = M.decode(raw)
            except M.BadMessage as e:
                self.reject(conn, raw, e)
                continue
            handler = handlers.get(type(msg))
            if handler is None:  # everything but what needs files or threads: the core decides
                self.carry_out(self.core.handle(self.client_of(conn), msg))
            else:
                handler(conn, msg)

    def reject(self, conn: Connection, raw: Any, err: M.BadMessage) -> None:
        """A malformed message: the sender hears why (if it waits for an answer); nothing
        of it is kept."""
        req = M.request_id(raw)
        log(f"refused a malformed message from {conn.meta.get('role')} "
            f"pid {conn.meta.get('pid')}: {err}")
        if req is not None:
            self.reply(conn, req, False, err)

    def reply(self, conn: Connection, req: int, ok: bool, value: Any) -> None:
        self.send(conn, M.Reply(req, ok, value).wire())

    def fail(self, conn: Connection, req: int, err: BaseException) -> None:
        self.send(conn, M.Reply(req, False, err).wire())

    def on_disconnect(self, conn: Connection) -> None:
        """A connection was dropped (`Sockets.drop`): what the node makes of it."""
        current = [nid for nid, pc in self.peer_conns.items() if pc is conn]
        for nid in current:
            del self.peer_conns[nid]
        if conn in self.drivers:
            self.drivers.remove(conn)
        if conn.meta.get("role") == "worker":
            self.memory.gone(conn.meta["worker"].worker_id)
        client = self.client_of(conn)
        if not current:
            client.peer = None  # a replaced (or closed) connection to a node answers for nothing
        self.carry_out(self.core.handle(None, E.ClientGone(client)))

    def client_of(self, conn: Connection) -> E.Client:
        """Who a connection is, for `NodeCore` (refreshed when it says hello)."""
        client: E.Client | None = conn.meta.get("client")
        if client is None:
            holder = conn.meta.get("holder") or f"conn-{id(conn)}"
            conn.meta["holder"] = holder
            client = conn.meta["client"] = E.Client(conn, holder, conn.meta.get("pid", 0),
                                                  conn.meta.get("worker"), conn.meta.get("peer_node"))
        return client

    def feed(self, event: Any) -> None:
        """An event seen here (or handed over by the link's threads) goes to the core."""
        self.carry_out(self.core.handle(None, event))

    def carry_out(self, effects: list[Any]) -> None:
        """Do what the pure core decided, in order."""
        for eff in effects:
            if isinstance(eff, E.Answer):
                self.send(eff.client, M.Reply(eff.req, eff.ok, eff.value).wire())
            elif isinstance(eff, E.Send):
                self.send(eff.conn, eff.msg)
            elif isinstance(eff, E.SpawnWorker):
                self.feed(E.WorkerStarted(self.spawn_worker(eff.env_key), eff.waiting))
            elif isinstance(eff, Spill):
                # another node fits: send the requester there (spillback)
                peer = self.peers.get(eff.node_id, {})
                self.reply(eff.client, eff.req, True, {"spillback": eff.node_id,
                                                       "address": peer.get("address")})
            elif isinstance(eff, Refuse):
                self.fail(eff.client, eff.req, eff.error)
            elif isinstance(eff, E.Retire):
                self.send(eff.worker.conn, M.Exit().wire())  # enough idle workers: this one retires
            elif isinstance(eff, E.Kill):
                kill_pid(eff.pid)
            elif isinstance(eff, E.Event):
                self.record_events([(eff.task_id, eff.state, time.time(), eff.attrs)])
            elif isinstance(eff, E.Note):
                log(eff.text)
            elif isinstance(eff, (E.ToPeer, E.PeerRequest)):
                self.to_peer(eff)
            elif isinstance(eff, E.ClosePeer):
                conn = self.peer_conns.pop(eff.node_id, None)
                if conn is not None:
                    self.io.drop(conn)
            elif isinstance(eff, E.StartPull):
                self.link.pull(eff.oid, eff.grpc_address, eff.address)
            else:
                raise TypeError(f"the daemon cannot carry out {eff!r}")
        if self.table.dropped_files:  # spill files of objects freed or restored
            for oid in self.table.dropped_files:
                self.spiller.files.remove(oid)
            self.table.dropped_files.clear()

    # ------------------------------------------------------------------ spilling (`_spill_files.Spiller`)
    def on_alloc(self, conn: Connection, msg: M.Alloc) -> None:
        """Room first (spilling if need be; the writes run on the spill thread)."""
        client = self.client_of(conn)

        def allocate() -> None:
            self._if_open(conn, client, msg)
            self.prefaulter.grew(self.arena.high_water, msg.size)  # pages ready for the next
        self.spiller.when_room(msg.size, allocate)

    def on_map(self, conn: Connection, msg: M.MapObject) -> None:
        """A spilled object comes back first (read on the spill thread)."""
        client = self.client_of(conn)
        self.spiller.when_resident(msg.oid, lambda: self._if_open(conn, client, msg))

    def _if_open(self, conn: Connection, client: E.Client, msg: Any) -> None:
        if not conn.closed:  # a client that left while it waited takes nothing
            self.carry_out(self.core.handle(client, msg))

    def pin_for_pull(self, oid: bytes) -> Future:
        """A peer pulls one of ours (asked from the link's thread, on the loop): a future
        of `NodeCore.pin_for_pull`, once a spilled object is back."""
        fut: Future = Future()
        self.spiller.when_resident(oid, lambda: fut.set_result(self.core.pin_for_pull(oid)))
        return fut

    def alloc_pulled(self, oid: bytes, total: int) -> Future:
        """Room for a copy pulled from another node (spilling here if need be): a future
        of its offset, None if there is none."""
        fut: Future = Future()
        self.spiller.when_room(total, lambda: fut.set_result(self.table.alloc_secondary(oid, total)))
        return fut

    # ------------------------------------------------------------------ workers
    def spawn_worker(self, env_key: str) -> WorkerRec:
        worker_id = os.urandom(14).hex()
        pid, sock, out_r, err_r = self.zygote.spawn({
            "worker_id": worker_id, "node_id": self.node_id,
            "session_dir": self.session_dir, "store_file": self.store_file,
            "token": self.token.hex(), "daemon_address": self.address,
            "job_id": self.job_id, "namespace": self.namespace,
            "env": self.envs.get(env_key), "env_key": env_key,
            "tcp_host": self.host if self.cluster_mode else None,  # others reach them by TCP
        })
        conn = self.io.adopt(sock, f"worker:{pid}")
        w = WorkerRec(worker_id, pid, conn, env_key, out_fds=(out_r, err_r))
        conn.meta.update(worker=w, role="worker", holder=worker_id)
        self.io.watch(out_r, "out", (w, "stdout", out_r))
        self.io.watch(err_r, "out", (w, "stderr", err_r))
        return w

    def on_worker_output(self, w: WorkerRec, stream: str, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            self.io.unwatch(fd)
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

    def reap(self) -> None:
        try:
            while (pid := os.waitpid(-1, os.WNOHANG)[0]) != 0:
                if pid == self.zygote.pid:
                    self.running = False  # without a zygote this node cannot make workers
        except ChildProcessError:
            pass

    # ------------------------------------------------------------------ memory
    def check_memory(self, now: float) -> None:
        """Every `memory_monitor_refresh_ms`: past the threshold, kill one worker."""
        if not self.memory.enabled or now < self.next_memory_check:
            return
        self.next_memory_check = now + self.memory.refresh_ms / 1000
        from ._metrics import memory_reading, process_rss
        busy = [w for w in self.pool.workers.values()
                if (w.state == "LEASED" and w.lease_id) or w.state == "ACTOR"]
        self.lease_started = {w.lease_id: self.lease_started.get(w.lease_id, now)
                              for w in busy if w.state == "LEASED" and w.lease_id}
        if not busy or self.memory.pending is not None:
            return
        reading = MemoryReading(*memory_reading(self.memory_file))
        if not self.memory.over(reading):
            return  # the common case: no per-worker reads
        users = [WorkerUse(w.worker_id, w.pid, self.lease_started[w.lease_id],
                           retriable=self.scheduler.request_of(w.lease_id) not in self.nonretriable,
                           what=f"a task (lease {w.lease_id[6:14]})", rss=process_rss(w.pid))
                 if w.state == "LEASED" and w.lease_id else
                 WorkerUse(w.worker_id, w.pid, w.started, retriable=False, actor=True,
                           what=f"actor {w.actor_id.hex()[:8] if w.actor_id else '?'}",
                           rss=process_rss(w.pid))
                 for w in busy]
        decision = self.memory.check(reading, users)
        if decision is not None:
            log(decision.reason)
            if decision.worker.actor:  # its callers learn why (ActorDiedError's text)
                w = self.pool.workers.get(decision.worker.worker_id)
                actors = self.core.actors
                actor = actors.get(w.actor_id) if actors is not None and w is not None and w.actor_id else None
                if actor is not None:
                    actor.spec["kill_reason"] = f"the node's memory monitor killed its worker. {decision.reason}"
            self.carry_out([E.Kill(decision.worker.pid)])

    def on_worker_death(self, conn: Connection, msg: M.WorkerDeath) -> None:
        self.reply(conn, msg.req, True, self.memory.reason(msg.worker_id))

    # ------------------------------------------------------------------ messages that need I/O
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
            **head_node(self.facts, self.peers),
        })

    def on_pull_object(self, conn: Connection, msg: M.PullObject) -> None:
        """Another node copies an object of ours: the connection leaves the loop and a
        thread of the link streams the object down it (`_transfer.py`). Only as the first
        message of a connection: one that said hello holds state the loop must clean up."""
        if self.link is None or conn.meta.get("role") != "unknown":
            log(f"refused PULL_OBJECT from {conn.meta.get('role')} pid {conn.meta.get('pid')}: "
                f"it must be the first message of a connection of its own")
            self.io.drop(conn)
            return
        sock, oid = self.io.release(conn), msg.object_id
        # a spilled object comes back into the store first (`_spill_files.Spiller`)
        self.spiller.when_resident(oid, lambda: self.serve_pull(sock, oid))

    def serve_pull(self, sock: Any, oid: bytes) -> None:
        pinned = self.core.pin_for_pull(oid)
        story = "" if pinned is not None else "; ".join(self.table.story(oid)) or "never known here"
        self.link.serve_pull(sock, oid, pinned, story)

    def on_fn_get(self, conn: Connection, msg: M.FnGet) -> None:
        blob = self.functions.get(msg.key)
        if blob is None:
            self.fail(conn, msg.req, KeyError(f"no function {msg.key.hex()} on this node"))
        else:
            self.reply(conn, msg.req, True, blob)

    def on_lease(self, conn: Connection, msg: M.Lease) -> None:
        # from another node (no_spill): grant it here (or wait), never bounce it; a
        # placement group's bundle is leased from the bundle this node reserves (or, for a
        # group it does not know, where the head says it is: `_node_core_pgs.py`)
        strategy = msg.strategy
        if msg.no_spill and not isinstance(strategy, BundleStrategy):
            strategy = NodeAffinity(self.node_id, False)
        try:
            env_key = self.envs.key(msg.runtime_env)
        except OSError as e:
            self.fail(conn, msg.req, exc.RuntimeEnvSetupError(f"could not set up runtime_env: {e}"))
            return
        request_id = f"lease-{os.urandom(8).hex()}"
        if not msg.retriable:  # the memory monitor kills these tasks' workers after the others'
            self.nonretriable[request_id] = None
            while len(self.nonretriable) > 10_000:
                self.nonretriable.popitem(last=False)
        self.carry_out(self.core.handle(self.client_of(conn), E.LeaseRequested(
            msg.req, env_key, LeaseRequest(request_id, msg.shape, strategy, self.node_id, msg.desc))))

    def on_create_actor(self, conn: Connection, msg: M.CreateActor) -> None:
        spec = dict(msg.spec)
        try:
            spec["env_key"] = self.envs.key(spec.get("runtime_env"))
        except OSError as e:
            self.fail(conn, msg.req, exc.RuntimeEnvSetupError(str(e)))
            return
        self.carry_out(self.core.handle(self.client_of(conn), E.ActorCreation(msg.req, msg.actor_id, spec)))

    def record_events(self, events: list) -> None:
        self.events.record_many(events)  # checked at decoding: nothing malformed is stored
        if self.link is not None:
            self.link.forward_events(events)

    def on_state(self, conn: Connection, msg: M.State) -> None:
        err = unknown_kind(msg.kind)
        if err is not None:
            self.fail(conn, msg.req, err)
        elif self.link is not None and msg.kind in CLUSTER_KINDS:
            def done(ok: bool, rows: Any) -> None:  # in the link's thread
                self.io.post(lambda: self.reply(conn, msg.req, ok, rows))
            threading.Thread(target=self.link.cluster_rows, args=(msg.kind, done), daemon=True).start()
        else:
            self.reply(conn, msg.req, True, self.local_rows(msg.kind))

    def local_rows(self, kind: str) -> Any:
        return self.state.rows(kind, self.metrics)

    def metrics(self) -> dict:
        from ._metrics import node_metrics
        return node_metrics([w.pid for w in self.pool.workers.values()], self.gpus)

    # ------------------------------------------------------------------ other nodes
    def to_peer(self, eff: E.ToPeer | E.PeerRequest) -> None:
        """Send to another node's daemon over our connection to it (opened on first use)."""
        conn = self.peer_conns.get(eff.node_id)
        sent, why = False, ""
        for _attempt in range(2):  # a connection that dropped unnoticed: once more on a new one
            try:
                if conn is None or conn.closed:
                    first = connect(self.peers[eff.node_id]["address"], self.token)
                    conn = self.io.adopt(first.sock, f"node:{eff.node_id[:8]}")
                    conn.meta.update(role="peer", holder="node:" + eff.node_id, peer_node=eff.node_id)
                    self.send(conn, (M.HELLO, 0, "peer", os.getpid(), {"worker_id": "node:" + self.node_id}))
                    self.peer_conns[eff.node_id] = conn
                sent, why = self.send(conn, eff.msg), "its connection dropped"
            except (OSError, ConnectionClosed, KeyError) as e:
                sent, why = False, str(e)
                break
            if sent:
                break
            conn = None
        if not sent and isinstance(eff, E.PeerRequest):
            self.feed(E.PeerFailed(eff.req, exc.NodeDiedError(
                f"node {eff.node_id[:8]} is unreachable: {why}")))

    def metrics_snapshot(self) -> dict:
        """What the Prometheus endpoint shows (`_metrics_http.families`); on the loop."""
        def by_state(rows: Any) -> dict[str, int]:
            counts: dict[str, int] = {}
            for r in rows:
                counts[r["state"]] = counts.get(r["state"], 0) + 1
            return counts
        return {**self.metrics(), "node_id": self.node_id, "store_used": self.arena.used_bytes,
                "store_capacity": self.capacity, "store_spilled": self.table.spill.used,
                "store_spilled_objects": len(self.table.spill.files),
                "tasks": by_state(self.events.rows()), "actors": by_state(self.state.actors()),
                "workers": by_state(self.state.workers()), "oom_kills": self.memory.kills}

    def fetch_snapshot(self) -> dict | None:
        """From the metrics server's thread: a snapshot taken on the loop (None if the
        loop does not answer within 5 s)."""
        done = threading.Event()
        box: list[dict] = []

        def take() -> None:
            try:
                box.append(self.metrics_snapshot())
            finally:
                done.set()
        self.io.post(take)
        done.wait(5.0)
        return box[0] if box else None

    def heartbeat_snapshot(self) -> dict:
        m = self.metrics()
        m["object_store"] = self.state.store()
        return {"available": self.scheduler.available(self.node_id), "metrics": m,
                "pending": len(self.core.leases.pending)}  # type: ignore[union-attr]

    def apply_view(self, view: Any) -> None:
        rows, notes = parse_view(view)  # the head checks too; never trust twice-removed data
        for note in notes:
            log(note)
        self.state.view_nodes = rows
        self.feed(E.ClusterView(rows))

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        if getattr(self, "metrics_server", None) is not None:
            self.metrics_server.close()
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
        self.spiller.close()
        self.prefaulter.close()
        pids = self.pool.pids()
        for pid in pids:
            kill_pid(pid)
        self.zygote.close()
        wait_gone(pids, 2.0)

