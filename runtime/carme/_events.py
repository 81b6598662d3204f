"""Task events: a bounded log, Ray-style state rows, a Chrome-trace timeline, summaries.

``record`` is on the hot path, so it only updates one small dict per task attempt and
appends ``(state, ts)``. Everything else (rows, timeline, summary) is computed on
demand from those records.

Bounds: at most ``max_tasks`` attempts are kept; past that, the oldest *finished*
attempts go first (in batches, so eviction is amortized O(1)), and only if none has
finished do the oldest live ones go. Each attempt keeps at most
``max_events_per_task`` events: the first half and the most recent half.

Timeline: one Chrome-trace complete event (``"ph": "X"``) per run (RUNNING up to the
next terminal state), on a process per node and a thread per worker. Perfetto wants
small integer pids and tids, so they are numbered here and named by ``"M"`` metadata
events (``"Node 1a2b3c4d"``, ``"Worker 5e6f7a8b"``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["STATES", "TERMINAL_STATES", "TaskEventLog"]

STATES = ("SUBMITTED", "SCHEDULED", "RUNNING", "FINISHED", "FAILED", "CANCELLED")
TERMINAL_STATES = frozenset({"FINISHED", "FAILED", "CANCELLED"})
_STATE_SET = frozenset(STATES)

# Attribute names accepted by record(); all are copied into the record as given.
_ATTRS = frozenset(
    {
        "name",
        "func_name",
        "type",
        "job_id",
        "actor_id",
        "node_id",
        "worker_id",
        "worker_pid",
        "parent_task_id",
        "required_resources",
        "error_type",
        "error_message",
        "tag",
        "attempt",
        # with a final state, from the submitter: the attempt was submitted / ran from then
        # (one event for two or three)
        "submitted",
        "started",
    }
)


class TaskEventLog:
    def __init__(self, max_tasks: int = 100_000, max_events_per_task: int = 32) -> None:
        if max_tasks < 1 or max_events_per_task < 2:
            raise ValueError("max_tasks must be >= 1 and max_events_per_task >= 2")
        self.max_tasks = max_tasks
        self.max_events_per_task = max_events_per_task
        self._recs: dict[tuple[str, int], dict[str, Any]] = {}
        self._attempt: dict[str, int] = {}  # latest attempt per task, only when > 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._recs)

    def record(self, task_id: str, state: str, ts: float, **attrs: Any) -> None:
        """Note that ``task_id`` reached ``state`` at ``ts`` (seconds since the epoch)."""
        self._record(task_id, state, ts, attrs)

    def record_many(self, events: list[tuple[Any, ...]]) -> None:
        """Batch form: ``(task_id, state, ts)`` or ``(task_id, state, ts, attrs_dict)``."""
        rec = self._record
        for ev in events:
            rec(ev[0], ev[1], ev[2], ev[3] if len(ev) > 3 and ev[3] else {})

    def _record(self, task_id: str, state: str, ts: float, attrs: dict[str, Any]) -> None:
        if state not in _STATE_SET:
            raise ValueError(f"unknown task state {state!r}; expected one of {', '.join(STATES)}")
        if (state in TERMINAL_STATES and attrs.get("submitted") is not None
                and attrs.get("started") is not None and attrs.keys() <= _ATTRS
                and self._record_run(task_id, state, ts, attrs)):
            return
        if "started" in attrs or "submitted" in attrs:
            # a submitter's one event for a finished attempt: SUBMITTED at `submitted` (with
            # the submission's attributes), RUNNING at `started`, then this
            attrs = dict(attrs)
            submitted = attrs.pop("submitted", None)
            started = attrs.pop("started", None)
            if state in TERMINAL_STATES:
                # the attributes are stored with the first; the others only name the attempt
                rest = {"attempt": attrs["attempt"]} if "attempt" in attrs else {}
                if submitted is not None:
                    self._record(task_id, "SUBMITTED", submitted, attrs)
                    attrs = rest
                if started is not None:
                    self._record(task_id, "RUNNING", started, attrs)
                    attrs = rest
        attempt = attrs.get("attempt")
        if attempt is None:
            attempt = self._attempt.get(task_id, 0)
        elif attempt:
            if attempt > self._attempt.get(task_id, 0):
                self._attempt[task_id] = attempt
        key = (task_id, attempt)
        rec = self._recs.get(key)
        if rec is None:
            if len(self._recs) >= self.max_tasks:
                self._evict()
            rec = self._recs[key] = {"task_id": task_id, "attempt": attempt, "events": []}
        for name, value in attrs.items():
            if name not in _ATTRS:
                raise TypeError(f"unknown task event attribute {name!r}; expected one of {sorted(_ATTRS)}")
            rec[name] = value
        # events from different processes arrive out of order: an earlier non-final state
        # never overrides a final one
        stale = (rec.get("state") in TERMINAL_STATES and state not in TERMINAL_STATES
                 and ts <= rec.get("ended", ts))
        if not stale:
            rec["state"] = state
        events = rec["events"]
        if (state, ts) in events:
            return  # the same event reported by two processes
        if len(events) >= self.max_events_per_task:
            del events[self.max_events_per_task // 2]
            rec["dropped"] = rec.get("dropped", 0) + 1
        events.append((state, ts))
        if len(events) > 1 and events[-2][1] > ts:
            events.sort(key=lambda e: e[1])
        if state == "SUBMITTED":
            rec.setdefault("created", ts)
        elif state == "RUNNING":
            rec["started"] = ts
            if not stale:
                rec.pop("ended", None)
        elif state in TERMINAL_STATES:
            rec["ended"] = ts
        rec.setdefault("created", ts)

    def _record_run(self, task_id: str, state: str, ts: float, attrs: dict[str, Any]) -> bool:
        """The common event, one per task (a submitter's for an attempt that ran and ended,
        `submitted` and `started` given), for an attempt not seen before: its record made
        at once, as the three events one at a time make it (SUBMITTED with the
        attributes, RUNNING, then the end). False when the attempt has a record."""
        attempt = attrs.get("attempt")
        if attempt is None:
            attempt = self._attempt.get(task_id, 0)
        key = (task_id, attempt)
        if key in self._recs:
            return False
        if attempt and attempt > self._attempt.get(task_id, 0):
            self._attempt[task_id] = attempt
        if len(self._recs) >= self.max_tasks:
            self._evict()
        submitted, started = attrs["submitted"], attrs["started"]
        events = [("SUBMITTED", submitted), ("RUNNING", started), (state, ts)]
        if not submitted <= started <= ts:  # (clocks of two processes)
            events.sort(key=lambda e: e[1])
        rec = {"task_id": task_id, "attempt": attempt, "events": events}
        rec.update(attrs)
        del rec["submitted"]
        rec["state"] = state
        rec["created"] = submitted
        rec["ended"] = ts
        self._recs[key] = rec
        return True

    def _evict(self) -> None:
        batch = max(1, self.max_tasks // 10)
        doomed = []
        for key, rec in self._recs.items():
            if rec["state"] in TERMINAL_STATES:
                doomed.append(key)
                if len(doomed) >= batch:
                    break
        if not doomed:
            doomed = list(self._recs)[:batch]
        for key in doomed:
            del self._recs[key]
            if key[1] and self._attempt.get(key[0]) == key[1]:
                del self._attempt[key[0]]
        self.evicted += len(doomed)

    # -- views ---------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """Ray ``TaskState``-like dicts, oldest first."""
        return [_row(rec) for rec in self._recs.values()]

    def row(self, task_id: str) -> list[dict[str, Any]]:
        """Rows of every kept attempt of one task."""
        return [_row(r) for (tid, _), r in self._recs.items() if tid == task_id]

    def timeline(self) -> list[dict[str, Any]]:
        """Chrome trace events (a JSON array) that Perfetto and chrome://tracing open."""
        pids: dict[str, int] = {}
        tids: dict[tuple[int, str], int] = {}
        meta: list[dict[str, Any]] = []
        out: list[dict[str, Any]] = []
        for rec in self._recs.values():
            runs = _runs(rec["events"])
            if not runs:
                continue
            node = str(rec.get("node_id") or "unknown")
            worker = str(rec.get("worker_id") or rec.get("worker_pid") or "unknown")
            pid = pids.get(node)
            if pid is None:
                pid = pids[node] = len(pids) + 1
                meta.append(_meta("process_name", pid, None, f"Node {node[:8]}"))
                meta.append({"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": pid}})
            tid = tids.get((pid, worker))
            if tid is None:
                tid = tids[(pid, worker)] = len(tids) + 1
                meta.append(_meta("thread_name", pid, tid, f"Worker {worker[:8]}"))
            name = rec.get("func_name") or rec.get("name") or "task"
            is_actor = rec.get("type") in ("ACTOR_TASK", "ACTOR_CREATION_TASK")
            for start, end, state in runs:
                args: dict[str, Any] = {
                    "task_id": rec["task_id"],
                    "attempt": rec["attempt"],
                    "state": state,
                    "node_id": node,
                    "worker_id": worker,
                    "cell": rec.get("tag"),
                }
                if state == "FAILED":
                    args["error"] = f"{rec.get('error_type') or ''}: {rec.get('error_message') or ''}"
                out.append(
                    {
                        "name": name,
                        "cat": "actor_task" if is_actor else "task",
                        "ph": "X",
                        "pid": pid,
                        "tid": tid,
                        "ts": round(start * 1e6, 3),
                        "dur": round(max(0.0, end - start) * 1e6, 3),
                        "args": args,
                    }
                )
        return meta + out

    def summarize(self) -> dict[str, Any]:
        """Per function or class name: counts by state and by type (like summarize_tasks)."""
        return summarize_rows(self.rows())


def _meta(kind: str, pid: int, tid: int | None, name: str) -> dict[str, Any]:
    ev: dict[str, Any] = {"name": kind, "ph": "M", "pid": pid, "args": {"name": name}}
    if tid is not None:
        ev["tid"] = tid
    return ev


def _runs(events: list[tuple[str, float]]) -> list[tuple[float, float, str]]:
    """(start, end, final state) of each RUNNING stretch; an open one ends at the last event."""
    runs = []
    start: float | None = None
    last = 0.0
    for state, ts in events:
        last = ts
        if state == "RUNNING":
            if start is not None:
                runs.append((start, ts, "RUNNING"))
            start = ts
        elif state in TERMINAL_STATES and start is not None:
            runs.append((start, ts, state))
            start = None
    if start is not None:
        runs.append((start, max(last, start), "RUNNING"))
    return runs


def _ms(ts: float | None) -> int | None:
    return None if ts is None else int(ts * 1000)


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    func = rec.get("func_name") or rec.get("name") or ""
    return {
        "task_id": rec["task_id"],
        "attempt_number": rec["attempt"],
        "name": rec.get("name") or func,
        "state": rec["state"],
        "job_id": rec.get("job_id"),
        "actor_id": rec.get("actor_id"),
        "type": rec.get("type") or "NORMAL_TASK",
        "func_or_class_name": func,
        "parent_task_id": rec.get("parent_task_id"),
        "node_id": rec.get("node_id"),
        "worker_id": rec.get("worker_id"),
        "worker_pid": rec.get("worker_pid"),
        "error_type": rec.get("error_type"),
        "error_message": rec.get("error_message"),
        "required_resources": dict(rec.get("required_resources") or {}),
        "creation_time_ms": _ms(rec.get("created")),
        "start_time_ms": _ms(rec.get("started")),
        "end_time_ms": _ms(rec.get("ended")),
        "events": [{"state": s, "ts_ms": _ms(t)} for s, t in rec["events"]],
        "events_dropped": rec.get("dropped", 0),
        "cell": rec.get("tag"),
    }


def summarize_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ray's ``summarize_tasks`` shape: ``{"summary": {name: {...}}, "total_tasks": n, ...}``."""
    summary: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = row.get("func_or_class_name") or row.get("name") or ""
        entry = summary.get(name)
        if entry is None:
            entry = summary[name] = {
                "func_or_class_name": name,
                "type": row.get("type") or "NORMAL_TASK",
                "state_counts": {},
                "type_counts": {},
            }
        state = row.get("state") or ""
        entry["state_counts"][state] = entry["state_counts"].get(state, 0) + 1
        kind = row.get("type") or "NORMAL_TASK"
        entry["type_counts"][kind] = entry["type_counts"].get(kind, 0) + 1
    return {
        "summary": summary,
        "total_tasks": len(rows),
        "total_actor_tasks": sum(1 for r in rows if r.get("type") == "ACTOR_TASK"),
        "total_actor_scheduled": sum(1 for r in rows if r.get("type") == "ACTOR_CREATION_TASK"),
        "summary_by": "func_name",
    }
