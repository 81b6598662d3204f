"""Driver-side hooks for notebook integrations (the carme kernel uses these).

* `set_task_tag_provider(fn)`: `fn()` is called on every submission from this process
  (task, actor creation, actor call); the JSON-able dict it returns is attached to the
  task, shows as `cell` in `carme.util.state.list_tasks()` rows and in the timeline, and
  comes back with the task's output lines.
* `set_log_handler(fn)`: `fn(tag, stream, text)` receives output printed by remote work
  launched from this process, from a background thread, as it arrives. None restores
  the default (print with a "(name pid=...)" prefix, as Ray does).
* `cancel_tagged(match, force=False)`: cancel every unfinished task and actor call
  submitted by this process whose tag matches; returns how many.
* `set_get_hook(fn)`: `carme.get(refs)` runs inside `with fn(refs):` (the kernel shows a
  progress bar when a get of many refs takes long).
* `ref_states(refs)`: "pending", "finished" or "failed" per ref, without fetching values.
* `invalidate_exports(values)`: drop the cached pickles of remote functions and classes.
* `state_rows(kind)` / `timeline_events()`: the state API as plain dicts, the timeline.

Hooks set before `carme.init()` apply once it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._context import STATE

TagProvider = Callable[[], "dict | None"]
LogHandler = Callable[["dict | None", str, str], None]


def _apply(core: Any) -> None:
    core.tag_provider = getattr(STATE, "tag_provider", None)
    handler = getattr(STATE, "log_handler", None)
    if handler is not None or not getattr(core, "quiet_logs", False):
        core.log_handler = handler


def set_task_tag_provider(fn: TagProvider | None) -> None:
    STATE.tag_provider = fn  # type: ignore[attr-defined]
    if STATE.core is not None:
        STATE.core.tag_provider = fn


def set_log_handler(fn: LogHandler | None) -> None:
    STATE.log_handler = fn  # type: ignore[attr-defined]
    if STATE.core is not None:
        STATE.core.log_handler = fn


def cancel_tagged(match: Callable[[Any], bool], force: bool = False) -> int:
    core = STATE.core
    if core is None:
        return 0
    return core.submitter.cancel_matching(match, force)  # type: ignore[no-any-return]


GetHook = Callable[[list], Any]


def set_get_hook(fn: GetHook | None) -> None:
    STATE.get_hook = fn  # type: ignore[attr-defined]


def get_hook() -> GetHook | None:
    return getattr(STATE, "get_hook", None)


def ref_states(refs: list) -> list[str]:
    core = STATE.core
    if core is None:
        raise RuntimeError("carme is not initialized: call carme.init() first")
    out = []
    for ref in refs:
        entry = core.objects.get(ref.binary())
        if entry is None or entry.payload is None:
            if entry is not None and not entry.owned and not entry.fetching:
                core.when_ready(ref.binary(), lambda: None)  # ask its node once
            out.append("pending")
        else:
            out.append("failed" if entry.payload[3] else "finished")
    return out


def invalidate_exports(values: Any) -> int:
    """Drop the cached pickle of every ``@carme.remote`` function and class in ``values``.

    The next call ships the function's current code (and the notebook helpers it uses,
    by value). Returns how many were reset; other values are ignored.
    """
    from ._remote import ActorClass, RemoteFunction

    count = 0
    for value in values:
        if isinstance(value, RemoteFunction):
            value._key = None
            value._blob = None
            count += 1
        elif isinstance(value, ActorClass):
            value._blob = None
            count += 1
    return count


def state_rows(kind: str, limit: int = 100_000) -> list[dict]:
    """``carme.util.state.list_<kind>(detail=True)`` as plain dicts (kind: nodes, workers,
    tasks, actors, objects, placement_groups, jobs)."""
    from .util import state

    lister = getattr(state, f"list_{kind}", None)
    if lister is None:
        raise ValueError(
            f"unknown state kind {kind!r}; expected one of nodes, workers, tasks, actors, "
            "objects, placement_groups, jobs"
        )
    return [dict(r) for r in lister(detail=True, limit=limit)]


def timeline_events() -> list[dict]:
    """The task timeline as Chrome trace events (``carme.timeline()``)."""
    from ._api import timeline

    return list(timeline() or [])
