"""What a notebook layer may use of carme's runtime: one small, stable surface.

The carme kernel (``carme_kernel``) and anything like it reach carme's driver
only through these names; the modules behind them are private and change.

Hooks into this process's driver (set before or after ``carme.init()``; they
apply once it runs, and survive ``shutdown()``/``init()``):

* :func:`set_task_tag_provider` ``(fn)`` — ``fn()`` is called on every submission
  from this process (task, actor creation, actor call); the JSON-able dict it
  returns is the task's *tag*: ``cell`` in state rows and in the timeline, and it
  comes back with the task's output lines. ``None`` removes it.
* :func:`set_log_handler` ``(fn)`` — ``fn(tag, stream, text)`` receives what remote
  work launched from this process prints, from a background thread, as it
  arrives. ``None`` restores the default (print with a ``(name pid=...)`` prefix).
* :func:`set_get_hook` ``(fn)`` / :func:`get_hook` — ``carme.get(refs)`` runs inside
  ``with fn(refs):`` (a kernel shows a progress bar for long gets).

Questions and actions on the driver:

* :func:`cancel_tagged` ``(match, force=False)`` — cancel every unfinished task and
  actor call submitted by this process whose tag satisfies ``match(tag)``.
* :func:`ref_states` ``(refs)`` — ``"pending"``, ``"finished"`` or ``"failed"`` per
  ref, without fetching values.
* :func:`invalidate_exports` ``(values)`` — the ``@carme.remote`` functions and
  classes among ``values`` ship their current code on their next call (after a
  notebook redefined a helper they use).
* :func:`state_rows` ``(kind)`` — ``carme.util.state.list_<kind>(detail=True)`` as
  plain dicts; :func:`timeline_events` — the timeline as Chrome trace events.
* :func:`is_remote_object` ``(value)`` — True for an ``ObjectRef`` or
  ``ObjectRefGenerator`` (a notebook keeps those out of its output history).
* :func:`short_object_id` ``(object_id)`` — the short form of an object id that
  every table of objects shows (widgets, ``%carme objects``, the side panel),
  with the full id on hover.

Which cluster to join (also used by ``carme.init()`` given no address):

* :func:`default_address` ``()`` — a :class:`Choice` ``(address, source, env)``:
  ``CARME_ADDRESS``, else the side panel's selection (the file named by
  ``CARME_SELECTION_FILE``, read now), else ``None`` (embedded);
  :func:`write_selection` ``(path, address, env)`` writes that file (0600, atomic).
"""

from __future__ import annotations

from typing import Any

from ._hooks import (
    GetHook,
    LogHandler,
    TagProvider,
    cancel_tagged,
    get_hook,
    invalidate_exports,
    ref_states,
    set_get_hook,
    set_log_handler,
    set_task_tag_provider,
    state_rows,
    timeline_events,
)
from ._objects import ObjectRef, ObjectRefGenerator
from ._selection import SELECTION_ENV, Choice, default_address, write_selection

__all__ = [
    "Choice",
    "GetHook",
    "LogHandler",
    "SELECTION_ENV",
    "TagProvider",
    "cancel_tagged",
    "default_address",
    "get_hook",
    "invalidate_exports",
    "is_remote_object",
    "ref_states",
    "set_get_hook",
    "set_log_handler",
    "set_task_tag_provider",
    "short_object_id",
    "state_rows",
    "timeline_events",
    "write_selection",
]


def is_remote_object(value: Any) -> bool:
    """True if ``value`` is a carme ``ObjectRef`` or ``ObjectRefGenerator``."""
    return isinstance(value, (ObjectRef, ObjectRefGenerator))


_HEX = frozenset("0123456789abcdef")


def short_object_id(object_id: str) -> str:
    """The part of ``object_id`` (hex) that tells objects apart, for a table cell.

    A plain prefix does not: every object a process makes starts with the same
    characters. The rule, by the id's layout:

    * carme (40 hex: 16 of the process, 16 of a per-process counter, 8 of the
      return index): the process's first 6, ``…``, the counter in hex without
      leading zeros, and ``#INDEX`` for a task's return (a ``put`` has index 0
      and no suffix): ``"d8d275…4#2"`` is return 2 of task 4 of process d8d275.
    * Ray (56 hex: a 48-hex task id, then the 8-hex index): the task id's first
      12 (its unique part), ``…``, ``#INDEX``: ``"0a1b2c3d4e5f…#1"``.
    * anything else: as it is up to 20 characters, else the first 8, ``…``, the
      last 8.
    """
    text = str(object_id or "")
    if len(text) in (40, 56) and set(text) <= _HEX:
        index = int(text[-8:], 16)
        suffix = f"#{index}" if index or len(text) == 56 else ""
        if len(text) == 40:
            return f"{text[:6]}…{text[16:32].lstrip('0') or '0'}{suffix}"
        return f"{text[:12]}…{suffix}"
    if len(text) <= 20:
        return text
    return f"{text[:8]}…{text[-8:]}"
