"""The one piece of process-wide state: the runtime this process is connected to.

`carme.init()` (in a driver) or the worker bootstrap sets it; everything else reaches the
runtime through `runtime()`/`core()`, so there are no other mutable module globals.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import CoreWorker


class _State:
    def __init__(self) -> None:
        self.core: CoreWorker | None = None
        self.lock = threading.RLock()
        self.runtime_context: Any = None


STATE = _State()


def core() -> CoreWorker:
    c = STATE.core
    if c is None:
        raise RuntimeError("carme is not initialized: call carme.init() first")
    return c


def runtime() -> CoreWorker:
    """The connected runtime (the CoreWorker of this process)."""
    return core()


def maybe_core() -> CoreWorker | None:
    return STATE.core
