"""The public functions of carme's core API (Ray's names, arguments and defaults)."""

from __future__ import annotations

import atexit
import json
import math
import os
import secrets
import sys
import threading
from typing import Any

from . import _context
from . import _messages as M
from . import exceptions as exc
from ._context import STATE
from ._objects import ObjectRef, ObjectRefGenerator
from ._selection import default_address

_IGNORED_INIT_ARGS = {
    "include_dashboard", "dashboard_host", "dashboard_port", "configure_logging",
    "logging_level", "logging_format", "log_to_driver_filter", "_temp_dir", "_system_config",
    "_metrics_export_port", "local_mode", "labels", "storage", "_node_ip_address",
    "enable_resource_isolation", "logging_config", "_plasma_directory", "_memory",
}


class CarmeContext(dict):
    """What init() returns (Ray's RayContext shape: a dict plus attributes)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __enter__(self) -> CarmeContext:
        return self

    def __exit__(self, *a: Any) -> None:
        shutdown()

    def disconnect(self) -> None:
        shutdown()


def init(address: str | None = None, *, num_cpus: float | None = None, num_gpus: float | None = None,
         resources: dict[str, float] | None = None, object_store_memory: int | None = None,
         namespace: str | None = None, runtime_env: dict | None = None,
         ignore_reinit_error: bool = False, log_to_driver: bool = True,
         job_config: Any = None, **kwargs: Any) -> CarmeContext:
    """Start the embedded cluster (no address), or connect to a running one."""
    unknown = set(kwargs) - _IGNORED_INIT_ARGS
    if unknown:
        raise TypeError(f"init() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    with STATE.lock:
        if STATE.core is not None:
            if ignore_reinit_error:
                return STATE.runtime_context
            raise RuntimeError(
                "Maybe you called carme.init twice by accident? This error can be suppressed "
                "by passing in 'ignore_reinit_error=True' or by calling 'carme.shutdown()' "
                "prior to 'carme.init()'.")
        from ._options import validate_runtime_env
        runtime_env = validate_runtime_env(runtime_env, where="carme.init()")
        if namespace is not None and not isinstance(namespace, str):
            raise TypeError(f"namespace must be a string, not {type(namespace).__name__}")
        if object_store_memory is not None and (not isinstance(object_store_memory, int) or object_store_memory <= 0):
            raise ValueError(f"object_store_memory must be a positive number of bytes, not {object_store_memory!r}")
        if object_store_memory is not None and address in (None, "local"):
            import psutil
            total = psutil.virtual_memory().total
            if object_store_memory > total:
                raise ValueError(
                    f"object_store_memory={object_store_memory:,} is more than this machine's "
                    f"memory ({total:,} bytes); pass a smaller size or leave it unset.")
        source = "the address argument"
        if address is None:  # CARME_ADDRESS, else the side panel's selection, else embedded
            choice = default_address()
            address, source = choice.address, choice.source
        from ._core import connect_core
        if address not in (None, "local"):
            return _join(address, namespace=namespace, runtime_env=runtime_env,
                         log_to_driver=log_to_driver, source=source, given={
                             "num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources,
                             "object_store_memory": object_store_memory})
        from ._node import default_resources, discard, launch_daemon, start_embedded
        # the daemon's Python starts (imports) while this one checks the rest and counts GPUs
        launched = launch_daemon()
        try:
            from ._node_memory import memory_options
            from ._spill_files import spill_options

            # Ray's _system_config names: memory_usage_threshold, memory_monitor_refresh_ms;
            # object_spilling_config, object_spilling_directory
            daemon_options = memory_options(kwargs.get("_system_config"), os.environ)
            daemon_options.update(spill_options(kwargs.get("_system_config")))
            if kwargs.get("_metrics_export_port") is not None:  # Ray's name: Prometheus metrics here
                metrics_port = kwargs["_metrics_export_port"]
                if isinstance(metrics_port, bool) or not isinstance(metrics_port, int) or not 0 <= metrics_port < 65536:
                    raise ValueError(f"_metrics_export_port must be a port number in 0..65535 (0: a free "
                                     f"one), not {metrics_port!r}")
                daemon_options["metrics_port"] = metrics_port
            res = default_resources(num_cpus, num_gpus, resources)
        except BaseException:
            discard(launched)
            raise
        job_id = secrets.token_hex(4)
        namespace = namespace or f"anon-{secrets.token_hex(6)}"
        node = start_embedded(resources=res, object_store_memory=object_store_memory,
                              namespace=namespace, job_id=job_id,
                              prestart=min(2, max(1, int(res.get("CPU", 1)))),
                              options=daemon_options, launched=launched)
        try:
            core = connect_core(address=node.address, token=node.token, role="driver",
                                worker_id=secrets.token_hex(14), job_id=job_id,
                                namespace=namespace)
        except BaseException:
            node.stop()
            raise
        core.job_runtime_env = runtime_env
        core.node = node
        from ._hooks import _apply
        if not log_to_driver:
            core.quiet_logs = True
            core.log_handler = lambda tag, stream, text: None
        _apply(core)
        STATE.core = core
        from ._discovery import advertise  # so watchers on this machine find it (carme_lab)
        core.discovery_note = advertise(  # type: ignore[attr-defined]
            address=node.address, token=node.token, pid=node.process.pid,
            session_dir=node.session_dir, node_id=node.node_id, resources=res)
        # objects made before init (none) and refs from a previous session are stale
        ctx = CarmeContext(address_info={"address": node.address, "node_id": node.node_id,
                                         "session_dir": node.session_dir},
                           dashboard_url=None, node_id=node.node_id, namespace=core.namespace,
                           address=node.address, python_version=sys.version.split()[0])
        STATE.runtime_context = ctx
        if not getattr(STATE, "atexit_registered", False):
            atexit.register(shutdown)
            STATE.atexit_registered = True  # type: ignore[attr-defined]
        return ctx


_LOCAL_HINT = 'pass address="local" for an embedded cluster of this process instead'


def _join(address: str, *, namespace: str | None, runtime_env: dict | None,
          log_to_driver: bool, given: dict, source: str) -> CarmeContext:
    """Connect this driver to a running cluster (`carme start --head`).

    `source` says where `address` came from (the argument, ``CARME_ADDRESS``, the
    side panel's selection), for the errors.
    """
    from . import cluster
    from ._core import connect_core
    from ._hooks import _apply
    from ._protocol import TokenRefused
    if address == "ray" or address.startswith("ray:"):
        raise ValueError(
            f"carme.init() joins carme clusters, but the address {address!r} (from {source}) "
            f"is a Ray cluster: join it with `import ray; ray.init()` (or `%carme connect "
            f"{address}` in the carme kernel), or {_LOCAL_HINT}.")
    set_args = [k for k, v in given.items() if v is not None]
    if set_args:
        raise ValueError(
            f"When connecting to an existing cluster, {', '.join(set_args)} must not be "
            f"provided: the cluster's resources were fixed when it started. The address "
            f"{address} came from {source}; {_LOCAL_HINT} (with these resources), or leave "
            f"out {', '.join(set_args)} to join that cluster.")
    address, token = cluster.resolve(address)
    try:
        core = connect_core(address=address, token=token, role="driver",
                            worker_id=secrets.token_hex(14), job_id=secrets.token_hex(4),
                            namespace=namespace or f"anon-{secrets.token_hex(6)}")
    except TokenRefused:
        raise  # says what was wrong and how to fix it; "local" would not help
    except OSError as e:
        raise ConnectionError(f"could not connect to the carme cluster at {address} (from "
                              f"{source}): {e}; {_LOCAL_HINT}") from e
    core.job_runtime_env = runtime_env
    if not log_to_driver:
        core.quiet_logs = True
        core.log_handler = lambda tag, stream, text: None
    _apply(core)
    STATE.core = core
    ctx = CarmeContext(address_info={"address": address, "node_id": core.node_id},
                       dashboard_url=None, node_id=core.node_id, namespace=core.namespace,
                       address=address, python_version=sys.version.split()[0])
    STATE.runtime_context = ctx
    if not getattr(STATE, "atexit_registered", False):
        atexit.register(shutdown)
        STATE.atexit_registered = True  # type: ignore[attr-defined]
    return ctx


def auto_init() -> Any:
    core = STATE.core
    if core is not None:
        return core
    if os.environ.get("CARME_NO_AUTO_INIT"):
        raise RuntimeError("carme is not initialized: call carme.init() first")
    init()
    return STATE.core


def shutdown(_exiting_interpreter: bool = False) -> None:
    with STATE.lock:
        core = STATE.core
        if core is None:
            return
        STATE.core = None
        STATE.runtime_context = None
        node = getattr(core, "node", None)
        from ._discovery import withdraw
        withdraw(getattr(core, "discovery_note", None))
        try:
            core.shutdown()
        finally:
            if node is not None:
                node.stop()


def is_initialized() -> bool:
    return STATE.core is not None


def _as_ref_list(object_refs: Any, fn: str) -> tuple[list, bool]:
    if isinstance(object_refs, ObjectRef):
        return [object_refs], True
    if isinstance(object_refs, ObjectRefGenerator):
        raise TypeError(f"{fn}() got an ObjectRefGenerator; iterate it to get ObjectRefs")
    if isinstance(object_refs, (list, tuple)):
        for i, r in enumerate(object_refs):
            if not isinstance(r, ObjectRef):
                raise TypeError(
                    f"{fn}() expected a list of ObjectRefs, but item {i} is a "
                    f"{type(r).__name__}. Pass ObjectRefs returned by .remote() or carme.put().")
        return list(object_refs), False
    raise ValueError(
        f"'object_refs' must either be an ObjectRef or a list of ObjectRefs, not "
        f"{type(object_refs).__name__}.")


def _check_timeout(timeout: Any, fn: str) -> float | None:
    """None, or a number of seconds >= 0 (infinity means no timeout)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{fn}(timeout=...) must be None or a number of seconds, not "
                        f"{type(timeout).__name__} {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"{fn}(timeout=...) must be None or a number of seconds >= 0, not {timeout!r}")
    return None if math.isinf(timeout) else float(timeout)


def _check_bool(value: Any, name: str, fn: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{fn}({name}=...) must be True or False, not {type(value).__name__} {value!r}")
    return value


def get(object_refs: Any, *, timeout: float | None = None) -> Any:
    """Values of one ObjectRef or a list of them; raises the task's error if it failed."""
    timeout = _check_timeout(timeout, "get")
    core = auto_init()
    refs, single = _as_ref_list(object_refs, "get")
    hook = getattr(STATE, "get_hook", None)
    if hook is not None and not single:
        with hook(refs):
            values = core.get(refs, timeout)
    else:
        values = core.get(refs, timeout)
    return values[0] if single else values


def put(value: Any, *, _owner: Any = None) -> ObjectRef:
    """Store a value in the cluster and return its ObjectRef."""
    return auto_init().put(value, _owner)  # type: ignore[no-any-return]


def wait(object_refs: list, *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list, list]:
    """Split refs into (ready, not ready) once num_returns are ready or timeout passes."""
    timeout = _check_timeout(timeout, "wait")
    core = auto_init()
    if isinstance(object_refs, (ObjectRef, ObjectRefGenerator)):
        raise TypeError("wait() expected a list of ObjectRefs or ObjectRefGenerators, got a "
                        f"single {type(object_refs).__name__}; pass [it]")
    if not isinstance(object_refs, (list, tuple)):
        raise TypeError("wait() expected a list of ObjectRefs or ObjectRefGenerators, not "
                        f"{type(object_refs).__name__}")
    for i, r in enumerate(object_refs):
        if not isinstance(r, (ObjectRef, ObjectRefGenerator)):
            raise TypeError(f"wait() expected a list of ObjectRefs or ObjectRefGenerators, but "
                            f"item {i} is a {type(r).__name__}")
    refs = list(object_refs)
    if not refs:
        return [], []
    if len(set(refs)) != len(refs):
        raise ValueError("Wait requires a list of unique object refs.")
    if not isinstance(num_returns, int) or num_returns <= 0:
        raise ValueError(f"Invalid number of objects to return {num_returns!r}: num_returns must be a positive int")
    if num_returns > len(refs):
        raise ValueError(
            f"num_returns ({num_returns}) cannot be greater than the number of objects "
            f"provided ({len(refs)}).")
    return core.wait(refs, num_returns, timeout)  # type: ignore[no-any-return]


def cancel(object_ref: Any, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that makes `object_ref`: KeyboardInterrupt inside it, or with
    force=True its worker is killed. A cancelled task is never retried."""
    _check_bool(force, "force", "cancel")
    _check_bool(recursive, "recursive", "cancel")
    core = auto_init()
    if isinstance(object_ref, ObjectRefGenerator):
        tid = object_ref.task_id()
    elif isinstance(object_ref, ObjectRef):
        tid = object_ref.binary()[:16]
    else:
        raise TypeError(f"carme.cancel() only supported for ObjectRefs, not {type(object_ref).__name__}")
    spec = core.submitter.tasks.get(tid)
    if spec is not None and spec.actor_id is not None and force:
        raise ValueError("force=True is not supported for actor tasks (as in Ray); use carme.kill(actor) instead")
    core.submitter.cancel(tid, force, recursive)


def kill(actor: Any, *, no_restart: bool = True) -> None:
    """Kill an actor at once (its pending and running calls fail with ActorDiedError)."""
    from ._remote import ActorHandle
    if not isinstance(actor, ActorHandle):
        raise ValueError(f"carme.kill() only supported for actors; got a {type(actor).__name__}")
    core = auto_init()
    conn = core.control()
    if conn is core.daemon:
        core.daemon_send((M.KILL_ACTOR, actor._actor_id, no_restart))
    else:
        conn.send((M.KILL_ACTOR, actor._actor_id, no_restart))


def nodes() -> list[dict]:
    core = auto_init()
    out = []
    for row in core.state_rows("nodes"):
        out.append({
            "NodeID": row["node_id"], "Alive": row["state"] == "ALIVE",
            "NodeManagerAddress": row["node_ip"], "NodeManagerHostname": row["node_name"],
            "NodeName": row["node_ip"], "Resources": row["resources_total"],
            "Labels": row.get("labels", {}), "alive": row["state"] == "ALIVE",
            "ObjectStoreSocketName": row.get("address"), "MetricsExportPort": 0,
            "object_store_memory": row["object_store"]["capacity"],
        })
    return out


def _sum_resources(rows: list[dict], key: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in rows:
        if row.get("state", "ALIVE") != "ALIVE":
            continue
        for k, v in row[key].items():
            if v > 0:
                out[k] = out.get(k, 0.0) + v
    return out


def cluster_resources() -> dict[str, float]:
    rows = auto_init().state_rows("nodes")  # one query: it reads every node's metrics
    total = _sum_resources(rows, "resources_total")
    total.setdefault("object_store_memory", float(sum(
        r["object_store"]["capacity"] for r in rows if r.get("state", "ALIVE") == "ALIVE")))
    return total


def available_resources() -> dict[str, float]:
    return _sum_resources(auto_init().state_rows("nodes"), "resources_available")


def get_gpu_ids() -> list:
    core = _context.maybe_core()
    if core is None:
        return []
    ids = core.task_attr("gpu_ids") or []
    return [int(i) if str(i).isdigit() else i for i in ids]


def timeline(filename: str | None = None) -> list[dict] | None:
    """The task timeline as Chrome trace events (open the JSON in Perfetto)."""
    core = auto_init()
    events = core.state_rows("timeline")
    if filename is not None:
        with open(filename, "w") as f:
            json.dump(events, f)
        return None
    return events  # type: ignore[no-any-return]


class RuntimeContext:
    """What `get_runtime_context()` returns (Ray's RuntimeContext accessors)."""

    def __init__(self, core: Any) -> None:
        self._core = core

    def get_job_id(self) -> str:
        return self._core.job_id  # type: ignore[no-any-return]

    def get_node_id(self) -> str:
        return self._core.node_id  # type: ignore[no-any-return]

    @property
    def node_id(self) -> Any:
        """The node's id as an object with .hex() (Ray's older accessor)."""
        from ._remote import _ActorID
        return _ActorID(bytes.fromhex(self._core.node_id))

    def is_canceled(self) -> bool:
        """Whether carme.cancel() was called on the running task (in a worker only)."""
        executor = self._core.executor
        if executor is None:
            raise RuntimeError("is_canceled() is only available inside a task or actor "
                               "method (in a worker process), not in the driver.")
        return executor.is_canceled()  # type: ignore[no-any-return]

    def get_worker_id(self) -> str:
        return self._core.worker_id  # type: ignore[no-any-return]

    def get_task_id(self) -> str | None:
        t = self._core.task_attr("task_id")
        return t.hex() if t else None

    def get_actor_id(self) -> str | None:
        a = self._core.task_attr("actor_id")
        return a.hex() if a else None

    def get_actor_name(self) -> str | None:
        return None

    def get_placement_group_id(self) -> str | None:
        return self._core.task_attr("pg_id")

    def get_assigned_resources(self) -> dict[str, float]:
        shape = self._core.task_attr("resources") or {}
        return {k: float(v) for k, v in shape.items() if k != "memory" or v}

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        return {"GPU": [str(g) for g in (self._core.task_attr("gpu_ids") or [])]}

    def get_runtime_env_string(self) -> str:
        return json.dumps(getattr(self._core, "job_runtime_env", None) or {})

    @property
    def namespace(self) -> str:
        return self._core.namespace  # type: ignore[no-any-return]

    def get_namespace(self) -> str:
        return self._core.namespace  # type: ignore[no-any-return]

    @property
    def was_current_actor_reconstructed(self) -> bool:
        return bool(self._core.task_attr("restarts") or 0)

    @property
    def gcs_address(self) -> str:
        return str(self._core.info.get("session_dir", ""))

    def current_actor(self) -> Any:
        raise NotImplementedError

    def get(self) -> dict:
        return {"job_id": self.get_job_id(), "node_id": self.get_node_id(),
                "task_id": self.get_task_id(), "actor_id": self.get_actor_id(),
                "namespace": self.namespace}


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(auto_init())


_ = (threading, exc)
