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
namespace. Namespace names start with `PREFIX` and the test process's pid, which
`leftover_namespaces` (the leak guard in conftest) looks for. A test run that was killed
before its cleanup ran leaves its namespaces, what runs in them and its stash directory:
`sweep_dead_runs` (called as the next run starts) removes those of runs whose process is
gone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil

PREFIX = "carmetest-"
# this test process's own namespaces: another test run on the same machine makes (and
# cleans) its own, and this run's leak guard must neither report nor remove them
OWN = f"{PREFIX}{os.getpid()}-"
SUBNET = "198.51.100"
STASH_DIR = "/var/tmp"
STASH_PREFIX = f"{PREFIX}stash-"


def _namespaces(prefix: str) -> set[str]:
    """The network namespaces whose names start with `prefix`."""
    try:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return {line.split()[0] for line in out.splitlines() if line.startswith(prefix)}


def leftover_namespaces() -> set[str]:
    """Network namespaces of this test process's tests that exist now."""
    return _namespaces(OWN)


def _run_is_gone(name: str, prefix: str) -> bool:
    """Whether `name` (`<prefix><pid>-...`) belongs to a test process that no longer runs."""
    pid = name[len(prefix):].split("-", 1)[0]
    return pid.isdigit() and int(pid) != os.getpid() and not psutil.pid_exists(int(pid))


def sweep_dead_runs() -> list[str]:
    """Remove what killed test runs left: their network namespaces (and every process in
    them, by PID) and their stash directories. Says what it removed."""
    removed = []
    for name in sorted(_namespaces(PREFIX)):
        if _run_is_gone(name, PREFIX):
            procs = remove_namespace(name)
            removed.append(f"network namespace {name}" + (f" with {', '.join(procs)}" if procs else ""))
    for path in dead_run_entries(STASH_DIR, STASH_PREFIX):
        with contextlib.suppress(OSError):
            os.rmdir(path)  # empty once its binds are gone
            removed.append(f"directory {path}")
    return removed


def dead_run_entries(root: str, prefix: str) -> list[str]:
    """Paths in `root` named `<prefix><pid>-...` whose test process is gone."""
    try:
        entries = os.listdir(root)
    except OSError:
        return []
    return [os.path.join(root, e) for e in entries if e.startswith(prefix) and _run_is_gone(e, prefix)]


def _kept_under_tmp() -> list[str]:
    """What a host must still see under /tmp once it has a /tmp of its own: this Python's
    environment and the checkout, when they live there (a CI checkout may)."""
    paths = sorted({os.path.realpath(p) for p in (sys.prefix, os.path.dirname(os.path.abspath(__file__)) + "/..")})
    kept: list[str] = []
    for p in paths:
        if p.startswith("/tmp/") and not any(p.startswith(k + "/") for k in kept):
            kept.append(p)
    return [os.path.relpath(p, "/tmp") for p in kept]


def _private_tmp_script(stash: str) -> str:
    """Shell for a host's anchor: fresh tmpfs on /tmp and /dev/shm, with what
    `_kept_under_tmp` names bound back in from the machine's /tmp (through `stash`)."""
    keep = _kept_under_tmp()
    binds = "".join(f"mkdir -p '/tmp/{rel}' && mount --bind '{stash}/{rel}' '/tmp/{rel}' && "
                    for rel in keep)
    head = f"mount --bind /tmp '{stash}' && " if keep else ""
    tail = f"umount -l '{stash}' && " if keep else ""
    return (f"{head}mount -t tmpfs -o mode=1777 tmpfs /tmp && {binds}{tail}"
            "mount -t tmpfs -o mode=1777 tmpfs /dev/shm && echo up && exec sleep 100000")


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
    name = f"{OWN}probe-{secrets.token_hex(3)}"
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
        self.switch = f"{OWN}{self.tag}-sw"
        self.ns = {n: f"{OWN}{self.tag}-{n}" for n in names}
        # where a host's anchor binds the machine's /tmp for a moment (see _private_tmp_script)
        self.stash = tempfile.mkdtemp(prefix=f"{STASH_PREFIX}{os.getpid()}-", dir=STASH_DIR)
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
                 "sh", "-c", _private_tmp_script(self.stash)],
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
        with contextlib.suppress(OSError):
            os.rmdir(self.stash)

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
