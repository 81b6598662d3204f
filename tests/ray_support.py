"""A real Ray head for tests: ``ray start --head --block`` on 127.0.0.1, owned by PID.

Theory of operation
-------------------
:func:`start_ray_head` picks free loopback ports for every listener Ray opens
(GCS, dashboard, dashboard agent, Ray Client server, node manager, object
manager, runtime-env agent, metrics export, and a worker-port range), writes a
fresh random token to a 0600 file in a temporary directory and starts
``ray start --head --block`` in a new session (its own process group) with
``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` pointing at that file, and
``--temp-dir`` in the same temporary directory: nothing is written to the
home directory or to ``/tmp/ray``. It waits until the GCS port accepts and the
dashboard's state API lists an ALIVE node (with the token), then returns a
:class:`RayHead`.

:meth:`RayHead.stop` never calls ``ray stop`` (that kills every Ray on the
machine): it records the CLI process's descendants and every process in its
session, sends SIGTERM to the process group, waits, SIGKILLs what is left,
checks that none of those processes survived (raising if one did), and removes
the temporary directory.

The session-scoped fixture :func:`ray_cluster` starts one head per test run
(Ray takes 4-15 s to start on 2 cores) and exports ``RAY_AUTH_MODE`` and
``RAY_AUTH_TOKEN_PATH`` for the run, so drivers started by tests (in-process
``ray.init(address=...)``, kernels, notebooks) authenticate; tests pass the
address explicitly. Without an importable ``ray`` it skips with the reason.

Use it from a test module::

    from ray_support import requires_ray

    pytestmark = [requires_ray]

    def test_x(ray_cluster):
        ...ray_cluster.gcs_address, ray_cluster.dashboard_url, ray_cluster.headers()...

(``ray_cluster`` is imported by ``tests/conftest.py``, so every test can use it.)
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from carme_lab._ray import free_port_range, free_ports

__all__ = [
    "RayHead",
    "RayHeadError",
    "in_ray_head",
    "ray_available",
    "ray_cluster",
    "requires_ray",
    "start_ray_head",
]

START_TIMEOUT_S = 120.0
START_ATTEMPTS = 3
STOP_TIMEOUT_S = 15.0
WORKER_PORTS = 24
OBJECT_STORE_BYTES = 300 * 1024 * 1024


# Process-group ids of the heads this process started and has not stopped yet: the
# leak guard leaves their processes (Ray keeps idle workers) to the head's own check.
_RUNNING_HEADS: set[int] = set()


def in_ray_head(pid: int) -> bool:
    """True if process ``pid`` belongs to a Ray head started here (not a test's leak)."""
    if not _RUNNING_HEADS:
        return False
    try:
        return os.getsid(pid) in _RUNNING_HEADS
    except OSError:
        return False


def ray_available() -> bool:
    """True where ``import ray`` would work (the ``ray`` extra is installed)."""
    return importlib.util.find_spec("ray") is not None


requires_ray = pytest.mark.skipif(
    not ray_available(),
    reason="Ray is not installed: install the ray extra (pip install -e '.[ray]') to run Ray-engine tests",
)


class RayHeadError(RuntimeError):
    """The Ray head did not start, or a process it started survived stopping."""


@dataclass
class RayHead:
    """A running Ray head this process started (see the module docstring)."""

    gcs_address: str  # "127.0.0.1:PORT": what ray.init(address=...) and `ray:` take
    dashboard_url: str  # "http://127.0.0.1:PORT": REST state API, needs headers()
    client_address: str  # "ray://127.0.0.1:PORT": Ray Client
    token: str
    token_path: Path
    temp_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def env(self) -> dict[str, str]:
        """Environment a driver process needs to join this cluster (auth only, no address)."""
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }

    def headers(self) -> dict[str, str]:
        """HTTP headers for the dashboard / state REST API."""
        return {"Authorization": f"Bearer {self.token}"}

    def get_json(self, path: str, timeout: float = 10.0) -> object:
        """GET ``dashboard_url + path`` with the token; the decoded JSON body."""
        req = urllib.request.Request(self.dashboard_url + path, headers=self.headers())
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode())

    def processes(self) -> list[psutil.Process]:
        """The CLI process, its descendants, and every process in its session."""
        found: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.pid)
            found[root.pid] = root
            for p in root.children(recursive=True):
                found[p.pid] = p
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(p.pid) == self.pid:
                    found[p.pid] = p
        return [p for p in found.values() if _alive(p)]

    def stop(self) -> None:
        """Stop exactly what :func:`start_ray_head` started; raise if something survives."""
        procs = self.processes()
        _RUNNING_HEADS.discard(self.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=STOP_TIMEOUT_S)
        alive = [p for p in alive if _alive(p)]
        # Late children (a worker forked during shutdown) join the kill list.
        alive += [p for p in self.processes() if p.pid not in {q.pid for q in alive}]
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        _, survivors = psutil.wait_procs(alive, timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)
        survivors = [p for p in survivors if _alive(p)] + self.processes()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        if survivors:
            names = ", ".join(_describe(p) for p in survivors)
            raise RayHeadError(f"Ray processes survived SIGKILL: {names}")


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _describe(p: psutil.Process) -> str:
    try:
        return f"pid {p.pid} ({' '.join(p.cmdline())[:120]})"
    except psutil.Error:
        return f"pid {p.pid}"


def _ray_cli() -> str:
    exe = Path(sys.executable).with_name("ray")
    if exe.exists():
        return str(exe)
    found = shutil.which("ray")
    if found is None:
        raise RayHeadError("the `ray` command is not installed next to this Python; install the ray extra")
    return found


def _log_tail(path: Path, n: int = 4000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-n:]
    return ""


def start_ray_head(
    num_cpus: int = 2, timeout: float = START_TIMEOUT_S, attempts: int = START_ATTEMPTS
) -> RayHead:
    """Start a Ray head on 127.0.0.1 (see the module docstring); the caller must ``stop()`` it.

    ``ray start`` gives its raylet a fixed 30 s to register with the GCS; on a loaded
    2-core machine that sometimes fails, so a failed start (everything it started
    stopped first) is retried with fresh ports, up to ``attempts`` times.
    """
    errors: list[str] = []
    for _ in range(attempts):
        try:
            return _start_once(num_cpus, timeout)
        except RayHeadError as exc:
            errors.append(str(exc))
    raise RayHeadError(f"Ray head failed to start {attempts} times; last:\n{errors[-1]}")


def _run_token() -> str | None:
    """The token the test run gave Ray (tests/conftest.py), so that every Ray of the run,
    this head and the differential suite's local ones, shares one token: a Ray driver
    reads its auth settings once per process."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    try:
        return Path(path).read_text().strip() or None if path else None
    except OSError:
        return None


def _start_once(num_cpus: int, timeout: float) -> RayHead:
    # Short path: Ray puts Unix sockets under the temp dir (108-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="cray"))
    token = _run_token() or secrets.token_hex(32)
    token_path = temp_dir / "auth_token"
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    names = [
        "gcs", "dashboard", "dashboard_agent_listen", "dashboard_agent_grpc", "client",
        "node_manager", "object_manager", "runtime_env_agent", "metrics_export",
    ]
    ports = dict(zip(names, free_ports(len(names), set()), strict=True))
    try:
        ports["min_worker"] = free_port_range(WORKER_PORTS, set(ports.values()))
    except RuntimeError as e:
        raise RayHeadError(str(e)) from None
    ports["max_worker"] = ports["min_worker"] + WORKER_PORTS - 1
    cmd = [
        _ray_cli(), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        f"--port={ports['gcs']}",
        f"--num-cpus={num_cpus}", "--num-gpus=0",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={ports['dashboard']}",
        f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
        f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
        f"--ray-client-server-port={ports['client']}",
        f"--node-manager-port={ports['node_manager']}",
        f"--object-manager-port={ports['object_manager']}",
        f"--runtime-env-agent-port={ports['runtime_env_agent']}",
        f"--metrics-export-port={ports['metrics_export']}",
        f"--min-worker-port={ports['min_worker']}",
        f"--max-worker-port={ports['max_worker']}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--temp-dir={temp_dir / 'ray'}",
    ]
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)  # the file is the one source of the token
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        # Ray turns --node-ip-address=127.0.0.1 into the machine's address unless
        # it believes it runs single-node; this keeps the node on loopback.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    )
    log_path = temp_dir / "ray-start.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _RUNNING_HEADS.add(proc.pid)
    head = RayHead(
        gcs_address=f"127.0.0.1:{ports['gcs']}",
        dashboard_url=f"http://127.0.0.1:{ports['dashboard']}",
        client_address=f"ray://127.0.0.1:{ports['client']}",
        token=token,
        token_path=token_path,
        temp_dir=temp_dir,
        process=proc,
        log_path=log_path,
        ports=ports,
    )
    try:
        _wait_ready(head, timeout)
    except BaseException:
        tail = _log_tail(log_path)
        head.stop()
        raise RayHeadError(f"Ray head did not become ready: see ray start's output:\n{tail}") from None
    return head


def _wait_ready(head: RayHead, timeout: float) -> None:
    """Until the GCS port accepts and the state API lists an ALIVE node."""
    deadline = time.monotonic() + timeout
    last = "nothing tried yet"
    host, port = head.gcs_address.split(":")
    while time.monotonic() < deadline:
        if head.process.poll() is not None:
            raise RayHeadError(f"`ray start` exited with {head.process.returncode}")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                pass
            body = head.get_json("/api/v0/nodes?limit=10", timeout=5)
            nodes = body.get("data", {}).get("result", {}).get("result", [])  # type: ignore[union-attr]
            if any(n.get("state") == "ALIVE" for n in nodes):
                return
            last = f"state API lists no ALIVE node yet: {nodes}"
        except (OSError, urllib.error.URLError, ValueError, AttributeError) as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise RayHeadError(f"Ray head not ready within {timeout:.0f} s (last: {last})")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayHead]:
    """One Ray head for the whole test run (2 CPUs, dashboard on), stopped at the end.

    Exports ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN_PATH`` for the run (so drivers the
    tests start authenticate) and removes them afterwards. Skips without Ray.
    """
    if not ray_available():
        pytest.skip("Ray is not installed: install the ray extra (pip install -e '.[ray]')")
    head = start_ray_head()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in head.env().items():
            mp.setenv(k, v)
        mp.delenv("RAY_AUTH_TOKEN", raising=False)
        try:
            yield head
        finally:
            head.stop()
