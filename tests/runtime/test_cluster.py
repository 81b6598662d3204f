"""carme-only: standalone clusters (`carme start --head`), drivers joining them, the
cluster token, and the CLI."""

from __future__ import annotations

import json
import os
import pickle
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.processes


@pytest.fixture
def head(state_dir: Path) -> Iterator[dict]:
    from carme import cluster
    info = cluster.start_head(num_cpus=2, resources={"custom_a": 1})
    try:
        yield info
    finally:
        cluster.stop(info["address"])


def _store_used(address: str) -> int:
    from carme import cluster
    with cluster.connect(address) as c:
        return sum(n["object_store"]["used"] for n in c.rows("nodes"))


def test_drivers_join_and_leave(head: dict) -> None:
    import carme
    np = pytest.importorskip("numpy")
    carme.init(address=head["address"], namespace="shared")
    try:
        @carme.remote
        def double(x):
            return 2 * x

        @carme.remote
        class Counter:
            def __init__(self):
                self.n = 0

            def incr(self):
                self.n += 1
                return self.n

        assert carme.get([double.remote(i) for i in range(4)]) == [0, 2, 4, 6]
        assert carme.cluster_resources()["custom_a"] == 1
        keep = Counter.options(name="keep", lifetime="detached").remote()
        temp = Counter.options(name="temp").remote()
        assert carme.get([keep.incr.remote(), temp.incr.remote()]) == [1, 1]
        big = carme.put(np.ones(1 << 20))
        assert big is not None and _store_used(head["address"]) >= 8 << 20
    finally:
        carme.shutdown()
    # the driver is gone: its objects are released, its non-detached actor is dead,
    # its detached actor lives on
    deadline = time.monotonic() + 10
    while _store_used(head["address"]) != 0:
        assert time.monotonic() < deadline, "the departed driver's objects are still stored"
        time.sleep(0.1)
    carme.init(address="auto", namespace="shared")
    try:
        assert carme.get(carme.get_actor("keep").incr.remote()) == 2
        with pytest.raises(ValueError, match="temp"):
            carme.get_actor("temp")
    finally:
        carme.shutdown()


def test_join_rejects_resource_arguments(head: dict) -> None:
    import carme
    with pytest.raises(ValueError, match="num_cpus"):
        carme.init(address=head["address"], num_cpus=4)
    assert not carme.is_initialized()


def test_token_file_is_private(head: dict) -> None:
    mode = stat.S_IMODE(os.stat(head["token_file"]).st_mode)
    assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(os.stat(Path(head["token_file"]).parent.parent).st_mode) == 0o700


class _Marker:
    """Unpickling this creates a file: proof that a payload was read."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _until_closed(s: socket.socket) -> bytes:
    """What a peer sends before it closes the connection (a reset after its last bytes
    counts as a close)."""
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _refused() -> bytes:
    """The frame a node or worker sends a peer whose first frame is not the token."""
    from carme._protocol import REFUSED
    return struct.pack(">I", len(REFUSED)) + REFUSED


def test_peer_without_token_is_refused_before_any_payload(head: dict, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    host, port = head["address"].rsplit(":", 1)
    payload = pickle.dumps(_Marker(str(marker)))
    with socket.create_connection((host, int(port)), timeout=5) as s:
        wrong = b"x" * 32
        s.sendall(struct.pack(">I", len(wrong)) + wrong)
        s.sendall(struct.pack(">I", len(payload)) + payload)
        s.settimeout(5)
        assert _until_closed(s) == _refused()  # told so, then closed on us
    time.sleep(0.3)
    assert not marker.exists()
    # and the cluster still serves peers that have the token
    from carme import cluster
    with cluster.connect(head["address"]) as c:
        assert len(c.rows("nodes")) == 1


def _worker_tcp_ports(pids: list[int]) -> list[int]:
    import psutil
    return [c.laddr.port for pid in pids for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.ip == "127.0.0.1"]


def test_worker_tcp_port_wants_the_token_first(head: dict, tmp_path: Path) -> None:
    """A cluster node's workers listen on TCP too (for submitters on other nodes); a peer
    without the token is closed before any payload is read, and one that says nothing is
    closed after the worker's auth deadline, while the worker goes on serving."""
    import carme
    carme.init(address=head["address"])
    try:
        @carme.remote
        def pid() -> int:
            return os.getpid()

        worker = carme.get(pid.remote(), timeout=60)
        ports = _worker_tcp_ports([worker])
        assert len(ports) == 1, ports
        marker = tmp_path / "unpickled"
        payload = pickle.dumps(_Marker(str(marker)))
        with socket.create_connection(("127.0.0.1", ports[0]), timeout=5) as s:
            wrong = b"x" * 32
            s.sendall(struct.pack(">I", len(wrong)) + wrong + struct.pack(">I", len(payload)) + payload)
            s.settimeout(30)
            assert _until_closed(s) == _refused()  # told so, then closed on us
        with socket.create_connection(("127.0.0.1", ports[0]), timeout=5) as s:
            s.settimeout(60)  # silent: closed once the auth deadline (5 s) passes
            assert _until_closed(s) == b""
        assert not marker.exists()
        assert carme.get(pid.remote(), timeout=60) == worker  # the same worker still serves
    finally:
        carme.shutdown()


def test_pull_stream_only_on_a_connection_of_its_own(head: dict) -> None:
    """PULL_OBJECT turns a fresh connection into an object stream (an object the node does
    not have: the MISSING header); after a hello it is refused and the connection closed."""
    from carme import _messages as M
    from carme import _transfer as transfer
    from carme._protocol import connect
    token = bytes.fromhex(json.loads(Path(head["token_file"]).read_text())["token"])
    conn = connect(head["address"], token, (M.PULL_OBJECT, b"\x01" * 20))
    conn.sock.settimeout(30)
    assert transfer.read_header(conn.sock)[0] == transfer.MISSING
    conn.close()
    conn = connect(head["address"], token, (M.HELLO, 1, "observer", os.getpid(), {"worker_id": "t"}))
    assert conn.recv()[0] == M.REPLY
    conn.send((M.PULL_OBJECT, b"\x01" * 20))
    conn.sock.settimeout(30)
    rest = bytes(conn._buf)
    while chunk := conn.sock.recv(1 << 16):
        rest += chunk
    assert rest == b""  # closed on us without a byte of a stream
    conn.close()


def test_auto_without_cluster_says_how_to_start_one(state_dir: Path) -> None:
    import carme
    with pytest.raises(ConnectionError, match="carme start --head"):
        carme.init(address="auto")


def test_a_cluster_file_whose_pid_went_to_another_process_is_stale(head: dict) -> None:
    """A head that died without removing its cluster file leaves its pid there; once
    another process has that pid (pids wrap), `list_local` must drop the file and
    `stop` must not signal the stranger."""
    from carme import cluster
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = Path(head["token_file"])
        real = json.loads(path.read_text())
        assert real["pid_started"]  # written by start_head
        port = "59999"
        fake = {**real, "pid": stranger.pid, "cluster_id": port,
                "address": f"127.0.0.1:{port}", "session_dir": "",
                "pid_started": real["pid_started"] - 100}  # what the dead head had noted
        stale = path.with_name(f"{port}.json")
        stale.write_text(json.dumps(fake))
        assert [c["address"] for c in cluster.list_local()] == [head["address"]]
        assert not stale.exists()  # pruned
        stale.write_text(json.dumps(fake))
        cluster.stop(f"127.0.0.1:{port}")
        time.sleep(0.2)
        assert stranger.poll() is None, "stop() signalled a process that is not the head"
        # the same file with the stranger's own start time reads as alive
        alive = {**fake, "pid_started": cluster.process_started(stranger.pid)}
        stale.write_text(json.dumps(alive))
        assert f"127.0.0.1:{port}" in [c["address"] for c in cluster.list_local()]
        stale.unlink()
    finally:
        stranger.kill()
        stranger.wait()


def _carme(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carme", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_cli_start_status_list_timeline_stop(state_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CARME_STATE_DIR": str(state_dir)}
    out = _carme("start", "--head", "--num-cpus", "2", "--resources", '{"gpu_like": 2}', env=env)
    assert out.returncode == 0, out.stderr
    assert "carme.init(address=" in out.stdout
    try:
        status = _carme("status", env=env)
        assert status.returncode == 0, status.stderr
        assert "CPU: 0/2 used" in status.stdout and "gpu_like" in status.stdout
        nodes = _carme("list", "nodes", "--format", "json", env=env)
        assert json.loads(nodes.stdout)[0]["resources_total"]["gpu_like"] == 2
        trace = tmp_path / "trace.json"
        assert _carme("timeline", "-o", str(trace), env=env).returncode == 0
        assert isinstance(json.loads(trace.read_text()), list)
        bad = _carme("start", "--head", "--resources", "{nope", env=env)
        assert bad.returncode != 0 and "--resources must be JSON" in bad.stderr
    finally:
        stopped = _carme("stop", env=env)
    assert "stopped 1 cluster" in stopped.stdout
