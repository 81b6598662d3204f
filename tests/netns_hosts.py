"""Hosts of their own for multi-host tests: one network and mount namespace per host.

Theory of operation. `Hosts(["head", "a", "b", "drv"])` builds, as root:

* a switch namespace holding a bridge, and for each host a namespace of its own joined
  to the bridge by a veth pair, addressed from the documentation range 198.51.100.0/24
  (the hosts reach each other and nothing else: no route, no link outside these
  namespaces);
* per host, an *anchor* process (`sleep`) started inside that network namespace in a
  private mount namespace, with fresh tmpfs mounts on `/tmp` and `/dev/shm`: the host
  has its own `/tmp` and shared memory, seen by no other host and not by this machine.
  Everything the test runs on a host enters the anchor's network and mount namespaces
  (`nsenter`).

`close()` kills every process in the test's network namespaces (by PID, as `ip netns
pids` lists them: only what this test started can be there), then the anchors, then
deletes the namespaces; the tmpfs mounts go with the last process of each mount
namespace. Namespace names start with `PREFIX`, which `leftover_namespaces` (the leak
guard in conftest) looks for.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import psutil

PREFIX = "carmetest-"
SUBNET = "198.51.100"


def leftover_namespaces() -> set[str]:
    """Network namespaces of these tests that exist now."""
    try:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return {line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)}


def remove_namespace(name: str) -> list[str]:
    """Kill every process in network namespace `name` (by PID) and delete it; says which
    processes were there."""
    r = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10)
    procs, said = [], []
    for pid in r.stdout.split():
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(int(pid))
            said.append(f"pid {p.pid} ({' '.join(p.cmdline())[:160] or p.name()})")
            procs.append(p)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=5)
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=20)
    return said


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs these tests as root)"
    name = f"{PREFIX}probe-{secrets.token_hex(3)}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        return f"`ip netns add` is not permitted here: {r.stderr.strip()}"
    try:
        r = subprocess.run(["ip", "netns", "exec", name, "unshare", "--mount", "--propagation", "private",
                            "mount", "-t", "tmpfs", "tmpfs", "/tmp"], capture_output=True, text=True,
                           timeout=10)
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)
    if r.returncode != 0:
        return f"a private /tmp (`unshare --mount` + tmpfs) is not permitted here: {r.stderr.strip()}"
    return None


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")


class Hosts:
    def __init__(self, names: list[str]) -> None:
        self.tag = secrets.token_hex(3)
        self.switch = f"{PREFIX}{self.tag}-sw"
        self.ns = {n: f"{PREFIX}{self.tag}-{n}" for n in names}
        self.ip = {n: f"{SUBNET}.{10 + i}" for i, n in enumerate(names)}
        self.anchors: dict[str, subprocess.Popen] = {}
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, (name, ns) in enumerate(self.ns.items()):
            _ip("netns", "add", ns)
            # both ends are made inside the test's namespaces: nothing appears on this machine
            _ip("-n", self.switch, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _ip("-n", self.switch, "link", "set", f"v{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.ip[name]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            anchor = subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
                 "sh", "-c", "mount -t tmpfs -o mode=1777 tmpfs /tmp && "
                 "mount -t tmpfs -o mode=1777 tmpfs /dev/shm && echo up && exec sleep 100000"],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
            self.anchors[name] = anchor
            assert anchor.stdout is not None
            line = anchor.stdout.readline()
            if line.strip() != b"up":
                raise RuntimeError(f"host {name}: could not make its private /tmp and /dev/shm")

    def cmd(self, host: str, argv: list[str]) -> list[str]:
        """`argv` to run on `host` (its network, its /tmp, its /dev/shm)."""
        return ["nsenter", "-t", str(self.anchors[host].pid), "-m", "-n", *argv]

    def run(self, host: str, argv: list[str], *, env: dict[str, str] | None = None,
            input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        full = {**os.environ, "CARME_STATE_DIR": "/tmp/carme-state", **(env or {})}
        full.pop("CARME_ADDRESS", None)
        return subprocess.run(self.cmd(host, argv), env=full, input=input, capture_output=True,
                              text=True, timeout=timeout, cwd="/")

    def python(self, host: str, code: str, *, env: dict[str, str] | None = None,
               timeout: float = 180) -> subprocess.CompletedProcess:
        """Run `code` with this Python on `host` (the script comes on stdin: the host has
        its own /tmp, so no file of ours is there)."""
        return self.run(host, [sys.executable, "-"], env=env, input=code, timeout=timeout)

    def pids(self, host: str) -> list[int]:
        """Processes in `host`'s network namespace (all started by this test)."""
        r = subprocess.run(["ip", "netns", "pids", self.ns[host]], capture_output=True, text=True,
                           timeout=10)
        anchor = self.anchors.get(host)
        return [int(p) for p in r.stdout.split() if anchor is None or int(p) != anchor.pid]

    def kill_host(self, host: str) -> None:
        """Every process on `host` except its anchor gets SIGKILL (a machine that died)."""
        for pid in self.pids(host):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        for host in list(self.anchors):
            self.kill_host(host)
        deadline = time.monotonic() + 10
        while any(self.pids(h) for h in self.anchors) and time.monotonic() < deadline:
            time.sleep(0.1)
        for anchor in self.anchors.values():
            with contextlib.suppress(ProcessLookupError):
                anchor.kill()
            anchor.wait(timeout=10)
            if anchor.stdout is not None:
                anchor.stdout.close()
        for ns in [*self.ns.values(), self.switch]:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=20)

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
