"""The head's gRPC service: the node registry, the cluster view, cluster-wide task events.

Theory of operation. `HeadState` is plain bookkeeping under one lock: nodes register
with their static info, then send a heartbeat about twice a second with their available
resources and metrics; every heartbeat answers with the whole cluster view (all nodes,
their availability, alive or dead) so each node can schedule with a fresh picture. A
node whose heartbeats stop for NODE_TIMEOUT seconds is marked DEAD in the view; nodes
react to that (their leases on it are gone). Task events from every node are merged in
one `TaskEventLog`, which backs `list_tasks()` and `timeline()` cluster-wide.

A restarted head (`_head_state.py`) starts with the registry it persisted: each node of it
counts as alive for one NODE_TIMEOUT, time for its heartbeats to reach the new head at
the same address; one that stays silent is marked DEAD as usual, and a node the head
does not know (any more) is told NOT_FOUND and registers again (`merge_node`).

Every call must carry the cluster token in the "carme-token" metadata; the interceptor
refuses a call without it before its request message is parsed. Every field that comes
in is checked before anything is stored (`check_node_info`, `check_heartbeat`,
`_messages.check_events`): a malformed call is refused with INVALID_ARGUMENT and a
message naming the field, so one bad node cannot break the view for the others.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from concurrent import futures
from typing import Any

import grpc

from . import _head_state as hs
from ._events import TaskEventLog
from ._messages import BadMessage, check_events, check_shape
from .protos import carme_pb2 as pb
from .protos import carme_pb2_grpc as pbg

NODE_TIMEOUT = 5.0
TOKEN_KEY = "carme-token"


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls that do not present the cluster token (before the request is read)."""

    def __init__(self, token: bytes) -> None:
        self._token = token.hex()

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        given = dict(details.invocation_metadata or ()).get(TOKEN_KEY, "")
        if isinstance(given, bytes):
            given = given.decode("ascii", "replace")
        if hmac.compare_digest(str(given), self._token):
            return continuation(details)
        if details.method.endswith("/PullObject"):
            return self._deny_stream
        return self._deny_unary


def _json_object(field: str, text: str, default: str = "{}") -> dict:
    try:
        value = json.loads(text or default)
    except ValueError as e:
        raise BadMessage(f"{field} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise BadMessage(f"{field} must be a JSON object, not {type(value).__name__}")
    return value


def check_node_info(info: pb.NodeInfo) -> None:
    """A node registration: id, resources, labels. Raises BadMessage naming the field."""
    if not info.node_id:
        raise BadMessage("NodeInfo.node_id must not be empty")
    check_shape("NodeInfo.resources_json", _json_object("NodeInfo.resources_json", info.resources_json))
    labels = _json_object("NodeInfo.labels_json", info.labels_json)
    for k, v in labels.items():
        if not isinstance(v, str):
            raise BadMessage(f"NodeInfo.labels_json[{k!r}] must be a string, not {v!r}")
    if info.object_store_memory < 0:
        raise BadMessage(f"NodeInfo.object_store_memory must be >= 0, not {info.object_store_memory}")


def check_heartbeat(hb: pb.Heartbeat) -> None:
    check_shape("Heartbeat.available_json", _json_object("Heartbeat.available_json", hb.available_json))
    _json_object("Heartbeat.metrics_json", hb.metrics_json)


class HeadState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.nodes: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.events = TaskEventLog()

    def register(self, info: pb.NodeInfo) -> str:
        """A node (re-)registers: "new", "rejoined" or "restarted" (`merge_node`)."""
        with self.lock:
            known = self.nodes.get(info.node_id)
            _, how = hs.merge_node(None if known is None else registry_entry(known["info"]),
                                   registry_entry(info))
            self.nodes[info.node_id] = {"info": info, "available": info.resources_json,
                                        "metrics": "{}", "state": "ALIVE", "last": time.time()}
            self.version += 1
            return how

    def restore(self, nodes: dict[str, dict[str, Any]]) -> None:
        """Seed the registry with a restarted head's persisted nodes: alive until they
        miss NODE_TIMEOUT of heartbeats, as if each had just beaten once."""
        now = time.time()
        with self.lock:
            for nid, e in nodes.items():
                info = pb.NodeInfo(node_id=nid, host=e["host"], address=e["address"],
                                   grpc_address=e["grpc_address"], resources_json=json.dumps(e["resources"]),
                                   labels_json=json.dumps(e["labels"]), store_file=e["store_file"],
                                   object_store_memory=e["object_store_memory"], is_head=e["is_head"],
                                   start_time=e["start_time"])
                self.nodes[nid] = {"info": info, "available": info.resources_json, "metrics": "{}",
                                   "state": "ALIVE", "last": now}
            self.version += 1

    def registry(self) -> dict[str, dict[str, Any]]:
        """The live nodes' registry entries (what a head persists)."""
        with self.lock:
            return {nid: registry_entry(n["info"]) for nid, n in self.nodes.items() if n["state"] == "ALIVE"}

    def heartbeat(self, hb: pb.Heartbeat) -> bool:
        with self.lock:
            n = self.nodes.get(hb.node_id)
            if n is None:
                return False
            if n["state"] == "DEAD":  # a node declared dead stays dead; it must re-register
                return False
            n["available"] = hb.available_json
            n["metrics"] = hb.metrics_json
            n["last"] = time.time()
            return True

    def unregister(self, node_id: str) -> None:
        with self.lock:
            n = self.nodes.get(node_id)
            if n is not None and n["state"] != "DEAD":
                n["state"] = "DEAD"
                self.version += 1

    def view(self) -> pb.ClusterView:
        now = time.time()
        with self.lock:
            for n in self.nodes.values():
                if n["state"] == "ALIVE" and now - n["last"] > NODE_TIMEOUT:
                    n["state"] = "DEAD"
                    self.version += 1
            return pb.ClusterView(version=self.version, nodes=[
                pb.NodeState(info=n["info"], available_json=n["available"],
                             metrics_json=n["metrics"], state=n["state"], last_heartbeat=n["last"])
                for n in self.nodes.values()])


def registry_entry(info: pb.NodeInfo) -> dict[str, Any]:
    """A node's registration as a registry entry (`_head_state.NODE_FIELDS`)."""
    return hs.node_entry({
        "host": info.host, "address": info.address, "grpc_address": info.grpc_address,
        "resources": json.loads(info.resources_json or "{}"), "labels": json.loads(info.labels_json or "{}"),
        "store_file": info.store_file, "object_store_memory": int(info.object_store_memory),
        "is_head": bool(info.is_head), "start_time": float(info.start_time)})


class HeadServicer(pbg.HeadServicer):
    def __init__(self, state: HeadState, cluster: dict[str, Any]) -> None:
        self.state = state
        self.cluster = cluster

    def RegisterNode(self, request: pb.NodeInfo, context: Any) -> pb.RegisterReply:
        try:
            check_node_info(request)
        except BadMessage as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"node registration refused: {e}")
        self.state.register(request)
        return pb.RegisterReply(cluster_json=json.dumps(self.cluster))

    def SendHeartbeat(self, request: pb.Heartbeat, context: Any) -> pb.ClusterView:
        try:
            check_heartbeat(request)
        except BadMessage as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"heartbeat refused: {e}")
        if not self.state.heartbeat(request):
            context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.node_id} is not registered (or was declared dead)")
        return self.state.view()

    def UnregisterNode(self, request: pb.NodeRef, context: Any) -> pb.Empty:
        self.state.unregister(request.node_id)
        return pb.Empty()

    def GetClusterView(self, request: pb.Empty, context: Any) -> pb.ClusterView:
        return self.state.view()

    def ReportEvents(self, request: pb.EventBatch, context: Any) -> pb.Empty:
        try:
            events = check_events(json.loads(request.events_json))
        except (ValueError, BadMessage) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"task events refused: {e}")
        with self.state.lock:
            self.state.events.record_many(events)
        return pb.Empty()

    def GetState(self, request: pb.StateRequest, context: Any) -> pb.StateReply:
        with self.state.lock:
            if request.kind == "tasks":
                rows: Any = self.state.events.rows()
            elif request.kind == "timeline":
                rows = self.state.events.timeline()
            elif request.kind == "summary":
                rows = self.state.events.summarize()
            else:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown kind {request.kind!r}")
        return pb.StateReply(rows_json=json.dumps(rows, default=str))


def start_server(host: str, port: int, token: bytes, head: HeadServicer | None,
                 node: pbg.NodeServicer) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="carme-grpc"),
                         interceptors=[TokenInterceptor(token)],
                         options=[("grpc.max_send_message_length", 64 << 20),
                                  ("grpc.max_receive_message_length", 64 << 20)])
    if head is not None:
        pbg.add_HeadServicer_to_server(head, server)
    pbg.add_NodeServicer_to_server(node, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind the gRPC port {host}:{port}")
    server.start()
    return server, bound


def channel(address: str) -> grpc.Channel:
    # reconnect attempts at most a second apart: a restarted head is found again at once,
    # not after gRPC's default backoff (up to two minutes after a few failures)
    return grpc.insecure_channel(address, options=[
        ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000)])


def metadata(token: bytes) -> list[tuple[str, str]]:
    return [(TOKEN_KEY, token.hex())]
