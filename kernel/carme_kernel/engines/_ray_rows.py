"""Ray's state rows in, carme's row shape and timeline out: pure functions, no Ray import.

Theory of operation
-------------------
The widgets, the ``%carme`` views and the server extension read state rows in
carme's shape (``carme.util.state`` with ``detail=True``) and a timeline of
Chrome-trace events (``carme.timeline()``). On Ray the same data comes from
Ray's state API (``ray.util.state.list_*`` or the dashboard's REST API
``/api/v0/<kind>``, whose rows are the same plain dicts) and the dashboard's
node summary (``/nodes?view=summary``: CPU, memory, GPUs, object store per
node, from Ray's reporter agent). This module converts those dicts; callers do
the I/O, so it is usable from a driver (the kernel) and from a process that
never joins the cluster (the Jupyter server).

* :func:`node_rows` — Ray ``NodeState`` rows (+ optional summaries) to carme node
  rows: ``metrics`` {cpu_percent, num_cpus, memory_used, memory_total, gpus} and
  ``object_store`` {used, capacity}. Per-node *available* resources come from the
  summary's raylet data when present, else are left out (the widgets then show
  totals only: capability ``per_node_available``).
* :func:`assign_cells` — the cell each task belongs to. Ray carries no tag of
  ours with a task, so the kernel records when each cell started
  (:class:`CellWindows`); a task submitted by the kernel's driver belongs to the
  cell that was running (or ran last) when it was created, and a nested task to
  the cell of its top-level ancestor. ``%%remote`` tasks carry their cell in
  their name as well (``%%remote In[5]``), which wins when present.
* :func:`timeline_events` — one complete event (``"ph": "X"``) per task attempt
  that started, from ``start_time_ms`` to ``end_time_ms`` (or ``now_ms`` while
  running), on a process per node and a thread per worker, with the same args as
  carme's timeline (task_id, attempt, state, node_id, worker_id, cell, error).
  Built from task state, never ``ray.timeline()`` (which sleeps a second per call).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "CellWindows",
    "assign_cells",
    "node_rows",
    "remote_cell_name",
    "tag_from_name",
    "timeline_events",
]

Row = Mapping[str, Any]
MIB = 1024 * 1024
_REMOTE_NAME = re.compile(r"^%%remote (?:--all-nodes )?In\[(\d+)\]$")
TERMINAL = frozenset({"FINISHED", "FAILED", "CANCELLED"})


def remote_cell_name(label: str, all_nodes: bool = False) -> str:
    """The task name ``%%remote`` gives its task in cell ``label`` (``In[5]``)."""
    return f"%%remote {'--all-nodes ' if all_nodes else ''}{label}"


class CellWindows:
    """When each cell execution started, so tasks can be matched to cells by creation time.

    ``open(tag, at_ms)`` when a cell starts; the window of a cell lasts until the
    next cell starts (work a cell's threads launch after it ended stays its own).
    Bounded: the oldest windows go past ``limit``.
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._starts: list[float] = []
        self._tags: list[dict[str, Any]] = []

    def open(self, tag: dict[str, Any], at_ms: float) -> None:
        if self._starts and at_ms < self._starts[-1]:
            at_ms = self._starts[-1]  # clocks never run backwards here
        self._starts.append(at_ms)
        self._tags.append(tag)
        if len(self._starts) > self.limit:
            del self._starts[: len(self._starts) - self.limit]
            del self._tags[: len(self._tags) - self.limit]

    def at(self, ms: float | None) -> dict[str, Any] | None:
        """The tag of the cell that was running (or ran last) at ``ms``."""
        if ms is None or not self._starts:
            return None
        i = bisect.bisect_right(self._starts, ms) - 1
        return self._tags[i] if i >= 0 else None

    def by_count(self, count: int) -> dict[str, Any] | None:
        """The most recent cell execution with ``execution_count == count``."""
        for tag in reversed(self._tags):
            if tag.get("execution_count") == count:
                return tag
        return None

    def __len__(self) -> int:
        return len(self._starts)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def tag_from_name(name: Any, windows: CellWindows) -> dict[str, Any] | None:
    m = _REMOTE_NAME.match(str(name or ""))
    return windows.by_count(int(m.group(1))) if m else None


def assign_cells(
    tasks: Iterable[Row], windows: CellWindows, job_id: str | None = None
) -> list[dict[str, Any]]:
    """Copies of ``tasks`` with ``cell`` set to the tag of the cell that launched them.

    Only tasks of ``job_id`` (the kernel's driver job; all when None) get a cell;
    the others get ``cell: None``.
    """
    rows = [dict(t) for t in tasks]
    by_id: dict[str, dict[str, Any]] = {}
    for r in rows:
        tid = str(r.get("task_id") or "")
        cur = by_id.get(tid)
        if cur is None or (r.get("attempt_number") or 0) < (cur.get("attempt_number") or 0):
            by_id[tid] = r  # the first attempt has the creation time

    def top(r: dict[str, Any]) -> dict[str, Any]:
        seen = set()
        while True:
            parent = by_id.get(str(r.get("parent_task_id") or ""))
            if parent is None or id(parent) in seen:
                return r
            seen.add(id(parent))
            r = parent

    for r in rows:
        if job_id is not None and str(r.get("job_id") or "") != job_id:
            r["cell"] = None
            continue
        root = top(r)
        tag = tag_from_name(root.get("name"), windows)
        if tag is None:
            tag = windows.at(_num(root.get("creation_time_ms")))
        r["cell"] = tag
    return rows


def _summary_by_node(summaries: Iterable[Row]) -> dict[str, Row]:
    out: dict[str, Row] = {}
    for s in summaries:
        raylet = s.get("raylet") or {}
        nid = str(raylet.get("nodeId") or s.get("node_id") or "")
        if nid:
            out[nid] = s
    return out


def _gpu(raw: Row) -> dict[str, Any]:
    used = _num(raw.get("memoryUsed", raw.get("memory_used")))
    total = _num(raw.get("memoryTotal", raw.get("memory_total")))
    return {
        "index": raw.get("index"),
        "name": raw.get("name"),
        "uuid": raw.get("uuid"),
        "utilization_gpu": _num(raw.get("utilizationGpu", raw.get("utilization_gpu"))),
        # Ray's reporter gives GPU memory in MiB; carme's rows are bytes.
        "memory_used": int(used * MIB) if used is not None else None,
        "memory_total": int(total * MIB) if total is not None else None,
    }


def _metrics(summary: Row) -> dict[str, Any]:
    mem = summary.get("mem") or []
    cpus = summary.get("cpus") or []
    workers = summary.get("workers") or []
    rss = sum(int((w.get("memoryInfo") or {}).get("rss") or 0) for w in workers)
    return {
        "cpu_percent": _num(summary.get("cpu")),
        "num_cpus": int(cpus[0]) if cpus else None,
        "memory_total": int(mem[0]) if len(mem) > 0 else None,
        "memory_used": int(mem[3]) if len(mem) > 3 else None,
        "workers_rss": rss or None,
        "gpus": [_gpu(g) for g in summary.get("gpus") or []],
    }


def _store(summary: Row) -> dict[str, Any]:
    raylet = summary.get("raylet") or {}
    used = _num(raylet.get("objectStoreUsedMemory"))
    avail = _num(raylet.get("objectStoreAvailableMemory"))
    if used is None and avail is None:
        return {}
    return {"used": int(used or 0), "capacity": int((used or 0) + (avail or 0))}


def node_rows(nodes: Iterable[Row], summaries: Iterable[Row] = ()) -> list[dict[str, Any]]:
    """Ray ``NodeState`` rows (and node summaries) as carme node rows."""
    by_node = _summary_by_node(summaries)
    out = []
    for n in nodes:
        row = dict(n)
        nid = str(row.get("node_id") or "")
        summary = by_node.get(nid)
        if summary is not None:
            row["metrics"] = _metrics(summary)
            row["object_store"] = _store(summary)
            gpus = row["metrics"]["gpus"]
            if gpus:
                row["gpus"] = gpus
        row.setdefault("metrics", {})
        row.setdefault("object_store", {})
        out.append(row)
    return out


def timeline_events(tasks: Iterable[Row], now_ms: float) -> list[dict[str, Any]]:
    """Chrome trace events for the task rows (with ``cell`` set), carme's timeline shape."""
    pids: dict[str, int] = {}
    tids: dict[tuple[int, str], int] = {}
    meta: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for r in tasks:
        start = _num(r.get("start_time_ms"))
        if not start:  # Ray says 0 for "not started"
            continue
        state = str(r.get("state") or "")
        end = _num(r.get("end_time_ms"))
        if not end:  # 0 or missing: still running
            end = now_ms if state not in TERMINAL else start
        node = str(r.get("node_id") or "unknown")
        worker = str(r.get("worker_id") or r.get("worker_pid") or "unknown")
        pid = pids.get(node)
        if pid is None:
            pid = pids[node] = len(pids) + 1
            meta.append({"name": "process_name", "ph": "M", "pid": pid,
                         "args": {"name": f"Node {node[:8]}"}})
            meta.append({"name": "process_sort_index", "ph": "M", "pid": pid,
                         "args": {"sort_index": pid}})
        tid = tids.get((pid, worker))
        if tid is None:
            tid = tids[(pid, worker)] = len(tids) + 1
            meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                         "args": {"name": f"Worker {worker[:8]}"}})
        args: dict[str, Any] = {
            "task_id": r.get("task_id"),
            "attempt": r.get("attempt_number") or 0,
            "state": state,
            "node_id": node,
            "worker_id": worker,
            "cell": r.get("cell"),
        }
        if state == "FAILED":
            args["error"] = f"{r.get('error_type') or ''}: {r.get('error_message') or ''}"
        kind = str(r.get("type") or "")
        out.append(
            {
                "name": r.get("func_or_class_name") or r.get("name") or "task",
                "cat": "actor_task" if kind in ("ACTOR_TASK", "ACTOR_CREATION_TASK") else "task",
                "ph": "X",
                "pid": pid,
                "tid": tid,
                "ts": round(start * 1000.0, 3),
                "dur": round(max(0.0, end - start) * 1000.0, 3),
                "args": args,
            }
        )
    return meta + out
