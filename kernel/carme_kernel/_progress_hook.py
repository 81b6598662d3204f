"""The automatic progress bar: a ``carme.get`` of many refs that runs long shows one.

Theory of operation
-------------------
:class:`GetProgress` is called with the refs of each ``carme.get`` and returns
a context manager around the wait. Entering it (on the thread that calls
``get``, inside the cell) notes the cell's parent header and arms a timer;
if the get is still waiting after ``delay_s`` (2 s) and covers at least
``min_refs`` refs, the timer thread builds a :class:`ProgressView` and shows
it in that cell through ``show``. Leaving the context cancels the timer, and
gives a shown bar its last update and stops its polling.

Wiring: the runtime calls the hook from ``carme.get`` when one is set through
the engine's ``set_get_hook(fn)`` (``carme.notebook``); :func:`install` sets it
for a kernel. An engine without such a hook (Ray) returns False and nothing is
shown automatically (``progress(refs)`` still works by hand).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

DELAY_S = 2.0
MIN_REFS = 2

Show = Callable[[Any, Any], None]  # (widget, parent header or None)


class GetProgress:
    """``hook(refs)`` -> a context manager that shows a progress bar if the get runs long."""

    def __init__(self, show: Show, delay_s: float = DELAY_S, min_refs: int = MIN_REFS,
                 parent: Callable[[], Any] = lambda: None) -> None:
        self.show = show
        self.delay_s = delay_s
        self.min_refs = min_refs
        self.parent = parent
        self.shown: list[Any] = []  # the widgets shown so far (tests read it)

    def __call__(self, refs: Sequence[Any]) -> contextlib.AbstractContextManager[None]:
        if len(refs) < self.min_refs:
            return contextlib.nullcontext()
        return self._watch(list(refs))

    @contextlib.contextmanager
    def _watch(self, refs: list[Any]) -> Iterator[None]:
        parent = self.parent()
        box: list[Any] = []
        lock = threading.Lock()
        finished = False

        def fire() -> None:
            from .widgets import progress

            with lock:
                if finished:
                    return
                try:
                    widget = progress(refs, label="carme.get")
                    self.show(widget, parent)
                except Exception:  # a progress bar must never break the get
                    return
                box.append(widget)
                self.shown.append(widget)

        timer = threading.Timer(self.delay_s, fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            with lock:
                finished = True
            timer.cancel()
            for widget in box:
                with contextlib.suppress(Exception):
                    widget.refresh()
                    widget.stop()


def kernel_show(kernel: Any) -> Show:
    """Show a widget in the cell whose parent header is given, from any thread."""

    def show(widget: Any, parent: Any) -> None:
        bundle = widget._repr_mimebundle_()
        data, meta = bundle if isinstance(bundle, tuple) else (bundle, {})
        content = {"data": data, "metadata": meta or {}, "transient": {}}
        kernel.session.send(kernel.iopub_socket, "display_data", content, parent=parent)

    return show


def kernel_parent(kernel: Any) -> Callable[[], Any]:
    def parent() -> Any:
        get = getattr(kernel, "get_parent", None)
        return get("shell") if get is not None else getattr(kernel, "_parent_header", None)

    return parent


def install(kernel: Any, backend: Any, delay_s: float = DELAY_S) -> bool:
    """Show a progress bar for long gets in this kernel; False if the engine has no get hook."""
    if kernel is None:
        return False
    return bool(
        backend.set_get_hook(GetProgress(kernel_show(kernel), delay_s, parent=kernel_parent(kernel)))
    )
