"""Standalone clusters on this machine: start, find, connect to, stop.

`start_head()` starts a node daemon in head mode as a background process of its own
session (it outlives the caller), listening on a TCP port of 127.0.0.1 (or `host`) and
on a Unix socket. Its address and cluster token are written to a file readable only by
this user, `<state dir>/clusters/<port>.json` (state dir: $CARME_STATE_DIR, default
/tmp/carme-<uid>, mode 0700). Drivers on this machine find the token there
(`carme.init(address="127.0.0.1:PORT")` or `address="auto"` for the newest cluster);
elsewhere pass it in $CARME_CLUSTER_TOKEN. `connect()` gives a read-only client of the
state API for tools (the JupyterLab server extension, the CLI) that watch several
clusters from one process.

A head keeps its state in `<state dir>/heads/<port>.json` (`_head_state.py`). Started
again on the same port after it died (SIGKILL, a crash, a reboot of the process), it
comes back with the same token, gRPC port and node id, so live nodes and drivers find it
again; `stop()` ends a cluster for good and removes that file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import time
from typing import Any

from ._discovery import list_embedded, process_started, read_embedded, same_process
from ._protocol import TokenRefused

__all__ = ["Client", "connect", "list_embedded", "list_local", "read_embedded", "resolve", "start_head",
           "start_node", "state_dir", "stop", "stop_all", "stop_node"]


def state_dir() -> str:
    d = os.environ.get("CARME_STATE_DIR") or f"/tmp/carme-{os.getuid()}"
    os.makedirs(os.path.join(d, "clusters"), mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def _cluster_file(port: int | str) -> str:
    return os.path.join(state_dir(), "clusters", f"{port}.json")


def _info_alive(info: dict[str, Any]) -> bool:
    """Whether the daemon a cluster file describes still runs (its pid and start time)."""
    return same_process(info.get("pid", -1), info.get("pid_started"))


def _check_port_free(host: str, port: int, what: str) -> None:
    """Refuse a port already in use here, before any process starts."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: only a listener blocks
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"{what} {port}: cannot listen on {host}:{port} ({e.strerror}); another "
                          f"process uses it. Pick a free port, or 0 for any free one.") from None


def start_head(num_cpus: float | None = None, num_gpus: float | None = None,
               resources: dict[str, float] | None = None, port: int = 0,
               host: str = "127.0.0.1", object_store_memory: int | None = None,
               namespace: str | None = None, labels: dict[str, str] | None = None,
               metrics_port: int | None = None,
               object_spilling_directory: str | None = None) -> dict[str, Any]:
    """Start a standalone cluster on this machine; return its address and how to reach it.
    With `metrics_port`, the head serves Prometheus metrics at http://host:metrics_port/.
    Objects that do not fit in the store are spilled to `object_spilling_directory` (default:
    the session directory)."""
    from ._node import default_resources, spawn_daemon
    from ._spill_files import spill_options
    if not isinstance(port, int) or not 0 <= port < 65536:
        raise ValueError(f"port must be an integer in 0..65535, not {port!r}")
    if metrics_port is not None and (not isinstance(metrics_port, int) or not 0 <= metrics_port < 65536):
        raise ValueError(f"metrics_port must be an integer in 0..65535 (0: a free one), not {metrics_port!r}")
    if metrics_port:
        _check_port_free(host, metrics_port, "--metrics-port")
    res = default_resources(num_cpus, num_gpus, resources)
    rec = _restartable(host, port)
    options: dict[str, Any] = spill_options({"object_spilling_directory": object_spilling_directory})
    options.update(head_state_dir=state_dir(), head_restore=rec is not None)
    if metrics_port is not None:
        options.update(metrics_port=metrics_port, metrics_host=host)
    proc, ready, token, session_dir, node_id = spawn_daemon(
        resources=res, object_store_memory=object_store_memory, namespace=namespace,
        job_id=rec.job_id if rec else secrets.token_hex(4), prestart=1, standalone=True,
        tcp=f"{host}:{port}", cluster=True, host=host, labels=labels, options=options,
        token=bytes.fromhex(rec.token) if rec else None, grpc_port=rec.grpc_port if rec else 0,
        node_id=rec.node_id if rec else None)
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.close()
    proc.stdin.close()
    address = ready["tcp"]
    info = {"address": address, "unix_address": ready["address"], "pid": ready["pid"],
            "pid_started": process_started(ready["pid"]), "session_dir": session_dir,
            "node_id": node_id, "started": time.time(),
            "cluster_id": address.rsplit(":", 1)[1], "resources": res, "is_head": True,
            "grpc_address": ready["grpc"], "metrics_port": ready.get("metrics_port"),
            "restarted": rec is not None}
    path = _cluster_file(info["cluster_id"])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({**info, "token": token.hex()}, f)
    # the daemon is not our child to wait for: let it be reaped by init
    proc.returncode = 0
    return {**info, "token_file": path}


def _restartable(host: str, port: int) -> Any:
    """The persisted state of a head that ran on `port` and is gone (None: a new cluster).
    Refuses a port whose head still runs; a state file that cannot be used is a
    HeadStateError naming it."""
    from . import _head_state as hs
    if not port:
        return None
    rec = hs.load(hs.state_file(state_dir(), port))
    if rec is None:
        return None
    running = _read(f"{host}:{port}")
    if running is not None and _info_alive(running):
        raise OSError(f"a carme head already runs on port {port} (pid {running['pid']}); "
                      f"stop it with `carme stop --address {host}:{port}` first")
    if rec.host != host:
        raise ValueError(f"the head saved in {hs.state_file(state_dir(), port)} listened on "
                         f"{rec.host}:{port}, its nodes look for it there: start it with --host "
                         f"{rec.host}, or move that file away to start a new cluster on {host}:{port}")
    if running is not None:  # what the dead head left, if its zygote could not clean (killed too)
        _cleanup(running, _cluster_file(port))
    return rec


def start_node(address: str, num_cpus: float | None = None, num_gpus: float | None = None,
               resources: dict[str, float] | None = None, object_store_memory: int | None = None,
               host: str | None = None, labels: dict[str, str] | None = None,
               object_spilling_directory: str | None = None) -> dict[str, Any]:
    """Start another node daemon on this machine and join it to the cluster at `address`.

    It listens (daemon, workers, object transfer) on `host`; by default on the address
    this machine reaches the head from, so that the other nodes reach it back (127.0.0.1
    for a head on this machine's loopback)."""
    from ._spill_files import spill_options
    options = spill_options({"object_spilling_directory": object_spilling_directory})
    from . import _messages as M
    from ._node import default_resources, spawn_daemon
    from ._protocol import ConnectionClosed, connect, first_reply
    address, token = resolve(address)
    try:
        conn = connect(address, token)
        hello = first_reply(conn, (M.HELLO, 1, "observer", os.getpid(),
                                   {"worker_id": "join-" + secrets.token_hex(6)}))[3]
        if host is None:
            host = str(conn.sock.getsockname()[0])
        conn.close()
    except TokenRefused:
        raise token_refused(address) from None
    except (OSError, ConnectionClosed) as e:
        raise ConnectionError(f"could not reach the cluster at {address}: {e}") from e
    if not hello.get("head_grpc"):
        raise ConnectionError(f"the carme node at {address} is not a cluster head (it runs without --head)")
    res = default_resources(num_cpus, num_gpus, resources, head=False)
    proc, ready, _, session_dir, node_id = spawn_daemon(
        resources=res, object_store_memory=object_store_memory, namespace=None,
        job_id=hello["job_id"], prestart=1, standalone=True, tcp=f"{host}:0", cluster=True,
        head_address=hello["head_grpc"], token=token, host=host, labels=labels, options=options)
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.close()
    proc.stdin.close()
    proc.returncode = 0
    head_port = address.rsplit(":", 1)[1]
    node_port = ready["tcp"].rsplit(":", 1)[1]
    info = {"address": ready["tcp"], "pid": ready["pid"], "pid_started": process_started(ready["pid"]),
            "session_dir": session_dir,
            "node_id": node_id, "started": time.time(), "is_head": False,
            "cluster_id": f"{head_port}-node-{node_port}", "head": address, "resources": res}
    path = _cluster_file(info["cluster_id"])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({**info, "token": token.hex()}, f)
    return info


def stop_node(info: dict[str, Any], graceful: bool = True, timeout: float = 10.0) -> None:
    """Stop one node daemon started by start_node (SIGTERM, or SIGKILL when not graceful)."""
    _end_daemon(info, graceful, timeout)
    _cleanup(info, _cluster_file(info["cluster_id"]))


def _end_daemon(info: dict[str, Any], graceful: bool = True, timeout: float = 10.0) -> None:
    """End the daemon a cluster file names, if that very process still runs: SIGTERM (or
    SIGKILL when not graceful), then SIGKILL after `timeout` s."""
    pid = info["pid"]
    if not _info_alive(info):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM if graceful else signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _info_alive(info) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _info_alive(info):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def list_local() -> list[dict[str, Any]]:
    """Clusters started on this machine (by this user), newest first; dead ones pruned."""
    out = []
    d = os.path.join(state_dir(), "clusters")
    for name in os.listdir(d):
        if not name.endswith(".json"):
            continue
        path = os.path.join(d, name)
        try:
            with open(path) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        if not _info_alive(info):
            _cleanup(info, path)
            continue
        info.pop("token", None)
        if not info.get("is_head", True):
            continue
        info["alive"] = True
        info["token_file"] = path
        out.append(info)
    return sorted(out, key=lambda i: -i["started"])


def _read(address: str) -> dict[str, Any] | None:
    port = address.rsplit(":", 1)[-1]
    try:
        with open(_cluster_file(port)) as f:
            return json.load(f)  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def resolve(address: str) -> tuple[str, bytes]:
    """(address, token) for "auto" or "HOST:PORT"."""
    if address == "auto":
        clusters = list_local()
        if not clusters:
            raise ConnectionError(
                "carme.init(address='auto') found no running cluster on this machine. "
                "Start one with `carme start --head`, or call carme.init() for an embedded one.")
        address = clusters[0]["address"]
    if ":" not in address:
        raise ValueError(f"a cluster address looks like HOST:PORT (e.g. 127.0.0.1:6380), not {address!r}")
    env = os.environ.get("CARME_CLUSTER_TOKEN")
    if env:
        return address, bytes.fromhex(env)
    info = _read(address)
    if info is None:
        raise ConnectionError(
            f"no token for the cluster at {address}: it was not started on this machine by this "
            f"user. Set CARME_CLUSTER_TOKEN to the token printed by `carme start --head`.")
    return address, bytes.fromhex(info["token"])


def token_refused(address: str) -> TokenRefused:
    """The error for a node at `address` that refused our cluster token: where the token
    came from (as `resolve` found it) and how to pass the right one."""
    if os.environ.get("CARME_CLUSTER_TOKEN"):
        source = "the CARME_CLUSTER_TOKEN environment variable"
    else:
        source = (f"this machine's cluster file {_cluster_file(address.rsplit(':', 1)[-1])} "
                  f"(left by a cluster that ran on that port here before, if not this one)")
    return TokenRefused(
        f"the carme node at {address} refused the cluster token, which came from {source}: "
        f"it belongs to another cluster. Fix: set CARME_CLUSTER_TOKEN to the token of the "
        f"cluster this node is in; `carme start --head` printed the file that holds it on the "
        f"head's machine (<state dir>/clusters/<port>.json, key \"token\").")


def _cleanup(info: dict, path: str) -> None:
    import shutil

    from ._store import store_path
    session_dir = info.get("session_dir") or ""
    if session_dir:
        try:
            os.unlink(store_path(os.path.basename(session_dir)[6:]))
        except OSError:
            pass
        shutil.rmtree(session_dir, ignore_errors=True)
    try:
        os.unlink(path)
    except OSError:
        pass


def stop(address: str, timeout: float = 10.0) -> bool:
    """Stop a cluster started on this machine; True if one was stopped."""
    info = _read(address)
    if info is None:
        return False
    # the nodes this machine joined to it go first
    port = info["cluster_id"]
    d = os.path.join(state_dir(), "clusters")
    for name in os.listdir(d):
        if name.startswith(f"{port}-node-") and name.endswith(".json"):
            try:
                with open(os.path.join(d, name)) as f:
                    stop_node(json.load(f))
            except (OSError, ValueError):
                pass
    path = _cluster_file(info["cluster_id"])
    _end_daemon(info, timeout=timeout)
    _cleanup(info, path)
    from . import _head_state as hs
    hs.remove(hs.state_file(state_dir(), port))  # stopped for good: no restart from it
    return True


def stop_all() -> int:
    n = 0
    for info in list_local():
        n += stop(info["address"])
    return n


class Client:
    """A read-only connection to a cluster's state API."""

    def __init__(self, core: Any, address: str) -> None:
        self._core = core
        self.address = address

    def rows(self, kind: str) -> Any:
        return self._core.state_rows(kind)

    def timeline(self) -> list[dict]:
        return self._core.state_rows("timeline")  # type: ignore[no-any-return]

    def snapshot(self, recent: int = 50, largest: int = 10) -> dict[str, Any]:
        nodes = self.rows("nodes")
        tasks = self.rows("tasks")
        objects = self.rows("objects")
        total: dict[str, float] = {}
        avail: dict[str, float] = {}
        for n in nodes:
            for k, v in n["resources_total"].items():
                total[k] = total.get(k, 0.0) + v
            for k, v in n["resources_available"].items():
                avail[k] = avail.get(k, 0.0) + v
        by_state: dict[str, int] = {}
        for t in tasks:
            by_state[t["state"]] = by_state.get(t["state"], 0) + 1
        objs = sorted(objects, key=lambda o: -(o.get("object_size") or 0))
        return {
            "address": self.address, "time": time.time(), "nodes": nodes,
            "resources": {"total": total, "available": avail},
            "tasks_by_state": by_state, "actors": self.rows("actors"),
            "objects": {"used": sum(n["object_store"]["used"] for n in nodes),
                        "capacity": sum(n["object_store"]["capacity"] for n in nodes),
                        "spilled": sum(n["object_store"].get("spilled", 0) for n in nodes),
                        "spilled_objects": sum(n["object_store"].get("spilled_objects", 0) for n in nodes),
                        "count": len(objects), "largest": objs[:largest]},
            "events": sorted(tasks, key=lambda t: -(t.get("creation_time_ms") or 0))[:recent],
        }

    def close(self) -> None:
        self._core.shutdown()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *a: Any) -> None:
        self.close()


def connect(address: str, token: bytes | None = None) -> Client:
    from ._core import connect_core
    if token is None:
        address, token = resolve(address)
    try:
        core = connect_core(address=address, token=token, role="observer",
                            worker_id=secrets.token_hex(14), job_id="", namespace="")
    except OSError as e:
        raise ConnectionError(f"no carme cluster answers at {address} ({e}).{_restart_hint(address)}") from e
    return Client(core, address)


def _restart_hint(address: str) -> str:
    """For a cluster that does not answer: how to start its head again, if this machine
    has its saved state."""
    from . import _head_state as hs
    port = address.rsplit(":", 1)[-1]
    if not port.isdigit() or not os.path.exists(hs.state_file(state_dir(), port)):
        return ""
    return (f" Its head ran on this machine and its state is saved: start it again with "
            f"`carme start --head --port {port}`; its live nodes rejoin it.")
