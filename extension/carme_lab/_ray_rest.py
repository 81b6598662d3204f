"""Ray's dashboard REST answers -> carme's snapshot rows and timeline spans (pure, no I/O).

Theory of operation
-------------------
The server extension reads a Ray cluster the way Ray's own dashboard does, over
HTTP, so the Jupyter server never becomes a Ray driver. `carme_lab._ray` fetches
these answers (plain dicts) and hands them here:

- ``/api/v0/nodes``, ``/api/v0/actors``, ``/api/v0/objects``, ``/api/v0/tasks``
  (state API; rows already use Ray's column names, which carme's rows share),
  ``/api/v0/tasks/summarize`` (counts of every task by state);
- ``/nodes?view=summary``: per node the reporter's CPU, memory and GPU figures
  and the raylet's object-store use;
- ``/api/cluster_status``: resources in use per node (``usageByNode``, whose
  resource names the dashboard turned into camelCase: `to_camel`).

Per-node rows and timeline spans come from the kernel's converter,
`carme_kernel.engines._ray_rows` (`node_rows`, `timeline_events`: one place turns
Ray rows into carme rows for the widgets and for this server); this module adds
what only the server needs: resources in use per node, task counts over the
whole cluster, one row per object, the envelope checks. `ray_snapshot` builds
the dict `carme.cluster.Client.snapshot()` returns, so
`carme_lab._snapshot.panel_snapshot` draws both engines alike, plus
``capabilities`` (flag -> bool) and ``notes`` (flag -> why it is off): what Ray
cannot show is said, not hidden. `ray_timeline` makes Chrome trace spans from
task rows (one per attempt, start to end), not from ``ray.timeline()``, which
sleeps a second per call. Importing the converter imports neither IPython nor
Ray. Every reader tolerates missing or odd fields: a
newer or older Ray that reports less still draws.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from carme_kernel.engines._ray_rows import node_rows, timeline_events

__all__ = ["CAPABILITIES", "RayRestError", "carme_capabilities", "ray_snapshot", "ray_timeline",
           "state_rows", "to_camel"]

# Flags a snapshot may turn off; carme's runtime has all of them. `live_state` and
# `per_node_available` mean what the kernel's `carme_kernel.engines.Capabilities` fields
# of those names mean.
CAPABILITIES = (
    "node_metrics",        # CPU, memory and GPU figures per node
    "per_node_available",  # resources in use (so: available) per node
    "live_state",          # task states as they change (not seconds late)
    "object_types",        # the Python type of stored objects
    "object_call_sites",   # where an object was made
    "complete_task_list",  # every task is listed (not a truncated window)
)


class RayRestError(RuntimeError):
    """A Ray REST answer that says it failed, or has not the expected shape."""


def carme_capabilities() -> dict[str, bool]:
    return dict.fromkeys(CAPABILITIES, True)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _rows(value: Any) -> list[dict[str, Any]]:
    return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def state_rows(payload: Any, what: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows and the list envelope (``total``, ``warnings``...) of a state API answer."""
    if not isinstance(payload, dict) or payload.get("result") is not True:
        msg = payload.get("msg") if isinstance(payload, dict) else None
        raise RayRestError(f"Ray's state API refused {what}: {msg or repr(payload)[:200]}")
    inner = _dict(_dict(payload.get("data")).get("result"))
    result = inner.get("result")
    if not isinstance(result, list):
        raise RayRestError(f"expected a list of rows from Ray's state API for {what}, "
                           f"got {type(result).__name__}")
    return _rows(result), inner


def to_camel(name: str) -> str:
    """The dashboard's key conversion (``ray.dashboard.utils.to_camel_case``)."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _summaries(summary: Any) -> list[dict[str, Any]]:
    return _rows(_dict(_dict(summary).get("data")).get("summary"))


def _usage_by_node(status: Any) -> dict[str, dict[str, Any]]:
    data = _dict(_dict(status).get("data"))
    report = _dict(_dict(data.get("clusterStatus")).get("loadMetricsReport"))
    return {str(k): _dict(v) for k, v in _dict(report.get("usageByNode")).items()}


def _available(total: dict[str, float], usage: dict[str, Any]) -> dict[str, float] | None:
    """Free amount per resource from ``usageByNode`` ([used, total] under camelCase names)."""
    if not usage:
        return None
    out = {}
    for name, amount in total.items():
        pair = usage.get(to_camel(name))
        used = _num(pair[0]) if isinstance(pair, list) and pair else None
        out[name] = amount if used is None else max(0.0, amount - used)
    return out


def _resources(value: Any) -> dict[str, float]:
    return {str(k): n for k, v in _dict(value).items() if (n := _num(v)) is not None}


def _node(row: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
    """A converted node row (`node_rows`) with what is free per resource filled in."""
    total = _resources(row.get("resources_total"))
    available = _available(total, usage)
    store = _dict(row.get("object_store"))
    return {
        **row,
        "state": str(row.get("state") or "ALIVE"),
        "resources_total": total,
        "resources_available": available if available is not None else dict(total),
        "object_store": {"used": _num(store.get("used")), "capacity": _num(store.get("capacity"))},
        "metrics": _dict(row.get("metrics")),
    }


def _task_counts(summary: Any) -> dict[str, int]:
    """Tasks by state over the whole cluster from ``/api/v0/tasks/summarize``."""
    inner = _dict(_dict(_dict(summary).get("data")).get("result"))
    result = _dict(inner.get("result"))
    by_state: dict[str, int] = {}
    for node in _dict(result.get("node_id_to_summary")).values():
        for func in _dict(_dict(node).get("summary")).values():
            for state, n in _dict(_dict(func).get("state_counts")).items():
                count = _num(n)
                if count is not None:
                    by_state[str(state)] = by_state.get(str(state), 0) + int(count)
    return by_state


def _task(t: dict[str, Any]) -> dict[str, Any]:
    keys = ("task_id", "attempt_number", "name", "func_or_class_name", "state", "type", "job_id",
            "actor_id", "node_id", "worker_id", "worker_pid", "error_type", "error_message",
            "creation_time_ms", "start_time_ms", "end_time_ms")
    return {k: t.get(k) for k in keys}


def _objects(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per object (Ray lists one per reference holder), keeping the largest size."""
    by_id: dict[str, dict[str, Any]] = {}
    for o in rows:
        oid = str(o.get("object_id") or "")
        size = _num(o.get("object_size"))
        site = o.get("call_site")
        row = {"object_id": oid, "object_size": size, "type": None,
               "call_site": None if site in (None, "", "disabled") else site,
               "node_id": o.get("node_id"), "pid": o.get("pid"),
               "reference_type": o.get("reference_type")}
        old = by_id.get(oid)
        if old is None or (size or 0) > (old["object_size"] or 0):
            by_id[oid] = row
    return list(by_id.values())


def ray_snapshot(*, nodes: Any, actors: Any, objects: Any, tasks: Any, task_summary: Any,
                 node_summary: Any, cluster_status: Any, now: float, version: str | None = None,
                 recent: int = 50, largest: int = 10) -> dict[str, Any]:
    """`carme.cluster.Client.snapshot()`'s shape from Ray's REST answers (see the docstring).

    `nodes`, `actors`, `objects` and `tasks` are state API answers (an error in one
    raises `RayRestError`); `task_summary`, `node_summary` and `cluster_status` may be
    None (not fetched or failed): the figures they give are then flagged as missing.
    """
    ray_nodes, _ = state_rows(nodes, "the nodes")
    actor_rows, _ = state_rows(actors, "the actors")
    object_rows, object_env = state_rows(objects, "the objects")
    task_rows, task_env = state_rows(tasks, "the tasks")
    usage = _usage_by_node(cluster_status)
    out_nodes = [_node(n, usage.get(str(n.get("node_id")), {}))
                 for n in node_rows(ray_nodes, _summaries(node_summary))]
    alive = [n for n in out_nodes if n["state"] == "ALIVE"]
    total: dict[str, float] = {}
    avail: dict[str, float] = {}
    for n in alive:
        for k, v in n["resources_total"].items():
            total[k] = total.get(k, 0.0) + v
        for k, v in n["resources_available"].items():
            avail[k] = avail.get(k, 0.0) + v

    by_state = _task_counts(task_summary) if task_summary is not None else {}
    if not by_state:
        for t in task_rows:
            by_state[str(t.get("state"))] = by_state.get(str(t.get("state")), 0) + 1
    listed = _num(task_env.get("num_after_truncation"))
    task_total = _num(task_env.get("total"))
    truncated = listed is not None and task_total is not None and listed < task_total

    objs = _objects(object_rows)
    objs.sort(key=lambda o: -(o["object_size"] or 0))
    store_used = [n["object_store"]["used"] for n in alive]
    store_cap = [n["object_store"]["capacity"] for n in alive]
    events = sorted((_task(t) for t in task_rows), key=lambda t: -(_num(t["creation_time_ms"]) or 0))

    node_metrics = bool(alive) and all(n["metrics"] for n in alive)
    in_use = bool(alive) and all(str(n["node_id"]) in usage for n in alive)
    call_sites = any(o["call_site"] for o in objs)
    caps = {
        "node_metrics": node_metrics,
        "per_node_available": in_use,
        "live_state": False,
        "object_types": False,
        "object_call_sites": call_sites,
        "complete_task_list": not truncated,
    }
    notes = {
        "live_state": "Ray's state API reports task states seconds after they change",
        "object_types": "Ray's state API does not say what type an object is",
    }
    if not node_metrics:
        notes["node_metrics"] = ("Ray's node summary (/nodes?view=summary) gave no CPU/memory/GPU "
                                 "figures for some nodes")
    if not in_use:
        notes["per_node_available"] = ("Ray's cluster status gave no resource use per node: "
                                     "resources are shown as free")
    if not call_sites:
        notes["object_call_sites"] = ("Ray records where objects were made only with "
                                      "RAY_record_ref_creation_sites=1 set for the cluster and drivers")
    if truncated:
        notes["complete_task_list"] = (f"Ray listed {int(listed or 0)} of {int(task_total or 0)} tasks; "
                                       f"counts cover all of them, the timeline only those")
    warnings = [w for w in (object_env.get("warnings") or []) if isinstance(w, str)]
    if warnings and "object_call_sites" in notes:
        notes["object_call_sites"] = warnings[0]
    return {
        "engine": "ray",
        "version": version,
        "time": now,
        "nodes": out_nodes,
        "resources": {"total": total, "available": avail},
        "tasks_by_state": by_state,
        "actors": [{k: a.get(k) for k in ("actor_id", "class_name", "name", "state", "pid", "node_id")}
                   for a in actor_rows],
        "objects": {
            "used": sum(x for x in store_used if x is not None) if any(x is not None for x in store_used) else None,
            "capacity": sum(x for x in store_cap if x is not None) if any(x is not None for x in store_cap) else None,
            "count": len(objs),
            "largest": objs[:largest],
        },
        "events": events[:recent],
        "capabilities": caps,
        "notes": {k: v for k, v in notes.items() if not caps.get(k, True)},
    }


def ray_timeline(task_rows: Iterable[dict[str, Any]], now_ms: float) -> list[dict[str, Any]]:
    """Chrome trace events (carme's layout: a process per node, a thread per worker)."""
    return timeline_events(task_rows, now_ms)
