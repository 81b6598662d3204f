"""What the widgets send to JavaScript, and what JavaScript sends back.

Each widget syncs one trait, ``model``, whose value is one of the ``*Model``
dicts below (``kind`` names which), plus ``status`` (:data:`Status`). The
JavaScript side declares the same shapes in ``_messages.d.ts``; keep the two
in step. JavaScript talks back with the custom messages at the end
(``model.send(...)`` in JS, ``on_msg`` in Python).

Sizes are bytes, times are milliseconds since the epoch unless a name says
``_us`` (microseconds, as in Chrome trace events) or ``_s``.
"""

from __future__ import annotations

from typing import Literal, TypedDict

Status = Literal["live", "paused", "not connected", "closed", "done"]


class GpuSample(TypedDict):
    index: int
    name: str
    uuid: str
    utilization: float | None  # percent, 0..100
    memory_used: int | None
    memory_total: int | None
    temperature: float | None  # degrees C
    power_watts: float | None


class GpuCard(GpuSample):
    # [t_ms, utilization %, memory used %] oldest first; None where NVML gave nothing
    history: list[tuple[int, float | None, float | None]]


class ResourceUse(TypedDict):
    name: str
    used: float
    total: float


class NodeCard(TypedDict):
    node_id: str
    name: str
    ip: str
    is_head: bool
    state: str
    cpu_percent: float | None
    num_cpus: int | None
    memory_used: int | None
    memory_total: int | None
    workers_rss: int | None
    store_used: int | None
    store_capacity: int | None
    resources: list[ResourceUse]
    workers: dict[str, int]  # worker state -> count
    tasks: dict[str, int]  # task state -> count
    gpus: list[GpuSample]


class ClusterTotals(TypedDict):
    nodes: int
    alive: int
    workers: int
    tasks: dict[str, int]
    resources: list[ResourceUse]


class ClusterModel(TypedDict):
    kind: Literal["cluster"]
    nodes: list[NodeCard]
    totals: ClusterTotals
    updated_ms: int


class GpuNode(TypedDict):
    node_id: str
    name: str
    gpus: list[GpuCard]


class GpuModel(TypedDict):
    kind: Literal["gpus"]
    nodes: list[GpuNode]
    gpu_count: int
    history_s: float
    updated_ms: int


class StoreUse(TypedDict):
    node_id: str
    name: str
    used: int
    capacity: int
    spilled: int  # bytes of this node's objects spilled to disk
    objects: int


class ObjectRow(TypedDict):
    object_id: str
    short_id: str  # carme.notebook.short_object_id(object_id): what a table cell shows
    size: int | None
    type: str
    owner: str  # "pid 1234" of the owning process
    node_id: str
    references: int | None
    holders: str  # who holds references, as far as the state API tells
    location: str
    spilled: bool
    status: str
    call_site: str
    created_ms: int | None


SortKey = Literal["size", "created", "type", "owner", "node", "references"]


class ObjectsModel(TypedDict):
    kind: Literal["objects"]
    stores: list[StoreUse]
    objects: list[ObjectRow]  # sorted by sort_by, at most `limit`
    sort_by: SortKey
    descending: bool
    total_objects: int
    total_size: int
    spilled_objects: int
    limit: int
    updated_ms: int


class Lane(TypedDict):
    index: int
    node: str
    worker: str
    label: str


class Span(TypedDict):
    lane: int
    name: str
    task_id: str
    start_us: float
    dur_us: float
    state: str
    cell: str
    actor: bool
    error: str


class TimelineModel(TypedDict):
    kind: Literal["timeline"]
    lanes: list[Lane]
    spans: list[Span]  # by start time, the newest `limit`
    colors: dict[str, str]  # function name -> CSS color
    t0_us: float
    t1_us: float
    dropped: int  # older spans not sent
    limit: int
    updated_ms: int


class ProgressModel(TypedDict):
    kind: Literal["progress"]
    label: str
    total: int
    done: int  # finished, failed included
    failed: int
    rate: float  # finished per second
    elapsed_s: float
    eta_s: float | None
    finished: bool


Model = ClusterModel | GpuModel | ObjectsModel | TimelineModel | ProgressModel


# -- from JavaScript ------------------------------------------------------------------


class ViewsMessage(TypedDict):
    """A view mounted (+1) or went away (-1); polling pauses while no view is shown."""

    type: Literal["views"]
    delta: int


class RefreshMessage(TypedDict):
    """Refresh now (the user clicked the refresh button)."""

    type: Literal["refresh"]


class SortMessage(TypedDict):
    """ObjectStoreView: sort by another column."""

    type: Literal["sort"]
    sort_by: SortKey
    descending: bool


class LiveMessage(TypedDict):
    """TimelineView: follow new work (live tail) or hold still."""

    type: Literal["live"]
    live: bool


FromJs = ViewsMessage | RefreshMessage | SortMessage | LiveMessage
