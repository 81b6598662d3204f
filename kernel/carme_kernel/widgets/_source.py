"""Where the widgets read the cluster: carme's state API, behind a small interface.

:class:`CarmeSource` reads the connected driver's state API and never starts a
cluster: when carme is not initialized (never was, or shut down) every read
raises :class:`NotConnected`, which the widgets show as "not connected".
Tests hand the widgets a fake source with the same methods.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Protocol

LIMIT = 100_000


class NotConnected(RuntimeError):
    """carme is not initialized in this process (or the cluster went away)."""


class Source(Protocol):
    def nodes(self) -> list[dict[str, Any]]: ...
    def workers(self) -> list[dict[str, Any]]: ...
    def tasks(self) -> list[dict[str, Any]]: ...
    def objects(self) -> list[dict[str, Any]]: ...
    def timeline(self) -> list[dict[str, Any]]: ...


def _carme() -> Any:
    import carme

    if not carme.is_initialized():
        raise NotConnected("carme is not initialized: run carme.init() (or a %%remote cell) first")
    return carme


class CarmeSource:
    """The state API of the carme driver in this process."""

    def _list(self, name: str) -> list[dict[str, Any]]:
        _carme()
        from carme.util import state

        try:
            rows = getattr(state, f"list_{name}")(detail=True, limit=LIMIT)
        except (ConnectionError, OSError, EOFError) as exc:
            raise NotConnected(f"the cluster stopped answering: {exc}") from exc
        except Exception as exc:
            if type(exc).__name__ in ("LocalRayletDiedError", "RaySystemError", "GetTimeoutError"):
                raise NotConnected(f"the cluster stopped answering: {exc}") from exc
            raise
        return [dict(r) for r in rows]

    def nodes(self) -> list[dict[str, Any]]:
        return self._list("nodes")

    def workers(self) -> list[dict[str, Any]]:
        return self._list("workers")

    def tasks(self) -> list[dict[str, Any]]:
        return self._list("tasks")

    def objects(self) -> list[dict[str, Any]]:
        return self._list("objects")

    def timeline(self) -> list[dict[str, Any]]:
        return list(_carme().timeline() or [])


def ref_states(refs: Sequence[Any]) -> tuple[list[bool], list[bool]]:
    """(ready, failed) flags per ref, without fetching values or leaving callbacks behind.

    Reads ``carme._hooks.ref_states`` (the driver's own record of its objects).
    """
    carme = sys.modules.get("carme")
    if carme is None or not carme.is_initialized():
        raise NotConnected("carme is not initialized")
    from carme._hooks import ref_states as states_of

    states = states_of(list(refs))
    ready = [s != "pending" for s in states]
    failed = [s == "failed" for s in states]
    return ready, failed
