"""The per-task messages between a submitter and the worker that runs its tasks.

PUSH (a task) and ACTOR_CALL (an actor method call) go from a submitter (a driver, or a
worker submitting nested tasks) straight to a leased worker; RESULT (a finished task's
return payloads) and ITEM (one value of a streaming generator) come back on the same
connection. The node daemon is not on this path.

These four are on the path of every task, so they are `NamedTuple`s rather than the
`_messages.Msg` classes the daemon-bound messages use: on the wire each is a plain tuple
whose first item is its kind (`Push(...).wire()`), like every carme message; the
receiver turns it back into its class with `read`, which checks the kind, the arity and
every field the receiver acts on or stores (types, payload shapes, id lists, the
result's info) and raises `BadMessage` naming the field. Both ends read fields by name.
Building a message costs about 0.3 µs and reading one a few µs; pickling a plain tuple
instead of a NamedTuple instance saves ~3 µs per message (measured on the 2-core VM).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

from ._messages import (
    ACTOR_CALL,
    INLINE,
    ITEM,
    LOG,
    PUSH,
    RESULT,
    BadMessage,
    Log,
    _short,
    check_id_list,
    check_payload,
    read,
)

_OPT_STR = (str, type(None))
_OPT_BYTES = (bytes, type(None))
_RETURNS = (int, str)
_SEQ = (list, tuple)  # a call without ref arguments sends a shared empty tuple of positions
# what a RESULT's info may say, and of which type
# (which worker, process and node ran it its submitter knows from the lease or actor)
_INFO: dict[str, tuple[type, ...]] = {
    "start": (float, int), "end": (float, int), "error_type": (str,), "error_message": (str,),
    "retryable": (bool,),
}


# field types of each message, in wire order (exact types: a bool is not an int here)
_PUSH_TYPES = ((int,), (bytes,), (bytes,), _OPT_BYTES, (tuple,), _SEQ, (list,), _RETURNS, (bool,), (str,), _OPT_STR, (list,), (int,), (dict,), _OPT_STR, (int,), (bool,))
_ACTOR_CALL_TYPES = ((int,), (bytes,), (str,), (tuple,), _SEQ, (list,), _RETURNS, (bool,), (str,), (int,))
_RESULT_TYPES = ((int,), (bytes,), (list,), (list,), (dict,))
_ITEM_TYPES = ((int,), (bytes,), (int,), (tuple,), (list,))


def _fast_check(code: int, want: tuple[tuple[type, ...], ...]) -> Callable[[Any], bool]:
    """A function that says whether a raw message has the arity, kind and exact field
    types of `want`: the tuple of its field types is looked up in the set of every
    allowed combination (a handful per kind). A loop over the fields costs a few µs per
    message on the per-task path; this well under one, and it is built without
    generating code (that cost ~1 ms at every import of carme)."""
    allowed = frozenset(itertools.product(*want))
    n = len(want)

    def ok(msg: Any) -> bool:
        return (type(msg) is tuple and len(msg) == n and msg[0] == code
                and tuple(map(type, msg)) in allowed)
    return ok


def _typed(cls: Any, kind: str, code: int, want: tuple[tuple[type, ...], ...], msg: Any) -> Any:
    """`msg` as a `cls`, after checking its arity, its kind and the exact types of its
    fields (a bool is not an int here)."""
    if cls._ok(msg):
        return tuple.__new__(cls, msg)
    # something is wrong: find what, and say so
    if type(msg) is not tuple or len(msg) != len(want):
        raise BadMessage(f"{kind} must be a tuple of {len(want)} fields "
                         f"({', '.join(cls._fields)}), not {_short(msg)}")
    for name, value, types in zip(cls._fields, msg, want, strict=True):
        if type(value) not in types:
            raise BadMessage(f"{kind}.{name} must be {' or '.join(t.__name__ for t in types)}, "
                             f"not {type(value).__name__} {_short(value)}")
    raise BadMessage(f"{kind}.kind must be {code}, not {msg[0]}")


def _check_args(kind: str, args: Any, ref_pos: list | tuple, resolved: list) -> None:
    """The pickled (args, kwargs), where the ref arguments go, and their resolved payloads."""
    check_payload(kind, args)
    if args[0] != INLINE:
        raise BadMessage(f"{kind}.args must be an inline payload, not {_short(args)}")
    if len(ref_pos) != len(resolved):
        raise BadMessage(f"{kind} has {len(ref_pos)} ref positions but {len(resolved)} resolved refs")
    for pos in ref_pos:
        if (type(pos) not in (tuple, list) or len(pos) != 2 or type(pos[0]) is not bool
                or type(pos[1]) is not (str if pos[0] else int)):
            raise BadMessage(f"{kind}.ref_pos must hold (False, index) or (True, keyword), "
                             f"not {_short(pos)}")
    for item in resolved:
        if (type(item) not in (tuple, list) or len(item) not in (2, 3) or type(item[0]) is not bytes
                or (len(item) == 3 and item[2] is not True)):
            raise BadMessage(f"{kind}.resolved must hold (object id, payload) or (object id, "
                             f"payload, True), not {_short(item)}")
        check_payload(kind, item[1])


def _check_returns(kind: str, num_returns: Any) -> None:
    if type(num_returns) is int:
        if num_returns < 0:
            raise BadMessage(f"{kind}.num_returns must not be negative, not {num_returns}")
    elif num_returns not in ("dynamic", "streaming"):
        raise BadMessage(f"{kind}.num_returns must be a count, 'dynamic' or 'streaming', "
                         f"not {_short(num_returns)}")


class Push(NamedTuple):
    """A task for a leased worker. `fn_blob` is sent once per lease and function."""

    kind: int
    task_id: bytes
    fn_key: bytes
    fn_blob: bytes | None
    args: tuple              # inline payload of (args, kwargs) with the ref arguments blanked
    ref_pos: list | tuple    # (is_keyword, index or keyword) of each ref argument
    resolved: list           # (object id, payload[, True: mapped by the submitter]) of each ref argument
    num_returns: int | str
    streaming: bool
    name: str
    lease_id: str | None
    gpu_ids: list
    attempt: int
    shape: dict              # the task's resources
    pg_id: str | None        # its placement group
    max_calls: int
    pg_capture: bool         # its children go into its placement group


    def wire(self) -> tuple:
        return tuple(self)

    @classmethod
    def read(cls, msg: Any) -> Push:
        m: Push = _typed(cls, "PUSH", PUSH, _PUSH_TYPES, msg)
        _check_args("PUSH", m.args, m.ref_pos, m.resolved)
        _check_returns("PUSH", m.num_returns)
        for g in m.gpu_ids:
            if type(g) not in (int, str):
                raise BadMessage(f"PUSH.gpu_ids must hold GPU ids, not {_short(g)}")
        for k, v in m.shape.items():
            if type(k) is not str or type(v) not in (int, float) or not math.isfinite(v) or v < 0:
                raise BadMessage(f"PUSH.shape must map resource names to amounts, not {_short(m.shape)}")
        return m


class ActorCall(NamedTuple):
    """A method call for an actor's worker."""

    kind: int
    task_id: bytes
    method: str
    args: tuple
    ref_pos: list | tuple
    resolved: list
    num_returns: int | str
    streaming: bool
    name: str
    attempt: int


    def wire(self) -> tuple:
        return tuple(self)

    @classmethod
    def read(cls, msg: Any) -> ActorCall:
        m: ActorCall = _typed(cls, "ACTOR_CALL", ACTOR_CALL, _ACTOR_CALL_TYPES, msg)
        _check_args("ACTOR_CALL", m.args, m.ref_pos, m.resolved)
        _check_returns("ACTOR_CALL", m.num_returns)
        return m


class Result(NamedTuple):
    """A finished task: one payload per return, the ids each return holds, and what the
    worker saw (start, end; error type and message; retryable)."""

    kind: int
    task_id: bytes
    payloads: list
    contained: list
    info: dict


    def wire(self) -> tuple:
        return tuple(self)

    @classmethod
    def read(cls, msg: Any) -> Result:
        m: Result = _typed(cls, "RESULT", RESULT, _RESULT_TYPES, msg)
        for p in m.payloads:
            check_payload("RESULT", p)
        if len(m.contained) > len(m.payloads):
            raise BadMessage(f"RESULT has {len(m.contained)} contained-id lists for "
                             f"{len(m.payloads)} payloads")
        for ids in m.contained:
            check_id_list("RESULT", "contained", ids)
        for k, v in m.info.items():
            types = _INFO.get(k)
            if types is None:
                raise BadMessage(f"RESULT.info has an unknown field {_short(k)}; "
                                 f"known: {', '.join(_INFO)}")
            if type(v) not in types or (type(v) is float and not math.isfinite(v)):
                raise BadMessage(f"RESULT.info[{k!r}] must be {' or '.join(t.__name__ for t in types)}, "
                                 f"not {_short(v)}")
        return m


class Item(NamedTuple):
    """One value of a streaming generator, as the index-th object of its task."""

    kind: int
    task_id: bytes
    position: int            # 0 for the first value
    payload: tuple
    contained: list


    def wire(self) -> tuple:
        return tuple(self)

    @classmethod
    def read(cls, msg: Any) -> Item:
        m: Item = _typed(cls, "ITEM", ITEM, _ITEM_TYPES, msg)
        if m.position < 0:
            raise BadMessage(f"ITEM.position must not be negative, not {m.position}")
        check_payload("ITEM", m.payload)
        check_id_list("ITEM", "contained", m.contained)
        return m


Push._ok = _fast_check(PUSH, _PUSH_TYPES)  # type: ignore[attr-defined]
ActorCall._ok = _fast_check(ACTOR_CALL, _ACTOR_CALL_TYPES)  # type: ignore[attr-defined]
Result._ok = _fast_check(RESULT, _RESULT_TYPES)  # type: ignore[attr-defined]
Item._ok = _fast_check(ITEM, _ITEM_TYPES)  # type: ignore[attr-defined]


def read_from_worker(msg: Any) -> Result | Item | Log:
    """What a submitter reads from a worker's connection: RESULT, ITEM or LOG, typed."""
    kind = msg[0] if type(msg) is tuple and msg else None
    if kind == RESULT:
        return Result.read(msg)
    if kind == ITEM:
        return Item.read(msg)
    if kind == LOG:
        log: Log = read(msg)
        return log
    raise BadMessage(f"a submitter accepts RESULT, ITEM and LOG from a worker, not {_short(msg)}")
