"""progress(refs): a bar with done, failed, total and rate for a list of ObjectRefs.

The bar polls the driver's record of its refs (``_source.ref_states``, no
values are fetched) until all are done, then stops on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import _data, _html
from ._base import LiveWidget, esm
from ._source import Source, ref_states

Probe = Callable[[Sequence[Any]], tuple[list[bool], list[bool]]]

PROGRESS_INTERVAL_S = 0.5


class ProgressView(LiveWidget):
    """Progress of ``refs``; stops polling once every ref is ready."""

    _esm = esm("_progress.js")

    def __init__(
        self,
        refs: Iterable[Any],
        label: str = "",
        interval: float = PROGRESS_INTERVAL_S,
        source: Source | None = None,
        probe: Probe = ref_states,
        **kwargs: Any,
    ) -> None:
        self._refs = list(refs)
        self._probe = probe
        self._label = label
        self._started = time.monotonic()
        self._finished_at: float | None = None
        super().__init__(source, interval, **kwargs)

    def collect(self, source: Source) -> dict[str, Any]:
        if not self._refs:
            return dict(_data.progress_model(0, 0, 0, 0.0, self._label))
        ready, failed = self._probe(self._refs)
        done = sum(ready)
        now = time.monotonic()
        if done >= len(self._refs) and self._finished_at is None:
            self._finished_at = now
        elapsed = (self._finished_at or now) - self._started
        return dict(_data.progress_model(len(self._refs), done, sum(failed), elapsed, self._label))

    def refresh(self) -> bool:
        ok = super().refresh()
        if self.model.get("finished"):
            self.status = "done"
            self._poller.stop()
        return ok

    def start(self) -> None:
        if self.model.get("finished"):
            return
        super().start()

    def render_html(self) -> str:
        return _html.progress_html(self.model, self.status)  # type: ignore[arg-type]


def progress(refs: Iterable[Any], label: str = "") -> ProgressView:
    """A progress bar for ``refs`` (display it, or let the notebook show it as a cell's value)."""
    return ProgressView(refs, label)
