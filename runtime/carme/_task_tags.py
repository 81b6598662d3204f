"""The notebook-cell tag and name of each task a process submitted, bounded. Pure.

Output a task prints is routed to the cell that submitted it by the task's tag. A tag is
needed while the task runs and, for a short while after, for output that arrives late;
so finished tasks move to a small most-recent-first buffer (`RECENT` entries) and the
oldest fall out. Memory is thus proportional to the tasks in flight, not to every task
ever submitted.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

RECENT = 1024


class TaskTags:
    def __init__(self, recent: int = RECENT) -> None:
        self.live: dict[bytes, Any] = {}
        self.recent: OrderedDict[bytes, Any] = OrderedDict()
        self.max_recent = recent

    def __setitem__(self, task_id: bytes, value: Any) -> None:
        self.live[task_id] = value

    def get(self, task_id: bytes, default: Any = None) -> Any:
        value = self.live.get(task_id)
        if value is None:
            value = self.recent.get(task_id, default)
        return value

    def finished(self, task_id: bytes) -> None:
        """The task is done: keep its tag only among the most recent ones."""
        value = self.live.pop(task_id, None)
        if value is None:
            return
        self.recent[task_id] = value
        if len(self.recent) > self.max_recent:
            self.recent.popitem(last=False)

    def __len__(self) -> int:
        return len(self.live) + len(self.recent)
