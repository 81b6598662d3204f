"""carme-only: no client, input or kill breaks a node daemon (real processes and sockets).

Each test starts real daemons and talks to them as a misbehaving peer would: raw sockets
that never read or never authenticate, malformed messages, a SIGKILL of the driver's
whole process group or of the daemon itself. Waits are for conditions, with generous
limits; nothing here measures time.
"""

from __future__ import annotations

import glob
import math
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import psutil
import pytest

import carme
from carme import _messages as M
from carme import exceptions as exc

pytestmark = pytest.mark.processes

_LEN = struct.Struct(">I")


def _wait_for(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    pytest.fail(f"not within {timeout} s: {what}")


def _node():
    from carme._context import STATE
    return STATE.core.node


def _raw(address: str, token: bytes | None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(address[5:])
    if token is not None:
        s.sendall(_LEN.pack(len(token)) + token)
    return s


def _frame(msg: tuple) -> bytes:
    data = pickle.dumps(msg, 5)
    return _LEN.pack(len(data)) + data


def _read_msg(s: socket.socket) -> tuple:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            assert chunk, "daemon closed the connection"
            buf += chunk
        return buf
    (n,) = _LEN.unpack(exactly(4))
    return pickle.loads(exactly(n))  # noqa: S301 - our own daemon, in a test


def _closed_by_peer(s: socket.socket, timeout: float = 60.0) -> bool:
    """Read (and discard) until the daemon closes the connection."""
    s.settimeout(timeout)
    try:
        while s.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


@pytest.fixture
def cluster():
    carme.init(num_cpus=2)
    try:
        yield carme
    finally:
        carme.shutdown()


@carme.remote
def _double(x):
    return 2 * x


# ---------------------------------------------------------------------------- slow peers
def test_a_driver_that_stops_reading_does_not_stall_the_others(cluster):
    node = _node()
    stuck = _raw(node.address, node.token)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(_frame((M.HELLO, 1, "driver", os.getpid(), {"worker_id": "stuck-driver"})))
    # it asks and asks and never reads an answer: megabytes pile up for it in the daemon
    burst = b"".join(_frame((M.STATE, 10 + i, "workers")) for i in range(2000))
    for _ in range(5):
        stuck.sendall(burst)
        # ...while this driver keeps getting its results
        assert cluster.get([_double.remote(i) for i in range(20)]) == [2 * i for i in range(20)]
        ref = cluster.put(bytes(300_000))
        assert len(cluster.get(ref)) == 300_000
    stuck.close()


SECOND_DRIVER = """
import sys, time
from carme._core import connect_core
connect_core(address=sys.argv[1], token=bytes.fromhex(sys.argv[2]), role="driver",
             worker_id="second-driver", job_id="", namespace="second")
print("ready", flush=True)
time.sleep(600)
"""


def test_a_paused_driver_does_not_stall_the_others():
    """SIGSTOP of another driver on the node while workers write megabytes to their file
    descriptors (which the daemon sends to every driver)."""
    carme.init(num_cpus=2, log_to_driver=False)
    cluster = carme
    node = _node()
    other = subprocess.Popen([sys.executable, "-c", SECOND_DRIVER, node.address, node.token.hex()],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "ready"
        os.kill(other.pid, signal.SIGSTOP)

        @carme.remote
        def noisy(i):
            for _ in range(20):
                os.write(2, b"x" * 50_000 + b"\n")
            return i

        for _ in range(5):  # ~25 MB of output the paused driver never reads
            assert cluster.get([noisy.remote(i) for i in range(5)]) == list(range(5))
        assert cluster.get(_double.remote(21)) == 42
    finally:
        os.kill(other.pid, signal.SIGCONT)
        other.kill()
        other.wait()
        other.stdout.close()  # type: ignore[union-attr]
        carme.shutdown()


def test_a_peer_that_never_drains_is_dropped_past_the_bound():
    from carme._node import default_resources, spawn_daemon
    proc, ready, token, session_dir, _ = spawn_daemon(
        resources=default_resources(1, 0, None), object_store_memory=1 << 24, namespace="t",
        job_id="01000000", prestart=0, options={"max_backlog": 1 << 20})
    try:
        stuck = _raw(ready["address"], token)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(_frame((M.HELLO, 1, "driver", os.getpid(), {"worker_id": "stuck"})))
        burst = b"".join(_frame((M.STATE, 10 + i, "jobs")) for i in range(2000))
        dropped = False
        for _ in range(200):
            try:
                stuck.sendall(burst)
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
                break
        assert dropped or _closed_by_peer(stuck)
        # and the daemon still serves others
        other = _raw(ready["address"], token)
        other.sendall(_frame((M.STORE_STATS, 7)))
        assert _read_msg(other)[:3] == (M.REPLY, 7, True)
        other.close()
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(30)
        proc.stdout.close()  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- before authentication
def test_a_huge_length_prefix_before_the_token_is_refused_at_once(cluster):
    node = _node()
    s = _raw(node.address, None)
    s.sendall(_LEN.pack(0x7FFFFFFF) + b"x" * 4096)
    assert _closed_by_peer(s)
    assert cluster.get(_double.remote(4)) == 8


def test_idle_unauthenticated_connections_are_closed_and_limited():
    from carme._node import default_resources, spawn_daemon
    proc, ready, token, _session, _ = spawn_daemon(
        resources=default_resources(1, 0, None), object_store_memory=1 << 24, namespace="t",
        job_id="01000000", prestart=0, options={"auth_timeout": 1, "max_unauthenticated": 4})
    try:
        idle = [_raw(ready["address"], None) for _ in range(8)]
        # past the limit, connections are closed at once; the rest when their time is up
        assert all(_closed_by_peer(s) for s in idle)
        for s in idle:
            s.close()
        # an authenticated peer is served as before
        ok = _raw(ready["address"], token)
        ok.sendall(_frame((M.STORE_STATS, 3)))
        assert _read_msg(ok)[:3] == (M.REPLY, 3, True)
        ok.close()
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(30)
        proc.stdout.close()  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- malformed data
def test_malformed_messages_are_refused_and_nothing_of_them_is_stored(cluster):
    node = _node()
    s = _raw(node.address, node.token)
    s.sendall(_frame((M.HELLO, 1, "driver", os.getpid(), {"worker_id": "fuzzer"})))
    assert _read_msg(s)[:3] == (M.REPLY, 1, True)
    s.sendall(_frame((M.EVENTS, [("ab" * 8, "RUNNING", "not a number")])))
    s.sendall(_frame((M.EVENTS, [("ab" * 8, "RUNNING", math.inf)])))
    s.sendall(_frame((M.GET_OBJECT, 5, "not an id")))
    reply = _read_msg(s)
    assert reply[:3] == (M.REPLY, 5, False)
    assert isinstance(reply[3], M.BadMessage) and "GetObject.oid" in str(reply[3])
    s.sendall(_frame((M.ALLOC, 6, b"x" * 28, -1, 1)))
    assert _read_msg(s)[:3] == (M.REPLY, 6, False)
    # the state API still works, and shows nothing of the bad events
    cluster.get(_double.remote(1))
    tasks = carme.util.state.list_tasks()
    assert tasks and all(t["task_id"] != "ab" * 8 for t in tasks)
    assert carme.timeline()
    s.close()


def test_bad_node_registrations_are_refused_over_grpc():
    import grpc

    from carme._head import HeadServicer, HeadState, channel, metadata, start_server
    from carme.protos import carme_pb2 as pb
    from carme.protos import carme_pb2_grpc as pbg

    token = os.urandom(32)
    state = HeadState()
    server, port = start_server("127.0.0.1", 0, token, HeadServicer(state, {}), pbg.NodeServicer())
    try:
        head = pbg.HeadStub(channel(f"127.0.0.1:{port}"))
        md = metadata(token)
        for bad in ("{not json", "[1, 2]", '{"CPU": "many"}', '{"CPU": -1}', '{"CPU": 1e400}'):
            with pytest.raises(grpc.RpcError) as info:
                head.RegisterNode(pb.NodeInfo(node_id="bad", resources_json=bad), metadata=md, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "resources_json" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            head.ReportEvents(pb.EventBatch(events_json='[["ab", "RUNNING", "x"]]'), metadata=md, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert not state.nodes and len(state.events) == 0
        head.RegisterNode(pb.NodeInfo(node_id="good", resources_json='{"CPU": 2}'), metadata=md, timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            head.SendHeartbeat(pb.Heartbeat(node_id="good", available_json='{"CPU": null}'),
                               metadata=md, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        view = head.SendHeartbeat(pb.Heartbeat(node_id="good", available_json='{"CPU": 1}'),
                                  metadata=md, timeout=10)
        assert [n.info.node_id for n in view.nodes] == ["good"]
    finally:
        server.stop(0)


# ---------------------------------------------------------------------------- kills
KILLED_DRIVER = """
import os, sys, time, carme
carme.init(num_cpus=1)
from carme._context import STATE
node = STATE.core.node
ref = carme.put(bytes(1 << 20))
@carme.remote
def f(): return os.getpid()
carme.get(f.remote())
print(node.session_dir, STATE.core.info["store_file"], node.process.pid, flush=True)
time.sleep(600)
"""


def test_a_killed_process_group_leaves_nothing_behind():
    """What Jupyter does on a forced kernel restart, five times."""
    import psutil
    for _ in range(5):
        p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_DRIVER)],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert p.stdout is not None
        session_dir, store, daemon_pid = p.stdout.readline().split()
        assert os.path.isdir(session_dir) and os.path.exists(store)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
        _wait_for(lambda s=store, d=session_dir: not os.path.exists(s) and not os.path.exists(d),
                  f"{store} and {session_dir} removed")

        def daemon_gone(pid: int = int(daemon_pid)) -> bool:
            try:
                return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                return True
        _wait_for(daemon_gone, "the daemon exited")


def test_a_killed_daemon_leaves_no_store_and_fails_every_pending_get():
    carme.init(num_cpus=2)
    try:
        node = _node()
        store = carme._context.STATE.core.info["store_file"]

        @carme.remote
        def slow(i):
            time.sleep(0.2)
            return i

        refs = [slow.remote(i) for i in range(120)]
        carme.get(refs[0])
        os.kill(node.process.pid, signal.SIGKILL)
        errors = []
        for r in refs[1:]:
            try:
                carme.get(r, timeout=120)
            except exc.GetTimeoutError:
                pytest.fail("a get hung after the node daemon died")
            except exc.RayError as e:
                errors.append(e)
        assert errors and all(isinstance(e, (exc.LocalRayletDiedError, exc.WorkerCrashedError))
                              for e in errors)
        ready, not_ready = carme.wait(refs, num_returns=len(refs), timeout=120)
        assert not not_ready
        with pytest.raises(exc.LocalRayletDiedError):
            carme.get(slow.remote(1), timeout=120)
        # the driver's I/O loop still runs (its other connections are served)
        core = carme._context.STATE.core
        assert core.running and core._io.is_alive()
        done = threading.Event()
        core.call_later(0, done.set)
        assert done.wait(60)
        # the zygote cleaned up after its daemon
        _wait_for(lambda: not os.path.exists(store) and not os.path.exists(node.session_dir),
                  "store and session directory removed")
    finally:
        carme.shutdown()


def test_init_from_a_thread_that_ends_keeps_the_cluster():
    t = threading.Thread(target=lambda: carme.init(num_cpus=1))
    t.start()
    t.join()
    try:
        node = _node()
        time.sleep(0.5)  # (a parent-death signal would have arrived by now)
        assert node.process.poll() is None
        assert carme.get([_double.remote(i) for i in range(4)]) == [0, 2, 4, 6]
    finally:
        carme.shutdown()


# ---------------------------------------------------------------------------- growth
def test_bookkeeping_is_flat_after_the_work_is_done(cluster):
    core = carme._context.STATE.core

    @carme.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

    c = Counter.remote()
    cluster.get(c.inc.remote())
    cluster.get(_double.remote(0))

    def sizes() -> dict:
        core.flush()
        stats = core.request(M.STORE_STATS)
        return {"tasks": len(core.submitter.tasks), "tags_live": len(core.submitter.tags.live),
                "actor_tags_live": len(core.actor_submitter.tags.live),
                "objects": len(core.objects), "refs": len(core.refs.counts),
                "requests": len(core._requests), "daemon_objects": stats["objects"]}

    before = sizes()
    for _ in range(3):
        cluster.get([_double.remote(i) for i in range(500)])
        cluster.get([c.inc.remote() for _ in range(300)])
    _wait_for(lambda: sizes() == before, f"sizes back to {before} (now {sizes()})")
    assert len(core.submitter.tags) <= 1024 and len(core.actor_submitter.tags) <= 1024


# ---------------------------------------------------------------------------- bad API input
def _sessions() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "carme-*")))


@pytest.mark.parametrize("kwargs, error, name", [
    ({"num_cpus": math.nan}, ValueError, "num_cpus"),
    ({"num_cpus": math.inf}, ValueError, "num_cpus"),
    ({"num_cpus": "2"}, TypeError, "num_cpus"),
    ({"num_gpus": -1}, ValueError, "num_gpus"),
    ({"resources": {"x": math.inf}}, ValueError, "resources"),
    ({"resources": [("x", 1)]}, TypeError, "resources"),
    ({"object_store_memory": 10**18}, ValueError, "object_store_memory"),
    ({"_metrics_export_port": -1}, ValueError, "_metrics_export_port"),
    ({"_system_config": {"memory_usage_threshold": 2}}, ValueError, "memory_usage_threshold"),
])
def test_bad_init_arguments_fail_at_the_call_and_leave_nothing(kwargs, error, name):
    """Some arguments are checked after the daemon's process was started (it imports
    meanwhile): it is gone by the time init raises."""
    before = _sessions()
    children = {p.pid for p in psutil.Process().children()}
    with pytest.raises(error, match=name):
        carme.init(**kwargs)
    assert not carme.is_initialized()
    assert _sessions() == before
    assert [p for p in psutil.Process().children() if p.pid not in children] == []


def test_bad_get_wait_cancel_arguments_fail_at_the_call(cluster):
    ref = _double.remote(1)
    with pytest.raises(TypeError, match="timeout"):
        cluster.wait([ref], timeout="x")
    with pytest.raises(ValueError, match="timeout"):
        cluster.get(ref, timeout=math.nan)
    with pytest.raises(ValueError, match="timeout"):
        cluster.get(ref, timeout=-1)
    with pytest.raises(TypeError, match="force"):
        cluster.cancel(ref, force="yes")
    assert cluster.get(ref, timeout=math.inf) == 2


def test_the_prestarted_worker_is_one_of_the_pool(cluster):
    """The worker a daemon forks before any lease is listed like any other, and a
    force-cancel of a task on it kills it (it was outside the pool, and the cancel hung)."""
    import psutil

    from carme.util.state import list_workers

    def worker_pids():
        return {p.pid for p in psutil.Process().children(recursive=True)
                if p.name().startswith("ray::")}
    _wait_for(lambda: worker_pids() and worker_pids() <= {w["pid"] for w in list_workers()},
              "every worker process is listed")

    @carme.remote(max_retries=0)
    def spin():
        while True:
            time.sleep(0.02)

    ref = spin.remote()
    time.sleep(0.5)
    carme.cancel(ref, force=True)
    with pytest.raises(exc.TaskCancelledError):
        carme.get(ref, timeout=60)
