"""What goes into the node's core (events) and what comes out (effects). Pure data.

Theory of operation. `NodeCore.handle(client, item)` takes a decoded message from a
client or one of the events below, which the daemon makes of what it saw itself (a
runtime env set up, a worker forked, a peer gone, a pull done, the head's cluster view).
It returns effects, which the daemon carries out in order: each is I/O (send, fork,
kill, talk to another node, pull, record, log), with the scheduler's `Spill` and
`Refuse` (`_node_leases.py`) among them.
"""

from __future__ import annotations

from typing import Any

from ._node_leases import NeedWorker
from ._node_objects import Answer
from ._node_workers import WorkerRec
from ._record import record
from ._scheduler import Grant, LeaseRequest


@record
class Client:
    """Who sent a message: its connection (opaque), holder id and pid; the worker record
    for a worker's own control connection; the node id for a connection this node opened
    to another node's daemon."""

    conn: Any
    holder: str
    pid: int = 0
    worker: WorkerRec | None = None
    peer: str | None = None


# ---------------------------------------------------------------------- effects
@record
class Note:
    """Effect: a line for the daemon's log (something was refused)."""

    text: str


@record
class Send:
    """Effect: send this wire message to a client."""

    conn: Any
    msg: tuple


@record
class Retire:
    """Effect: tell this worker to exit (the pool has enough idle ones; it is forgotten)."""

    worker: WorkerRec


@record
class Kill:
    """Effect: kill this process (a worker whose lease ended badly, or on request)."""

    pid: int


@record
class SpawnWorker:
    """Effect: fork a worker for this runtime env, then feed `WorkerStarted` with
    `waiting` (the grant that waits for it)."""

    env_key: str
    waiting: Any


@record
class Event:
    """Effect: record a task event (the daemon stamps the time)."""

    task_id: str
    state: str
    attrs: dict


@record
class ToPeer:
    """Effect: send this wire message to another node's daemon (best effort)."""

    node_id: str
    msg: tuple


@record
class PeerRequest:
    """Effect: send this request to another node's daemon; if it cannot be sent, feed
    `PeerFailed(req, ...)`. Its `Reply` comes back as a message from that connection."""

    node_id: str
    req: int
    msg: tuple


@record
class ClosePeer:
    """Effect: the node is dead; close this node's connection to it (if any)."""

    node_id: str


@record
class StartPull:
    """Effect: copy another node's object into this node's store (in a thread: a TCP
    stream from the node's daemon at `address`, `_transfer.py`; gRPC when it has none);
    feed `Pulled` when done."""

    oid: bytes
    grpc_address: str
    address: str = ""


# ---------------------------------------------------------------------- events
@record
class LeaseRequested:
    """Event: a client asked for a worker lease; its runtime env is set up (`env_key`)."""

    req: int
    env_key: str
    request: LeaseRequest


@record
class ActorCreation:
    """Event: a client asked to create an actor; its runtime env is set up (the spec
    carries its `env_key`)."""

    req: int
    actor_id: bytes
    spec: dict


@record
class WorkerFound:
    """Event: a worker (idle, or just started) for a grant the scheduler made."""

    need: NeedWorker
    worker: WorkerRec


@record
class WorkerStarted:
    """Event: the daemon forked this worker (for `waiting`, a grant, or None)."""

    worker: WorkerRec
    waiting: Any = None


@record
class ActorStart:
    """A grant for an actor's creation, waiting for its worker (`WorkerPool.wait_for`)."""

    actor: Any
    grant: Grant


@record
class ClientGone:
    """Event: a client's connection closed (a worker's: the worker is gone too)."""

    client: Client


@record
class PeerFailed:
    """Event: a request to another node (`PeerRequest`) could not be sent."""

    req: int
    error: BaseException


@record
class ClusterView:
    """Event: the head's view of the cluster, as rows (`_node_state.parse_view`)."""

    rows: list[dict]


@record
class Pulled:
    """Event: a pull (`StartPull`) ended: the copy's block, or the error."""

    oid: bytes
    offset: int | None
    total: int
    is_error: bool
    error: str | None


@record
class PullDone:
    """Event: a peer finished reading an object it pulled from here (`pin_for_pull`)."""

    oid: bytes
    key: str


__all__ = ["ActorCreation", "ActorStart", "Answer", "Client",
           "ClientGone", "ClosePeer", "ClusterView", "Event", "Kill", "LeaseRequested", "Note",
           "PeerFailed", "PeerRequest", "PullDone", "Pulled", "Retire", "Send", "SpawnWorker",
           "StartPull", "ToPeer", "WorkerFound", "WorkerStarted"]
