"""The daemon's sockets (`_node_conns.Sockets`) over real sockets in this process: token
deadline and limit, a stalled peer dropped, a slow one kept while it drains."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from carme._node_conns import Sockets
from carme._protocol import Connection

TOKEN = b"t" * 32


@pytest.fixture
def io() -> Iterator[tuple[Sockets, list]]:
    gone: list = []
    s = Sockets(TOKEN, {"auth_timeout": 5, "max_unauthenticated": 2, "stall_timeout": 10,
                        "max_backlog": 1 << 20}, gone=gone.append)
    yield s, gone
    signal.set_wakeup_fd(-1)
    for key in list(s.sel.get_map().values()):
        fo = key.fileobj
        if isinstance(fo, socket.socket):
            fo.close()
    s.sel.close()
    os.close(s._wake_r)
    os.close(s._wake_w)


def _accept(io: Sockets, listener: socket.socket, path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    io.accept(listener)
    return client


def test_peers_that_do_not_show_the_token_in_time_are_dropped_and_limited(io, tmp_path: Path):
    s, gone = io
    path = tmp_path / "n.sock"
    listener = s.listen(f"unix:{path}")
    c1, c2 = _accept(s, listener, path), _accept(s, listener, path)
    assert len(s.unauthenticated) == 2
    c3 = _accept(s, listener, path)  # over the limit: closed at once
    assert len(s.unauthenticated) == 2 and c3.recv(1) == b""
    first = next(iter(s.unauthenticated.values()))
    s.tick(first + 1)
    assert gone == []
    s.tick(first + 6)
    assert len(gone) == 2 and not s.unauthenticated
    assert c1.recv(1) == b"" and c2.recv(1) == b""
    s.drop(gone[0])  # once only
    assert len(gone) == 2
    for c in (c1, c2, c3):
        c.close()


def test_a_peer_that_reads_nothing_is_dropped_after_the_stall_timeout(io):
    s, gone = io
    ours, theirs = socket.socketpair()
    conn: Connection = s.adopt(ours, "slow")
    while not s.backlogged:
        assert s.send(conn, (1, b"x" * 65536))
    for _ in range(8):  # half a megabyte waits for it
        assert s.send(conn, (1, b"x" * 65536))
    s.backlogged[conn] -= 100  # as if it had waited 100 s
    since = s.backlogged[conn]
    theirs.recv(65536)  # it reads a little: progress renews its time
    s.writable(conn)
    assert conn in s.backlogged and s.backlogged[conn] > since
    s.tick(s.backlogged[conn] + 5)
    assert gone == []
    s.tick(s.backlogged[conn] + 11)
    assert gone == [conn] and conn.closed
    theirs.close()


def test_posted_functions_run_in_the_loop_when_it_wakes(io):
    s, _ = io
    ran: list = []
    s.post(lambda: ran.append(1))
    assert ran == []
    (key, _mask), = s.sel.select(timeout=1)
    assert key.data == ("signal", None)
    s.woken()
    assert ran == [1]
