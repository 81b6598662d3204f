"""Ray behind the notebook seam: the kernel is a normal Ray driver.

Theory of operation
-------------------
* **Connecting.** :meth:`RayBackend.connect` calls ``ray.init`` (``None``: Ray's
  own rules, ``RAY_ADDRESS`` or a local Ray tied to this kernel; ``HOST:PORT``:
  that GCS; ``ray://HOST:PORT``: Ray Client). A cell that calls ``ray.init``
  itself is adopted the same way: :func:`watch_ray_init` registers a Ray
  post-init hook (``ray._private.worker._post_init_hooks``, which ``ray.init``
  runs after connecting) as soon as ``ray`` is imported, and the hook calls
  :meth:`RayBackend.attach`.
* **Output.** On attach, Ray's own printing handler (``ray_print_logs``) is
  taken off the driver's log dispatcher and ours put on: batches go to a
  :class:`~._ray_logs.LogResolver`; a resolver thread polls this job's task
  state (about every half second while output waits) and hands each batch to
  the output sink with its cell's tag. Nothing is printed twice.
* **Cells.** Ray carries no tag of ours; :meth:`cell_started` records when each
  cell began (:class:`~._ray_rows.CellWindows`) and task rows get their cell
  from their creation time and parent chain (``_ray_rows.assign_cells``).
* **Cancel.** ``ray.cancel`` needs an ObjectRef: a task's first return object id
  is its task id plus the return index, so the unfinished top-level tasks of a
  cell (from task state) are cancelled through refs rebuilt from their ids,
  recursively. Task state lags, so the cancel repeats in the background
  (every 2 s, up to 30 s) for tasks that show up late. Ray cannot interrupt a running sync actor call:
  :meth:`uninterruptible` counts those so the cell can say so.
* **State.** ``ray.util.state`` (with this cluster's address) for rows, the
  dashboard's node summary (with Ray's auth token) for CPU/memory/GPU/store
  metrics; :mod:`._ray_rows` shapes both like carme's rows and builds the
  timeline from task state (never ``ray.timeline()``, which sleeps a second).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.abc
import json
import os
import platform
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

from . import Capabilities, NotConnected, OutputSink, TagProvider
from ._ray_logs import LogResolver, Resolved
from ._ray_rows import CellWindows, assign_cells, node_rows, timeline_events

__all__ = ["RayBackend", "version_mismatch_hint", "watch_ray_init"]

LIMIT = 10_000
JOB_TASKS_LIMIT = 2_000  # the routing poll reads this job's newest tasks only
HANDLER_NAME = "carme_kernel"
POLL_S = 1.0
CANCEL_RETRIES = 15
CANCEL_RETRY_S = 2.0
TERMINAL = frozenset({"FINISHED", "FAILED", "CANCELLED"})

DRIVER_CAPS = Capabilities(
    output_routing="by name and task state",
    live_state=False,
    cancel_sync_actor_call=False,
    progress_on_get=False,
    ref_failures=False,
    refresh_redefined=False,
    object_holders=False,
)
CLIENT_CAPS = dataclasses.replace(
    DRIVER_CAPS,
    output_routing="none",
    per_node_available=False,
    gpu_metrics=False,
    state_api=False,
)


def version_mismatch_hint(exc: BaseException) -> str | None:
    """A clear message for Ray's version-mismatch error on connect, else None."""
    text = str(exc)
    if "version mismatch" not in text.lower():
        return None
    return (
        f"the Ray cluster runs a different Ray or Python version than this kernel "
        f"(this kernel: Ray {_ray_version()}, Python {platform.python_version()}). "
        f"Ray said: {text.strip().splitlines()[0]} ... Install the cluster's Ray and Python "
        "versions in this kernel's environment, or connect to a cluster that matches."
    )


def _ray_version() -> str:
    try:
        import ray

        return str(ray.__version__)
    except ImportError:
        return "not installed"


def _now_ms() -> float:
    return time.time() * 1000.0


class RayBackend:
    """The kernel as a Ray driver (or Ray Client)."""

    engine = "ray"

    def __init__(self, client: bool = False) -> None:
        self.client = client
        self.capabilities = CLIENT_CAPS if client else DRIVER_CAPS
        self.address: str | None = None
        self.windows = CellWindows()
        self._tag_provider: TagProvider | None = None
        self._sink: OutputSink | None = None
        self._owned = False  # this backend called ray.init (so it shuts Ray down)
        self._attached = False
        self._job_id = ""
        self._gcs = ""
        self._resolver: LogResolver | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cancelled: set[str] = set()

    # -- connection ----------------------------------------------------------------------
    def api(self) -> ModuleType:
        try:
            import ray
        except ImportError:
            raise NotConnected(
                "Ray is not installed in this kernel's environment: pip install 'carme[ray]'"
            ) from None
        return ray

    def is_connected(self) -> bool:
        try:
            ray = self.api()
        except NotConnected:
            return False
        return bool(ray.is_initialized())

    def connect(self, address: str | None) -> ModuleType:
        ray = self.api()
        self.address = address
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": True}
            if address:
                kwargs["address"] = address
            try:
                ray.init(**kwargs)
            except Exception as exc:
                hint = version_mismatch_hint(exc)
                if hint is not None:
                    raise RuntimeError(hint) from None
                raise
            self._owned = True
        return self.attach()

    def attach(self) -> ModuleType:
        """Adopt the Ray session of this process (after ray.init, ours or the user's)."""
        ray = self.api()
        if not ray.is_initialized():
            raise NotConnected("Ray is not initialized in this kernel")
        if self._attached:
            return ray
        ctx = ray.get_runtime_context()
        self._job_id = ctx.get_job_id()
        self._gcs = getattr(ctx, "gcs_address", "") or ""
        self._resolver = LogResolver(self.windows, self._job_id)
        if not self.client:
            self._take_over_logs()
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="carme-ray-output", daemon=True
            )
            self._thread.start()
        self._attached = True
        return ray

    def _dispatcher(self) -> Any:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher

        return global_worker_stdstream_dispatcher

    def _take_over_logs(self) -> None:
        d = self._dispatcher()
        d.remove_handler(HANDLER_NAME)
        if self._sink is not None:
            d.remove_handler("ray_print_logs")
            d.add_handler(HANDLER_NAME, self._on_batch)

    def disconnect(self) -> None:
        self._detach()
        ray = self.api()
        if ray.is_initialized():
            ray.shutdown()
        self._owned = False

    def _detach(self) -> None:
        if not self._attached:
            return
        self._attached = False
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with contextlib.suppress(Exception):
            self._dispatcher().remove_handler(HANDLER_NAME)
        if self._resolver is not None:
            with self._lock:
                left = self._resolver.flush()
            self._deliver(left)

    def versions(self) -> dict[str, str]:
        return {"ray": _ray_version(), "python": platform.python_version()}

    def describe(self) -> str:
        if self.client:
            return f"Ray Client at {self.address}"
        if self._gcs:
            return f"Ray cluster at {self._gcs}"
        return "Ray cluster"

    # -- cells and output ------------------------------------------------------------------
    def set_tag_provider(self, fn: TagProvider | None) -> None:
        self._tag_provider = fn

    def cell_started(self, tag: dict[str, Any]) -> None:
        self.windows.open(tag, _now_ms())

    def set_output_sink(self, fn: OutputSink | None) -> None:
        self._sink = fn
        if self._attached and not self.client:
            d = self._dispatcher()
            d.remove_handler(HANDLER_NAME)
            if fn is None:
                from ray._private import worker

                d.add_handler("ray_print_logs", _ray_printer(worker))
            else:
                self._take_over_logs()

    def _on_batch(self, data: dict[str, Any]) -> None:
        resolver = self._resolver
        if resolver is None:
            return
        with self._lock:
            ready = resolver.add(data, _now_ms())
            waiting = resolver.pending()
        self._deliver(ready)
        if waiting:
            self._wake.set()

    def _deliver(self, items: Iterable[Resolved]) -> None:
        sink = self._sink
        for item in items:
            if sink is not None:
                with contextlib.suppress(Exception):
                    sink(item.tag, item.stream, item.text)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=2.0)
            if self._stop.is_set():
                return
            resolver = self._resolver
            if resolver is None or not resolver.pending():
                self._wake.clear()
                continue
            try:
                rows = self._job_tasks()
            except Exception:
                rows = []
            with self._lock:
                done = resolver.resolve(rows, _now_ms())
                left = resolver.pending()
            self._deliver(done)
            if not left:
                self._wake.clear()
            self._stop.wait(POLL_S)

    # -- cancel ---------------------------------------------------------------------------
    def _job_tasks(self) -> list[dict[str, Any]]:
        from ray.util.state import list_tasks

        rows = list_tasks(
            address=self._gcs or None,
            filters=[("job_id", "=", self._job_id)],
            detail=True,
            limit=JOB_TASKS_LIMIT,
            raise_on_missing_output=False,
        )
        return assign_cells([_plain(r) for r in rows], self.windows, self._job_id)

    def _open_tasks(self, match: Callable[[Any], bool]) -> list[dict[str, Any]]:
        rows = [r for r in self._job_tasks() if r.get("state") not in TERMINAL]
        mine = {str(r.get("task_id")) for r in rows if match(r.get("cell"))}
        return [r for r in rows if str(r.get("task_id")) in mine]

    def cancel_tagged(self, match: Callable[[Any], bool], force: bool = False) -> int:
        if not self.is_connected() or self.client:
            return 0
        count = self._cancel_once(match, force)

        def again() -> None:
            # Task state lags (seconds, more under load): tasks the cell launched
            # just before the interrupt show up late; cancel them as they appear,
            # until what was cancelled is all that was open.
            done = count
            for _ in range(CANCEL_RETRIES):
                time.sleep(CANCEL_RETRY_S)
                if not self.is_connected():
                    return
                with contextlib.suppress(Exception):
                    done += self._cancel_once(match, force)
                    if done and not self._open_tasks(match):
                        return

        threading.Thread(target=again, name="carme-ray-cancel", daemon=True).start()
        return count

    def _cancel_once(self, match: Callable[[Any], bool], force: bool) -> int:
        ray = self.api()
        rows = self._open_tasks(match)
        ids = {str(r.get("task_id")) for r in rows}
        count = 0
        for r in rows:
            if str(r.get("parent_task_id")) in ids:
                continue  # recursive cancel of its ancestor covers it
            is_actor = r.get("type") in ("ACTOR_TASK", "ACTOR_CREATION_TASK")
            if r.get("type") == "ACTOR_CREATION_TASK":
                continue
            ref = ray.ObjectRef(bytes.fromhex(str(r["task_id"])) + (1).to_bytes(4, "little"))
            key = f"{r['task_id']}:{force}"
            if key in self._cancelled:
                continue
            try:
                ray.cancel(ref, force=force and not is_actor, recursive=True)
            except Exception:
                continue
            self._cancelled.add(key)
            count += 1
        return count

    def uninterruptible(self, match: Callable[[Any], bool]) -> int:
        if not self.is_connected() or self.client:
            return 0
        try:
            rows = self._open_tasks(match)
        except Exception:
            return 0
        return sum(1 for r in rows if r.get("type") == "ACTOR_TASK" and r.get("state") == "RUNNING")

    # -- objects and functions ---------------------------------------------------------------
    def ref_states(self, refs: Sequence[Any]) -> list[str]:
        ray = self.api()
        if not ray.is_initialized():
            raise NotConnected("Ray is not initialized")
        refs = list(refs)
        if not refs:
            return []
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        done = {r.hex() for r in ready}
        return ["finished" if r.hex() in done else "pending" for r in refs]

    def set_get_hook(self, fn: Callable[[list[Any]], Any] | None) -> bool:
        return False  # ray.get has no hook; ProgressView can still be shown by hand

    def invalidate_exports(self, values: Iterable[Any]) -> int:
        return 0  # Ray pickles a remote function once; no public way to refresh it

    def is_remote_object(self, value: Any) -> bool:
        if not self._attached:
            return False  # no Ray session yet: nothing can hold a Ray ref
        ray = self.api()
        return isinstance(value, (ray.ObjectRef, ray.ObjectRefGenerator))

    # -- state ---------------------------------------------------------------------------
    def _checked_ray(self) -> ModuleType:
        ray = self.api()
        if not ray.is_initialized():
            raise NotConnected("Ray is not initialized: run %carme connect ray (or ray.init()) first")
        if self.client:
            raise NotConnected("state rows are not available through Ray Client (capability state_api)")
        return ray

    def state_rows(self, kind: str) -> list[dict[str, Any]]:
        ray = self._checked_ray()
        from ray.util import state

        lister = getattr(state, f"list_{kind}", None)
        if lister is None:
            raise ValueError(f"unknown state kind {kind!r}; expected nodes, workers, tasks, actors, objects")
        try:
            rows = [
                _plain(r)
                for r in lister(address=self._gcs or None, detail=True, limit=LIMIT,
                                raise_on_missing_output=False)
            ]
        except Exception as exc:
            if not ray.is_initialized():
                raise NotConnected(f"the Ray cluster went away: {exc}") from exc
            raise
        if kind == "tasks":
            return assign_cells(rows, self.windows, self._job_id)
        if kind == "nodes":
            out = node_rows(rows, self._node_summaries())
            alive = [n for n in out if n.get("state") == "ALIVE"]
            if len(alive) == 1:  # one node: the cluster's available resources are its own
                alive[0]["resources_available"] = dict(ray.available_resources())
            return out
        return rows

    def _node_summaries(self) -> list[dict[str, Any]]:
        """The dashboard's node summary (reporter data), [] when it cannot be read."""
        try:
            from ray._private.worker import get_dashboard_url

            url = get_dashboard_url()
            if not url:
                return []
            if not url.startswith("http"):
                url = f"http://{url}"
            req = urllib.request.Request(f"{url}/nodes?view=summary", headers=_auth_headers())
            with urllib.request.urlopen(req, timeout=5) as resp:
                body = json.loads(resp.read().decode())
            return list(body.get("data", {}).get("summary", []))
        except Exception:
            return []

    def timeline_events(self) -> list[dict[str, Any]]:
        return timeline_events(self.state_rows("tasks"), _now_ms())


def _plain(row: Any) -> dict[str, Any]:
    if isinstance(row, dict):
        return dict(row)
    asdict = getattr(row, "asdict", None)
    return dict(asdict()) if callable(asdict) else dict(vars(row))


def _auth_headers() -> dict[str, str]:
    """Ray's auth header for the dashboard (Ray's own helper, else the token from env/file)."""
    try:
        from ray._private.authentication.http_token_authentication import (
            get_auth_headers_if_auth_enabled,
        )

        return dict(get_auth_headers_if_auth_enabled({}))
    except Exception:
        pass
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if not token:
        with contextlib.suppress(OSError):
            with open(path) as f:
                token = f.read().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _ray_printer(worker: Any) -> Callable[[dict[str, Any]], None]:
    import functools

    ignore = worker._should_ignore_worker_log_prefix(worker.global_worker)
    return functools.partial(worker.print_to_stdstream, ignore_prefix=ignore)


# -- adopting a ray.init() written in a cell --------------------------------------------------


class _InitWatch:
    """Run ``callback`` after every successful ``ray.init`` in this process."""

    def __init__(self) -> None:
        self.callback: Callable[[], None] | None = None
        self.hooked = False

    def hook(self) -> None:
        if self.callback is not None:
            with contextlib.suppress(Exception):
                self.callback()

    def install(self) -> bool:
        """Register with Ray's post-init hooks if ``ray`` is imported; True once registered."""
        if self.hooked:
            return True
        # Only if Ray is imported already: importing it here would cost seconds.
        worker = sys.modules.get(_WORKER_MODULE)
        hooks = getattr(worker, "_post_init_hooks", None)
        if not isinstance(hooks, list):
            return False
        hooks.append(self.hook)
        self.hooked = True
        return True


_WATCH = _InitWatch()
_WORKER_MODULE = "ray._private.worker"


class _AfterImport(importlib.abc.MetaPathFinder):
    """Installs the post-init hook right after ``ray._private.worker`` is imported."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _WORKER_MODULE or _WATCH.hooked:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                loader = spec.loader
                loader.exec_module = _hooked(loader.exec_module)  # type: ignore[method-assign,assignment]
                return spec
        return None


def _hooked(exec_module: Callable[[ModuleType], None]) -> Callable[[ModuleType], None]:
    def exec_and_hook(module: ModuleType) -> None:
        exec_module(module)
        _WATCH.install()

    return exec_and_hook


_FINDER = _AfterImport()


def watch_ray_init(callback: Callable[[], None] | None) -> bool:
    """Call ``callback`` after each ``ray.init`` in this process; True if hooked already.

    If ``ray`` is not imported yet, the hook is installed the moment it is (an
    import-system finder that waits for ``ray._private.worker``), so a cell with
    ``import ray; ray.init()`` is adopted before ``ray.init`` returns. This never
    imports ``ray`` itself (that takes seconds).
    """
    _WATCH.callback = callback
    if _WATCH.install():
        return True
    if callback is not None and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    return False
