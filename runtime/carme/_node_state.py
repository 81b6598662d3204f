"""The node's state-API rows and its reading of the cluster view. Pure.

Theory of operation. A `STATE` request names a kind of row; `NodeRows.rows(kind)` builds
them from the node's pure tables (task events, objects, actors, workers, the scheduler's
placement groups and resources) and the facts about this node that do not change
(`NodeFacts`). The one row that needs a measurement, this node's own (CPU, memory,
GPUs), takes it from the `metrics` function the daemon passes in, and only for `nodes`.
In a cluster the daemon asks the head for the task kinds (`HEAD_KINDS`) and every node
for the others in `CLUSTER_KINDS`; that gathering is I/O and lives in `_link.py`.

`parse_view` reads the cluster view the head sends back with each heartbeat into plain
rows, skipping (with a note for the log) any node whose fields do not parse: the head
checks them too, but data passed on twice is checked again. What the node does with
the view (new peers, dead peers) is `NodeCore.apply_view`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from . import _messages as M
from ._events import TaskEventLog
from ._node_actors import ActorDirectory
from ._node_objects import ObjectTable
from ._node_workers import WorkerPool
from ._record import field, record
from ._scheduler import ClusterScheduler

STATE_KINDS = ("tasks", "timeline", "summary", "nodes", "workers", "actors", "objects",
               "placement_groups", "jobs", "store")
HEAD_KINDS = ("tasks", "timeline", "summary")  # in a cluster: the head's task events
CLUSTER_KINDS = (*HEAD_KINDS, "workers", "objects", "actors", "nodes")  # gathered cluster-wide


def unknown_kind(kind: Any) -> ValueError | None:
    """The error for a state kind that does not exist (None if it does)."""
    if kind in STATE_KINDS:
        return None
    return ValueError(f"unknown state kind {kind!r}; expected one of {', '.join(STATE_KINDS)}")


@record
class NodeFacts:
    """What the rows say about this node itself."""

    node_id: str
    host: str
    hostname: str
    address: str  # where drivers reach it (TCP in a cluster, else its Unix socket)
    job_id: str
    started: float
    labels: dict = field(default_factory=dict)
    is_head: bool = True
    linked: bool = False  # in a cluster (the view names the other nodes)


@record
class NodeRows:
    facts: NodeFacts
    events: TaskEventLog
    table: ObjectTable
    directory: ActorDirectory
    pool: WorkerPool
    scheduler: ClusterScheduler
    drivers: list[Any]  # driver connections (opaque: `.meta["pid"]`)
    view_nodes: list[dict] = field(default_factory=list)  # the last cluster view (`parse_view`)

    def rows(self, kind: str, metrics: Callable[[], dict]) -> Any:
        return _ROWS[kind](self, metrics)

    def store(self) -> dict:
        arena, spill = self.table.arena, self.table.spill
        return {"capacity": arena.capacity, "used": arena.used_bytes, "spilled": spill.used,
                "spilled_objects": len(spill.files)}

    def own_node(self, metrics: Callable[[], dict]) -> dict:
        f, s = self.facts, self.scheduler
        return {
            "node_id": f.node_id, "node_ip": f.host, "state": "ALIVE", "node_name": f.hostname,
            "address": f.address, "resources_total": s.total(f.node_id),
            "resources_available": s.available(f.node_id), "labels": f.labels,
            "start_time_ms": int(f.started * 1000), "object_store": self.store(),
            "metrics": metrics(), "is_head_node": f.is_head,
        }

    def nodes(self, metrics: Callable[[], dict]) -> list[dict]:
        if not (self.facts.linked and self.view_nodes):
            return [self.own_node(metrics)]
        return [self.own_node(metrics) if n["node_id"] == self.facts.node_id else view_row(n)
                for n in self.view_nodes]

    def workers(self) -> list[dict]:
        return [{"worker_id": w.worker_id, "is_alive": w.state != "DEAD", "worker_type": "WORKER",
                 "pid": w.pid, "node_id": self.facts.node_id, "state": w.state,
                 "actor_id": w.actor_id.hex() if w.actor_id else None,
                 "start_time_ms": int(w.started * 1000)} for w in self.pool.workers.values()]

    def actors(self) -> list[dict]:
        out = []
        for a in self.directory.actors.values():
            if a.remote_node is not None and a.state != "DEAD":
                continue  # its node lists it
            ns, name = self.directory.name_of(a)
            out.append({"actor_id": a.actor_id.hex(), "class_name": a.spec["class_name"],
                        "state": a.state, "job_id": self.facts.job_id, "name": name,
                        "ray_namespace": ns, "namespace": ns,
                        "node_id": self.facts.node_id, "pid": a.worker.pid if a.worker else None,
                        "num_restarts": a.restarts, "required_resources": a.spec.get("running_shape", {}),
                        "is_detached": a.spec.get("lifetime") == "detached",
                        "death_cause": a.death[1] if a.death else None,
                        "cell": a.spec.get("tag")})
        return out

    def jobs(self) -> list[dict]:
        return [{"job_id": self.facts.job_id, "status": "RUNNING",
                 "start_time": int(self.facts.started * 1000),
                 "driver_pid": d.meta.get("pid")} for d in self.drivers]


_ROWS: dict[str, Callable[[NodeRows, Callable[[], dict]], Any]] = {
    "tasks": lambda r, m: r.events.rows(),
    "timeline": lambda r, m: r.events.timeline(),
    "summary": lambda r, m: r.events.summarize(),
    "nodes": NodeRows.nodes,
    "workers": lambda r, m: r.workers(),
    "actors": lambda r, m: r.actors(),
    "objects": lambda r, m: r.table.rows(r.facts.node_id),
    "placement_groups": lambda r, m: r.scheduler.placement_groups(),
    "jobs": lambda r, m: r.jobs(),
    "store": lambda r, m: r.store(),
}
assert set(_ROWS) == set(STATE_KINDS)


def view_row(n: dict) -> dict:
    """The state row of another node, from its entry in the cluster view."""
    return {
        "node_id": n["node_id"], "node_ip": n["host"], "is_head_node": n["is_head"],
        "state": n["state"], "node_name": n["host"], "address": n["address"],
        "resources_total": n["total"], "resources_available": n["available"],
        "labels": n["labels"], "start_time_ms": int(n["start_time"] * 1000),
        "object_store": n["metrics"].get("object_store") or {"capacity": n["store_capacity"], "used": 0},
        "metrics": n["metrics"],
        # why it is not alive, when this node knows (the head unreachable: `_link.py`)
        "state_message": n["metrics"].get("state_message"),
    }


def parse_view(view: Any) -> tuple[list[dict], list[str]]:
    """The head's cluster view (its `nodes`, protobuf or alike) as rows, and notes on the
    nodes left out because a field did not parse."""
    rows: list[dict] = []
    notes: list[str] = []
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
        except (ValueError, M.BadMessage) as e:
            notes.append(f"ignoring node {nid[:8]} in the cluster view: {e}")
            continue
        rows.append({"node_id": nid, "address": info.address, "grpc_address": info.grpc_address,
                     "host": info.host, "state": ns.state, "total": total,
                     "available": available, "metrics": metrics, "is_head": info.is_head,
                     "labels": labels, "start_time": info.start_time,
                     "store_capacity": info.object_store_memory})
    return rows, notes


def head_node(facts: NodeFacts, peers: dict[str, dict[str, Any]]) -> dict:
    """The head node's id and driver address, once the cluster view names it."""
    if facts.is_head:
        return {"head_node": facts.node_id, "head_address": facts.address}
    for nid, peer in peers.items():
        if peer.get("is_head") and peer.get("state") == "ALIVE":
            return {"head_node": nid, "head_address": peer["address"]}
    return {}


__all__ = ["CLUSTER_KINDS", "HEAD_KINDS", "STATE_KINDS", "NodeFacts", "NodeRows", "head_node",
           "parse_view", "unknown_kind", "view_row"]
