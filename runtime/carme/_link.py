"""A node daemon's link to the rest of its cluster (gRPC), run beside its selector loop.

Theory of operation. The daemon's state belongs to its single loop thread; gRPC runs
its own threads. The two meet through `inbox` (a queue) and a wake-up pipe that the
loop watches: threads never touch the daemon's state, they hand it functions to run
(`call`) or news to apply (the cluster view). This module holds:
  * the gRPC server of this node (Node service; the Head service too on the head);
  * the heartbeat thread: registers with the head, then about twice a second sends this
    node's available resources, metrics and task events, and passes the cluster view it
    gets back to the loop;
  * object transfer: pulling another node's object into this node's store, once per
    node, over a TCP stream from that node's daemon (`_transfer.py`), and serving such
    streams; gRPC `PullObject` (4 MB chunks) stays for a peer without a TCP address.

A head that cannot be reached. When heartbeats fail for HEAD_GRACE seconds, the loop gets
the last view with the head's row marked DEAD and a `state_message` saying since when it
has not answered: the node stops sending work there, `carme.nodes()` shows it, and
local work goes on. Heartbeats keep trying (gRPC reconnects at most a second apart); the
first one a restarted head answers brings the real view back. Task events that could
not be sent are kept (up to MAX_HELD_EVENTS) for the next beat.

On the head, each beat also writes the head's state file when what it says changed
(`_head_state.py`); a head started again from that file restores its registry and its
named and detached actors here, before its gRPC server takes calls.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import grpc

from . import _head_state as hs
from . import _messages as M
from . import _transfer as transfer
from ._head import HeadServicer, HeadState, channel, metadata, start_server
from ._head_state import head_unreachable
from ._node_effects import PullDone, Pulled
from ._node_state import HEAD_KINDS
from ._protocol import connect
from ._store import SharedArena
from .exceptions import RaySystemError
from .protos import carme_pb2 as pb
from .protos import carme_pb2_grpc as pbg

HEARTBEAT = 0.5
CHUNK = 4 << 20
HEAD_GRACE = 1.5  # seconds of failed heartbeats before a node says the head is unreachable
MAX_HELD_EVENTS = 100_000  # task events kept for the head while it cannot be reached


def mark_head_down(view: pb.ClusterView, message: str) -> pb.ClusterView:
    """The last view, with the head's row DEAD and `message` as its state_message."""
    out = pb.ClusterView()
    out.CopyFrom(view)
    for ns in out.nodes:
        if ns.info.is_head:
            ns.state = "DEAD"
            try:
                metrics = json.loads(ns.metrics_json or "{}")
            except ValueError:
                metrics = {}
            ns.metrics_json = json.dumps({**metrics, "state_message": message})
    return out


class NodeServicer(pbg.NodeServicer):
    def __init__(self, link: ClusterLink) -> None:
        self.link = link

    def PullObject(self, request: pb.PullRequest, context: Any) -> Any:
        link = self.link
        pinned = link.call(lambda: link.daemon.pin_for_pull(request.object_id)).result(600)
        if pinned is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"object {request.object_id.hex()} is not on this node")
        key, offset, size, is_error = pinned
        try:
            view = link.arena.readonly(offset, size)
            step = request.chunk_size or CHUNK
            for pos in range(0, size, step):
                yield pb.Chunk(total_size=size, offset=pos, data=bytes(view[pos:pos + step]),
                               is_error=is_error)
            if size == 0:
                yield pb.Chunk(total_size=0, offset=0, data=b"", is_error=is_error)
        finally:
            link.call(lambda: link.daemon.feed(PullDone(request.object_id, key)))

    def GetRows(self, request: pb.StateRequest, context: Any) -> pb.StateReply:
        kind = request.kind
        rows = self.link.call(lambda: self.link.daemon.local_rows(kind))
        return pb.StateReply(rows_json=json.dumps(rows, default=str))


class ClusterLink:
    def __init__(self, daemon: Any, *, head_address: str | None, host: str, port: int = 0) -> None:
        self.daemon = daemon
        self.token: bytes = daemon.token
        self.md = metadata(self.token)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.is_head = head_address is None
        self.head_state = HeadState() if self.is_head else None
        state_dir = daemon.config.get("head_state_dir") if self.is_head and daemon.tcp_address else None
        self.state_file = hs.state_file(state_dir, daemon.tcp_address.rsplit(":", 1)[1]) if state_dir else None
        self.saved_text = ""
        if self.state_file and daemon.config.get("head_restore"):
            self.restore(hs.load(self.state_file))
        head_servicer = HeadServicer(self.head_state, {"job_id": daemon.job_id}) if self.head_state else None
        self.server, bound = start_server(host, port if self.is_head else 0, self.token,
                                          head_servicer, NodeServicer(self))
        self.grpc_address = f"{host}:{bound}"
        self.head_address = head_address or self.grpc_address
        self.head = pbg.HeadStub(channel(self.head_address))
        self.arena = SharedArena(daemon.store_file)
        self.store_fd = os.open(daemon.store_file, os.O_RDONLY)  # what `serve_pull` sends from
        self.events: list[tuple] = []
        self.events_lock = threading.Lock()
        self.running = True
        self.peers: dict[str, dict[str, Any]] = {}
        self.last_view: pb.ClusterView | None = None
        self.head_down_since: float | None = None  # when heartbeats began to fail
        self.head_marked_down = False
        self._thread = threading.Thread(target=self._heartbeats, name="carme-heartbeat", daemon=True)

    # ------------------------------------------------------------------ loop hand-off
    def call(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        fut: Future = Future()
        self.inbox.put(("call", fn, fut))
        os.write(self.wake_w, b"x")
        return fut.result(timeout)

    def post(self, item: tuple) -> None:
        self.inbox.put(item)
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass

    def drain(self) -> None:
        """In the daemon loop: run what the threads handed over."""
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if item[0] == "call":
                _, fn, fut = item
                try:
                    fut.set_result(fn())
                except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                    fut.set_exception(e)
            elif item[0] == "view":
                self.daemon.apply_view(item[1])
            elif item[0] == "pulled":
                self.daemon.feed(Pulled(*item[1:]))

    # ------------------------------------------------------------------ head
    def node_info(self) -> pb.NodeInfo:
        d = self.daemon
        return pb.NodeInfo(node_id=d.node_id, host=d.host, address=d.tcp_address,
                           grpc_address=self.grpc_address, resources_json=json.dumps(d.resources),
                           labels_json=json.dumps(d.config.get("labels") or {}),
                           store_file=d.store_file, object_store_memory=d.capacity,
                           is_head=self.is_head, start_time=d.started)

    def start(self) -> None:
        self.head.RegisterNode(self.node_info(), metadata=self.md, timeout=10)
        self._thread.start()

    def _heartbeats(self) -> None:
        while self.running:
            try:
                snap = self.call(self.daemon.heartbeat_snapshot, timeout=10)
                self.flush_events(timeout=HEARTBEAT * 4)
                view = self.head.SendHeartbeat(pb.Heartbeat(
                    node_id=self.daemon.node_id, available_json=json.dumps(snap["available"]),
                    metrics_json=json.dumps(snap["metrics"], default=str),
                    pending_leases=snap["pending"]), metadata=self.md, timeout=HEARTBEAT * 4)
                self.head_down_since = None
                self.head_marked_down = False
                self.last_view = view
                self.post(("view", view))
                if self.state_file:
                    try:
                        self.persist()
                    except OSError as e:  # disk full, permissions: say so, keep serving
                        print(f"carme: could not write the head state file {self.state_file}: {e}",
                              file=sys.stderr, flush=True)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:  # declared dead, or a new head: register again
                    try:
                        self.head.RegisterNode(self.node_info(), metadata=self.md, timeout=10)
                    except grpc.RpcError:
                        self.head_failed()
                else:
                    self.head_failed()
            except Exception:  # noqa: BLE001 - keep beating; the loop may be busy
                pass
            time.sleep(HEARTBEAT)

    def head_failed(self) -> None:
        """A heartbeat got no answer: past HEAD_GRACE, the loop hears the head is unreachable."""
        now = time.time()
        if self.head_down_since is None:
            self.head_down_since = now
        if self.head_marked_down or self.is_head or now - self.head_down_since < HEAD_GRACE:
            return
        if self.last_view is not None:
            self.head_marked_down = True
            message = head_unreachable(self.head_cluster_address(), now - self.head_down_since)
            self.post(("view", mark_head_down(self.last_view, message)))

    def head_cluster_address(self) -> str:
        """The head's cluster address (its framed HOST:PORT, what `carme start` printed),
        from the last view; its gRPC address if no view came yet."""
        for ns in self.last_view.nodes if self.last_view is not None else ():
            if ns.info.is_head and ns.info.address:
                return str(ns.info.address)
        return self.head_address

    def forward_events(self, events: list) -> None:
        with self.events_lock:
            self.events.extend(events)

    def flush_events(self, timeout: float = 10) -> None:
        """Send the task events gathered for the head; if it does not take them, they wait
        for the next try (the oldest dropped past MAX_HELD_EVENTS)."""
        with self.events_lock:
            events, self.events = self.events, []
        if not events:
            return
        try:
            self.head.ReportEvents(pb.EventBatch(events_json=json.dumps(events, default=str)),
                                   metadata=self.md, timeout=timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:  # refused: never sent again
                print(f"carme: the head refused {len(events)} task events: {e.details()}",
                      file=sys.stderr, flush=True)
                return
            with self.events_lock:
                self.events = (events + self.events)[-MAX_HELD_EVENTS:]
            raise

    # ------------------------------------------------------------------ the head's state file
    def restore(self, rec: hs.HeadRecord | None) -> None:
        """A restarted head: its persisted registry and actors (before gRPC serves calls)."""
        if rec is None:
            return
        assert self.head_state is not None
        self.head_state.restore({nid: e for nid, e in rec.nodes.items() if nid != self.daemon.node_id})
        hs.restore_actors(self.daemon.directory, rec)
        hs.restore_placement_groups(self.daemon.scheduler, rec)
        self.saved_text = hs.encode(rec)

    def record(self) -> hs.HeadRecord:
        """On the loop: the head's state now (`_head_state.snapshot`)."""
        d = self.daemon
        assert self.head_state is not None
        base = hs.HeadRecord(port=int(d.tcp_address.rsplit(":", 1)[1]),
                             grpc_port=int(self.grpc_address.rsplit(":", 1)[1]), token=self.token.hex(),
                             node_id=d.node_id, job_id=d.job_id, host=d.host)
        return hs.snapshot(base, self.head_state.registry(), hs.persisted_actors(d.directory, d.node_id),
                           d.scheduler.placement_groups(), d.state.jobs())

    def persist(self) -> None:
        """In the heartbeat thread: write the state file if what it says changed."""
        assert self.state_file is not None
        text = hs.encode(self.call(self.record, timeout=10))
        if text != self.saved_text:
            hs.write_atomic(self.state_file, text)
            self.saved_text = text

    def head_rows(self, kind: str) -> Any:
        try:
            self.flush_events()
            reply = self.head.GetState(pb.StateRequest(kind=kind), metadata=self.md, timeout=30)
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            since = self.head_down_since
            raise RaySystemError(head_unreachable(
                self.head_cluster_address(), None if since is None else time.time() - since)) from None
        return json.loads(reply.rows_json)

    def cluster_rows(self, kind: str, done: Callable[[bool, Any], None]) -> None:
        """In a thread: the cluster-wide rows of `kind` (the head's task events, or every
        live node's rows), handed to `done(ok, rows or error)`."""
        try:
            if kind in HEAD_KINDS:
                rows: Any = self.head_rows(kind)
            else:
                rows = self.call(lambda: self.daemon.local_rows(kind))
                if kind != "nodes":  # (the view already names every node)
                    for peer in list(self.daemon.peers.values()):
                        if peer["state"] == "ALIVE":
                            try:
                                rows += self.peer_rows(peer["grpc_address"], kind)
                            except Exception:  # noqa: BLE001 - a node going away drops out of the rows
                                pass
        except Exception as e:  # noqa: BLE001
            done(False, RaySystemError(f"state query failed: {e}"))
            return
        done(True, rows)

    def peer_rows(self, grpc_address: str, kind: str) -> Any:
        stub = pbg.NodeStub(channel(grpc_address))
        reply = stub.GetRows(pb.StateRequest(kind=kind), metadata=self.md, timeout=30)
        return json.loads(reply.rows_json)

    # ------------------------------------------------------------------ objects
    def pull(self, oid: bytes, grpc_address: str, address: str = "") -> None:
        """Copy another node's object into this node's store (in a thread)."""
        def run() -> None:
            if address:
                try:
                    self.post(("pulled", oid, *self._pull_stream(oid, address), None))
                except Exception as e:  # noqa: BLE001 - the waiting process gets the error
                    self.post(("pulled", oid, None, 0, False, f"{type(e).__name__}: {e}"))
                return
            try:
                stub = pbg.NodeStub(channel(grpc_address))
                offset = None
                is_error = False
                for chunk in stub.PullObject(pb.PullRequest(object_id=oid, chunk_size=CHUNK),
                                             metadata=self.md, timeout=600):
                    if offset is None:
                        total = chunk.total_size
                        is_error = chunk.is_error
                        offset = self.call(functools.partial(self.daemon.alloc_pulled, oid, total)).result(600)
                        if offset is None:
                            raise RuntimeError("no room in this node's object store")
                        dest = self.arena.writable(offset, total)
                    if chunk.data:
                        dest[chunk.offset:chunk.offset + len(chunk.data)] = chunk.data
                self.post(("pulled", oid, offset, total if offset is not None else 0, is_error, None))
            except Exception as e:  # noqa: BLE001 - the waiting process gets the error
                self.post(("pulled", oid, None, 0, False, f"{type(e).__name__}: {e}"))

        threading.Thread(target=run, name="carme-pull", daemon=True).start()

    def _pull_stream(self, oid: bytes, address: str) -> tuple[int, int, bool]:
        """The object's bytes from the daemon at `address` into a block of our store:
        (offset, size, is_error)."""
        conn = connect(address, self.token, (M.PULL_OBJECT, oid))
        try:
            conn.sock.settimeout(transfer.IDLE_TIMEOUT)
            status, total, is_error = transfer.read_header(conn.sock)
            if status != transfer.OK:
                why = transfer.read_reason(conn.sock, total)
                raise RuntimeError(f"object {oid.hex()} is not on the node at {address}"
                                   + (f" (there: {why})" if why else ""))
            # room in our store (spilling here if need be)
            offset = self.call(functools.partial(self.daemon.alloc_pulled, oid, total)).result(600)
            if offset is None:
                raise RuntimeError("no room in this node's object store")
            transfer.receive(conn.sock, self.arena.writable(offset, total), self.arena.map, offset)
            return offset, total, is_error
        finally:
            conn.close()

    def serve_pull(self, sock: socket.socket, oid: bytes, pinned: tuple | None, why: str = "") -> None:
        """Stream a pinned object of ours down `sock` (in a thread); unpin it after.
        (`pinned` None: it is not here, and `why` says what became of it.)"""
        def run() -> None:
            try:
                sock.settimeout(transfer.IDLE_TIMEOUT)
                transfer.serve(sock, self.store_fd, pinned, why)
            except OSError:
                pass  # the puller went away; it reports its own failure
            finally:
                sock.close()
                if pinned is not None:
                    self.post(("call", lambda: self.daemon.feed(PullDone(oid, pinned[0])), Future()))

        threading.Thread(target=run, name="carme-serve-pull", daemon=True).start()

    def stop(self) -> None:
        self.running = False
        try:
            self.head.UnregisterNode(pb.NodeRef(node_id=self.daemon.node_id), metadata=self.md, timeout=2)
        except grpc.RpcError:
            pass
        self.server.stop(0.5)  # (store_fd goes with the process: a serving thread may still read it)
