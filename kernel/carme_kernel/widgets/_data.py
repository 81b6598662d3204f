"""State rows in, widget models out: pure functions, no I/O, no widgets.

Every widget refresh is ``rows = source.<kind>()`` followed by one of the
``*_model`` functions here; the result is the dict the widget syncs to
JavaScript (shapes in ``_messages.py``) and renders as static HTML
(``_html.py``). Rows are the dicts of ``carme.util.state`` with
``detail=True``; missing fields are tolerated, as are older runtimes.
"""

from __future__ import annotations

import colorsys
import hashlib
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from carme.notebook import short_object_id

from ._messages import (
    ClusterModel,
    ClusterTotals,
    GpuCard,
    GpuModel,
    GpuNode,
    GpuSample,
    Lane,
    NodeCard,
    ObjectRow,
    ObjectsModel,
    ProgressModel,
    ResourceUse,
    SortKey,
    Span,
    StoreUse,
    TimelineModel,
)

Row = Mapping[str, Any]

HISTORY_S = 60.0
OBJECT_LIMIT = 500
SPAN_LIMIT = 4000
SORT_KEYS: tuple[SortKey, ...] = ("size", "created", "type", "owner", "node", "references")
# Task states a bar ends in, for counts; anything else counts as itself.
_ALIVE_NODE = {"ALIVE", ""}


def now_ms() -> int:
    return int(time.time() * 1000)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    f = _num(value)
    return None if f is None else int(f)


def short_id(value: Any, n: int = 8) -> str:
    return str(value or "")[:n]


def node_name(row: Row) -> str:
    name = str(row.get("node_name") or "")
    nid = short_id(row.get("node_id"))
    return f"{name} ({nid})" if name else nid


# -- cluster ---------------------------------------------------------------------------


def resource_use(
    total: Mapping[str, Any] | None, available: Mapping[str, Any] | None
) -> list[ResourceUse]:
    """Used/total per resource, CPU, GPU and memory first, node: pseudo-resources left out."""
    total = total or {}
    available = available or {}
    order = {"CPU": 0, "GPU": 1, "memory": 2, "object_store_memory": 3}
    out: list[ResourceUse] = []
    for name in sorted(total, key=lambda k: (order.get(k, 9), k)):
        if name.startswith("node:"):
            continue
        t = _num(total[name]) or 0.0
        a = _num(available.get(name))
        used = t - a if a is not None else 0.0
        out.append({"name": name, "used": round(max(used, 0.0), 4), "total": t})
    return out


def gpu_sample(raw: Mapping[str, Any]) -> GpuSample:
    return {
        "index": _int(raw.get("index")) or 0,
        "name": str(raw.get("name") or "GPU"),
        "uuid": str(raw.get("uuid") or ""),
        "utilization": _num(raw.get("utilization_gpu")),
        "memory_used": _int(raw.get("memory_used")),
        "memory_total": _int(raw.get("memory_total")),
        "temperature": _num(raw.get("temperature")),
        "power_watts": _num(raw.get("power_watts")),
    }


def _count(rows: Iterable[Row], key: str, where: str, node_id: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        if r.get(where) != node_id:
            continue
        v = str(r.get(key) or "UNKNOWN")
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def latest_attempts(tasks: Iterable[Row]) -> list[Row]:
    """One row per task id: its highest attempt."""
    best: dict[str, Row] = {}
    for r in tasks:
        tid = str(r.get("task_id") or "")
        cur = best.get(tid)
        if cur is None or (r.get("attempt_number") or 0) >= (cur.get("attempt_number") or 0):
            best[tid] = r
    return list(best.values())


def cluster_model(
    nodes: Iterable[Row],
    workers: Iterable[Row] = (),
    tasks: Iterable[Row] = (),
    at_ms: int | None = None,
) -> ClusterModel:
    nodes = list(nodes)
    workers = [w for w in workers if w.get("is_alive", True)]
    tasks = latest_attempts(tasks)
    cards: list[NodeCard] = []
    all_tasks: dict[str, int] = {}
    for t in tasks:
        s = str(t.get("state") or "UNKNOWN")
        all_tasks[s] = all_tasks.get(s, 0) + 1
    total_res: dict[str, float] = {}
    avail_res: dict[str, float] = {}
    for n in nodes:
        nid = str(n.get("node_id") or "")
        metrics = n.get("metrics") or {}
        store = n.get("object_store") or {}
        alive = str(n.get("state") or "").upper() in _ALIVE_NODE
        if alive:
            for k, v in (n.get("resources_total") or {}).items():
                total_res[k] = total_res.get(k, 0.0) + (_num(v) or 0.0)
            for k, v in (n.get("resources_available") or {}).items():
                avail_res[k] = avail_res.get(k, 0.0) + (_num(v) or 0.0)
        cards.append(
            {
                "node_id": nid,
                "name": node_name(n),
                "ip": str(n.get("node_ip") or ""),
                "is_head": bool(n.get("is_head_node")),
                "state": str(n.get("state") or ""),
                "cpu_percent": _num(metrics.get("cpu_percent")),
                "num_cpus": _int(metrics.get("num_cpus")),
                "memory_used": _int(metrics.get("memory_used")),
                "memory_total": _int(metrics.get("memory_total")),
                "workers_rss": _int(metrics.get("workers_rss")),
                "store_used": _int(store.get("used")),
                "store_capacity": _int(store.get("capacity")),
                "resources": resource_use(n.get("resources_total"), n.get("resources_available")),
                "workers": _count(workers, "state", "node_id", nid),
                "tasks": _count(tasks, "state", "node_id", nid),
                "gpus": [gpu_sample(g) for g in metrics.get("gpus") or []],
            }
        )
    totals: ClusterTotals = {
        "nodes": len(cards),
        "alive": sum(1 for c in cards if c["state"].upper() in _ALIVE_NODE),
        "workers": len(workers),
        "tasks": dict(sorted(all_tasks.items())),
        "resources": resource_use(total_res, avail_res),
    }
    return {
        "kind": "cluster",
        "nodes": cards,
        "totals": totals,
        "updated_ms": now_ms() if at_ms is None else at_ms,
    }


# -- GPUs ------------------------------------------------------------------------------


class GpuHistory:
    """A short history of utilization and memory per GPU (keyed by node and uuid/index)."""

    def __init__(self, seconds: float = HISTORY_S) -> None:
        self.seconds = seconds
        self._samples: dict[tuple[str, str], deque[tuple[int, float | None, float | None]]] = {}

    def add(
        self, node_id: str, gpu: GpuSample, at_ms: int
    ) -> list[tuple[int, float | None, float | None]]:
        key = (node_id, gpu["uuid"] or str(gpu["index"]))
        q = self._samples.setdefault(key, deque())
        mem = None
        if gpu["memory_used"] is not None and gpu["memory_total"]:
            mem = round(100.0 * gpu["memory_used"] / gpu["memory_total"], 2)
        if not q or q[-1][0] < at_ms:
            q.append((at_ms, gpu["utilization"], mem))
        horizon = at_ms - int(self.seconds * 1000)
        while q and q[0][0] < horizon:
            q.popleft()
        return list(q)


def gpu_model(
    nodes: Iterable[Row], history: GpuHistory | None = None, at_ms: int | None = None
) -> GpuModel:
    at = now_ms() if at_ms is None else at_ms
    history = history if history is not None else GpuHistory()
    out: list[GpuNode] = []
    count = 0
    for n in nodes:
        nid = str(n.get("node_id") or "")
        cards: list[GpuCard] = []
        for raw in (n.get("metrics") or {}).get("gpus") or []:
            s = gpu_sample(raw)
            card: GpuCard = {**s, "history": history.add(nid, s, at)}  # type: ignore[typeddict-item]
            cards.append(card)
        count += len(cards)
        out.append({"node_id": nid, "name": node_name(n), "gpus": cards})
    return {
        "kind": "gpus",
        "nodes": out,
        "gpu_count": count,
        "history_s": history.seconds,
        "updated_ms": at,
    }


# -- objects ---------------------------------------------------------------------------


def object_row(r: Row) -> ObjectRow:
    pid = r.get("pid")
    refs = _int(r.get("reference_count"))
    holders = r.get("holders") or r.get("borrowers")
    if isinstance(holders, (list, tuple)):
        holder_text = ", ".join(short_id(h) for h in holders)
    elif holders:
        holder_text = str(holders)
    else:
        holder_text = f"owner pid {pid}" if pid is not None and refs else ""
    object_id = str(r.get("object_id") or "")
    return {
        "object_id": object_id,
        "short_id": short_object_id(object_id),
        "size": _int(r.get("object_size")),
        "type": str(r.get("type") or ""),
        "owner": f"pid {pid}" if pid is not None else str(r.get("owner_id") or ""),
        "node_id": str(r.get("node_id") or ""),
        "references": refs,
        "holders": holder_text,
        "location": str(r.get("location") or ""),
        "spilled": bool(r.get("spilled")),
        "status": str(r.get("task_status") or ""),
        "call_site": str(r.get("call_site") or ""),
        "created_ms": _int(r.get("created_ms")),
    }


def _sort_value(row: ObjectRow, key: SortKey) -> Any:
    if key == "size":
        return row["size"] or 0
    if key == "created":
        return row["created_ms"] or 0
    if key == "references":
        return row["references"] or 0
    if key == "node":
        return row["node_id"]
    return row[key]


def check_sort_key(key: str) -> SortKey:
    if key not in SORT_KEYS:
        raise ValueError(f"sort_by must be one of {', '.join(SORT_KEYS)}, not {key!r}")
    return key  # type: ignore[return-value]


def objects_model(
    objects: Iterable[Row],
    nodes: Iterable[Row] = (),
    sort_by: str = "size",
    descending: bool = True,
    limit: int = OBJECT_LIMIT,
    at_ms: int | None = None,
) -> ObjectsModel:
    key = check_sort_key(sort_by)
    seen: dict[str, ObjectRow] = {}
    for r in objects:
        row = object_row(r)
        seen.setdefault(row["object_id"], row)  # the first row of an id wins (owner's view)
    rows = list(seen.values())
    stores: list[StoreUse] = []
    for n in nodes:
        nid = str(n.get("node_id") or "")
        store = n.get("object_store") or {}
        stores.append(
            {
                "node_id": nid,
                "name": node_name(n),
                "used": _int(store.get("used")) or 0,
                "capacity": _int(store.get("capacity")) or 0,
                "spilled": _int(store.get("spilled")) or 0,
                "objects": sum(1 for o in rows if o["node_id"] == nid),
            }
        )
    rows.sort(key=lambda o: _sort_value(o, key), reverse=descending)
    return {
        "kind": "objects",
        "stores": stores,
        "objects": rows[:limit],
        "sort_by": key,
        "descending": descending,
        "total_objects": len(rows),
        "total_size": sum(o["size"] or 0 for o in rows),
        "spilled_objects": sum(1 for o in rows if o["spilled"]),
        "limit": limit,
        "updated_ms": now_ms() if at_ms is None else at_ms,
    }


# -- timeline --------------------------------------------------------------------------


def color_for(name: str) -> str:
    """A stable, readable color per function name (same in Python, JS and static HTML)."""
    h = int.from_bytes(hashlib.blake2s(name.encode(), digest_size=4).digest(), "big")
    r, g, b = colorsys.hls_to_rgb((h % 360) / 360.0, 0.55, 0.6)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def cell_label(cell: Any) -> str:
    """A cell tag (``{"execution_count": 5, ...}``) as ``In [5]``."""
    if not cell:
        return ""
    if isinstance(cell, Mapping):
        n = cell.get("execution_count")
        if n:
            return f"In [{n}]"
        return str(cell.get("cell_id") or cell.get("msg_id") or "")
    return str(cell)


def timeline_model(
    events: Iterable[Row], limit: int = SPAN_LIMIT, at_ms: int | None = None
) -> TimelineModel:
    """Chrome trace events (``carme.timeline()``) to lanes (node, worker) and spans."""
    proc_names: dict[Any, str] = {}
    thread_names: dict[tuple[Any, Any], str] = {}
    bars: list[Row] = []
    for ev in events:
        ph = ev.get("ph")
        if ph == "M":
            args = ev.get("args") or {}
            if ev.get("name") == "process_name":
                proc_names[ev.get("pid")] = str(args.get("name") or "")
            elif ev.get("name") == "thread_name":
                thread_names[(ev.get("pid"), ev.get("tid"))] = str(args.get("name") or "")
        elif ph == "X":
            bars.append(ev)
    bars = _dedupe(bars)
    bars.sort(key=lambda e: _num(e.get("ts")) or 0.0)
    dropped = max(0, len(bars) - limit)
    bars = bars[dropped:]
    lanes: dict[tuple[Any, Any], Lane] = {}
    spans: list[Span] = []
    colors: dict[str, str] = {}
    for ev in bars:
        pid, tid = ev.get("pid"), ev.get("tid")
        args = ev.get("args") or {}
        lane = lanes.get((pid, tid))
        if lane is None:
            node = proc_names.get(pid) or f"Node {args.get('node_id', pid)}"
            worker = thread_names.get((pid, tid)) or f"Worker {args.get('worker_id', tid)}"
            lane = lanes[(pid, tid)] = {
                "index": 0,
                "node": node,
                "worker": worker,
                "label": f"{node} · {worker}",
            }
        name = str(ev.get("name") or "task")
        colors.setdefault(name, color_for(name))
        spans.append(
            {
                "lane": id(lane),  # replaced by the lane's index below
                "name": name,
                "task_id": str(args.get("task_id") or ""),
                "start_us": _num(ev.get("ts")) or 0.0,
                "dur_us": _num(ev.get("dur")) or 0.0,
                "state": str(args.get("state") or ""),
                "cell": cell_label(args.get("cell")),
                "actor": ev.get("cat") == "actor_task",
                "error": str(args.get("error") or ""),
            }
        )
    ordered = sorted(lanes.values(), key=lambda ln: (ln["node"], ln["worker"]))
    index = {id(ln): i for i, ln in enumerate(ordered)}
    for i, ln in enumerate(ordered):
        ln["index"] = i
    for s in spans:
        s["lane"] = index[s["lane"]]
    t0 = min((s["start_us"] for s in spans), default=0.0)
    t1 = max((s["start_us"] + s["dur_us"] for s in spans), default=0.0)
    return {
        "kind": "timeline",
        "lanes": ordered,
        "spans": spans,
        "colors": colors,
        "t0_us": t0,
        "t1_us": t1,
        "dropped": dropped,
        "limit": limit,
        "updated_ms": now_ms() if at_ms is None else at_ms,
    }


def _dedupe(bars: list[Row]) -> list[Row]:
    """One bar per (task, attempt, start): the longest (a run reported twice shows once)."""
    best: dict[tuple[Any, Any, Any], Row] = {}
    for ev in bars:
        args = ev.get("args") or {}
        if not args.get("task_id"):
            best[(id(ev), None, None)] = ev
            continue
        key = (args.get("task_id"), args.get("attempt"), ev.get("ts"))
        cur = best.get(key)
        if cur is None or (_num(ev.get("dur")) or 0.0) > (_num(cur.get("dur")) or 0.0):
            best[key] = ev
    return list(best.values())


def chrome_trace(model: TimelineModel) -> list[dict[str, Any]]:
    """The spans of a timeline model as Chrome trace events (one process per node)."""
    pids: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    for ln in model["lanes"]:
        if ln["node"] not in pids:
            pids[ln["node"]] = len(pids) + 1
            out.append(
                {
                    "name": "process_name",
                    "ph": "M",
                    "pid": pids[ln["node"]],
                    "args": {"name": ln["node"]},
                }
            )
        out.append(
            {
                "name": "thread_name",
                "ph": "M",
                "pid": pids[ln["node"]],
                "tid": ln["index"] + 1,
                "args": {"name": ln["worker"]},
            }
        )
    lanes = {ln["index"]: ln for ln in model["lanes"]}
    for s in model["spans"]:
        ln = lanes[s["lane"]]
        out.append(
            {
                "name": s["name"],
                "cat": "actor_task" if s["actor"] else "task",
                "ph": "X",
                "pid": pids[ln["node"]],
                "tid": ln["index"] + 1,
                "ts": s["start_us"],
                "dur": s["dur_us"],
                "args": {
                    "task_id": s["task_id"],
                    "state": s["state"],
                    "cell": s["cell"],
                    "error": s["error"],
                },
            }
        )
    return out


# -- progress --------------------------------------------------------------------------


def progress_model(
    total: int, done: int, failed: int, elapsed_s: float, label: str = ""
) -> ProgressModel:
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    left = total - done
    eta = left / rate if rate > 0 and left > 0 else (0.0 if left <= 0 else None)
    return {
        "kind": "progress",
        "label": label,
        "total": total,
        "done": done,
        "failed": failed,
        "rate": round(rate, 3),
        "elapsed_s": round(elapsed_s, 3),
        "eta_s": None if eta is None else round(eta, 3),
        "finished": done >= total,
    }
