"""GPUView: utilization, memory, temperature and power per GPU of every node, with history.

Each node daemon reads its own GPUs through NVML; the widget keeps the last
``history_s`` seconds of samples (``_data.GpuHistory``).
"""

from __future__ import annotations

from typing import Any

from . import _data, _html
from ._base import DEFAULT_INTERVAL_S, LiveWidget, esm
from ._source import Source


class GPUView(LiveWidget):
    """Every GPU of the cluster; "No GPUs" where there are none."""

    _esm = esm("_gpu.js")

    def __init__(
        self,
        source: Source | None = None,
        interval: float = DEFAULT_INTERVAL_S,
        history_s: float = _data.HISTORY_S,
        **kwargs: Any,
    ) -> None:
        self._history = _data.GpuHistory(history_s)
        super().__init__(source, interval, **kwargs)

    def collect(self, source: Source) -> dict[str, Any]:
        return dict(_data.gpu_model(source.nodes(), self._history))

    def render_html(self) -> str:
        return _html.gpu_html(self.model, self.status)  # type: ignore[arg-type]
