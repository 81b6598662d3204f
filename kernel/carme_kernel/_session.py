"""The notebook's side of the cluster: one :class:`NotebookSession` per IPython shell.

Theory of operation
-------------------
* **Joining.** Nothing connects at kernel start. :meth:`NotebookSession.connect`
  runs on first use (a magic, or a view) with the address from ``%carme
  connect``, else ``CARME_ADDRESS``, else the JupyterLab side panel's selection
  as it is *now* (``carme.notebook.default_address``: the server gives kernels
  the path of its selection file, never the address, so a restarted kernel
  follows the panel), else none (an embedded local carme cluster). The address picks the engine (``engines.parse_target``: ``ray``,
  ``ray:HOST:PORT``, ``ray://HOST:PORT`` are Ray; anything else is carme), and
  the session talks to it only through its :class:`~carme_kernel.engines.NotebookBackend`.
  ``%carme connect`` also exports ``CARME_ADDRESS`` so a ``carme.init()`` the
  user writes in a cell joins the same cluster. A ``ray.init()`` written in a
  cell is adopted through Ray's post-init hooks (``engines._ray.watch_ray_init``).
* **Cell tags.** IPython's ``pre_run_cell``/``post_run_cell`` events bracket every
  cell. On ``pre_run_cell`` the session makes a tag ``{"run", "msg_id",
  "execution_count", "cell_id"}`` and remembers the execute_request's parent
  header in the :class:`~carme_kernel._output.OutputRouter`. carme asks
  :meth:`current_tag` on every submission (``carme.notebook``), so each task and
  actor call records its cell; between cells the last cell's tag is used
  (work started by a thread of that cell). On Ray the backend records when each
  cell started and matches tasks to cells by creation time (``engines._ray_rows``).
* **Output.** In a kernel, remote output comes back through the router as
  ``stream`` messages parented to the launching cell. In a terminal IPython
  carme's default printing is kept.
* **Interrupt.** A KeyboardInterrupt that ends a cell cancels every unfinished
  task and actor call tagged with that cell (IPython's custom exception handler,
  else ``post_run_cell``; ``%%remote`` also cancels before re-raising); a second
  interrupt of the same cell forces. The cell ends with a short traceback of the
  user's own frames and the message "cancelled N remote tasks of this cell"
  (``_interrupt``).
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

import contextlib
import importlib.util
import inspect
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from carme.notebook import Choice, default_address

from . import _interrupt, engines
from ._output import OutputRouter, Parent
from .engines import NotebookBackend, backend_for, parse_target

__all__ = ["NotebookSession", "holds_refs"]

SAME_INTERRUPT_S = 0.5


def holds_refs(value: Any, is_ref: Callable[[Any], bool] | None = None) -> bool:
    """True if ``value`` is an ObjectRef or a list/tuple/set/dict that holds one directly.

    ``is_ref`` defaults to the active engine's test (``engines.active()``).
    """
    if is_ref is None:
        is_ref = engines.active().is_remote_object
    if is_ref(value):
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(is_ref(v) for v in value)
    if isinstance(value, dict):
        return any(is_ref(v) for v in value.values()) or any(is_ref(k) for k in value)
    return False


def _definitions(ns: Mapping[str, Any]) -> dict[str, int]:
    """Identity of each notebook-level function and class, to notice redefinitions."""
    return {
        k: id(v)
        for k, v in ns.items()
        if not k.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v))
    }


def _export_ray_address(target: engines.Target, replace: bool = False) -> None:
    """Let plain Ray code in cells (``ray.init()``, or Ray's auto-init on first
    ``.remote()``) join the cluster the kernel was pointed at (``RAY_ADDRESS``)."""
    if target.engine != "ray" or not target.address:
        return
    if replace:
        os.environ["RAY_ADDRESS"] = target.address
    else:
        os.environ.setdefault("RAY_ADDRESS", target.address)


def _use_choice(choice: Choice) -> None:
    """Prepare for the cluster ``default_address()`` chose: for a Ray cluster, what its
    drivers need (``RAY_AUTH_MODE`` from the panel's selection) and ``RAY_ADDRESS``."""
    target = parse_target(choice.address)
    if target.engine == "ray":
        for name, value in choice.env.items():
            os.environ.setdefault(name, value)
        _export_ray_address(target)


def _ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


class NotebookSession:
    """Cluster connection, cell tagging, output routing and cleanup for one shell."""

    def __init__(self, shell: Any, kernel: Any = None) -> None:
        self.shell = shell
        self.kernel = kernel
        self.address: str | None = None  # set by %carme connect
        self.connected_to: str | None = None
        self.backend: NotebookBackend = backend_for(parse_target(None))
        self.router = OutputRouter(self._send_stream, self._fallback)
        self.namespaces: dict[str, Any] = {}  # --actor name -> actor handle
        self._current: dict[str, Any] | None = None
        self._last: dict[str, Any] | None = None
        self._registered = False
        self._orig_update_user_ns: Callable[[Any], None] | None = None
        self._defs: dict[str, int] | None = None
        self._cancelled_runs: dict[str, tuple[float, bool]] = {}  # run -> (first cancel, forced)
        self._cancel_counts: dict[str, int] = {}  # run -> tasks and calls cancelled
        self._interrupt_handled: str | None = None  # the run whose interrupt was shown

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
        self.shell.set_custom_exc((KeyboardInterrupt,), _interrupt.handler(self._cancel_interrupted))
        engines.set_active(self.backend)
        self.install_hooks()
        with contextlib.suppress(ValueError):  # a bad address is reported on connect
            _use_choice(default_address())
        if _ray_installed():
            from .engines._ray import watch_ray_init

            watch_ray_init(self._adopt_ray)

    def unregister(self) -> None:
        if not self._registered:
            return
        self.shell.events.unregister("pre_run_cell", self._pre_run_cell)
        self.shell.events.unregister("post_run_cell", self._post_run_cell)
        if self._orig_update_user_ns is not None:
            self.shell.displayhook.update_user_ns = self._orig_update_user_ns
        self._registered = False
        if tuple(getattr(self.shell, "custom_exceptions", ())) == (KeyboardInterrupt,):
            self.shell.set_custom_exc((), None)
        self._remove_hooks(self.backend)
        if _ray_installed():
            from .engines._ray import watch_ray_init

            watch_ray_init(None)
        engines.set_active(None)

    def _remove_hooks(self, backend: NotebookBackend) -> None:
        backend.set_tag_provider(None)
        if self.kernel is not None:
            backend.set_output_sink(None)
            backend.set_get_hook(None)

    def install_hooks(self) -> None:
        """Point the engine's tag provider (and, in a kernel, its output sink) at this session."""
        backend = self.backend
        backend.set_tag_provider(self.current_tag)
        if self.kernel is not None:
            backend.set_output_sink(self.router.handle)
            from . import _progress_hook

            _progress_hook.install(self.kernel, backend)

    def _use(self, backend: NotebookBackend) -> None:
        """Make ``backend`` this session's engine (hooks moved over)."""
        if backend is self.backend:
            return
        self._remove_hooks(self.backend)
        self.backend = backend
        engines.set_active(backend)
        self.install_hooks()

    def _adopt_ray(self) -> None:
        """Ray's post-init hook: a ray.init() (ours or a cell's) just connected."""
        if self.backend.engine != "ray":
            from .engines._ray import RayBackend

            self.disconnect()  # leave a carme cluster first: one engine at a time
            self._use(RayBackend())
            for tag in (self._last, self._current):
                if tag is not None:
                    self.backend.cell_started(tag)
        self.backend.attach()
        if self.connected_to is None:
            self.connected_to = "Ray session started by ray.init() in a cell"

    # -- cluster ----------------------------------------------------------------
    def api(self) -> ModuleType:
        """The Ray-compatible API module of the current engine (carme or ray)."""
        return self.backend.api()

    def connect(self, address: str | None = None) -> ModuleType:
        """Join the cluster if not joined yet; return the engine's API module.

        ``address`` (from ``%carme connect``), else the remembered one, else
        ``CARME_ADDRESS``, picks the engine (``engines.parse_target``).
        """
        if address is not None and self.backend.is_connected():
            self.disconnect()
        if self.backend.is_connected():
            if self.connected_to is None:
                self.connected_to = "cluster joined by init() in a cell"
            return self.backend.attach()
        choice = None if address or self.address else default_address()
        text = address or self.address or (choice.address if choice else None)
        target = parse_target(text)
        if choice is not None:
            _use_choice(choice)
        if target.engine != self.backend.engine or (
            target.engine == "ray" and getattr(self.backend, "client", False) != target.client
        ):
            self._use(backend_for(target))
        self.install_hooks()
        api = self.backend.connect(target.address)
        self.connected_to = self.backend.describe() if text else (
            "embedded local cluster" if target.engine == "carme" else self.backend.describe()
        )
        if address is not None:  # remembered only once it worked
            self.address = address
            os.environ["CARME_ADDRESS"] = address
            _export_ray_address(target, replace=True)
        return api

    def disconnect(self) -> None:
        self.namespaces.clear()
        if self.backend.is_connected():
            self.backend.disconnect()
        self.connected_to = None

    def close(self) -> None:
        """Cancel this kernel's work, end its namespaces, leave the cluster."""
        backend = self.backend
        if not backend.is_connected():
            return
        api = backend.api()
        try:
            backend.cancel_tagged(lambda tag: bool(tag), force=True)
            for handle in list(self.namespaces.values()):
                try:
                    api.kill(handle)
                except Exception:
                    pass
        finally:
            self.namespaces.clear()
            backend.disconnect()
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
        self.backend.cell_started(tag)

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
        if (
            tag is not None
            and isinstance(getattr(result, "error_in_exec", None), KeyboardInterrupt)
            and tag.get("run") != self._interrupt_handled
        ):
            self.cancel_cell(tag)

    def _cancel_interrupted(self) -> tuple[int, bool] | None:
        """A KeyboardInterrupt is ending the running cell: cancel its work; how many of its
        tasks and actor calls were cancelled in all, and whether the engine's task state is
        live (None: no cluster joined)."""
        tag = self._current
        if tag is None or not self.backend.is_connected():
            return None
        self.cancel_cell(tag)
        run = tag.get("run")
        self._interrupt_handled = run if isinstance(run, str) else None
        count = self._cancel_counts.get(run, 0) if isinstance(run, str) else 0
        return count, bool(self.backend.capabilities.live_state)

    def _refresh_exports(self) -> None:
        """After a cell (re)defined a notebook function or class, re-ship remote functions.

        carme pickles a ``@carme.remote`` function (with the notebook helpers it
        uses, by value) on its first call and reuses that; a helper redefined in
        a later cell would go unnoticed. When the notebook's functions or classes
        changed, the engine drops those cached pickles so the next call ships the
        current definitions (unchanged ones pickle to the same bytes, which
        workers already have). Ray cannot (capability ``refresh_redefined``).
        """
        defs = _definitions(self.shell.user_ns)
        changed = self._defs is not None and defs != self._defs
        self._defs = defs
        if changed and self.backend.is_connected():
            self.backend.invalidate_exports(list(self.shell.user_ns.values()))

    def cancel_cell(self, tag: Mapping[str, Any] | None = None) -> int:
        """Cancel unfinished work launched by the cell ``tag`` (default: the running cell).

        The first interrupt of a cell execution cancels gently (a running task gets
        KeyboardInterrupt); a second one forces (workers running its tasks are
        killed). Where the engine cannot interrupt a running call (a sync actor
        method on Ray), one line says so.
        """
        if tag is None:
            tag = self._current
        backend = self.backend
        if tag is None or not backend.is_connected():
            return 0
        run = tag.get("run")

        def match(t: Any) -> bool:
            return isinstance(t, Mapping) and t.get("run") == run

        # One interrupt can reach here twice (%%remote cancels, then post_run_cell):
        # calls closer than SAME_INTERRUPT_S count once.
        now = time.monotonic()
        last = self._cancelled_runs.get(run) if isinstance(run, str) else None
        force = last is not None and now - last[0] >= SAME_INTERRUPT_S
        if isinstance(run, str):
            self._cancelled_runs[run] = (now if last is None or force else last[0], force)
        if last is not None and not force:
            return 0
        count = int(backend.cancel_tagged(match, force=force))
        if isinstance(run, str):
            # a forced second interrupt cancels the same work again: count it once
            self._cancel_counts[run] = max(self._cancel_counts.get(run, 0), count)
        stuck = backend.uninterruptible(match)
        if stuck:
            print(
                f"carme: {stuck} running actor call(s) of this cell cannot be interrupted on "
                f"{backend.engine} (a sync actor method runs to the end); kill the actor to stop it",
                file=sys.stderr,
            )
        return count

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
