"""The node's worker pool: worker records, idle workers per runtime env, who waits. Pure.

Theory of operation. The daemon forks a worker (through its zygote) and `add`s its
record, STARTING. When the worker says it is ready, the grants that were waiting for it
are handed to it (`ready` returns them), or it joins the idle pool of its runtime env.
`take` hands out an idle worker of an env, most recently used first (its pages are
warm); when none is idle the daemon forks one and `wait_for`s it. A worker given back
rejoins the pool unless `max_idle` already wait there, in which case `give_back` says to
retire it. A worker is forgotten (`remove`) when its connection drops or it is retired.
Processes, sockets and signals are the daemon's business; records hold them opaquely.
"""

from __future__ import annotations

import time
from typing import Any

from ._record import field, record


@record
class WorkerRec:
    worker_id: str
    pid: int
    conn: Any
    env_key: str
    address: str = ""  # its Unix socket, for submitters on this node
    tcp: str = ""  # HOST:PORT for submitters on other nodes ("" when the node is not in a cluster)
    state: str = "STARTING"  # STARTING, IDLE, LEASED, ACTOR, DEAD
    lease_id: str | None = None
    actor_id: bytes | None = None
    waiting: list[Any] = field(default_factory=list)  # grants to fulfil once ready
    out_fds: tuple[int, int] = (-1, -1)
    started: float = field(default_factory=time.time)


class WorkerPool:
    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle  # idle workers kept per runtime env
        self.workers: dict[str, WorkerRec] = {}
        self.by_pid: dict[int, WorkerRec] = {}
        self.idle: dict[str, list[WorkerRec]] = {}

    def __len__(self) -> int:
        return len(self.workers)

    def get(self, worker_id: str) -> WorkerRec | None:
        return self.workers.get(worker_id)

    def add(self, w: WorkerRec) -> None:
        self.workers[w.worker_id] = w
        self.by_pid[w.pid] = w

    def ready(self, w: WorkerRec, address: str, tcp: str = "") -> list[Any]:
        """The worker listens at `address` (and `tcp`): the grants waiting for it, or it goes idle."""
        w.address = address
        w.tcp = tcp
        w.state = "IDLE"
        waiting, w.waiting = w.waiting, []
        if not waiting:
            self.idle.setdefault(w.env_key, []).append(w)
        return waiting

    def take(self, env_key: str) -> WorkerRec | None:
        pool = self.idle.get(env_key)
        while pool:
            w = pool.pop()
            if w.state == "IDLE":
                return w
        return None

    def wait_for(self, w: WorkerRec, then: Any) -> None:
        """`then` (a grant, opaque here) waits for `w` to be ready."""
        w.waiting.append(then)

    def give_back(self, w: WorkerRec) -> bool:
        """A lease ended: True if the worker is idle again, False if it is to retire
        (enough idle already; it is forgotten here, the caller tells it to exit)."""
        if w.state == "DEAD":
            return True
        w.lease_id = None
        pool = self.idle.setdefault(w.env_key, [])
        if len(pool) >= self.max_idle:
            self.remove(w)
            return False
        w.state = "IDLE"
        pool.append(w)
        return True

    def remove(self, w: WorkerRec) -> str:
        """Forget a worker; returns the state it was in ("DEAD" if already forgotten)."""
        prev = w.state
        w.state = "DEAD"
        self.workers.pop(w.worker_id, None)
        if self.by_pid.get(w.pid) is w:
            del self.by_pid[w.pid]
        pool = self.idle.get(w.env_key)
        if pool and w in pool:
            pool.remove(w)
        return prev

    def pids(self) -> list[int]:
        return list(self.by_pid)
