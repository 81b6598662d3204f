"""Which cell a line of Ray worker output belongs to: pure logic, no Ray import.

Theory of operation
-------------------
Ray's driver-side log dispatcher hands the driver batches of worker output:
``{"pid", "job", "is_err", "lines", "task_name", "actor_name", ...}``. The
``task_name`` is the name of the task the worker ran when it printed (Ray's own
``:task_name:`` marker in the worker's log); actor calls carry only the actor's
class name. No tag of ours travels with the output, so :class:`LogResolver`
finds the cell in two ways:

1. **By name.** ``%%remote`` names its task ``%%remote In[N]``: such a batch
   goes at once to the latest execution of cell N.
2. **By task state.** Otherwise the batch waits (per worker pid, in order)
   until Ray's state API shows the task that printed it: the task of this job
   on that worker pid with that name (or an actor call, for actor output) that
   started last before the batch arrived. If that task is still running, it is
   the one (a worker runs one task at a time). If it has ended, a newer task
   with the same name might not be in the state API yet, so the batch is
   resolved only from a task-state snapshot taken ``settle_ms`` after it
   arrived (task events reach the state API about a second after the fact),
   and only if that task ended less than ``lag_ms`` before the batch arrived.
   Its cell comes from :func:`~._ray_rows.assign_cells`.
   Task state reaches Ray's state API about a second after the fact, so this
   output arrives a second or two after it was printed. A batch still unresolved
   after ``give_up_ms`` goes to the fallback (the kernel's log), never to a cell
   it might not belong to.

Output of other jobs and the autoscaler's reports never reach a cell.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._ray_rows import CellWindows, tag_from_name

__all__ = ["Batch", "LogResolver", "Resolved"]

Row = Mapping[str, Any]
LAG_MS = 3000.0
SETTLE_MS = 2500.0
GIVE_UP_MS = 90000.0  # Ray's state API lagged by tens of seconds on a loaded 2-core machine


@dataclass
class Batch:
    """One batch of lines from the dispatcher, stamped with its arrival time."""

    data: dict[str, Any]
    at_ms: float

    @property
    def pid(self) -> str:
        return str(self.data.get("pid") or "")

    @property
    def stream(self) -> str:
        return "stderr" if self.data.get("is_err") else "stdout"

    @property
    def text(self) -> str:
        lines = self.data.get("lines") or []
        return "".join(f"{line}\n" for line in lines)


@dataclass
class Resolved:
    tag: dict[str, Any] | None  # None: no cell (goes to the fallback)
    stream: str
    text: str


class LogResolver:
    """Queue batches per worker, resolve them to cells as task state comes in."""

    def __init__(
        self,
        windows: CellWindows,
        job_id: str,
        lag_ms: float = LAG_MS,
        give_up_ms: float = GIVE_UP_MS,
        settle_ms: float = SETTLE_MS,
    ) -> None:
        self.windows = windows
        self.job_id = job_id
        self.lag_ms = lag_ms
        self.settle_ms = settle_ms
        self.give_up_ms = give_up_ms
        self._queues: OrderedDict[str, deque[Batch]] = OrderedDict()

    def add(self, data: dict[str, Any], at_ms: float) -> list[Resolved]:
        """Take one dispatcher batch; what can be delivered at once (by name) comes back."""
        job = str(data.get("job") or "")
        if data.get("pid") == "autoscaler" or (job and job != self.job_id):
            return []
        batch = Batch(dict(data), at_ms)
        if not batch.text:
            return []
        tag = tag_from_name(data.get("task_name"), self.windows)
        if tag is not None and not self._queues.get(batch.pid):
            return [Resolved(tag, batch.stream, batch.text)]
        self._queues.setdefault(batch.pid, deque()).append(batch)
        return []

    def pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def resolve(self, tasks: Iterable[Row], now_ms: float) -> list[Resolved]:
        """Deliver what ``tasks`` (rows of this job with ``cell`` set, read at ``now_ms``)
        now explain, in order."""
        by_pid: dict[str, list[Row]] = {}
        for t in tasks:
            by_pid.setdefault(str(t.get("worker_pid") or ""), []).append(t)
        out: list[Resolved] = []
        for pid in list(self._queues):
            q = self._queues[pid]
            while q:
                b = q[0]
                tag = tag_from_name(b.data.get("task_name"), self.windows)
                if tag is None:
                    row = self._match(b, by_pid.get(pid, []), now_ms)
                    if row is None:
                        if now_ms - b.at_ms < self.give_up_ms:
                            break  # later lines of this worker wait too: order is kept
                        out.append(Resolved(None, b.stream, b.text))
                        q.popleft()
                        continue
                    tag = row.get("cell")
                out.append(Resolved(tag, b.stream, b.text))
                q.popleft()
            if not q:
                self._queues.pop(pid, None)
        return out

    def flush(self) -> list[Resolved]:
        """Everything still queued, to the fallback (at disconnect)."""
        out = [Resolved(None, b.stream, b.text) for q in self._queues.values() for b in q]
        self._queues.clear()
        return out

    def _match(self, b: Batch, rows: list[Row], now_ms: float) -> Row | None:
        name = str(b.data.get("task_name") or "")
        actor = str(b.data.get("actor_name") or "")
        best: Row | None = None
        for r in rows:
            if name:
                if r.get("name") != name and r.get("func_or_class_name") != name:
                    continue
            elif actor:
                if r.get("type") not in ("ACTOR_TASK", "ACTOR_CREATION_TASK"):
                    continue
            start = r.get("start_time_ms")
            if not start or start > b.at_ms + 1000:  # 1 s of clock slack between nodes
                continue
            if best is None or start > (best.get("start_time_ms") or 0):
                best = r
        if best is None:
            return None
        end = best.get("end_time_ms") or 0
        if not end:
            return best  # still running: it printed this
        if now_ms - b.at_ms < self.settle_ms:
            return None  # a newer task of that name may not be visible yet
        return best if end >= b.at_ms - self.lag_ms else None
