"""The live widget: an anywidget whose ``model`` a background thread refreshes.

Theory of operation
-------------------
* A widget computes its model with :meth:`LiveWidget.collect` (read the source,
  call a pure function of ``_data``), assigns it to the synced ``model`` trait,
  and ipywidgets sends it to every view. traitlets only sends when the value
  changed, so an idle cluster costs no messages.
* Displaying the widget (``_repr_mimebundle_``) starts a :class:`Poller`, a
  daemon thread that calls :meth:`refresh` every ``interval`` seconds. The
  JavaScript side reports each view it mounts or drops (``views`` messages):
  once views were seen and none is left, refreshing pauses until one comes
  back. :meth:`close` stops the thread and joins it.
* A read that fails because carme is not (or no longer) connected sets
  ``status`` to "not connected" and keeps the last model on screen; any other
  error is shown in ``error`` and polling goes on. Nothing propagates out of
  the thread.
* Where no widget frontend is attached (nbconvert, a notebook viewer) the
  ``text/html`` part of the mimebundle, rendered from the same model by
  ``_html``, is what is shown.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from . import _html
from ._source import BackendSource, NotConnected, Source

HERE = Path(__file__).resolve().parent
DEFAULT_INTERVAL_S = 1.0


def esm(name: str) -> str:
    """The module for one widget: the shared helpers, then the widget's own file."""
    return (HERE / "_common.js").read_text() + "\n" + (HERE / name).read_text()


class Poller:
    """Call ``tick`` every ``interval`` seconds on a daemon thread until :meth:`stop`."""

    def __init__(self, tick: Callable[[], None], interval: float, name: str) -> None:
        self.tick = tick
        self.interval = interval
        self.name = name
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.tick()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        self._thread = None


class LiveWidget(anywidget.AnyWidget):  # type: ignore[misc]
    """Base of the carme widgets; subclasses set ``_esm`` and implement :meth:`collect`."""

    model = traitlets.Dict().tag(sync=True)
    status = traitlets.Unicode("paused").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    interval = traitlets.Float(DEFAULT_INTERVAL_S).tag(sync=True)
    notes = traitlets.List(traitlets.Unicode()).tag(sync=True)  # engine + its degradations

    def __init__(
        self, source: Source | None = None, interval: float = DEFAULT_INTERVAL_S, **kwargs: Any
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
        super().__init__(interval=float(interval), **kwargs)
        self._source: Source = source if source is not None else BackendSource()
        self._lock = threading.Lock()
        self._views = 0
        self._seen_views = False
        self._closed = False
        self._poller = Poller(self._tick, float(interval), f"carme-{type(self).__name__}")
        self.on_msg(self._on_js)
        self.refresh()

    # -- subclass API ------------------------------------------------------------------
    def collect(self, source: Source) -> dict[str, Any]:
        raise NotImplementedError

    def render_html(self) -> str:
        raise NotImplementedError

    def handle(self, msg: dict[str, Any]) -> None:
        """A widget-specific message from JavaScript (see ``_messages.FromJs``)."""

    # -- refreshing --------------------------------------------------------------------
    def refresh(self) -> bool:
        """Read the cluster now and update the model; False if it could not."""
        if self._closed:
            return False
        with self._lock:
            try:
                model = self.collect(self._source)
            except NotConnected:
                self.status = "not connected"
                return False
            except Exception as exc:  # shown, never raised from the thread
                self.error = f"{type(exc).__name__}: {exc}"
                return False
            self.model = model
            self.error = ""
            notes = getattr(self._source, "notes", None)
            self.notes = list(notes()) if callable(notes) else []
            if self.status in ("not connected", "paused") or not self.status:
                self.status = "live" if self._poller.running else "paused"
            return True

    def _tick(self) -> None:
        if self._seen_views and self._views <= 0:
            return  # no view shown right now: skip until one mounts again
        with contextlib.suppress(Exception):
            self.refresh()

    @property
    def polling(self) -> bool:
        return self._poller.running

    def start(self) -> None:
        """Refresh about every ``interval`` seconds (displaying the widget does this)."""
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed; create a new one")
        self._poller.start()
        if self.status != "not connected":
            self.status = "live"

    def stop(self) -> None:
        """Stop refreshing (the last model stays shown)."""
        self._poller.stop()
        if not self._closed and self.status == "live":
            self.status = "paused"

    def close(self) -> None:
        """Stop the refresh thread and close the widget's views."""
        if not getattr(self, "_closed", True):
            self._poller.stop()
            self._closed = True
            with contextlib.suppress(Exception):
                self.status = "closed"
        super().close()

    def _on_js(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        if kind == "views":
            delta = content.get("delta")
            if isinstance(delta, int):
                self._views = max(0, self._views + delta)
                self._seen_views = True
                if self._views:
                    self._poller.wake()
        elif kind == "refresh":
            self.refresh()
        else:
            self.handle(content)

    # -- display -----------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle: Any = super()._repr_mimebundle_(**kwargs)
        meta: Any = None
        raw: Any = bundle
        if isinstance(bundle, tuple):  # (data, metadata)
            raw, meta = bundle
        data = dict(raw or {})
        data["text/html"] = self.render_html() + _html.notes_html(self.notes)
        if not self._closed:
            self.start()
        return (data, meta) if meta is not None else data

    def _repr_html_(self) -> str:
        return self.render_html()
