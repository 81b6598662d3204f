"""Starting and stopping the embedded node daemon from a driver.

The daemon is a child process whose stdin is a pipe from the driver: the driver never
writes after the start-up configuration, and when the driver goes away for any reason
the pipe reaches end-of-file and the daemon cleans up everything it made.

Most of a daemon's start-up is its Python importing carme. `carme.init()` therefore starts
the process first (`launch_daemon`) and works out its configuration (checking the
arguments, counting GPUs) meanwhile; an argument refused then ends that process
(`discard`), which has made nothing yet.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from ._record import record

DAEMON_COMMAND = [sys.executable, "-m", "carme._daemon"]


@record
class EmbeddedNode:
    process: subprocess.Popen
    address: str
    token: bytes
    session_dir: str
    node_id: str

    def stop(self, timeout: float = 5.0) -> None:
        p = self.process
        if p.poll() is None:
            try:
                p.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in (p.stdout,):
            if f is not None:
                f.close()
        # normally the daemon removed these; if it had to be killed, do it here
        import shutil

        from ._store import store_path
        try:
            os.unlink(store_path(os.path.basename(self.session_dir)[6:]))
        except FileNotFoundError:
            pass
        shutil.rmtree(self.session_dir, ignore_errors=True)


def check_amount(name: str, value: Any) -> None:
    """None, or a finite number >= 0; the error names the argument."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")


def default_resources(num_cpus: float | None, num_gpus: float | None,
                      resources: dict | None, memory: float | None = None,
                      head: bool = True) -> dict[str, float]:
    check_amount("num_cpus", num_cpus)
    check_amount("num_gpus", num_gpus)
    check_amount("memory", memory)
    if resources is not None and not isinstance(resources, dict):
        raise TypeError(f"resources must be a dict of resource name -> amount, not "
                        f"{type(resources).__name__} {resources!r}")
    for key in ("CPU", "GPU", "memory"):
        if resources and key in resources:
            raise ValueError(
                f"Use the num_cpus/num_gpus arguments of carme.init() instead of "
                f"resources={{'{key}': ...}}.")
    for k, v in (resources or {}).items():
        if not isinstance(k, str) or not k:
            raise TypeError(f"resources keys must be non-empty strings, not {k!r}")
        check_amount(f"resources[{k!r}]", v)
    import psutil

    from ._metrics import detect_num_gpus
    out: dict[str, float] = {
        "CPU": float(num_cpus if num_cpus is not None else (os.cpu_count() or 1)),
        "GPU": float(num_gpus if num_gpus is not None else detect_num_gpus()),
        "memory": float(memory if memory is not None else int(psutil.virtual_memory().available * 0.7)),
        "node:127.0.0.1": 1.0,
    }
    if head:
        out["node:__internal_head__"] = 1.0
    for k, v in (resources or {}).items():
        out[k] = float(v)
    return {k: v for k, v in out.items() if v > 0}


MIN_STORE = 16 << 20


def store_size(requested: int | None, memory: int, shm_free: int, as_limit: int | None,
               vms: int) -> int:
    """The store's size (pure). Default: 30% of memory (the cgroup's limit where lower),
    at most 80% of free /dev/shm. Every carme process maps the whole store, so under an
    address-space limit (`ulimit -v`, RLIMIT_AS; `as_limit`, with `vms` already used by
    this process) the store takes at most half of what is left. A size that cannot fit
    is refused with how to fix it."""
    room = None if as_limit is None else max(0, (as_limit - vms) // 2)
    if requested is None:
        size = int(min(memory * 0.3, shm_free * 0.8))
        if room is not None and room < size:
            size = room
            if size < MIN_STORE:
                raise ValueError(
                    f"the object store does not fit in this process's address space: the limit "
                    f"(ulimit -v / RLIMIT_AS) is {as_limit:,} bytes and {vms:,} are in use, leaving "
                    f"{room:,} bytes for a store that every carme process maps (at least "
                    f"{MIN_STORE:,} needed). Raise the limit (ulimit -v) or run without it.")
        return size
    if room is not None and requested > room:
        raise ValueError(
            f"object_store_memory={requested:,} does not fit in this process's address space: "
            f"the limit (ulimit -v / RLIMIT_AS) is {as_limit:,} bytes, {vms:,} are in use, and "
            f"every carme process maps the whole store. Pass at most object_store_memory="
            f"{room:,}, leave it unset (carme then sizes the store to fit), or raise the limit.")
    return requested


def default_store_size(requested: int | None = None) -> int:
    """`store_size` with this machine's and this process's figures."""
    import resource

    import psutil

    from ._metrics import _cgroup_limit
    total = psutil.virtual_memory().total
    cgroup = _cgroup_limit()
    if cgroup is not None:
        total = min(total, cgroup[1])
    try:
        shm = os.statvfs("/dev/shm")
        shm_size = shm.f_bavail * shm.f_frsize
    except OSError:
        shm_size = total
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    as_limit = None if soft == resource.RLIM_INFINITY else soft
    vms = psutil.Process().memory_info().vms if as_limit is not None else 0
    return store_size(requested, total, shm_size, as_limit, vms)


def spawn_daemon(*, resources: dict[str, float], object_store_memory: int | None,
                 namespace: str | None, job_id: str, prestart: int = 1,
                 standalone: bool = False, tcp: str | None = None,
                 log_file: str | None = None, cluster: bool = False,
                 head_address: str | None = None, token: bytes | None = None,
                 host: str = "127.0.0.1", labels: dict | None = None,
                 grpc_port: int = 0, options: dict | None = None, node_id: str | None = None,
                 launched: subprocess.Popen | None = None,
                 ) -> tuple[subprocess.Popen, dict, bytes, str, str]:
    """Start a node daemon; return (process, its ready message, token, session dir, node id).

    Embedded (standalone=False): its stdin stays a pipe from this process, and it exits
    when that pipe closes; `launched`, its process if `launch_daemon` started it already
    (ended here if the configuration is refused). Standalone: a session of its own that
    outlives the caller."""
    from ._node_memory import memory_options
    assert launched is None or not standalone
    session_dir = None
    try:
        store = default_store_size(object_store_memory)  # refused before anything is made
        session_dir = tempfile.mkdtemp(prefix="carme-")
        os.chmod(session_dir, 0o700)
        token = token or secrets.token_bytes(32)
        node_id = node_id or secrets.token_hex(28)  # a restarted head keeps its id
        config = {
            "cluster": cluster, "head_address": head_address, "host": host, "labels": labels or {},
            "grpc_port": grpc_port,
            "session_dir": session_dir, "session": os.path.basename(session_dir)[6:],
            "token": token.hex(), "node_id": node_id, "resources": resources,
            "object_store_memory": store,
            "namespace": namespace, "job_id": job_id, "prestart_workers": prestart,
            "standalone": standalone, "tcp": tcp,
            # the memory monitor's settings (CARME_MEMORY_USAGE_THRESHOLD, ...; `_node_memory.py`)
            **memory_options(None, os.environ),
            # limits (auth_timeout, max_unauthenticated, stall_timeout, max_backlog, max_frame)
            **(options or {}),
        }
        return _spawn(config, session_dir, token, node_id, standalone, log_file, launched)
    except BaseException:
        # a failed start leaves nothing behind
        if launched is not None:
            discard(launched)
        if session_dir is not None:
            shutil.rmtree(session_dir, ignore_errors=True)
        raise


def launch_daemon() -> subprocess.Popen:
    """Start an embedded daemon's process, to be configured by `spawn_daemon(launched=)`.
    Until then it only imports; without a configuration (this process gone) it exits."""
    # Embedded: the daemon moves itself into a process group of its own (see
    # `_daemon.main`), staying in the driver's session.
    return subprocess.Popen(DAEMON_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            close_fds=True)


def discard(proc: subprocess.Popen) -> None:
    """End a launched daemon that was never configured (it has made nothing)."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


def _spawn(config: dict, session_dir: str, token: bytes, node_id: str, standalone: bool,
           log_file: str | None, proc: subprocess.Popen | None,
           ) -> tuple[subprocess.Popen, dict, bytes, str, str]:
    from ._store import store_path
    if proc is None and standalone:  # a session of its own
        with open(log_file or os.path.join(session_dir, "daemon.log"), "ab") as stderr:
            proc = subprocess.Popen(DAEMON_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=stderr, close_fds=True, start_new_session=True)
    elif proc is None:
        proc = launch_daemon()
    assert proc.stdin is not None and proc.stdout is not None
    try:
        try:
            proc.stdin.write(json.dumps(config).encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died early: the readline below says so
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise RuntimeError(f"the carme node daemon failed to start (exit code {proc.returncode}); "
                               f"see {'its output above' if not standalone else os.path.join(session_dir, 'daemon.log')}")
        return proc, json.loads(line), token, session_dir, node_id
    except BaseException:
        discard(proc)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(store_path(config["session"]))
        raise


def start_embedded(*, resources: dict[str, float], object_store_memory: int | None,
                   namespace: str | None, job_id: str, prestart: int = 1,
                   options: dict | None = None,
                   launched: subprocess.Popen | None = None) -> EmbeddedNode:
    proc, ready, token, session_dir, node_id = spawn_daemon(
        resources=resources, object_store_memory=object_store_memory, namespace=namespace,
        job_id=job_id, prestart=prestart, options=options, launched=launched)
    return EmbeddedNode(proc, ready["address"], token, session_dir, node_id)
