"""Discovery of embedded clusters: the notes a driver leaves so tools on this machine find them.

Theory of operation
-------------------
An embedded cluster (``carme.init()`` with no address, e.g. inside a notebook
kernel) listens only on a Unix socket with a token only its driver knows. So
that a watcher on this machine (the JupyterLab server extension, the CLI) can
show it, the driver writes one small JSON note per embedded cluster,
``<state dir>/embedded/<daemon pid>.json``, mode 0600 in the 0700 state directory
(the same place and trust as ``carme start``'s cluster files, see
`carme.cluster`). The note holds the daemon's Unix address, its token, its PID
and that process's start time, the driver's PID, and the notebook path Jupyter
gives the kernel (``JPY_SESSION_NAME``) when there is one.

The driver removes its note at ``carme.shutdown()``. A driver killed before it
could (Jupyter kills a kernel's whole process group) leaves a stale note: every
reader validates each note (fields and types, and that the daemon PID still
names the same process, by start time, so a reused PID is not mistaken for it)
and deletes notes whose daemon is gone. Writing is best effort: a note that
cannot be written costs discovery, never the cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import psutil

from ._files import write_private

__all__ = ["advertise", "embedded_dir", "list_embedded", "read_embedded", "withdraw"]

VERSION = 1
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "version": int, "address": str, "token": str, "pid": int, "pid_started": (int, float),
    "driver_pid": int, "session_dir": str, "node_id": str, "started": (int, float),
    "resources": dict,
}


def embedded_dir() -> str:
    from .cluster import state_dir

    d = os.path.join(state_dir(), "embedded")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def process_started(pid: int) -> float | None:
    """The start time of process `pid`, or None if there is none (or a zombie)."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p.create_time()
    except psutil.Error:
        return None


def same_process(pid: int, started: float | None) -> bool:
    """Whether `pid` runs (not a zombie) and, when `started` (its start time, as noted
    when it began) is known, is still that process. A pid written down by a process
    that died without removing the note can be handed to another process later (pids
    wrap at 32,768 on many machines): ending that one would kill a stranger."""
    now = process_started(pid)
    return now is not None and (started is None or abs(now - started) <= 1.0)


def advertise(*, address: str, token: bytes, pid: int, session_dir: str, node_id: str,
              resources: dict[str, float]) -> str | None:
    """Write the note for an embedded cluster whose daemon runs as `pid`; its path, or None."""
    started = process_started(pid)
    if started is None:
        return None
    note = {
        "version": VERSION, "address": address, "token": token.hex(), "pid": pid,
        "pid_started": started, "driver_pid": os.getpid(), "session_dir": session_dir,
        "node_id": node_id, "started": time.time(), "resources": dict(resources),
        "notebook": os.environ.get("JPY_SESSION_NAME") or None,
    }
    try:
        path = os.path.join(embedded_dir(), f"{pid}.json")
        write_private(path, json.dumps(note))
    except OSError:
        return None
    return path


def withdraw(path: str | None) -> None:
    """Remove a note `advertise` wrote (nothing if it is gone already)."""
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _valid(note: object) -> dict[str, Any] | None:
    """The note if every field has its type and the daemon still runs; else None."""
    if not isinstance(note, dict) or note.get("version") != VERSION:
        return None
    for key, kind in _FIELDS.items():
        value = note.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return None
    if not note["address"].startswith("unix:"):
        return None
    try:
        bytes.fromhex(note["token"])
    except ValueError:
        return None
    if not same_process(note["pid"], note["pid_started"]):
        return None
    return note


def read_embedded(pid: int) -> dict[str, Any] | None:
    """The validated note (with its token) of the embedded cluster whose daemon is `pid`."""
    path = os.path.join(embedded_dir(), f"{int(pid)}.json")
    try:
        with open(path) as f:
            note = json.load(f)
    except (OSError, ValueError):
        return None
    return _valid(note)


def list_embedded() -> list[dict[str, Any]]:
    """Live embedded clusters on this machine, newest first, without tokens; stale notes removed."""
    d = embedded_dir()
    out = []
    for name in os.listdir(d):
        stem, ext = os.path.splitext(name)
        if ext != ".json" or not stem.isdigit():
            continue
        path = os.path.join(d, name)
        try:
            with open(path) as f:
                raw = json.load(f)
        except (OSError, ValueError):
            raw = None
        note = _valid(raw)
        if note is None or note["pid"] != int(stem):
            withdraw(path)
            continue
        note = {k: v for k, v in note.items() if k != "token"}
        out.append(note)
    return sorted(out, key=lambda n: -n["started"])
