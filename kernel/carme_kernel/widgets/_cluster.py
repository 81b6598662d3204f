"""ClusterView: each node's CPU, memory, GPUs, store, resources, workers and tasks."""

from __future__ import annotations

from typing import Any

from . import _data, _html
from ._base import LiveWidget, esm
from ._source import Source


class ClusterView(LiveWidget):
    """The cluster, node by node, refreshed about once a second while shown.

    ``ClusterView()`` reads the connected carme driver; ``close()`` stops it.
    """

    _esm = esm("_cluster.js")

    def collect(self, source: Source) -> dict[str, Any]:
        return dict(_data.cluster_model(source.nodes(), source.workers(), source.tasks()))

    def render_html(self) -> str:
        return _html.cluster_html(self.model, self.status)  # type: ignore[arg-type]
