"""ObjectStoreView: store use per node and the objects in it, sortable, with totals."""

from __future__ import annotations

from typing import Any

import traitlets

from . import _data, _html
from ._base import DEFAULT_INTERVAL_S, LiveWidget, esm
from ._source import Source


class ObjectStoreView(LiveWidget):
    """Objects of the cluster (largest first by default) and each node's store use."""

    _esm = esm("_objects.js")
    sort_by = traitlets.Unicode("size")
    descending = traitlets.Bool(True)

    def __init__(
        self,
        source: Source | None = None,
        interval: float = DEFAULT_INTERVAL_S,
        sort_by: str = "size",
        descending: bool = True,
        limit: int = _data.OBJECT_LIMIT,
        **kwargs: Any,
    ) -> None:
        self._limit = limit
        super().__init__(
            source, interval, sort_by=_data.check_sort_key(sort_by), descending=descending, **kwargs
        )

    def collect(self, source: Source) -> dict[str, Any]:
        return dict(
            _data.objects_model(
                source.objects(), source.nodes(), self.sort_by, self.descending, self._limit
            )
        )

    def sort(self, by: str = "size", descending: bool = True) -> None:
        """Sort the objects by ``by`` (size, created, type, owner, node, references)."""
        self.sort_by = _data.check_sort_key(by)
        self.descending = bool(descending)
        self.refresh()

    def handle(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "sort":
            try:
                self.sort(str(msg.get("sort_by")), bool(msg.get("descending", True)))
            except ValueError as exc:
                self.error = str(exc)

    def render_html(self) -> str:
        return _html.objects_html(self.model, self.status)  # type: ignore[arg-type]
