"""The notebook's side of the cluster: one :class:`NotebookSession` per IPython shell.

Theory of operation
-------------------
* **Joining.** Nothing connects at kernel start. :meth:`NotebookSession.connect`
  runs on first use (a magic, or a view) and calls ``carme.init`` with the
  address from ``%carme connect``, else ``CARME_ADDRESS``, else none (an
  embedded local cluster). ``%carme connect`` also exports ``CARME_ADDRESS`` so
  a ``carme.init()`` the user writes in a cell joins the same cluster.
* **Cell tags.** IPython's ``pre_run_cell``/``post_run_cell`` events bracket every
  cell. On ``pre_run_cell`` the session makes a tag ``{"run", "msg_id",
  "execution_count", "cell_id"}`` and remembers the execute_request's parent
  header in the :class:`~carme_kernel._output.OutputRouter`. carme asks
  :meth:`current_tag` on every submission (``carme._hooks``), so each task and
  actor call records its cell; between cells the last cell's tag is used
  (work started by a thread of that cell).
* **Output.** In a kernel, remote output comes back through the router as
  ``stream`` messages parented to the launching cell. In a terminal IPython
  carme's default printing is kept.
* **Interrupt.** A KeyboardInterrupt that ends a cell cancels every unfinished
  task and actor call tagged with that cell (``post_run_cell``; ``%%remote``
  also cancels before re-raising).
* **Output history.** A displayed result that holds ObjectRefs is kept out of
  ``Out``/``_N`` (``_``, ``__``, ``___`` still rotate), so re-running a cell does
  not pin one more object per run.
* **Redefinitions.** When a cell (re)defines a notebook function or class,
  ``@carme.remote`` functions and classes in the namespace drop their cached
  pickle, so the next call ships the current helpers (see
  :meth:`NotebookSession._refresh_exports`).
* **Shutdown.** :meth:`close` cancels this kernel's work, kills its
  ``--actor`` namespaces, and shuts the driver down (the embedded cluster goes
  with it; on a shared cluster the driver's non-detached actors die and its
  objects are released).
"""

from __future__ import annotations

import inspect
import os
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from ._output import OutputRouter, Parent

__all__ = ["NotebookSession", "holds_refs"]


def _is_ref(value: Any) -> bool:
    carme = sys.modules.get("carme")
    kinds = tuple(
        k
        for k in (getattr(carme, "ObjectRef", None), getattr(carme, "ObjectRefGenerator", None))
        if isinstance(k, type)
    )
    return bool(kinds) and isinstance(value, kinds)


def holds_refs(value: Any) -> bool:
    """True if ``value`` is an ObjectRef or a list/tuple/set/dict that holds one directly."""
    if _is_ref(value):
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_is_ref(v) for v in value)
    if isinstance(value, dict):
        return any(_is_ref(v) for v in value.values()) or any(_is_ref(k) for k in value)
    return False


def _definitions(ns: Mapping[str, Any]) -> dict[str, int]:
    """Identity of each notebook-level function and class, to notice redefinitions."""
    return {
        k: id(v)
        for k, v in ns.items()
        if not k.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v))
    }


class NotebookSession:
    """Cluster connection, cell tagging, output routing and cleanup for one shell."""

    def __init__(self, shell: Any, kernel: Any = None) -> None:
        self.shell = shell
        self.kernel = kernel
        self.address: str | None = None  # set by %carme connect
        self.connected_to: str | None = None
        self.router = OutputRouter(self._send_stream, self._fallback)
        self.namespaces: dict[str, Any] = {}  # --actor name -> actor handle
        self._current: dict[str, Any] | None = None
        self._last: dict[str, Any] | None = None
        self._registered = False
        self._orig_update_user_ns: Callable[[Any], None] | None = None
        self._defs: dict[str, int] | None = None

    # -- registration ----------------------------------------------------------
    def register(self) -> None:
        if self._registered:
            return
        self.shell.events.register("pre_run_cell", self._pre_run_cell)
        self.shell.events.register("post_run_cell", self._post_run_cell)
        dh = self.shell.displayhook
        self._orig_update_user_ns = dh.update_user_ns
        dh.update_user_ns = self._update_user_ns
        self._registered = True
        self.install_hooks()

    def unregister(self) -> None:
        if not self._registered:
            return
        self.shell.events.unregister("pre_run_cell", self._pre_run_cell)
        self.shell.events.unregister("post_run_cell", self._post_run_cell)
        if self._orig_update_user_ns is not None:
            self.shell.displayhook.update_user_ns = self._orig_update_user_ns
        self._registered = False
        hooks = self._hooks()
        if hooks is not None:
            hooks.set_task_tag_provider(None)
            if self.kernel is not None:
                hooks.set_log_handler(None)
                from . import _progress_hook
                _progress_hook.uninstall()

    @staticmethod
    def _hooks() -> Any:
        """carme's driver hooks (``carme._hooks``), or None without carme."""
        try:
            from carme import _hooks
        except ImportError:
            return None
        return _hooks

    def install_hooks(self) -> None:
        """Point carme's tag provider (and, in a kernel, its log handler) at this session."""
        hooks = self._hooks()
        if hooks is None:
            return
        hooks.set_task_tag_provider(self.current_tag)
        if self.kernel is not None:
            hooks.set_log_handler(self.router.handle)
            from . import _progress_hook
            _progress_hook.install(self.kernel)

    # -- cluster ----------------------------------------------------------------
    def connect(self, address: str | None = None) -> Any:
        """Join the cluster if not joined yet; return the ``carme`` module."""
        import carme

        if address is not None and carme.is_initialized():
            self.disconnect()
        self.install_hooks()
        if not carme.is_initialized():
            target = address or self.address or os.environ.get("CARME_ADDRESS") or None
            if target:
                carme.init(address=target)
            else:
                carme.init()
            self.connected_to = target or "embedded local cluster"
            if address is not None:  # remembered only once it worked
                self.address = address
                os.environ["CARME_ADDRESS"] = address
        elif self.connected_to is None:
            self.connected_to = "cluster joined by carme.init() in a cell"
        return carme

    def disconnect(self) -> None:
        import carme

        self.namespaces.clear()
        if carme.is_initialized():
            carme.shutdown()
        self.connected_to = None

    def close(self) -> None:
        """Cancel this kernel's work, end its namespaces, leave the cluster."""
        carme = sys.modules.get("carme")
        if carme is None or not carme.is_initialized():
            return
        hooks = self._hooks()
        try:
            if hooks is not None:
                hooks.cancel_tagged(lambda tag: bool(tag), force=True)
            for handle in list(self.namespaces.values()):
                try:
                    carme.kill(handle)
                except Exception:
                    pass
        finally:
            self.namespaces.clear()
            carme.shutdown()
            self.connected_to = None

    # -- cells ------------------------------------------------------------------
    def current_tag(self) -> dict[str, Any] | None:
        return self._current or self._last

    def _parent(self) -> Parent | None:
        if self.kernel is None:
            return None
        try:
            parent = self.kernel.get_parent("shell")
        except Exception:
            return None
        return dict(parent) if isinstance(parent, Mapping) and parent.get("header") else None

    def _pre_run_cell(self, info: Any) -> None:
        parent = self._parent()
        msg_id = parent["header"].get("msg_id") if parent else None
        run = msg_id or uuid.uuid4().hex
        tag = {
            "run": run,
            "msg_id": msg_id,
            "execution_count": self._execution_count(info),
            "cell_id": getattr(info, "cell_id", None),
        }
        if parent is not None:
            self.router.register(run, dict(parent["header"]))
        self._current = tag

    def _execution_count(self, info: Any) -> int:
        # IPython releases differ in whether execution_count is already advanced
        # when pre_run_cell fires; the input history (stored right after the
        # event, one entry per cell after a leading "") is the same in all.
        hm = getattr(self.shell, "history_manager", None)
        if getattr(info, "store_history", False) and hm is not None:
            return len(hm.input_hist_parsed)
        return int(self.shell.execution_count)

    def cell_label(self) -> str:
        tag = self.current_tag()
        count = tag.get("execution_count") if tag else None
        return f"In[{count if count is not None else ' '}]"

    def _post_run_cell(self, result: Any) -> None:
        self._refresh_exports()
        tag = self._current
        self._current = None
        if tag is not None:
            self._last = tag
        if tag is not None and isinstance(
            getattr(result, "error_in_exec", None), KeyboardInterrupt
        ):
            self.cancel_cell(tag)

    def _refresh_exports(self) -> None:
        """After a cell (re)defined a notebook function or class, re-ship remote functions.

        carme pickles a ``@carme.remote`` function (with the notebook helpers it
        uses, by value) on its first call and reuses that; a helper redefined in
        a later cell would go unnoticed. When the notebook's functions or classes
        changed, the cached pickles are dropped so the next call ships the
        current definitions (unchanged ones pickle to the same bytes, which
        workers already have).
        """
        defs = _definitions(self.shell.user_ns)
        changed = self._defs is not None and defs != self._defs
        self._defs = defs
        if not changed or "carme" not in sys.modules:
            return
        hooks = self._hooks()
        invalidate = getattr(hooks, "invalidate_exports", None)
        if invalidate is not None:
            invalidate()
            return
        for value in list(self.shell.user_ns.values()):
            kind = type(value)
            if kind.__module__.startswith("carme.") and kind.__name__ in (
                "RemoteFunction",
                "ActorClass",
            ):
                for attr in ("_key", "_blob"):
                    if hasattr(value, attr):
                        setattr(value, attr, None)

    def cancel_cell(self, tag: Mapping[str, Any] | None = None) -> int:
        """Cancel unfinished work launched by the cell ``tag`` (default: the running cell)."""
        if tag is None:
            tag = self._current
        hooks = self._hooks()
        carme = sys.modules.get("carme")
        if tag is None or hooks is None or carme is None or not carme.is_initialized():
            return 0
        run = tag.get("run")
        return int(hooks.cancel_tagged(lambda t: t is not None and t.get("run") == run))

    # -- output -----------------------------------------------------------------
    def _send_stream(self, parent: Parent, stream: str, text: str) -> None:
        kernel = self.kernel
        kernel.session.send(
            kernel.iopub_socket,
            "stream",
            {"name": stream, "text": text},
            parent=parent,
            ident=f"stream.{stream}".encode(),
        )

    @staticmethod
    def _fallback(stream: str, text: str) -> None:
        target = sys.__stderr__ if stream == "stderr" else sys.__stdout__
        if target is not None:
            target.write(text)
            target.flush()

    def _update_user_ns(self, result: Any) -> None:
        assert self._orig_update_user_ns is not None
        self._orig_update_user_ns(result)
        if holds_refs(result):
            count = self.shell.displayhook.prompt_count
            out = self.shell.user_ns.get("_oh")
            if isinstance(out, dict) and out.get(count) is result:
                del out[count]
            key = f"_{count}"
            for ns in (self.shell.user_ns, self.shell.user_ns_hidden):
                if ns.get(key) is result:
                    del ns[key]
