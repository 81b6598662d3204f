"""Route remote output to the notebook cell that launched the work.

Theory of operation
-------------------
Every task and actor call submitted from the kernel carries a *tag* naming the
cell execution that launched it (see ``_session``): ``{"run": <unique id>,
"msg_id": <id of the execute_request>, "execution_count": n, "cell_id": ...}``.
carme hands each line that remote work prints back to the driver together with
that tag, on a background thread (the engine's output sink: carme's
``carme.notebook.set_log_handler``, or Ray's log dispatcher via ``engines._ray``).

:class:`OutputRouter` keeps, for the most recent cell executions, the parent
header of the execute_request, and turns ``(tag, stream, text)`` into a call
``send(parent_header, stream, text)``; the kernel's ``send`` publishes a
``stream`` message on iopub with that parent, which is how a Jupyter frontend
knows which cell an output belongs to — also after the cell finished and while
other cells run. Output whose cell is unknown goes to ``fallback`` (the kernel
process's own stderr/stdout, i.e. the server log), never to whichever cell
happens to be running: no line is shown in the wrong cell.

The router also counts the newlines it delivered per cell execution, so a
``%%remote`` cell can wait (briefly, bounded) until the output its task
reported has arrived before the cell ends.

This module does no I/O itself; ``send`` and ``fallback`` do.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["OutputRouter", "Parent", "SendFn", "FallbackFn"]

Parent = dict[str, Any]
SendFn = Callable[[Parent, str, str], None]
FallbackFn = Callable[[str, str], None]


class OutputRouter:
    """Map cell tags to parent headers and dispatch remote output lines."""

    def __init__(self, send: SendFn, fallback: FallbackFn, max_cells: int = 4096) -> None:
        self._send = send
        self._fallback = fallback
        self._max_cells = max_cells
        self._parents: OrderedDict[str, Parent] = OrderedDict()
        self._newlines: dict[str, int] = {}
        self._cond = threading.Condition()

    def register(self, run: str, parent: Parent) -> None:
        """Remember the parent header of cell execution ``run``."""
        with self._cond:
            self._parents[run] = parent
            self._parents.move_to_end(run)
            while len(self._parents) > self._max_cells:
                old, _ = self._parents.popitem(last=False)
                self._newlines.pop(old, None)

    def parent_of(self, tag: dict[str, Any] | None) -> Parent | None:
        if not tag:
            return None
        run = tag.get("run")
        with self._cond:
            return self._parents.get(run) if isinstance(run, str) else None

    def handle(self, tag: dict[str, Any] | None, stream: str, text: str) -> None:
        """Deliver ``text`` printed on ``stream`` by remote work tagged ``tag``."""
        if stream not in ("stdout", "stderr"):
            stream = "stdout"
        parent = self.parent_of(tag)
        if parent is None:
            self._fallback(stream, text)
            return
        self._send(parent, stream, text)
        run = tag.get("run") if tag else None
        if isinstance(run, str):
            with self._cond:
                self._newlines[run] = self._newlines.get(run, 0) + text.count("\n")
                self._cond.notify_all()

    def newlines(self, run: str) -> int:
        with self._cond:
            return self._newlines.get(run, 0)

    def wait_for(self, run: str, newlines: int, timeout: float) -> bool:
        """Wait until ``newlines`` newlines were delivered for ``run``; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._newlines.get(run, 0) >= newlines, timeout)
