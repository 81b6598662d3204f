"""The state API (Ray's ``ray.util.state``): list, get and summarize cluster state.

The runtime hands over rows (plain dicts) per kind; filtering, limiting, column
selection and summaries are pure functions here, testable without a cluster.

Filters are Ray's: a list of ``(key, "=" | "!=", value)``; values compare as strings,
case-insensitively for state-like columns (``state``, ``status``, ``type``, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from carme._events import summarize_rows

__all__ = [
    "COLUMNS",
    "StateRow",
    "apply_filters",
    "get_actor",
    "get_job",
    "get_node",
    "get_objects",
    "get_placement_group",
    "get_task",
    "get_worker",
    "list_actors",
    "list_jobs",
    "list_nodes",
    "list_objects",
    "list_placement_groups",
    "list_tasks",
    "list_workers",
    "select_rows",
    "summarize_actor_rows",
    "summarize_actors",
    "summarize_object_rows",
    "summarize_objects",
    "summarize_tasks",
]

# Columns per kind: the first entries are shown without detail=True.
COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "nodes": (
        ("node_id", "node_ip", "is_head_node", "state", "state_message", "node_name",
         "resources_total", "labels"),
        ("resources_available", "start_time_ms", "end_time_ms", "gpus"),
    ),
    "workers": (
        ("worker_id", "is_alive", "worker_type", "exit_type", "node_id", "ip", "pid",
         "exit_detail"),
        ("worker_launch_time_ms", "start_time_ms", "end_time_ms", "job_id", "actor_id"),
    ),
    "tasks": (
        ("task_id", "attempt_number", "name", "state", "job_id", "actor_id", "type",
         "func_or_class_name", "parent_task_id", "node_id", "worker_id", "worker_pid",
         "error_type"),
        ("error_message", "required_resources", "creation_time_ms", "start_time_ms",
         "end_time_ms", "events", "events_dropped", "cell"),
    ),
    "actors": (
        ("actor_id", "class_name", "state", "job_id", "name", "node_id", "pid",
         "ray_namespace"),
        ("required_resources", "death_cause", "is_detached", "placement_group_id",
         "repr_name", "num_restarts", "max_restarts", "start_time_ms", "end_time_ms"),
    ),
    "objects": (
        ("object_id", "object_size", "task_status", "reference_type", "call_site", "type",
         "pid", "ip"),
        ("node_id", "owner_id", "locations", "spilled"),
    ),
    "placement_groups": (
        ("placement_group_id", "name", "creator_job_id", "state"),
        ("strategy", "bundles", "bundles_to_node_id", "is_detached", "stats", "message"),
    ),
    "jobs": (
        ("job_id", "submission_id", "type", "status", "entrypoint", "message",
         "start_time", "end_time"),
        ("driver_info", "metadata", "runtime_env", "driver_pid", "driver_node_id"),
    ),
}

_ID_KEY = {
    "nodes": "node_id",
    "workers": "worker_id",
    "tasks": "task_id",
    "actors": "actor_id",
    "objects": "object_id",
    "placement_groups": "placement_group_id",
    "jobs": "job_id",
}

_CASELESS = frozenset(
    {"state", "status", "type", "worker_type", "exit_type", "task_status", "reference_type",
     "strategy"}
)

# Ray's finer task states, as carme names them (filters accept either).
_TASK_STATE_ALIASES = {
    "PENDING_ARGS_AVAIL": "SUBMITTED",
    "PENDING_NODE_ASSIGNMENT": "SUBMITTED",
    "SUBMITTED_TO_WORKER": "SCHEDULED",
}

Filter = tuple[str, str, Any]


class StateRow(dict):  # type: ignore[type-arg]
    """A state row: a dict that also allows ``row.state`` style access (as Ray's dataclasses)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"state row has no field {name!r}; fields: {', '.join(sorted(self))}"
            ) from None

    def __reduce__(self) -> Any:
        return (StateRow, (dict(self),))


def _check_kind(kind: str) -> None:
    if kind not in COLUMNS:
        raise ValueError(f"unknown state kind {kind!r}; expected one of {', '.join(COLUMNS)}")


def _to_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _matches(row_value: Any, value: Any, caseless: bool) -> bool:
    a, b = _to_str(row_value), _to_str(value)
    if caseless or isinstance(row_value, bool):
        return a.lower() == b.lower()
    return a == b


def apply_filters(
    rows: Iterable[dict[str, Any]], filters: list[Filter] | None, kind: str
) -> list[dict[str, Any]]:
    """Keep the rows that match every filter; unknown keys raise naming the valid ones."""
    _check_kind(kind)
    rows = list(rows)
    if not filters:
        return rows
    if not isinstance(filters, (list, tuple)):
        raise TypeError(f"filters must be a list of (key, predicate, value) tuples, not {filters!r}")
    brief, more = COLUMNS[kind]
    valid = set(brief) | set(more)
    for row in rows[:1]:
        valid |= set(row)
    checks = []
    for flt in filters:
        if not isinstance(flt, (list, tuple)) or len(flt) != 3:
            raise ValueError(
                f"Invalid filter {flt!r}: expected a (key, predicate, value) tuple such as "
                "('state', '=', 'RUNNING')."
            )
        key, pred, value = flt
        if key not in valid:
            raise ValueError(
                f"Invalid filter key {key!r} for {kind}: valid keys are {', '.join(sorted(valid))}."
            )
        if pred not in ("=", "!="):
            raise ValueError(f"Invalid filter predicate {pred!r}: expected '=' or '!='.")
        if kind == "tasks" and key == "state" and isinstance(value, str):
            value = _TASK_STATE_ALIASES.get(value.upper(), value)
        checks.append((key, pred == "=", value, key in _CASELESS))
    return [
        row
        for row in rows
        if all(_matches(row.get(k), v, c) == eq for k, eq, v, c in checks)
    ]


def select_rows(
    rows: Iterable[dict[str, Any]],
    kind: str,
    filters: list[Filter] | None = None,
    limit: int = 100,
    detail: bool = False,
) -> list[StateRow]:
    """Filter, truncate to ``limit`` and pick columns (all of them with ``detail``)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive integer, not {limit!r}")
    picked = apply_filters(rows, filters, kind)[:limit]
    if detail:
        return [StateRow(r) for r in picked]
    brief = COLUMNS[kind][0]
    return [StateRow({k: r.get(k) for k in brief}) for r in picked]


def summarize_actor_rows(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, dict[str, Any]] = {}
    total = 0
    for row in rows:
        total += 1
        name = row.get("class_name") or ""
        entry = summary.setdefault(name, {"class_name": name, "state_counts": {}})
        state = row.get("state") or ""
        entry["state_counts"][state] = entry["state_counts"].get(state, 0) + 1
    return {"summary": summary, "total_actors": total, "summary_by": "class"}


def summarize_object_rows(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, dict[str, Any]] = {}
    total = size = 0
    for row in rows:
        total += 1
        nbytes = int(row.get("object_size") or 0)
        size += nbytes
        site = row.get("call_site") or "disabled"
        entry = summary.setdefault(
            site,
            {"total_objects": 0, "total_size_mb": 0.0, "task_state_counts": {}, "ref_type_counts": {}},
        )
        entry["total_objects"] += 1
        entry["total_size_mb"] += nbytes / 2**20
        for field, counts in (("task_status", "task_state_counts"), ("reference_type", "ref_type_counts")):
            v = row.get(field) or ""
            entry[counts][v] = entry[counts].get(v, 0) + 1
    return {
        "summary": summary,
        "total_objects": total,
        "total_size_mb": size / 2**20,
        "summary_by": "callsite",
    }


# -- wrappers over the connected runtime ------------------------------------------

def _rows(kind: str) -> list[dict[str, Any]]:
    from carme._context import runtime

    return list(runtime().state_rows(kind))


def _list(kind: str, filters: list[Filter] | None, limit: int, detail: bool) -> list[StateRow]:
    return select_rows(_rows(kind), kind, filters, limit, detail)


def list_nodes(address: str | None = None, filters: list[Filter] | None = None, limit: int = 100,
               timeout: int = 30, detail: bool = False, raise_on_missing_output: bool = True,
               _explain: bool = False) -> list[StateRow]:
    return _list("nodes", filters, limit, detail)


def list_workers(address: str | None = None, filters: list[Filter] | None = None, limit: int = 100,
                 timeout: int = 30, detail: bool = False, raise_on_missing_output: bool = True,
                 _explain: bool = False) -> list[StateRow]:
    return _list("workers", filters, limit, detail)


def list_tasks(address: str | None = None, filters: list[Filter] | None = None, limit: int = 100,
               timeout: int = 30, detail: bool = False, raise_on_missing_output: bool = True,
               _explain: bool = False) -> list[StateRow]:
    return _list("tasks", filters, limit, detail)


def list_actors(address: str | None = None, filters: list[Filter] | None = None, limit: int = 100,
                timeout: int = 30, detail: bool = False, raise_on_missing_output: bool = True,
                _explain: bool = False) -> list[StateRow]:
    return _list("actors", filters, limit, detail)


def list_objects(address: str | None = None, filters: list[Filter] | None = None, limit: int = 100,
                 timeout: int = 30, detail: bool = False, raise_on_missing_output: bool = True,
                 _explain: bool = False) -> list[StateRow]:
    return _list("objects", filters, limit, detail)


def list_placement_groups(address: str | None = None, filters: list[Filter] | None = None,
                          limit: int = 100, timeout: int = 30, detail: bool = False,
                          raise_on_missing_output: bool = True,
                          _explain: bool = False) -> list[StateRow]:
    return _list("placement_groups", filters, limit, detail)


def list_jobs(address: str | None = None, filters: list[Filter] | None = None, limit: int = 100,
              timeout: int = 30, detail: bool = False, raise_on_missing_output: bool = True,
              _explain: bool = False) -> list[StateRow]:
    return _list("jobs", filters, limit, detail)


def _get(kind: str, id: str) -> list[StateRow]:
    if not isinstance(id, str) or not id:
        raise ValueError(f"expected a hex id string, not {id!r}")
    return select_rows(_rows(kind), kind, [(_ID_KEY[kind], "=", id)], limit=10**9, detail=True)


def _one(kind: str, id: str) -> StateRow | None:
    found = _get(kind, id)
    return found[-1] if found else None


def get_node(id: str, address: str | None = None, timeout: int = 30,
             _explain: bool = False) -> StateRow | None:
    return _one("nodes", id)


def get_worker(id: str, address: str | None = None, timeout: int = 30,
               _explain: bool = False) -> StateRow | None:
    return _one("workers", id)


def get_actor(id: str, address: str | None = None, timeout: int = 30,
              _explain: bool = False) -> StateRow | None:
    return _one("actors", id)


def get_placement_group(id: str, address: str | None = None, timeout: int = 30,
                        _explain: bool = False) -> StateRow | None:
    return _one("placement_groups", id)


def get_job(id: str, address: str | None = None, timeout: int = 30,
            _explain: bool = False) -> StateRow | None:
    return _one("jobs", id)


def get_task(id: str, address: str | None = None, timeout: int = 30,
             _explain: bool = False) -> StateRow | None:
    """The latest attempt of a task, or None."""
    found = _get("tasks", id)
    return max(found, key=lambda r: r.get("attempt_number") or 0) if found else None


def get_objects(id: str, address: str | None = None, timeout: int = 30,
                _explain: bool = False) -> list[StateRow]:
    return _get("objects", id)


def summarize_tasks(address: str | None = None, timeout: int = 30,
                    raise_on_missing_output: bool = True, _explain: bool = False) -> dict[str, Any]:
    return {"cluster": summarize_rows(_rows("tasks"))}


def summarize_actors(address: str | None = None, timeout: int = 30,
                     raise_on_missing_output: bool = True, _explain: bool = False) -> dict[str, Any]:
    return {"cluster": summarize_actor_rows(_rows("actors"))}


def summarize_objects(address: str | None = None, timeout: int = 30,
                      raise_on_missing_output: bool = True,
                      _explain: bool = False) -> dict[str, Any]:
    return {"cluster": summarize_object_rows(_rows("objects"))}
