"""`RayBackend`: Ray clusters for the server extension, over HTTP and by process only.

Theory of operation
-------------------
A Ray cluster's id is ``ray:GCS_HOST:PORT``, the address kernels join
(``CARME_ADDRESS=ray:HOST:PORT``). This server never imports Ray's driver API and
never becomes a Ray driver: it reads state from the cluster's dashboard REST API
(`carme_lab._ray_rest` turns the answers into carme's rows) with Ray's auth token
as ``Authorization: Bearer`` (Ray >= 2.59 refuses requests without it). The
token comes from where Ray's own tools look: ``RAY_AUTH_TOKEN``, the file
``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``.

Finding clusters (`list_local`): every live Ray dashboard process of this user on
this machine (``ray/dashboard/dashboard.py --gcs-address=... --port=...``) names a
head: its GCS address and its dashboard URL. The rows of heads this server
started (`start`) come from their records, ``<carme state dir>/ray/<port>.json``.
For an address a user gave that is not on this machine the dashboard is taken to
be ``http://HOST:8265`` (Ray's default) unless the connect call named one.

Starting (`start`): ``ray start --head --block`` as a process of its own session
(it outlives this server, like a carme cluster started from the panel), every
port it opens chosen free on 127.0.0.1 (or as asked), a temp dir of its own,
its output in ``ray-start.log`` there. Ready when its dashboard lists an alive
node; tried again (three times in all) when Ray's own fixed 30 s wait for the
raylet ran out (a loaded small machine), else stopped again with ``ray start``'s output in the error. Stopping (`stop`) only ever touches a head this server's records name:
SIGTERM to that ``ray start`` process (it ends its children), then SIGKILL to
whatever of its process tree, process group or temp dir still runs, by PID.
Never ``ray stop``, which ends every Ray cluster of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

import psutil

from ._bodies import StartSpec
from ._ray_rest import RayRestError, ray_snapshot, ray_timeline, state_rows

__all__ = ["RayBackend", "ray_token"]

DEFAULT_DASHBOARD_PORT = 8265
TASK_LIMIT = 1000
# what `ray start` says when its raylet did not register within Ray's fixed 30 s
RAYLET_TIMED_OUT = "timed out during startup"
START_ATTEMPTS = 3
WORKER_PORTS = 64
STOP_GRACE_S = 15.0


def ray_token() -> str | None:
    """Ray's auth token from where Ray's tools look, or None (auth then off or failing)."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if token:
        return token.strip()
    paths = [os.environ.get("RAY_AUTH_TOKEN_PATH") or "",
             os.path.join(os.path.expanduser("~"), ".ray", "auth_token")]
    for path in paths:
        if path and os.path.isfile(path):
            with open(path) as f:
                return f.read().strip() or None
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int, taken: set[int]) -> list[int]:
    """`n` distinct free ports of 127.0.0.1, none in `taken` (Ray refuses a port twice)."""
    out: list[int] = []
    while len(out) < n:
        port = free_port()
        if port not in taken and port not in out:
            out.append(port)
    return out


def free_port_range(n: int, taken: set[int]) -> int:
    """First of `n` consecutive ports free on 127.0.0.1 and not in `taken` (worker ports)."""
    for _ in range(200):
        base = free_port()
        if base + n >= 65536 or taken & set(range(base, base + n)):
            continue
        socks = []
        try:
            for port in range(base + 1, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError(f"found no {n} consecutive free ports on 127.0.0.1 for Ray's workers")


def _arg(cmdline: list[str], name: str) -> str | None:
    for i, part in enumerate(cmdline):
        if part.startswith(f"{name}="):
            return part.split("=", 1)[1]
        if part == name and i + 1 < len(cmdline):
            return cmdline[i + 1]
    return None


def _dashboards() -> Iterable[tuple[psutil.Process, list[str]]]:
    uid = os.getuid()
    for p in psutil.process_iter(["cmdline", "uids"]):
        try:
            cmd = p.info["cmdline"] or []
            uids = p.info["uids"]
        except psutil.Error:
            continue
        if uids is not None and uids.real != uid:
            continue
        if any(part.endswith(os.path.join("dashboard", "dashboard.py")) for part in cmd[:3]):
            yield p, cmd


def _same_process(pid: int, started: float) -> bool:
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - started) < 1.0
    except psutil.Error:
        return False


class RayBackend:
    """`carme_lab._service.Backend` for ``ray:HOST:PORT`` clusters (see the module docstring)."""

    def __init__(self, http_timeout: float = 8.0, ready_timeout: float = 240.0) -> None:
        self.http_timeout = http_timeout
        self.ready_timeout = ready_timeout
        self.dashboards: dict[str, str] = {}  # id -> dashboard URL, from listings and records

    # ------------------------------------------------------------------ records
    def _records_dir(self) -> str:
        from carme import cluster

        d = os.path.join(cluster.state_dir(), "ray")
        os.makedirs(d, mode=0o700, exist_ok=True)
        return d

    def _records(self) -> list[dict[str, Any]]:
        out = []
        d = self._records_dir()
        for name in os.listdir(d):
            if not name.endswith(".json"):
                continue
            path = os.path.join(d, name)
            try:
                with open(path) as f:
                    rec = json.load(f)
                ok = (isinstance(rec, dict) and isinstance(rec.get("pid"), int)
                      and isinstance(rec.get("pid_started"), (int, float))
                      and isinstance(rec.get("address"), str)
                      and isinstance(rec.get("temp_dir"), str))
            except (OSError, ValueError):
                ok = False
            if not ok:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            if not _same_process(rec["pid"], rec["pid_started"]):
                self._kill(rec)  # its `ray start` died: end what is left of that head
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            rec["record"] = path
            out.append(rec)
        return out

    def _record(self, address: str) -> dict[str, Any] | None:
        return next((r for r in self._records() if r["address"] == address), None)

    # ------------------------------------------------------------------ Backend
    def list_local(self) -> list[dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for p, cmd in _dashboards():
            gcs = _arg(cmd, "--gcs-address")
            port = _arg(cmd, "--port")
            if not gcs or not port or not port.isdigit():
                continue
            host = _arg(cmd, "--host") or "127.0.0.1"
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1"
            try:
                started = p.create_time()
            except psutil.Error:
                continue
            address = f"ray:{gcs}"
            rows[address] = {"address": address, "pid": p.pid, "started": started,
                             "dashboard": f"http://{host}:{port}", "engine": "ray"}
        for rec in self._records():
            row = rows.setdefault(rec["address"], {"address": rec["address"], "engine": "ray"})
            row.update(pid=rec["pid"], started=rec.get("started"), dashboard=rec.get("dashboard"),
                       resources=rec.get("resources") or {}, owned=True)
        for address, row in rows.items():
            if row.get("dashboard"):
                self.dashboards[address] = row["dashboard"]
        return sorted(rows.values(), key=lambda r: -(r.get("started") or 0))

    def given(self, address: str, dashboard: str | None) -> None:
        if dashboard:
            self.dashboards[address] = dashboard

    def dashboard(self, address: str) -> str:
        url = self.dashboards.get(address)
        if url is None:
            self.list_local()
            url = self.dashboards.get(address)
        if url is None:
            host = address[len("ray:"):].rpartition(":")[0]
            url = self.dashboards[address] = f"http://{host}:{DEFAULT_DASHBOARD_PORT}"
        return url

    def _get(self, address: str, path: str, deadline: float | None = None) -> Any:
        """GET `path` of the cluster's dashboard as JSON, within `deadline` (monotonic) if given."""
        timeout = self.http_timeout
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise ConnectionError(f"no time left to ask {address}'s dashboard for {path}")
        url = self.dashboard(address) + path
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        token = ray_token()
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        host = urllib.parse.urlsplit(url).hostname or ""
        # a loopback dashboard never goes through a proxy from the environment (http_proxy)
        loopback = host == "localhost" or host.startswith("127.")
        opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if loopback else []))
        try:
            with opener.open(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise PermissionError(
                    f"Ray's dashboard at {url} refused the request ({e.code}): "
                    f"{'no Ray auth token found here' if not token else 'the Ray auth token was refused'}; "
                    f"set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH for the Jupyter server to the "
                    f"cluster's token (`ray get-auth-token` prints it)") from None
            raise ConnectionError(f"Ray's dashboard at {url} answered {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ConnectionError(f"Ray's dashboard at {url} did not answer: {e}") from None

    def _optional(self, address: str, path: str, deadline: float) -> Any:
        try:
            return self._get(address, path, deadline)
        except (ConnectionError, PermissionError):
            return None

    def snapshot(self, address: str) -> dict[str, Any]:
        """All the REST answers one snapshot needs, within `http_timeout` in total (the
        optional ones are left out, and flagged, when time runs out)."""
        deadline = time.monotonic() + self.http_timeout
        nodes = self._get(address, "/api/v0/nodes?limit=1000&detail=1", deadline)
        tasks = self._get(address, f"/api/v0/tasks?limit={TASK_LIMIT}&detail=1&exclude_driver=1",
                          deadline)
        actors = self._get(address, "/api/v0/actors?limit=1000&detail=1", deadline)
        objects = self._get(address, "/api/v0/objects?limit=1000&detail=1", deadline)
        version = self._optional(address, "/api/version", deadline)
        return ray_snapshot(
            nodes=nodes, actors=actors, objects=objects, tasks=tasks,
            task_summary=self._optional(address, "/api/v0/tasks/summarize", deadline),
            node_summary=self._optional(address, "/nodes?view=summary", deadline),
            cluster_status=self._optional(address, "/api/cluster_status", deadline),
            now=time.time(),
            version=version.get("ray_version") if isinstance(version, dict) else None,
        )

    def timeline(self, address: str) -> list[dict[str, Any]]:
        payload = self._get(address, f"/api/v0/tasks?limit={TASK_LIMIT}&detail=1&exclude_driver=1")
        rows, _ = state_rows(payload, "the tasks")
        return ray_timeline(rows, time.time() * 1000)

    def start(self, spec: StartSpec) -> dict[str, Any]:
        """Start a head (see the module docstring); again, up to `START_ATTEMPTS` times, when
        Ray's own 30 s wait for its raylet ran out, which happens on a loaded small machine."""
        for _ in range(START_ATTEMPTS - 1):
            try:
                return self._start_once(spec)
            except RuntimeError as e:
                if RAYLET_TIMED_OUT not in str(e):
                    raise
        return self._start_once(spec)

    def _start_once(self, spec: StartSpec) -> dict[str, Any]:
        flags = ("--ray-client-server-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--metrics-export-port",
                 "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port")
        asked = {p for p in (spec.port, spec.dashboard_port) if p}
        free = free_ports(2 + len(flags), asked)
        port = spec.port or free[0]
        dash = spec.dashboard_port or free[1]
        temp_dir = tempfile.mkdtemp(prefix="carme-ray-")
        args = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                "--disable-usage-stats", "--node-ip-address=127.0.0.1", f"--port={port}",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                f"--temp-dir={temp_dir}"]
        args += [f"{flag}={p}" for flag, p in zip(flags, free[2:], strict=True)]
        workers = free_port_range(WORKER_PORTS, asked | set(free))
        args += [f"--min-worker-port={workers}", f"--max-worker-port={workers + WORKER_PORTS - 1}"]
        if spec.num_cpus is not None:
            args.append(f"--num-cpus={int(spec.num_cpus)}")
        if spec.num_gpus is not None:
            args.append(f"--num-gpus={int(spec.num_gpus)}")
        if spec.resources:
            args.append(f"--resources={json.dumps(spec.resources)}")
        env = dict(os.environ)
        # Ray turns --node-ip-address=127.0.0.1 into the machine's address unless it
        # believes it runs single-node; this keeps the head on loopback.
        env.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        env.pop("RAY_ADDRESS", None)
        log_path = os.path.join(temp_dir, "ray-start.log")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True, env=env)
        started = psutil.Process(proc.pid).create_time()
        rec: dict[str, Any] = {
            "address": f"ray:127.0.0.1:{port}", "pid": proc.pid, "pid_started": started,
            "temp_dir": temp_dir, "dashboard": f"http://127.0.0.1:{dash}", "started": time.time(),
            "resources": {k: v for k, v in (("CPU", spec.num_cpus), ("GPU", spec.num_gpus))
                          if v is not None} | (spec.resources or {}),
            "log": log_path,
        }
        try:
            rec["address"] = self._wait_ready(rec, proc)
        except BaseException:
            self._kill(rec)
            raise
        proc.returncode = 0  # not ours to wait for: it outlives this server unless stopped
        path = os.path.join(self._records_dir(), f"{port}.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(rec, f)
        self.dashboards[rec["address"]] = rec["dashboard"]
        return rec

    def _wait_ready(self, rec: dict[str, Any], proc: subprocess.Popen[bytes]) -> str:
        """The head's id once its dashboard lists an alive node (Ray's GCS address)."""
        current = os.path.join(rec["temp_dir"], "ray_current_cluster")
        address = rec["address"]
        self.dashboards[address] = rec["dashboard"]
        last = "no answer yet"
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Ray head was not ready within {self.ready_timeout:.0f} s "
                                   f"({last}); `ray start` output ends:\n{_tail(rec['log'])}")
            if proc.poll() is not None:
                raise RuntimeError(f"`ray start` exited with code {proc.returncode} before the head "
                                   f"was ready; its output ends:\n{_tail(rec['log'])}")
            try:
                rows, _ = state_rows(self._get(address, "/api/v0/nodes?limit=10"), "the nodes")
                if any(r.get("state") == "ALIVE" for r in rows):
                    break
            except (ConnectionError, RayRestError) as e:
                last = str(e)
            except PermissionError:
                raise
            time.sleep(0.5)
        with contextlib.suppress(OSError):
            with open(current) as f:
                gcs = f.read().strip()
            if gcs:
                self.dashboards.pop(address, None)
                address = f"ray:{gcs}"
        return address

    def stop(self, address: str) -> bool:
        rec = self._record(address)
        if rec is None:
            return False
        self._kill(rec)
        with contextlib.suppress(OSError):
            os.unlink(rec["record"])
        self.dashboards.pop(address, None)
        return True

    def _kill(self, rec: dict[str, Any]) -> None:
        """End a head this server started: SIGTERM to ``ray start``, then SIGKILL what is left."""
        procs = _tree(rec["pid"], rec["pid_started"], rec["temp_dir"])
        head = next((p for p in procs if p.pid == rec["pid"]), None)
        if head is not None:
            with contextlib.suppress(psutil.Error):
                head.send_signal(signal.SIGTERM)
            _, alive = psutil.wait_procs(procs, timeout=STOP_GRACE_S)
        else:
            alive = procs
        # anything that appeared meanwhile (workers) or ignored SIGTERM
        left = {p.pid: p for p in alive}
        left.update({p.pid: p for p in _tree(rec["pid"], rec["pid_started"], rec["temp_dir"])})
        for p in left.values():
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(list(left.values()), timeout=5)
        shutil.rmtree(rec["temp_dir"], ignore_errors=True)

    def close(self) -> None:
        pass


def _tree(pid: int, started: float, temp_dir: str) -> list[psutil.Process]:
    """The ``ray start`` process, its descendants, its process group, and Ray daemons of this
    user that were given its temp dir as a flag (``--temp-dir=...``: reparented ones).

    Never this process or one of its ancestors."""
    found: dict[int, psutil.Process] = {}
    if _same_process(pid, started):
        head = psutil.Process(pid)
        found[pid] = head
        with contextlib.suppress(psutil.Error):
            for c in head.children(recursive=True):
                found[c.pid] = c
    me = psutil.Process()
    spared = {me.pid} | {p.pid for p in me.parents()}
    uid = os.getuid()
    for p in psutil.process_iter(["cmdline", "uids"]):
        if p.pid in found or p.pid in spared:
            continue
        try:
            if p.info["uids"] is not None and p.info["uids"].real != uid:
                continue
            in_group = pid in found and os.getpgid(p.pid) == pid
            flags = [part for part in (p.info["cmdline"] or []) if part.startswith("--")]
            names_dir = any(f"={temp_dir}" in part for part in flags)
        except (psutil.Error, OSError):
            continue
        if in_group or names_dir:
            found[p.pid] = p
    return [p for p in found.values() if p.pid not in spared]


def _tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return "(no output)"
