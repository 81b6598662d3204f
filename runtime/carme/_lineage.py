"""Lineage reconstruction: a lost task return is made again by re-running its task.

Theory of operation. The owner of a task's returns (the process that called
`.remote()`) keeps the task's spec — its function, pickled arguments and argument refs —
on each return's `LocalObject` (`lineage`) for as long as a reference to one of them
lives, when the task finished with a value in a node's store and has retries left
(`max_retries`). The argument refs it keeps hold those arguments alive too, as Ray's
lineage pinning does. Values small enough to travel inline live in the owner itself and
cannot be lost this way.

When reading such an object fails because the node whose store held it is gone
(`ObjectLostError` from the pull), `plan_rebuild` decides, under the owner's lock, what
to run again: the task that made it and, first, each task that made one of its
arguments whose copy was on the same dead node (recursively). It marks those tasks'
returns pending again, so waiters block until the new values come, and returns the
specs in the order to resubmit them; each re-run takes one of its task's retries.
Objects that cannot be rebuilt fail with the error that says why: made by `put()` or
by an actor method (no lineage), or the task's retries are spent.

Pure logic: no sockets, threads or locks; `TaskSubmitter.rebuild` (`_submit.py`) is the
shell that holds the lock around it and resubmits.
"""

from __future__ import annotations

from typing import Any

from . import exceptions as exc
from ._messages import SHARED


def is_put(oid: bytes) -> bool:
    """Objects made by `put()` have return index 0 (`_ids.put_id`)."""
    return oid[-4:] == b"\x00\x00\x00\x00"


def home_of(payload: tuple | None) -> str | None:
    """The node whose store holds a shared-memory payload (None: inline, or unknown)."""
    if payload is not None and payload[0] == SHARED and len(payload) > 4:
        return payload[4]  # type: ignore[no-any-return]
    return None


def keeps_lineage(spec: Any, payloads: list) -> bool:
    """Whether a finished task's spec is kept on its returns: a normal task (not an actor
    call, not a generator) that succeeded, put a value in a node's store, and may run
    again."""
    return (spec.actor_id is None and spec.stream is None and spec.retries_left != 0
            and bool(payloads) and not payloads[0][3]
            and any(p[0] == SHARED for p in payloads))


def plan_rebuild(objects: dict[bytes, Any], oid: bytes, lost: exc.ObjectLostError) -> list:
    """The specs to resubmit, in order (lost arguments' tasks first), to make `oid` again,
    their returns marked pending; [] when it is being rebuilt already. Raises the error
    to report when it cannot be rebuilt."""
    entry = objects.get(oid)
    if entry is None or not entry.owned:
        raise lost  # a borrowed object: only its owner can rebuild it
    if entry.payload is None:
        return []  # already pending again (another reader started the rebuild)
    dead = home_of(entry.payload)
    spec = entry.lineage
    if spec is None or spec.retries_left == 0:  # (rebuilds spend the task's retries)
        raise _cannot(oid, entry, dead, lost)
    plan: list = []
    _plan(objects, spec, dead, plan, set())
    return plan


def _plan(objects: dict[bytes, Any], spec: Any, dead: str | None, plan: list, seen: set) -> None:
    if id(spec) in seen:
        return
    seen.add(id(spec))
    for ref in spec.arg_refs:
        arg = objects.get(ref._id)
        if (arg is not None and arg.owned and arg.lineage is not None
                and arg.lineage.retries_left != 0
                and arg.payload is not None and home_of(arg.payload) == dead):
            _plan(objects, arg.lineage, dead, plan, seen)
    for rid in spec.return_ids:
        ret = objects.get(rid)
        if ret is not None:
            ret.payload = None
            ret.home = None
            ret.fetching = False
    plan.append(spec)


def _cannot(oid: bytes, entry: Any, dead: str | None, lost: exc.ObjectLostError) -> exc.ObjectLostError:
    where = f"node {dead[:12]}" if dead else "its node"
    if is_put(oid):
        return exc.ObjectReconstructionFailedError(oid.hex(), detail=(
            f"Its only copy was in the object store of {where}, which is gone. It was made "
            f"by put(), so it cannot be rebuilt: only task returns are, by running their "
            f"task again. Put values you cannot afford to lose from a process on a node that "
            f"stays up (the driver's), or make them with a task.\n\n(the pull said: {lost.detail})"))
    if entry.task_name and not entry.actor_return:
        return exc.ObjectReconstructionFailedMaxAttemptsExceededError(oid.hex(), detail=(
            f"Its only copy was in the object store of {where}, which is gone, and the task "
            f"that made it ({entry.task_name!r}) has no retries left to run again. Give it "
            f"retries with `@carme.remote(max_retries=N)` or `.options(max_retries=N)` "
            f"(default 3).\n\n(the pull said: {lost.detail})"))
    return exc.ObjectReconstructionFailedError(oid.hex(), detail=(
        f"Its only copy was in the object store of {where}, which is gone. It was returned "
        f"by an actor method ({entry.task_name!r}), which cannot be run again to rebuild "
        f"it.\n\n(the pull said: {lost.detail})"))
