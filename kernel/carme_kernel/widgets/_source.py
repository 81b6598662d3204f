"""Where the widgets read the cluster: the notebook seam's backend, behind a small interface.

:class:`BackendSource` reads the state rows and timeline of a
:class:`~carme_kernel.engines.NotebookBackend` (by default the active one, looked
up on every read, so a notebook that switches engines keeps its widgets) and
never starts a cluster: when the engine is not initialized every read raises
:class:`NotConnected`, which the widgets show as "not connected". ``notes()``
names the engine and its degradations (capability flags), which the widgets
show under their title. Tests hand the widgets a fake source with the same
methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..engines import NotConnected, NotebookBackend, active

__all__ = ["BackendSource", "CarmeSource", "NotConnected", "Source", "ref_states"]


class Source(Protocol):
    def nodes(self) -> list[dict[str, Any]]: ...
    def workers(self) -> list[dict[str, Any]]: ...
    def tasks(self) -> list[dict[str, Any]]: ...
    def objects(self) -> list[dict[str, Any]]: ...
    def timeline(self) -> list[dict[str, Any]]: ...


class BackendSource:
    """The state of a notebook backend (default: the active one)."""

    def __init__(self, backend: NotebookBackend | None = None) -> None:
        self._backend = backend

    @property
    def backend(self) -> NotebookBackend:
        return self._backend if self._backend is not None else active()

    def _rows(self, kind: str) -> list[dict[str, Any]]:
        backend = self.backend
        if not backend.is_connected():
            raise NotConnected(
                f"{backend.engine} is not initialized: run a %%remote cell or %carme connect first"
            )
        return backend.state_rows(kind)

    def nodes(self) -> list[dict[str, Any]]:
        return self._rows("nodes")

    def workers(self) -> list[dict[str, Any]]:
        return self._rows("workers")

    def tasks(self) -> list[dict[str, Any]]:
        return self._rows("tasks")

    def objects(self) -> list[dict[str, Any]]:
        return self._rows("objects")

    def timeline(self) -> list[dict[str, Any]]:
        backend = self.backend
        if not backend.is_connected():
            raise NotConnected(f"{backend.engine} is not initialized")
        return backend.timeline_events()

    def notes(self) -> list[str]:
        """The engine's name and what it cannot show (empty for carme's runtime)."""
        backend = self.backend
        gaps = backend.capabilities.gaps()
        return [f"engine: {backend.engine}", *gaps] if gaps else []


CarmeSource = BackendSource  # the name older code used


def ref_states(refs: Sequence[Any]) -> tuple[list[bool], list[bool]]:
    """(ready, failed) flags per ref, from the active engine, without fetching values."""
    backend = active()
    if not backend.is_connected():
        raise NotConnected(f"{backend.engine} is not initialized")
    states = backend.ref_states(list(refs))
    ready = [s != "pending" for s in states]
    failed = [s == "failed" for s in states]
    return ready, failed
