"""Messages spoken between carme processes, and the typed, checked form the node daemon reads.

On the wire a message is a tuple whose first item is its kind (the constants below).
Everything the node daemon receives is decoded at the boundary by `decode` into one small
class per kind (`Lease`, `Alloc`, `Export`, ...), whose fields are checked against
their declared types: a message of the wrong length, a field of the wrong type, a
non-finite number or a malformed object payload or task event is refused there with a
`BadMessage` that says which field was wrong and what came — nothing of it is stored.

Kinds:
driver/worker -> node daemon (requests carry a request id; the daemon answers REPLY):
    HELLO, LEASE, RETURN_LEASE, ALLOC, EXPORT, INCREF, DECREF, GET_OBJECT, FN_PUT, FN_GET,
    CREATE_ACTOR, ACTOR_INFO, KILL_ACTOR, KILL_WORKER, BLOCKED, UNBLOCKED, EVENTS, STATE,
    PG_CREATE, PG_REMOVE, PG_INFO, PG_WAIT, STORE_STATS, NAMED_ACTORS, GET_REMOTE,
    NODE_ADDRESS, WORKER_DEATH
node daemon -> node daemon, on a connection of its own: PULL_OBJECT (the connection then
    carries the object's bytes, `_transfer.py`, and closes)
daemon -> worker (its control socketpair): RUN_ACTOR, EXIT
worker -> daemon: WORKER_READY, ACTOR_READY, ACTOR_FAILED
submitter -> worker: PUSH, ACTOR_CALL, CANCEL
worker -> submitter: RESULT, ITEM (streaming generator value), LOG
daemon -> driver: LOG (output written straight to a worker's file descriptors), ACTOR_DIED
node daemon -> node daemon (framed): PG_RESERVE (bundles the placing daemon put on that
    node), WATCH (tell me when these objects I copied go), FREED (they went)

Messages others receive are typed too where they are cheap to type: REPLY, RUN_ACTOR,
EXIT, LOG, CANCEL and PEER are built from their classes (`Reply(...).wire()`) and read at
their receivers with `read` (same checks as `decode`). They are registered apart from the
daemon-bound kinds (`inbound=False`), so the daemon still refuses them as unknown. The
per-task messages between a submitter and a worker (PUSH, ACTOR_CALL, RESULT, ITEM) are
typed in `_task_messages` (NamedTuples, read and checked by their receivers; they are on
the path of every task).

A failed REPLY carries an exception instance (`carme.exceptions`, picklable, with its own
fields); older senders inside a process may still use a `(class name, message)` pair,
which `carme._rpc.error_from_reply` understands too.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

# Task-event constants, from `_events` on first use (this module is imported by every
# carme process; the event log only by the daemon and the head).
EVENT_STATES: tuple[str, ...] = ()
_EVENT_STATES: frozenset[str] = frozenset()
_EVENT_ATTRS: frozenset[str] = frozenset()


def _load_event_constants() -> None:
    global EVENT_STATES, _EVENT_STATES, _EVENT_ATTRS
    from ._events import _ATTRS, STATES
    EVENT_STATES, _EVENT_STATES, _EVENT_ATTRS = STATES, frozenset(STATES), _ATTRS

REPLY = 0
HELLO = 1
LEASE = 2
RETURN_LEASE = 3
ALLOC = 4
EXPORT = 5
INCREF = 6
DECREF = 7
GET_OBJECT = 8
FN_PUT = 9
FN_GET = 10
CREATE_ACTOR = 11
ACTOR_INFO = 12
KILL_ACTOR = 13
KILL_WORKER = 14
BLOCKED = 15
UNBLOCKED = 16
EVENTS = 17
STATE = 18
PG_CREATE = 19
PG_REMOVE = 20
PG_INFO = 21
PG_WAIT = 22
STORE_STATS = 23
NAMED_ACTORS = 24
GET_REMOTE = 25   # a local copy of an object whose primary is on another node
NODE_ADDRESS = 26
WORKER_DEATH = 27  # why did this node's worker die? (the memory monitor's reason, or None)
MAP_OBJECT = 28    # a process is about to read an object: where is it now? (restored if spilled)
UNMAP_OBJECT = 29  # ... and is done with it (no views left)
PULL_OBJECT = 30   # another node's daemon copies an object of ours (`_transfer.py`)

RUN_ACTOR = 40
EXIT = 41
WORKER_READY = 42
ACTOR_READY = 43
ACTOR_FAILED = 44

PUSH = 60
ACTOR_CALL = 61
CANCEL = 62
RESULT = 63
ITEM = 64
LOG = 65
ACTOR_DIED = 66
PEER = 67  # submitter -> worker, first message: who is calling (its worker id)

# node daemon -> node daemon, on the framed connection one daemon opens to another
PG_RESERVE = 31  # reserve these bundles of a group here ({}: the group went)
WATCH = 32  # tell me (FREED) when these objects, which I copied, are freed here
FREED = 33  # these objects you copied (WATCH) were freed: drop your copies

# Object payloads: ("i", pickled_bytes, [out-of-band buffers as bytes], is_error) inline,
# or ("s", offset, size, is_error, node_id) in a node's shared-memory store.
INLINE = "i"
SHARED = "s"

MAX_BATCH = 1_000_000  # ids in one INCREF/DECREF, events in one EVENTS


class BadMessage(ValueError):
    """A message that crossed a process boundary did not have the expected shape."""


# ---------------------------------------------------------------------------- checkers
def _name(t: Any) -> str:
    return t.__name__ if isinstance(t, type) else str(t)


def _check(kind: str, field: str, value: Any, want: tuple[type, ...], optional: bool) -> None:
    if value is None:
        if optional:
            return
    elif isinstance(value, want) and not (isinstance(value, bool) and bool not in want
                                          and int in want):
        if isinstance(value, float) and not math.isfinite(value):
            raise BadMessage(f"{kind}.{field} must be a finite number, not {value!r}")
        return
    raise BadMessage(f"{kind}.{field} must be {' or '.join(_name(t) for t in want)}"
                     f"{' or None' if optional else ''}, not {type(value).__name__} {_short(value)}")


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


def check_id_list(kind: str, field: str, ids: Any) -> None:
    if not isinstance(ids, list) or len(ids) > MAX_BATCH:
        raise BadMessage(f"{kind}.{field} must be a list of object ids (bytes), not {_short(ids)}")
    for oid in ids:
        if not isinstance(oid, bytes):
            raise BadMessage(f"{kind}.{field} must hold object ids (bytes), not {_short(oid)}")


def check_payload(kind: str, payload: Any) -> None:
    """An object payload: INLINE (bytes, [buffers] or () when none, is_error) or SHARED
    (offset, size, is_error, node_id) with non-negative integers."""
    if not isinstance(payload, tuple) or not payload:
        raise BadMessage(f"{kind}.payload must be a payload tuple, not {_short(payload)}")
    if payload[0] == INLINE:
        if (len(payload) == 4 and isinstance(payload[1], (bytes, bytearray, memoryview))
                and type(payload[2]) in (list, tuple) and isinstance(payload[3], bool)):
            return
    elif payload[0] == SHARED:
        if (len(payload) in (4, 5) and all(type(x) is int and x >= 0 for x in payload[1:3])
                and isinstance(payload[3], bool)
                and (len(payload) == 4 or isinstance(payload[4], str))):
            return
    raise BadMessage(f"{kind}.payload is malformed: expected ('i', bytes, [buffers], is_error) or "
                     f"('s', offset, size, is_error, node_id), not {_short(payload)}")


def check_event(ev: Any) -> tuple[str, str, float, dict]:
    """A task event (task_id hex, state, timestamp, attrs) as recorded by `TaskEventLog`.
    (On the daemon's hot path: the common case is a handful of type checks.)"""
    n = len(ev) if type(ev) in (tuple, list) else 0
    if n == 4:
        task_id, state, ts, attrs = ev
        if attrs is None:
            attrs = {}
    elif n == 3:
        task_id, state, ts = ev
        attrs = {}
    else:
        raise BadMessage(f"a task event must be (task_id, state, timestamp[, attrs]), not {_short(ev)}")
    if not _EVENT_STATES:
        _load_event_constants()
    if type(task_id) is not str or not task_id:
        raise BadMessage(f"a task event's task_id must be a non-empty string, not {_short(task_id)}")
    if state not in _EVENT_STATES:
        raise BadMessage(f"a task event's state must be one of {', '.join(EVENT_STATES)}, not {_short(state)}")
    if type(ts) is not float:
        if type(ts) is not int:
            raise BadMessage(f"a task event's timestamp must be a number of seconds, not {_short(ts)}")
        ts = float(ts)
    if ts - ts != 0.0:  # inf or nan
        raise BadMessage(f"a task event's timestamp must be a finite number of seconds, not {ts!r}")
    if type(attrs) is not dict:
        raise BadMessage(f"a task event's attributes must be a dict, not {_short(attrs)}")
    if attrs:
        if not attrs.keys() <= _EVENT_ATTRS:
            unknown = sorted(map(str, set(attrs) - _EVENT_ATTRS))
            raise BadMessage(f"a task event has unknown attributes {unknown}; "
                             f"expected some of {', '.join(sorted(_EVENT_ATTRS))}")
        attempt = attrs.get("attempt")
        if attempt is not None and (type(attempt) is not int or attempt < 0):
            raise BadMessage(f"a task event's attempt must be a non-negative integer, not {_short(attempt)}")
        for name in ("submitted", "started"):
            t = attrs.get(name)
            if t is not None and (type(t) not in (float, int) or t - t != 0):
                raise BadMessage(f"a task event's {name} must be a finite number of seconds, "
                                 f"not {_short(t)}")
    return task_id, state, ts, attrs


def check_events(events: Any) -> list[tuple[str, str, float, dict]]:
    if not isinstance(events, list) or len(events) > MAX_BATCH:
        raise BadMessage(f"EVENTS.events must be a list of task events, not {_short(events)}")
    return [check_event(ev) for ev in events]


# ---------------------------------------------------------------------------- messages
_BY_KIND: dict[int, type[Msg]] = {}      # what the node daemon accepts
_OTHERS: dict[int, type[Msg]] = {}       # what only others receive (see `read`)
_ANY = (object,)


class Msg:
    """Base of the typed daemon-bound messages. Plain classes with an `__init__` made
    from the field list (not dataclasses: generating ~30 of those at import costs tens
    of milliseconds in every carme process)."""

    wire_kind: ClassVar[int]
    # (name, types, optional, required) per field, in wire order
    fields: ClassVar[tuple[tuple[str, tuple[type, ...], bool, bool], ...]]
    n_required: ClassVar[int]
    _names: ClassVar[tuple[str, ...]]
    _defaults: ClassVar[dict[str, Any]]

    def __init__(self, *args: Any) -> None:
        d = self.__dict__
        n = len(args)
        for i, name in enumerate(self._names):
            d[name] = args[i] if i < n else self._defaults[name]

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={self.__dict__[n]!r}" for n in self._names)
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__

    __hash__ = None  # type: ignore[assignment]

    def validate(self) -> None:
        """Checks beyond the field types (overridden where a message has them)."""

    def wire(self) -> tuple:
        """The tuple that goes on the wire (kind first, fields in order)."""
        d = self.__dict__
        return (self.wire_kind, *[d[n] for n in self._names])


def message(msg_kind: int, /, *, inbound: bool = True, **types: Any) -> Any:
    """Register a class (fields as annotations, defaults as class attributes) as the typed
    form of `msg_kind`. `types` maps a field to a type or a tuple of types, `None` among
    them allowing None; a field left out of `types` is not checked here (`validate` may).
    `inbound=False`: a kind the node daemon never accepts (read by others with `read`)."""

    def deco(cls: type[Msg]) -> type[Msg]:
        spec = []
        names = []
        defaults: dict[str, Any] = {}
        n_required = 0
        for name in cls.__dict__.get("__annotations__", {}):
            t = types.get(name)
            ts = t if isinstance(t, tuple) else (t,)
            optional = None in ts or type(None) in ts
            ts = tuple(x for x in ts if x is not None and x is not type(None)) or _ANY
            if t is None:
                ts, optional = _ANY, True
            required = name not in cls.__dict__
            if not required:
                defaults[name] = cls.__dict__[name]
            n_required += required
            names.append(name)
            spec.append((name, ts, optional, required))
        cls.wire_kind = msg_kind
        cls.fields = tuple(spec)
        cls.n_required = n_required
        cls._names = tuple(names)
        cls._defaults = defaults
        (_BY_KIND if inbound else _OTHERS)[msg_kind] = cls
        return cls

    return deco


def decode(msg: Any, _kinds: dict[int, type[Msg]] = _BY_KIND) -> Msg:
    """The typed, checked form of a wire tuple received by the node daemon."""
    if not isinstance(msg, tuple) or not msg or type(msg[0]) is not int:
        raise BadMessage(f"a message must be a tuple starting with its kind, not {_short(msg)}")
    cls = _kinds.get(msg[0])
    if cls is None:
        raise BadMessage(f"unknown message kind {msg[0]}")
    args = msg[1:]
    name = cls.__name__
    if not cls.n_required <= len(args) <= len(cls.fields):
        raise BadMessage(f"{name} takes {cls.n_required}..{len(cls.fields)} fields, not {len(args)}")
    for (field, ts, optional, _req), value in zip(cls.fields, args, strict=False):
        if ts is not _ANY:
            _check(name, field, value, ts, optional)
    out: Msg = cls(*args)
    out.validate()
    return out


def read(msg: Any) -> Any:
    """The typed, checked form of a message a driver or worker receives (REPLY, RUN_ACTOR,
    EXIT, LOG, CANCEL, PEER)."""
    if type(msg) is tuple and msg and msg[0] == REPLY:
        return decode(msg)
    return decode(msg, _OTHERS)


def request_id(msg: Any) -> int | None:
    """The request id of a raw message that failed to decode, if it plainly has one."""
    if isinstance(msg, tuple) and len(msg) > 1 and type(msg[1]) is int:
        cls = _BY_KIND.get(msg[0]) if type(msg[0]) is int else None
        if cls is not None and cls.fields and cls.fields[0][0] == "req":
            return int(msg[1])
    return None


@message(REPLY, req=int, ok=bool)
class Reply(Msg):
    req: int
    ok: bool
    value: Any


@message(HELLO, req=int, role=str, pid=int, info=dict)
class Hello(Msg):
    req: int
    role: str
    pid: int
    info: dict

    def validate(self) -> None:
        wid = self.info.get("worker_id")
        if wid is not None and not isinstance(wid, str):
            raise BadMessage(f"Hello.info['worker_id'] must be a string, not {_short(wid)}")


@message(LEASE, req=int, shape=dict, runtime_env=(dict, None), desc=str, no_spill=bool, retriable=bool)
class Lease(Msg):
    req: int
    shape: dict
    strategy: Any
    runtime_env: dict | None
    desc: str
    no_spill: bool = False
    retriable: bool = True  # its tasks may run again (max_retries != 0): the memory monitor's order

    def validate(self) -> None:
        check_shape("Lease.shape", self.shape)
        check_strategy("Lease.strategy", self.strategy)


def check_shape(where: str, shape: Any) -> None:
    if not isinstance(shape, dict):
        raise BadMessage(f"{where} must be a dict of resource amounts, not {_short(shape)}")
    for k, v in shape.items():
        if (not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float))
                or not math.isfinite(v) or v < 0):
            raise BadMessage(f"{where}[{k!r}] must be a finite non-negative number, not {_short(v)}")


def check_strategy(where: str, strategy: Any) -> None:
    from ._scheduler import (
        BundleStrategy,
        DefaultStrategy,
        NodeAffinity,
        NodeLabel,
        SpreadStrategy,
    )
    if not isinstance(strategy, (DefaultStrategy, SpreadStrategy, NodeAffinity, NodeLabel, BundleStrategy)):
        raise BadMessage(f"{where} must be a scheduling strategy, not {_short(strategy)}")


@message(RETURN_LEASE, lease_id=str, worker_ok=bool)
class ReturnLease(Msg):
    lease_id: str
    worker_ok: bool


@message(ALLOC, req=int, oid=bytes, size=int, owner_pid=int, holder=(str, None))
class Alloc(Msg):
    req: int
    oid: bytes
    size: int
    owner_pid: int
    holder: str | None = None

    def validate(self) -> None:
        if self.size < 0:
            raise BadMessage(f"Alloc.size must be >= 0, not {self.size}")


@message(EXPORT, req=(int, None), oid=bytes, contained=list, add=int, type_name=str)
class Export(Msg):
    req: int | None
    oid: bytes
    payload: tuple | None
    contained: list
    add: int
    type_name: str

    def validate(self) -> None:
        if self.payload is not None:
            check_payload("Export", self.payload)
        check_id_list("Export", "contained", self.contained)
        if self.add < 0:
            raise BadMessage(f"Export.add must be >= 0, not {self.add}")


@message(INCREF, req=(int, None), oids=list, holder=(str, None), homes=(dict, None))
class Incref(Msg):
    """Holds on `oids`; `homes` names the node whose daemon has the entry of those that
    may live elsewhere (refs read out of a value that crossed nodes)."""
    req: int | None
    oids: list
    holder: str | None = None
    homes: dict | None = None

    def validate(self) -> None:
        check_id_list("Incref", "oids", self.oids)
        for oid, home in (self.homes or {}).items():
            if not isinstance(oid, bytes) or not isinstance(home, str) or len(home) > 64:
                raise BadMessage("Incref.homes must map object ids (bytes) to node ids (str), "
                                 f"not {type(oid).__name__} -> {type(home).__name__}")


@message(DECREF, oids=list, holder=(str, None))
class Decref(Msg):
    oids: list
    holder: str | None = None

    def validate(self) -> None:
        check_id_list("Decref", "oids", self.oids)


@message(GET_OBJECT, req=int, oid=bytes)
class GetObject(Msg):
    req: int
    oid: bytes


@message(FN_PUT, key=bytes, blob=bytes)
class FnPut(Msg):
    key: bytes
    blob: bytes


@message(FN_GET, req=int, key=bytes)
class FnGet(Msg):
    req: int
    key: bytes


@message(CREATE_ACTOR, req=int, actor_id=bytes, spec=dict)
class CreateActor(Msg):
    req: int
    actor_id: bytes
    spec: dict

    def validate(self) -> None:
        s = self.spec
        for key, t in (("class_name", str), ("placement_shape", dict)):
            if not isinstance(s.get(key), t):
                raise BadMessage(f"CreateActor.spec[{key!r}] must be {t.__name__}, not {_short(s.get(key))}")
        check_shape("CreateActor.spec['placement_shape']", s["placement_shape"])
        check_strategy("CreateActor.spec['strategy']", s.get("strategy"))
        mr = s.get("max_restarts", 0)
        if type(mr) is not int or mr < -1:
            raise BadMessage(f"CreateActor.spec['max_restarts'] must be an integer >= -1, not {_short(mr)}")
        for key in ("name", "namespace"):
            if s.get(key) is not None and not isinstance(s[key], str):
                raise BadMessage(f"CreateActor.spec[{key!r}] must be a string or None, not {_short(s[key])}")


@message(ACTOR_INFO, req=int, actor_id=(bytes, None), name=(str, None), namespace=(str, None), wait=bool)
class ActorInfo(Msg):
    req: int
    actor_id: bytes | None
    name: str | None
    namespace: str | None
    wait: bool


@message(KILL_ACTOR, actor_id=bytes, no_restart=bool)
class KillActor(Msg):
    actor_id: bytes
    no_restart: bool


@message(KILL_WORKER, worker_id=str)
class KillWorker(Msg):
    worker_id: str


@message(BLOCKED, lease_id=str)
class Blocked(Msg):
    lease_id: str


@message(UNBLOCKED, lease_id=str)
class Unblocked(Msg):
    lease_id: str


@message(EVENTS, events=list)
class Events(Msg):
    events: list

    def validate(self) -> None:
        checked = check_events(self.events)
        self.events = checked


@message(STATE, req=int, kind=str)
class State(Msg):
    req: int
    kind: str


@message(PG_CREATE, req=int, pg_id=str, bundles=list, strategy=str, name=(str, None))
class PgCreate(Msg):
    req: int
    pg_id: str
    bundles: list
    strategy: str
    name: str | None

    def validate(self) -> None:
        for i, b in enumerate(self.bundles):
            check_shape(f"PgCreate.bundles[{i}]", b)


@message(PG_RESERVE, pg_id=str, bundles=dict)
class PgReserve(Msg):
    pg_id: str
    bundles: dict

    def validate(self) -> None:
        for i, b in self.bundles.items():
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < 10_000:
                raise BadMessage(f"PgReserve.bundles keys must be bundle indices (int), not {_short(i)}")
            check_shape(f"PgReserve.bundles[{i}]", b)


@message(WATCH, oids=list)
class Watch(Msg):
    oids: list

    def validate(self) -> None:
        check_id_list("Watch", "oids", self.oids)


@message(FREED, oids=list)
class Freed(Msg):
    oids: list

    def validate(self) -> None:
        check_id_list("Freed", "oids", self.oids)


@message(PG_REMOVE, req=int, pg_id=str)
class PgRemove(Msg):
    req: int
    pg_id: str


@message(PG_INFO, req=int, pg_id=(str, None), name=(str, None))
class PgInfo(Msg):
    req: int
    pg_id: str | None
    name: str | None


@message(PG_WAIT, req=int, pg_id=str)
class PgWait(Msg):
    req: int
    pg_id: str


@message(STORE_STATS, req=int)
class StoreStats(Msg):
    req: int


@message(NAMED_ACTORS, req=int, all_namespaces=bool, namespace=(str, None))
class NamedActors(Msg):
    req: int
    all_namespaces: bool
    namespace: str | None


@message(GET_REMOTE, req=int, oid=bytes, node_id=str)
class GetRemote(Msg):
    req: int
    oid: bytes
    node_id: str


@message(PULL_OBJECT, object_id=bytes)
class PullObject(Msg):
    object_id: bytes


@message(MAP_OBJECT, req=int, oid=bytes)
class MapObject(Msg):
    req: int
    oid: bytes


@message(UNMAP_OBJECT, oid=bytes)
class UnmapObject(Msg):
    oid: bytes


@message(NODE_ADDRESS, req=int, node_id=str)
class NodeAddress(Msg):
    req: int
    node_id: str


@message(WORKER_DEATH, req=int, worker_id=str)
class WorkerDeath(Msg):
    req: int
    worker_id: str


@message(WORKER_READY, address=str, tcp=str)
class WorkerReady(Msg):
    address: str  # its Unix socket (same-node submitters)
    tcp: str = ""  # HOST:PORT where submitters on other nodes reach it ("" on a non-cluster node)


@message(ACTOR_READY, actor_id=bytes)
class ActorReady(Msg):
    actor_id: bytes


@message(ACTOR_FAILED, actor_id=bytes, error=tuple)
class ActorFailed(Msg):
    actor_id: bytes
    error: tuple

    def validate(self) -> None:
        if len(self.error) != 2 or not all(isinstance(x, str) for x in self.error):
            raise BadMessage(f"ActorFailed.error must be (class name, message), not {_short(self.error)}")


# ---------------------------------------------------------------------------- to others
@message(RUN_ACTOR, inbound=False, actor_id=bytes, spec=dict, gpu_ids=list, restarts=int)
class RunActor(Msg):
    """daemon -> worker: become this actor (its incarnation `restarts`)."""

    actor_id: bytes
    spec: dict
    gpu_ids: list
    restarts: int


@message(EXIT, inbound=False)
class Exit(Msg):
    """daemon -> worker: retire (enough idle workers)."""


@message(LOG, inbound=False, task_id=(bytes, None), stream=str, text=str)
class Log(Msg):
    """worker -> submitter (the task's output), daemon -> driver (output written straight
    to a worker's descriptors: no task)."""

    task_id: bytes | None
    stream: str
    text: str
    label: Any


@message(CANCEL, inbound=False, task_id=bytes, force=bool, recursive=bool)
class Cancel(Msg):
    """submitter -> worker: cancel this task."""

    task_id: bytes
    force: bool
    recursive: bool


@message(PEER, inbound=False, worker_id=str)
class Peer(Msg):
    """submitter -> worker, first message: who is calling."""

    worker_id: str
