"""A node daemon's link to the rest of its cluster (gRPC), run beside its selector loop.

Theory of operation. The daemon's state belongs to its single loop thread; gRPC runs
its own threads. The two meet through `inbox` (a queue) and a wake-up pipe that the
loop watches: threads never touch the daemon's state, they hand it functions to run
(`call`) or news to apply (the cluster view). This module holds:
  * the gRPC server of this node (Node service; the Head service too on the head);
  * the heartbeat thread: registers with the head, then about twice a second sends this
    node's available resources, metrics and task events, and passes the cluster view it
    gets back to the loop;
  * object transfer: serving `PullObject` (chunks read straight from the shared-memory
    store) and pulling another node's object into this node's store, once per node.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import grpc

from ._head import HeadServicer, HeadState, channel, metadata, start_server
from ._node_effects import PullDone, Pulled
from ._node_state import HEAD_KINDS
from ._store import SharedArena
from .exceptions import RaySystemError
from .protos import carme_pb2 as pb
from .protos import carme_pb2_grpc as pbg

HEARTBEAT = 0.5
CHUNK = 4 << 20


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
        head_servicer = HeadServicer(self.head_state, {"job_id": daemon.job_id}) if self.head_state else None
        self.server, bound = start_server(host, port if self.is_head else 0, self.token,
                                          head_servicer, NodeServicer(self))
        self.grpc_address = f"{host}:{bound}"
        self.head_address = head_address or self.grpc_address
        self.head = pbg.HeadStub(channel(self.head_address))
        self.arena = SharedArena(daemon.store_file)
        self.events: list[tuple] = []
        self.events_lock = threading.Lock()
        self.running = True
        self.peers: dict[str, dict[str, Any]] = {}
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
        failures = 0
        while self.running:
            try:
                snap = self.call(self.daemon.heartbeat_snapshot, timeout=10)
                with self.events_lock:
                    events, self.events = self.events, []
                if events:
                    self.head.ReportEvents(pb.EventBatch(events_json=json.dumps(events, default=str)),
                                           metadata=self.md, timeout=10)
                view = self.head.SendHeartbeat(pb.Heartbeat(
                    node_id=self.daemon.node_id, available_json=json.dumps(snap["available"]),
                    metrics_json=json.dumps(snap["metrics"], default=str),
                    pending_leases=snap["pending"]), metadata=self.md, timeout=10)
                failures = 0
                self.post(("view", view))
            except grpc.RpcError as e:
                failures += 1
                if e.code() == grpc.StatusCode.NOT_FOUND:  # declared dead: register again
                    try:
                        self.head.RegisterNode(self.node_info(), metadata=self.md, timeout=10)
                    except grpc.RpcError:
                        pass
            except Exception:  # noqa: BLE001 - keep beating; the loop may be busy
                failures += 1
            time.sleep(HEARTBEAT)

    def forward_events(self, events: list) -> None:
        with self.events_lock:
            self.events.extend(events)

    def flush_events(self) -> None:
        with self.events_lock:
            events, self.events = self.events, []
        if events:
            self.head.ReportEvents(pb.EventBatch(events_json=json.dumps(events, default=str)),
                                   metadata=self.md, timeout=10)

    def head_rows(self, kind: str) -> Any:
        self.flush_events()
        reply = self.head.GetState(pb.StateRequest(kind=kind), metadata=self.md, timeout=30)
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
    def pull(self, oid: bytes, grpc_address: str) -> None:
        """Copy another node's object into this node's store (in a thread)."""
        def run() -> None:
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

    def stop(self) -> None:
        self.running = False
        try:
            self.head.UnregisterNode(pb.NodeRef(node_id=self.daemon.node_id), metadata=self.md, timeout=2)
        except grpc.RpcError:
            pass
        self.server.stop(0.5)
