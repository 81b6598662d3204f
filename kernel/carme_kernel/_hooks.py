"""The driver hooks the kernel needs from carme: cell tags, output routing, cancel by tag.

carme provides them in ``carme._hooks`` (``set_task_tag_provider``,
``set_log_handler``, ``cancel_tagged``). Until a carme without that module is
gone, :class:`_Fallback` sets the same callbacks on the running driver's core
object (``tag_provider``, ``log_handler``) and cancels through its submitter;
:meth:`reapply` re-installs them after each ``carme.init`` (the session calls
it when it joins, and before every cell). Everything is looked up with
``getattr``: a carme that lacks a piece simply gets less routing, never an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Hooks", "get_hooks"]

Tag = dict[str, Any] | None
Provider = Callable[[], Tag]
LogHandler = Callable[[Tag, str, str], None]


class Hooks:
    """Interface of ``carme._hooks`` as the kernel uses it."""

    def set_task_tag_provider(self, fn: Provider | None) -> None:
        raise NotImplementedError

    def set_log_handler(self, fn: LogHandler | None) -> None:
        raise NotImplementedError

    def cancel_tagged(self, match: Callable[[Tag], bool], force: bool = False) -> int:
        raise NotImplementedError

    def reapply(self) -> None:
        """Re-install the callbacks on a driver started since they were set."""


class _Module(Hooks):
    def __init__(self, module: Any) -> None:
        self._m = module

    def set_task_tag_provider(self, fn: Provider | None) -> None:
        self._m.set_task_tag_provider(fn)

    def set_log_handler(self, fn: LogHandler | None) -> None:
        self._m.set_log_handler(fn)

    def cancel_tagged(self, match: Callable[[Tag], bool], force: bool = False) -> int:
        return int(self._m.cancel_tagged(match, force=force))


class _Fallback(Hooks):
    def __init__(self) -> None:
        self.provider: Provider | None = None
        self.handler: LogHandler | None = None
        self._applied_to: int | None = None

    @staticmethod
    def _core() -> Any:
        try:
            from carme._context import STATE
        except ImportError:
            return None
        return getattr(STATE, "core", None)

    def set_task_tag_provider(self, fn: Provider | None) -> None:
        self.provider = fn
        self._applied_to = None
        self.reapply()

    def set_log_handler(self, fn: LogHandler | None) -> None:
        self.handler = fn
        core = self._core()
        if fn is None and hasattr(core, "log_handler"):
            core.log_handler = None  # back to carme's default printing
        self._applied_to = None
        self.reapply()

    def reapply(self) -> None:
        core = self._core()
        if core is None or id(core) == self._applied_to:
            return
        if hasattr(core, "tag_provider"):
            core.tag_provider = self.provider
        if hasattr(core, "log_handler") and self.handler is not None:
            core.log_handler = self.handler
        self._applied_to = id(core)

    def cancel_tagged(self, match: Callable[[Tag], bool], force: bool = False) -> int:
        core = self._core()
        submitter = getattr(core, "submitter", None)
        cancel = getattr(submitter, "cancel_matching", None)
        if cancel is None:
            return 0
        return int(cancel(match, force))


_FALLBACK = _Fallback()


def get_hooks() -> Hooks | None:
    """carme's hooks, or None when carme cannot be imported."""
    try:
        from carme import _hooks
    except ImportError:
        pass
    else:
        return _Module(_hooks)
    try:
        import carme  # noqa: F401
    except ImportError:
        return None
    return _FALLBACK
