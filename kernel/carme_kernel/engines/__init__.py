"""The seam between the notebook layer and an engine: carme's runtime, or Ray.

Theory of operation
-------------------
Everything the kernel, the magics and the widgets need from the cluster goes
through one :class:`NotebookBackend`: connect/disconnect, the Ray-compatible
API module (``carme`` or ``ray``), capability flags, the cell-tag provider, the
output sink, cancel by tag, ref states, the get hook, refreshing redefined
functions, state rows in carme's row shape, and timeline spans. Two
implementations: :class:`~carme_kernel.engines._carme.CarmeBackend` (through
the public ``carme.notebook`` surface) and
:class:`~carme_kernel.engines._ray.RayBackend` (Ray's public API, its state API,
its driver-side log dispatcher and post-init hooks).

Addresses (``%carme connect``, ``CARME_ADDRESS``) pick the engine:

=====================  ================================================================
``ray``                Ray, by ``ray.init()``'s rules (``RAY_ADDRESS`` if set, else a
                       local Ray tied to this kernel)
``ray:HOST:PORT``      the Ray cluster whose GCS listens there (a normal Ray driver)
``ray://HOST:PORT``    Ray Client (see the capability flags for what it cannot do)
anything else / none   carme's runtime (``HOST:PORT`` of a head, ``auto``, or embedded)
=====================  ================================================================

:func:`active` is the backend the widgets read when none is given: the one a
notebook session set with :func:`set_active`, else carme's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any, Protocol

__all__ = [
    "Capabilities",
    "NotConnected",
    "NotebookBackend",
    "OutputSink",
    "TagProvider",
    "Target",
    "active",
    "backend_for",
    "parse_target",
    "set_active",
]

TagProvider = Callable[[], "dict[str, Any] | None"]
OutputSink = Callable[["dict[str, Any] | None", str, str], None]
STATE_KINDS = ("nodes", "workers", "tasks", "actors", "objects")


class NotConnected(RuntimeError):
    """The engine is not initialized in this process (or the cluster went away)."""


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do for the notebook layer; the widgets and docs show the gaps."""

    output_routing: str = "exact"  # "exact" | "by name and task state" | "none"
    live_state: bool = True  # task state is current (False: lags by about a second)
    cancel_running: bool = True  # a running task can be interrupted
    cancel_sync_actor_call: bool = True  # a running sync actor method can be interrupted
    progress_on_get: bool = True  # a long get shows a progress bar by itself
    ref_failures: bool = True  # ref_states tells failed from finished
    refresh_redefined: bool = True  # redefined notebook helpers reach remote functions
    per_node_available: bool = True  # available resources per node (not only totals)
    object_holders: bool = True  # which processes hold an object
    gpu_metrics: bool = True  # per-GPU utilization and memory
    state_api: bool = True  # state rows and the timeline at all

    def gaps(self) -> list[str]:
        """Human-readable degradations (empty for a full engine)."""
        text = {
            "live_state": "task state lags by about a second",
            "cancel_running": "running tasks cannot be interrupted",
            "cancel_sync_actor_call": "a running sync actor call cannot be interrupted",
            "progress_on_get": "no automatic progress bar on get",
            "ref_failures": "progress cannot tell failed refs from finished ones",
            "refresh_redefined": "redefined helpers need the remote function's cell re-run",
            "per_node_available": "available resources known for the cluster, not per node",
            "object_holders": "object holders unknown",
            "gpu_metrics": "no GPU metrics",
            "state_api": "no state API (no widgets data)",
        }
        out = [v for k, v in text.items() if not getattr(self, k)]
        if self.output_routing != "exact":
            out.insert(0, f"remote output routed {self.output_routing}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class NotebookBackend(Protocol):
    """One engine as the notebook layer sees it (see the module docstring)."""

    engine: str  # "carme" | "ray"
    address: str | None  # what connect() was given (None: the engine's default)
    capabilities: Capabilities

    # -- connection
    def is_connected(self) -> bool: ...
    def connect(self, address: str | None) -> ModuleType: ...
    def attach(self) -> ModuleType: ...  # adopt a session user code already started
    def disconnect(self) -> None: ...
    def api(self) -> ModuleType: ...  # carme or ray, the Ray-compatible API
    def versions(self) -> dict[str, str]: ...
    def describe(self) -> str: ...  # where it is connected, in words

    # -- cells and output
    def set_tag_provider(self, fn: TagProvider | None) -> None: ...
    def cell_started(self, tag: dict[str, Any]) -> None: ...
    def set_output_sink(self, fn: OutputSink | None) -> None: ...
    def cancel_tagged(self, match: Callable[[Any], bool], force: bool = False) -> int: ...
    def uninterruptible(self, match: Callable[[Any], bool]) -> int: ...

    # -- objects and functions
    def ref_states(self, refs: Sequence[Any]) -> list[str]: ...
    def set_get_hook(self, fn: Callable[[list[Any]], Any] | None) -> bool: ...
    def invalidate_exports(self, values: Iterable[Any]) -> int: ...
    def is_remote_object(self, value: Any) -> bool: ...

    # -- state
    def state_rows(self, kind: str) -> list[dict[str, Any]]: ...
    def timeline_events(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Target:
    engine: str  # "carme" | "ray"
    address: str | None  # engine-specific: None = the engine's default
    client: bool = False  # Ray Client (ray://)


def parse_target(text: str | None) -> Target:
    """``ray`` / ``ray:HOST:PORT`` / ``ray://HOST:PORT`` / carme address / None."""
    if text is None or not text.strip():
        return Target("carme", None)
    text = text.strip()
    if text == "ray":
        return Target("ray", None)
    if text.startswith("ray://"):
        rest = text[len("ray://"):]
        _check_host_port(text, rest)
        return Target("ray", text, client=True)
    if text.startswith("ray:"):
        rest = text[len("ray:"):]
        _check_host_port(text, rest)
        return Target("ray", rest)
    return Target("carme", text)


def _check_host_port(text: str, rest: str) -> None:
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"{text!r} is not a Ray address: expected ray, ray:HOST:PORT (the GCS address, "
            "e.g. ray:127.0.0.1:6379) or ray://HOST:PORT (Ray Client)"
        )


def backend_for(target: Target) -> NotebookBackend:
    """A fresh backend for ``target`` (not connected yet)."""
    if target.engine == "ray":
        from ._ray import RayBackend

        return RayBackend(client=target.client)
    from ._carme import CarmeBackend

    return CarmeBackend()


class _Active:
    """The one explicit context object of this module: the backend the widgets read."""

    backend: NotebookBackend | None = None


_ACTIVE = _Active()


def set_active(backend: NotebookBackend | None) -> None:
    _ACTIVE.backend = backend


def active() -> NotebookBackend:
    """The notebook session's backend, else carme's (never connects)."""
    if _ACTIVE.backend is None:
        from ._carme import CarmeBackend

        _ACTIVE.backend = CarmeBackend()
    return _ACTIVE.backend
