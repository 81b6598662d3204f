"""TimelineView: tasks and actor calls as bars per node and worker, live, zoomable.

The spans come from ``carme.timeline()`` (Chrome trace events). The
JavaScript side draws them on a canvas, zooms with the wheel, pans by
dragging, follows new work while ``live`` is on, and downloads the spans as
Chrome trace JSON; :meth:`TimelineView.export` writes the full trace from Python.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import traitlets

from . import _data, _html
from ._base import DEFAULT_INTERVAL_S, LiveWidget, esm
from ._source import Source


class TimelineView(LiveWidget):
    """The task timeline of the cluster (the newest ``limit`` spans)."""

    _esm = esm("_timeline.js")
    live = traitlets.Bool(True).tag(sync=True)

    def __init__(
        self,
        source: Source | None = None,
        interval: float = DEFAULT_INTERVAL_S,
        limit: int = _data.SPAN_LIMIT,
        **kwargs: Any,
    ) -> None:
        self._limit = limit
        super().__init__(source, interval, **kwargs)

    def collect(self, source: Source) -> dict[str, Any]:
        return dict(_data.timeline_model(source.timeline(), self._limit))

    def handle(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "live":
            self.live = bool(msg.get("live"))

    def export(self, path: str | Path) -> Path:
        """Write the cluster's whole timeline as Chrome trace JSON (open it in Perfetto)."""
        path = Path(path)
        try:
            events = self._source.timeline()
        except Exception:  # not connected: export what the widget shows
            events = _data.chrome_trace(self.model)  # type: ignore[arg-type]
        path.write_text(json.dumps(events))
        return path

    def render_html(self) -> str:
        return _html.timeline_html(self.model, self.status)  # type: ignore[arg-type]
