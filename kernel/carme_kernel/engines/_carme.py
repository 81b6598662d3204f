"""carme's runtime behind the notebook seam, through its public ``carme.notebook`` surface."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

from . import Capabilities, NotConnected, OutputSink, TagProvider

__all__ = ["CarmeBackend"]

_LOST = ("LocalRayletDiedError", "RaySystemError", "GetTimeoutError")


class CarmeBackend:
    """carme embedded, or a carme cluster joined by address."""

    engine = "carme"
    capabilities = Capabilities()

    def __init__(self) -> None:
        self.address: str | None = None

    # -- connection ----------------------------------------------------------------------
    def api(self) -> ModuleType:
        import carme

        return carme

    def is_connected(self) -> bool:
        import carme

        return bool(carme.is_initialized())

    def connect(self, address: str | None) -> ModuleType:
        carme = self.api()
        if not carme.is_initialized():
            # no address: the session found none (CARME_ADDRESS, the panel's selection)
            carme.init(address=address or "local")
        self.address = address
        return carme

    def attach(self) -> ModuleType:
        return self.api()

    def disconnect(self) -> None:
        carme = self.api()
        if carme.is_initialized():
            carme.shutdown()

    def versions(self) -> dict[str, str]:
        return {"carme": self.api().__version__, "python": platform.python_version()}

    def describe(self) -> str:
        return self.address or "embedded local cluster"

    # -- cells and output ------------------------------------------------------------------
    def set_tag_provider(self, fn: TagProvider | None) -> None:
        from carme import notebook

        notebook.set_task_tag_provider(fn)

    def cell_started(self, tag: dict[str, Any]) -> None:
        """carme asks the tag provider on every submission; nothing to record."""

    def set_output_sink(self, fn: OutputSink | None) -> None:
        from carme import notebook

        notebook.set_log_handler(fn)

    def cancel_tagged(self, match: Callable[[Any], bool], force: bool = False) -> int:
        from carme import notebook

        return int(notebook.cancel_tagged(match, force))

    def uninterruptible(self, match: Callable[[Any], bool]) -> int:
        return 0

    # -- objects and functions ---------------------------------------------------------------
    def ref_states(self, refs: Sequence[Any]) -> list[str]:
        from carme import notebook

        if not self.is_connected():
            raise NotConnected("carme is not initialized")
        return list(notebook.ref_states(list(refs)))

    def set_get_hook(self, fn: Callable[[list[Any]], Any] | None) -> bool:
        from carme import notebook

        notebook.set_get_hook(fn)
        return True

    def invalidate_exports(self, values: Iterable[Any]) -> int:
        from carme import notebook

        return int(notebook.invalidate_exports(values))

    def is_remote_object(self, value: Any) -> bool:
        from carme import notebook

        return notebook.is_remote_object(value)

    # -- state ---------------------------------------------------------------------------
    def _checked(self, read: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        if not self.is_connected():
            raise NotConnected("carme is not initialized: run carme.init() (or a %%remote cell) first")
        try:
            return read()
        except (ConnectionError, OSError, EOFError) as exc:
            raise NotConnected(f"the cluster stopped answering: {exc}") from exc
        except Exception as exc:
            if type(exc).__name__ in _LOST:
                raise NotConnected(f"the cluster stopped answering: {exc}") from exc
            raise

    def state_rows(self, kind: str) -> list[dict[str, Any]]:
        from carme import notebook

        return self._checked(lambda: notebook.state_rows(kind))

    def timeline_events(self) -> list[dict[str, Any]]:
        from carme import notebook

        return self._checked(notebook.timeline_events)
