"""The server extension's shell: clusters, snapshots and the live stream, off the event loop.

Theory of operation
-------------------
`LabService` is the one object the handlers talk to (``settings["carme_lab"]``).
It holds the `ClusterBook` (what this server knows, pure) and a `Backend` (the
blocking calls: start, stop, list, snapshot, timeline). The real backend,
`EngineBackend`, is the seam between engines: it routes each call by the
cluster id to `CarmeBackend` (`carme.cluster`; ``HOST:PORT`` and kernels'
``embedded:PID`` clusters) or to `carme_lab._ray.RayBackend` (``ray:HOST:PORT``,
over Ray's dashboard REST API, so this server never becomes a Ray driver). Both
answer in carme's row shape, so one `panel_snapshot` serves both. Backend
calls run on worker threads, so the tornado loop never blocks: reads (list,
snapshot, timeline) on one thread, so the state clients are used by one thread
at a time; starts and stops on another, so a Ray head that takes a minute to
start does not stall the live stream. Each call has a timeout (starting and
stopping a longer one), so an unreachable address turns into an error message,
not a hung request.

The selection reaches kernels through a *selection file* (``carme._selection``,
``carme.notebook.write_selection``): a 0600 JSON file in a 0700 directory of
this server's own, rewritten on every change. jupyter_server starts kernels
with a copy of ``os.environ`` (`SessionManager.get_kernel_env`), and a restarted
kernel gets the same copy again, so an address exported there would be frozen
at the kernel's first start. Only the file's path is exported
(``CARME_SELECTION_FILE``), which never goes stale: a kernel reads the file
when it first joins (``carme.init()`` with no address, the carme kernel's first
magic or view), so it follows the current selection, also after Restart
Kernel. A ``CARME_ADDRESS`` the server was started with becomes the initial
selection and is taken out of the environment kernels inherit (it would win
over the file); it and ``CARME_SELECTION_FILE`` are put back as they were when
the extension stops. The selection and
the addresses users gave are saved to `state_file` (in Jupyter's runtime
directory), so a restarted server selects the same cluster again if it still
runs: a started cluster outlives the server unless told otherwise.

The live stream: while at least one WebSocket is subscribed, `_pump` builds one
``tick`` message per interval (the cluster listing plus a snapshot of the
selected cluster, or the reason there is none) and hands the same message to
every subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from carme.notebook import SELECTION_ENV, write_selection

from ._bodies import BodyError, StartSpec, connect_body, start_spec
from ._clusters import AddressError, ClusterBook, check_address, engine_of, kind_of
from ._snapshot import panel_snapshot

__all__ = ["Backend", "CarmeBackend", "EngineBackend", "LabError", "LabService"]

T = TypeVar("T")
ENV_VAR = "CARME_ADDRESS"
# Ray 2.60 drivers talk to a token-auth cluster only with RAY_AUTH_MODE=token set, though
# `ray start` turns token auth on by default: kernels joining a selected Ray cluster get it
# (through the selection file's env) when this server has a Ray token.
RAY_AUTH_MODE = "RAY_AUTH_MODE"


class LabError(Exception):
    """An error a handler reports to the client with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Backend(Protocol):
    """Blocking access to clusters, one engine or several (see the module docstring).

    `list_local` rows carry at least ``address`` (the cluster id) and ``pid``;
    `snapshot` answers `carme.cluster.Client.snapshot()`'s shape, optionally
    with ``engine``, ``capabilities`` (flag: bool) and ``notes`` (flag: text).
    """

    def list_local(self) -> list[dict[str, Any]]: ...
    def start(self, spec: StartSpec) -> dict[str, Any]: ...
    def stop(self, address: str) -> bool: ...
    def snapshot(self, address: str) -> dict[str, Any]: ...
    def timeline(self, address: str) -> list[dict[str, Any]]: ...
    def given(self, address: str, dashboard: str | None) -> None:
        """What a user told about a cluster: a Ray cluster's dashboard URL (fast, no I/O)."""
    def close(self) -> None: ...


class CarmeBackend:
    """`Backend` over `carme.cluster`; keeps one state client per address."""

    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}

    def list_local(self) -> list[dict[str, Any]]:
        from carme import cluster

        rows = cluster.list_local()
        for note in cluster.list_embedded():
            rows.append({"address": f"embedded:{note['pid']}", "pid": note["pid"],
                         "started": note["started"], "resources": note["resources"],
                         "notebook": note.get("notebook"), "driver_pid": note["driver_pid"]})
        return rows

    def start(self, spec: StartSpec) -> dict[str, Any]:
        from carme import cluster

        return cluster.start_head(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus,
                                  resources=spec.resources)

    def stop(self, address: str) -> bool:
        from carme import cluster

        self._drop(address)
        return bool(cluster.stop(address))

    def given(self, address: str, dashboard: str | None) -> None:
        pass  # a carme address is all carme needs

    def _client(self, address: str) -> Any:
        client = self._clients.get(address)
        if client is None:
            from carme import cluster

            if kind_of(address) == "embedded":
                note = cluster.read_embedded(int(address.split(":", 1)[1]))
                if note is None:
                    raise ConnectionError(f"{address} has ended (its kernel stopped or restarted)")
                client = cluster.connect(note["address"], bytes.fromhex(note["token"]))
            else:
                client = cluster.connect(address)
            self._clients[address] = client
        return client

    def _call(self, address: str, fn: Callable[[Any], T]) -> T:
        try:
            return fn(self._client(address))
        except Exception:
            self._drop(address)  # a broken connection is rebuilt on the next call
            raise

    def snapshot(self, address: str) -> dict[str, Any]:
        return self._call(address, lambda c: c.snapshot())

    def timeline(self, address: str) -> list[dict[str, Any]]:
        return self._call(address, lambda c: c.timeline())

    def _drop(self, address: str) -> None:
        client = self._clients.pop(address, None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def close(self) -> None:
        for address in list(self._clients):
            self._drop(address)


class EngineBackend:
    """The seam: carme's clusters and Ray's behind one `Backend`, routed by id."""

    def __init__(self, carme: Backend | None = None, ray: Backend | None = None) -> None:
        from ._ray import RayBackend

        self.engines: dict[str, Backend] = {"carme": carme or CarmeBackend(),
                                            "ray": ray or RayBackend()}
        self.log = logging.getLogger("carme_lab")

    def list_local(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for name, engine in self.engines.items():
            try:
                rows += engine.list_local()
            except Exception as e:  # one engine's broken state must not hide the other's
                self.log.warning("carme_lab: listing local %s clusters failed: %s", name, e)
        return rows

    def start(self, spec: StartSpec) -> dict[str, Any]:
        return self.engines[spec.engine].start(spec)

    def stop(self, address: str) -> bool:
        return self.engines[engine_of(address)].stop(address)

    def snapshot(self, address: str) -> dict[str, Any]:
        return self.engines[engine_of(address)].snapshot(address)

    def timeline(self, address: str) -> list[dict[str, Any]]:
        return self.engines[engine_of(address)].timeline(address)

    def given(self, address: str, dashboard: str | None) -> None:
        self.engines[engine_of(address)].given(address, dashboard)

    def close(self) -> None:
        for engine in self.engines.values():
            with contextlib.suppress(Exception):
                engine.close()


Subscriber = Callable[[dict[str, Any]], None]


class LabService:
    """What the handlers call; see the module docstring."""

    def __init__(self, backend: Backend, *, given: str | None = None, interval: float = 1.0,
                 call_timeout: float = 10.0, start_timeout: float = 300.0,
                 log: logging.Logger | None = None, state_file: str | None = None) -> None:
        self.backend = backend
        self.book = ClusterBook(given)
        self.state_file = state_file
        self._selection_dir = tempfile.mkdtemp(prefix="carme-lab-")  # 0700, this server's own
        self.selection_file = os.path.join(self._selection_dir, "selection.json")
        self.interval = interval
        self.call_timeout = call_timeout
        self.start_timeout = start_timeout
        self.log = log or logging.getLogger("carme_lab")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="carme-lab")
        # starting and stopping take seconds to minutes (a Ray head): a thread of their own,
        # so the listing and the live stream keep answering meanwhile
        self._slow_pool = ThreadPoolExecutor(1, thread_name_prefix="carme-lab-start")
        self._env_before = {k: os.environ.get(k) for k in (ENV_VAR, SELECTION_ENV)}
        self._subscribers: list[Subscriber] = []
        self._pump_task: asyncio.Task[None] | None = None
        self._load()
        self._export()

    # ------------------------------------------------------------------ plumbing
    async def _run(self, what: str, fn: Callable[..., T], *args: Any,
                   timeout: float | None = None) -> T:
        """`fn(*args)` on a worker thread; `timeout` given: a start or stop (its own thread)."""
        loop = asyncio.get_running_loop()
        pool = self._pool if timeout is None else self._slow_pool
        fut = loop.run_in_executor(pool, functools.partial(fn, *args))
        timeout = timeout or self.call_timeout
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise LabError(504, f"{what} did not answer within {timeout:.0f} s") from None

    def _export(self) -> None:
        """Write the selection for kernels (the file, its path in the environment), and save
        it for a restart of this server."""
        selected = self.book.selected
        env: dict[str, str] = {}
        if selected and engine_of(selected) == "ray":
            from ._ray import ray_token

            if ray_token():
                env[RAY_AUTH_MODE] = "token"
        try:
            write_selection(self.selection_file, selected, env)
        except OSError as e:
            self.log.warning("carme_lab: could not write the selection for kernels to %s: %s",
                             self.selection_file, e)
        os.environ.pop(ENV_VAR, None)  # it would win over the file in every kernel
        os.environ[SELECTION_ENV] = self.selection_file
        if self.state_file:
            try:
                tmp = f"{self.state_file}.tmp"
                os.makedirs(os.path.dirname(self.state_file) or ".", exist_ok=True)
                with open(tmp, "w") as f:
                    json.dump(self.book.to_state(), f)
                os.replace(tmp, self.state_file)
            except OSError as e:
                self.log.warning("carme_lab: could not save the selection to %s: %s",
                                 self.state_file, e)

    def _load(self) -> None:
        if not self.state_file or not os.path.exists(self.state_file):
            return
        try:
            with open(self.state_file) as f:
                state = json.load(f)
            local = self.backend.list_local()
        except Exception as e:  # a stale or broken file must not stop the server
            self.log.warning("carme_lab: ignoring the saved selection in %s: %s", self.state_file, e)
            return
        self.book.restore(state, local)
        for address, url in self.book.dashboards().items():
            self.backend.given(address, url)

    async def _local(self) -> list[dict[str, Any]]:
        try:
            return await self._run("listing the clusters on this machine", self.backend.list_local)
        except LabError:
            raise
        except Exception as e:  # a broken state dir must not take the panel down
            self.log.warning("carme_lab: listing local clusters failed: %s", e)
            return []

    def _address(self, cluster: str | None) -> str:
        if cluster:
            try:
                return check_address(cluster)
            except AddressError as e:
                raise LabError(400, str(e)) from None
        if self.book.selected is None:
            raise LabError(404, "no cluster is selected: start one or connect to one first "
                                "(POST /carme/api/clusters or /carme/api/connect)")
        return self.book.selected

    # ------------------------------------------------------------------ REST
    async def listing(self) -> dict[str, Any]:
        return self.book.listing(await self._local())

    async def start(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            spec = start_spec(body)
        except BodyError as e:
            raise LabError(400, str(e)) from None
        what = f"starting a {spec.engine} cluster"
        try:
            info = await self._run(what, self.backend.start, spec, timeout=self.start_timeout)
        except LabError:
            raise
        except (ValueError, TypeError) as e:
            raise LabError(400, f"could not start a {spec.engine} cluster: {e}") from None
        except Exception as e:
            raise LabError(500, f"could not start a {spec.engine} cluster: "
                                f"{type(e).__name__}: {e}") from None
        entry = self.book.add_started(info)
        if spec.select:
            self.book.select(entry.address)
            self._export()
        return entry.to_json(self.book.selected)

    async def stop(self, address: str) -> dict[str, Any]:
        try:
            address = check_address(address)
        except AddressError as e:
            raise LabError(400, str(e)) from None
        entry = self.book.find(address, await self._local())
        if entry is None:
            raise LabError(404, f"no cluster with id {address!r} is known here; "
                                f"GET /carme/api/clusters lists them")
        if not entry.stoppable:
            raise LabError(409, _not_stoppable(entry.address, entry.kind, entry.engine, entry.local))
        try:
            stopped = await self._run(f"stopping {address}", self.backend.stop, address,
                                      timeout=self.start_timeout)
        except LabError:
            raise
        except Exception as e:
            raise LabError(500, f"could not stop {address}: {type(e).__name__}: {e}") from None
        self.book.stopped(address)
        self._export()
        return {"id": address, "stopped": stopped, "selected": self.book.selected}

    async def connect(self, body: dict[str, Any]) -> dict[str, Any]:
        """Remember `address` and select it (``address: null`` selects none: embedded)."""
        try:
            raw, select, dashboard = connect_body(body)
            address = None if raw is None else self.book.remember(raw, dashboard)
        except (BodyError, AddressError) as e:
            raise LabError(400, str(e)) from None
        if address is None:
            self.book.select(None)
        else:
            if dashboard is not None:
                self.backend.given(address, dashboard)  # a dict entry: no I/O
            if select:
                self.book.select(address)
        self._export()
        return {"selected": self.book.selected, "address": self.book.selected}

    async def view(self, body: dict[str, Any]) -> dict[str, Any]:
        """Show ``cluster`` in the panel without changing what kernels join (null: follow)."""
        unknown = sorted(k for k in body if k != "cluster")
        if "cluster" not in body or unknown:
            raise LabError(400, "expected a JSON body {\"cluster\": ID} with an id from "
                                "GET /carme/api/clusters (or {\"cluster\": null} to show the "
                                "selected one)" + (f"; unknown field(s) {unknown}" if unknown else ""))
        raw = body["cluster"]
        if raw is None:
            self.book.view(None)
        else:
            try:
                address = check_address(raw)
            except AddressError as e:
                raise LabError(400, str(e)) from None
            if self.book.find(address, await self._local()) is None:
                raise LabError(404, f"no cluster with id {address!r} is known here; "
                                    f"GET /carme/api/clusters lists them")
            self.book.view(address)
        return {"showing": self.book.showing(self.book.entries(await self._local())),
                "selected": self.book.selected}

    async def snapshot(self, cluster: str | None) -> dict[str, Any]:
        address = self._address(cluster)
        try:
            raw = await self._run(f"the cluster at {address}", self.backend.snapshot, address)
        except LabError:
            raise
        except Exception as e:
            raise LabError(503, _unreachable(address, e)) from None
        return panel_snapshot(raw, address, engine=engine_of(address))

    async def timeline(self, cluster: str | None) -> list[dict[str, Any]]:
        address = self._address(cluster)
        try:
            return await self._run(f"the cluster at {address}", self.backend.timeline, address)
        except LabError:
            raise
        except Exception as e:
            raise LabError(503, _unreachable(address, e)) from None

    # ------------------------------------------------------------------ stream
    async def tick(self) -> dict[str, Any]:
        """One stream message: the listing and the selected cluster's snapshot (or why not)."""
        listing = await self.listing()
        msg: dict[str, Any] = {"type": "tick", "clusters": listing, "snapshot": None, "error": None}
        showing = listing["showing"]
        if showing is None:
            msg["error"] = "No cluster is running here: start one or connect to one."
            return msg
        try:
            msg["snapshot"] = await self.snapshot(showing)
        except LabError as e:
            msg["error"] = e.message
        return msg

    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.append(callback)
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = asyncio.get_running_loop().create_task(self._pump())

    def unsubscribe(self, callback: Subscriber) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(callback)

    async def _pump(self) -> None:
        while self._subscribers:
            try:
                msg = await self.tick()
            except Exception as e:  # keep streaming; say what went wrong
                self.log.exception("carme_lab: building a stream message failed")
                msg = {"type": "tick", "clusters": None, "snapshot": None,
                       "error": f"{type(e).__name__}: {e}"}
            for callback in list(self._subscribers):
                try:
                    callback(msg)
                except Exception:
                    self.log.exception("carme_lab: a stream subscriber failed; dropping it")
                    self.unsubscribe(callback)
            await asyncio.sleep(self.interval)

    # ------------------------------------------------------------------ lifetime
    async def close(self, stop_started: bool = False) -> None:
        self._subscribers.clear()
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump_task
        if stop_started:
            for entry in self.book.entries([]):
                if entry.origin == "started":
                    with contextlib.suppress(Exception):
                        await self._run(f"stopping {entry.address}", self.backend.stop, entry.address,
                                        timeout=self.start_timeout)
        with contextlib.suppress(Exception):
            await self._run("closing state clients", self.backend.close)
        self._pool.shutdown(wait=False)
        self._slow_pool.shutdown(wait=False)
        for key, value in self._env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(self._selection_dir, ignore_errors=True)


def _not_stoppable(address: str, kind: str, engine: str, local: bool) -> str:
    if kind == "embedded":
        return (f"{address} is the embedded cluster of a running kernel: it ends with that "
                f"kernel (restart or shut down the kernel)")
    if engine == "ray":
        return (f"the Ray cluster {address} was not started by this server; stop it where it was "
                f"started (this server never runs `ray stop`, which would end every Ray "
                f"cluster of this machine)")
    return (f"the cluster at {address} was not started on this machine; "
            f"stop it where it runs (`carme stop` there)")


def _unreachable(address: str, e: BaseException) -> str:
    how = ("`ray status --address` checks a Ray cluster" if engine_of(address) == "ray"
           else "`carme status` lists the clusters on this machine")
    return f"the cluster at {address} did not answer ({type(e).__name__}: {e}); is it running? {how}"
