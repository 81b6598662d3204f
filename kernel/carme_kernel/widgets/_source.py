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

    Uses the driver's own record of each object it owns; refs it does not know
    are asked with ``carme.wait(..., timeout=0)``.
    """
    carme = sys.modules.get("carme")
    if carme is None or not carme.is_initialized():
        raise NotConnected("carme is not initialized")
    from carme._context import maybe_core

    core = maybe_core()
    probe = getattr(core, "objects", None)
    ready = [False] * len(refs)
    failed = [False] * len(refs)
    unknown: list[int] = []
    for i, ref in enumerate(refs):
        entry = probe.get(ref.binary()) if probe is not None else None
        if entry is None:
            unknown.append(i)
            continue
        payload = entry.payload
        if payload is not None:
            ready[i] = True
            failed[i] = bool(len(payload) > 3 and payload[3])
    if unknown:
        uniq = list({refs[i]: None for i in unknown})
        done, _ = carme.wait(uniq, num_returns=len(uniq), timeout=0)
        done_set = set(done)
        for i in unknown:
            ready[i] = refs[i] in done_set
    return ready, failed
