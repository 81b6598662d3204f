"""The zygote: a tiny process that forks workers on the node daemon's behalf.

The node daemon forks the zygote first thing, while it is still single-threaded; later
the daemon may run threads (gRPC), after which forking it would be unsafe. The zygote
never starts a thread: it waits on a SOCK_SEQPACKET socketpair for a request — the
worker's configuration plus, passed as file descriptors, the worker's end of its control
socketpair and the write ends of its stdout/stderr pipes — forks, and answers the new
pid. Forking a preloaded interpreter costs about a millisecond where starting a new one
costs tens. Workers get SIGKILL when the zygote dies.

The zygote is also the node's cleaner of last resort: its socket to the daemon reaches
end-of-file when the daemon is gone for any reason — SIGKILL included, which leaves the
daemon no chance to clean up — and then the zygote removes the node's shared-memory
store file and session directory (`cleanup`) before it exits, taking the workers with it.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import sys
from typing import Any

_PID = struct.Struct(">i")
_PR_SET_PDEATHSIG = 1


class Zygote:
    """The daemon's handle on its zygote."""

    def __init__(self, cleanup: tuple[str, ...] = ()) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the zygote
            code = 0
            try:
                parent.close()
                _serve(child)
            except BaseException:
                code = 1
            finally:
                _remove(cleanup)
                os._exit(code)
        child.close()
        self.pid = pid
        self.sock = parent

    def fork_worker(self, cfg: dict, ctrl: socket.socket, out_w: int, err_w: int) -> int:
        socket.send_fds(self.sock, [pickle.dumps(cfg)], [ctrl.fileno(), out_w, err_w])
        data = self.sock.recv(_PID.size)
        if len(data) != _PID.size:
            raise RuntimeError("the carme zygote is gone")
        (pid,) = _PID.unpack(data)
        if pid < 0:
            raise RuntimeError("the carme zygote could not fork a worker")
        return int(pid)

    def spawn(self, cfg: dict) -> tuple[int, socket.socket, int, int]:
        """Fork a worker: (pid, our end of its control socket, read ends of its stdout
        and stderr pipes)."""
        parent, child = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            pid = self.fork_worker(cfg, child, out_w, err_w)
        except BaseException:
            parent.close()
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            child.close()
            os.close(out_w)
            os.close(err_w)
        return pid, parent, out_r, err_r

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_gone(pids: list[int], timeout: float) -> None:
    """Wait (up to `timeout` s) until none of `pids` runs; zombies count as gone (orphaned
    workers may linger as zombies)."""
    import time

    import psutil

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.time() + timeout
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.01)


def _reap(signum: int, frame: Any) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _remove(paths: tuple[str, ...]) -> None:
    """The daemon is gone: remove what it would have removed (files and directories)."""
    import shutil
    for path in paths:
        try:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        except OSError:
            pass


def _serve(sock: socket.socket) -> None:
    # No parent-death signal here: the end of our socket tells us the daemon is gone,
    # and we outlive it just long enough to clean up after it.
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, 65536)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, _reap)
    # what the workers share stays shared: the collector never visits (writes to, so
    # copies) the objects every worker inherits
    import gc

    from . import _worker  # noqa: F401 - preload what every worker imports
    gc.freeze()
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 3)
        except OSError:
            return
        if not msg:
            return
        cfg = pickle.loads(msg)  # from our own daemon over a private socketpair
        try:
            pid = os.fork()
        except OSError:
            pid = -1
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                sock.close()
                _run_worker(cfg, fds)
                code = 0
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        sock.send(_PID.pack(pid))


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask Linux for `sig` when our parent *thread* ends (the zygote is single-threaded)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _run_worker(cfg: dict, fds: list[int]) -> None:
    from ._worker import worker_main
    set_parent_death_signal(signal.SIGKILL)
    ctrl_fd, out_w, err_w = fds
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.close(out_w)
    os.close(err_w)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the worker replaces them
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    worker_main(socket.socket(fileno=ctrl_fd), cfg)
