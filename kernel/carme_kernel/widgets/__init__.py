"""carme's live notebook widgets: cluster, GPUs, object store, timeline, progress.

Each widget reads the connected driver's state API, refreshes about once a
second while it is shown, stops on ``close()``, and renders as static HTML
where no widget frontend is attached::

    from carme_kernel.widgets import ClusterView, GPUView, ObjectStoreView, TimelineView, progress
    ClusterView()                     # the last expression of a cell shows it
    progress([f.remote(i) for i in range(100)])

``view(kind)`` gives the widget behind ``%carme nodes|gpus|objects|timeline|status``.
"""

from __future__ import annotations

from ._base import LiveWidget
from ._cluster import ClusterView
from ._gpu import GPUView
from ._objects import ObjectStoreView
from ._progress import ProgressView, progress
from ._source import NotConnected
from ._timeline import TimelineView

__all__ = [
    "ClusterView",
    "GPUView",
    "LiveWidget",
    "NotConnected",
    "ObjectStoreView",
    "ProgressView",
    "TimelineView",
    "VIEWS",
    "progress",
    "view",
]

VIEWS: dict[str, type[LiveWidget]] = {
    "status": ClusterView,
    "nodes": ClusterView,
    "gpus": GPUView,
    "objects": ObjectStoreView,
    "timeline": TimelineView,
}


def view(kind: str) -> LiveWidget:
    """The live widget for ``%carme KIND`` (status, nodes, gpus, objects, timeline)."""
    cls = VIEWS.get(kind)
    if cls is None:
        raise ValueError(f"no widget for {kind!r}; expected one of {', '.join(VIEWS)}")
    return cls()
