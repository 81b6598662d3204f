"""Turn a cluster's state snapshot into the JSON the side panel draws (pure, no I/O).

`carme.cluster.Client.snapshot()` returns state API rows (Ray's column names,
plus node metrics). The panel wants a small, stable shape: per node CPU, memory,
GPU and object-store figures; task counts in four buckets; actors; the largest
objects; recent task runs with start and end times. `panel_snapshot` makes it,
tolerating missing fields (a node without metrics, a task never started), so a
runtime that reports less still draws. The TypeScript side mirrors these keys in
``src/model.ts`` (``Snapshot``).

What the panel shows of an object id is made here (`carme.notebook.short_object_id`, the
rule the kernel's widgets use too), so the TypeScript side only draws ``short_id`` (the full id on hover).
The object count is what this server can see: carme's object store (an observer of a
carme cluster sees no driver's inline results; they live in the driver that owns
them, and its `%carme objects` lists them), or every object Ray's state API lists.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from carme.notebook import short_object_id

__all__ = ["TASK_BUCKETS", "bucket_of", "count_tasks", "object_scope", "panel_snapshot",
           "short_object_id"]

TASK_BUCKETS = ("pending", "running", "finished", "failed")

_RUNNING = {"RUNNING", "RUNNING_IN_RAY_GET", "RUNNING_IN_RAY_WAIT"}
_FAILED = {"FAILED", "CANCELLED", "CANCELED"}


def bucket_of(state: object) -> str:
    """The panel's bucket of a Ray task state: finished, failed, running, else pending."""
    s = str(state or "").upper()
    if s == "FINISHED":
        return "finished"
    if s in _FAILED:
        return "failed"
    if s in _RUNNING:
        return "running"
    return "pending"





def object_scope(engine: str) -> str:
    """Which objects ``objects.count`` counts, as the panel says it."""
    return "in the object store" if engine == "carme" else "in the cluster"


def count_tasks(by_state: dict[str, int]) -> dict[str, int]:
    counts = dict.fromkeys(TASK_BUCKETS, 0)
    for state, n in by_state.items():
        counts[bucket_of(state)] += int(n)
    return counts


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _resources(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {str(k): float(v) for k, v in value.items() if _num(v) is not None}


def _gpu(g: dict[str, Any]) -> dict[str, Any]:
    return {
        "index": g.get("index"),
        "name": g.get("name"),
        "utilization": _num(g.get("utilization_gpu")),
        "memory_used": _num(g.get("memory_used")),
        "memory_total": _num(g.get("memory_total")),
        "temperature": _num(g.get("temperature")),
    }


def _node(n: dict[str, Any]) -> dict[str, Any]:
    m = _dict(n.get("metrics"))
    store = _dict(n.get("object_store"))
    gpus = m.get("gpus") or n.get("gpus") or []
    return {
        "node_id": str(n.get("node_id") or ""),
        "name": str(n.get("node_name") or n.get("node_ip") or ""),
        "address": n.get("address") or n.get("node_ip"),
        "is_head": bool(n.get("is_head_node")),
        "state": str(n.get("state") or "ALIVE"),
        "cpu_percent": _num(m.get("cpu_percent")),
        "num_cpus": _num(m.get("num_cpus")),
        "memory_used": _num(m.get("memory_used")),
        "memory_total": _num(m.get("memory_total")),
        "gpus": [_gpu(g) for g in gpus if isinstance(g, dict)],
        "resources_total": _resources(n.get("resources_total")),
        "resources_available": _resources(n.get("resources_available")),
        "object_store": {"used": _num(store.get("used")), "capacity": _num(store.get("capacity"))},
    }


def _actor(a: dict[str, Any]) -> dict[str, Any]:
    return {
        "actor_id": str(a.get("actor_id") or ""),
        "class_name": a.get("class_name"),
        "name": a.get("name") or "",
        "state": a.get("state"),
        "pid": a.get("pid"),
        "node_id": a.get("node_id"),
    }


def _object(o: dict[str, Any]) -> dict[str, Any]:
    oid = str(o.get("object_id") or "")
    return {
        "object_id": oid,
        "short_id": short_object_id(oid),
        "size": _num(o.get("object_size")),
        "type": o.get("type"),
        "call_site": o.get("call_site"),
        "node_id": o.get("node_id"),
    }


def _event(t: dict[str, Any]) -> dict[str, Any]:
    return {
        "task_id": str(t.get("task_id") or ""),
        "name": t.get("name") or t.get("func_or_class_name") or "task",
        "state": t.get("state"),
        "bucket": bucket_of(t.get("state")),
        "node_id": t.get("node_id"),
        "worker": t.get("worker_pid") or t.get("worker_id"),
        "created_ms": _num(t.get("creation_time_ms")),
        "start_ms": _num(t.get("start_time_ms")),
        "end_ms": _num(t.get("end_time_ms")),
    }


def _rows(value: Any) -> Iterable[dict[str, Any]]:
    return [r for r in value or [] if isinstance(r, dict)]


def _flags(value: Any) -> dict[str, bool]:
    return {str(k): v for k, v in _dict(value).items() if isinstance(v, bool)}


def _notes(value: Any) -> dict[str, str]:
    return {str(k): v for k, v in _dict(value).items() if isinstance(v, str)}


def panel_snapshot(raw: dict[str, Any], address: str, now: float | None = None,
                   engine: str = "carme") -> dict[str, Any]:
    """The JSON of ``GET /carme/api/snapshot`` from `Client.snapshot()`'s dict.

    ``capabilities`` (flag: bool) and ``notes`` (flag: why it is off) pass through
    from the backend: what this engine cannot show, said rather than hidden.
    """
    objects = _dict(raw.get("objects"))
    resources = _dict(raw.get("resources"))
    by_state = _dict(raw.get("tasks_by_state"))
    engine = str(raw.get("engine") or engine)
    t = _num(raw.get("time"))
    if t is None:
        t = now if now is not None else time.time()
    return {
        "address": address,
        "engine": engine,
        "version": raw.get("version") if isinstance(raw.get("version"), str) else None,
        "capabilities": _flags(raw.get("capabilities")),
        "notes": _notes(raw.get("notes")),
        "time_ms": t * 1000,
        "nodes": [_node(n) for n in _rows(raw.get("nodes"))],
        "resources": {
            "total": _resources(resources.get("total")),
            "available": _resources(resources.get("available")),
        },
        "tasks": count_tasks(by_state),
        "tasks_by_state": {str(k): int(v) for k, v in by_state.items()},
        "actors": [_actor(a) for a in _rows(raw.get("actors"))],
        "objects": {
            "used": _num(objects.get("used")),
            "capacity": _num(objects.get("capacity")),
            "count": objects.get("count"),
            "scope": object_scope(engine),
            "largest": [_object(o) for o in _rows(objects.get("largest"))],
        },
        "events": [_event(e) for e in _rows(raw.get("events"))],
    }
