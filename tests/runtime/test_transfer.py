"""Object transfer streams (`_transfer.py`) over real TCP sockets on 127.0.0.1, and the
choice of a worker's address (`_protocol.worker_addresses`)."""

from __future__ import annotations

import mmap
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from carme import _transfer as transfer
from carme._protocol import connect_first, worker_addresses


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as ls:
        a = socket.create_connection(ls.getsockname())
        b, _ = ls.accept()
        yield a, b
        a.close()
        b.close()


def _store(path: Path, size: int, fill: bytes = b"") -> tuple[int, mmap.mmap]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, size)
    mm = mmap.mmap(fd, size)
    if fill:
        mm[:len(fill)] = fill
    return fd, mm


def test_stream_copies_an_object_into_its_block(
        pair: tuple[socket.socket, socket.socket], tmp_path: Path) -> None:
    size = 2 * transfer.PREFAULT_STEP + 12345  # several prefault steps, not page-aligned
    payload = os.urandom(1 << 16) * (size // (1 << 16) + 1)
    src_fd, src = _store(tmp_path / "src", size + 4096)
    src[100:100 + size] = payload[:size]
    dst_fd, dst = _store(tmp_path / "dst", size + 8192)
    sender, receiver = pair
    served = threading.Event()

    def serve() -> None:
        transfer.serve(sender, src_fd, ("pull:1", 100, size, True))
        served.set()

    t = threading.Thread(target=serve)
    t.start()
    status, total, is_error = transfer.read_header(receiver)
    assert (status, total, is_error) == (transfer.OK, size, True)
    view = memoryview(dst)
    transfer.receive(receiver, view[64:64 + size], dst, 64)
    t.join(timeout=60)
    assert served.is_set()  # (the source waits for the DONE byte: see the test below)
    assert dst[64:64 + size] == payload[:size]
    assert dst[:64] == b"\0" * 64
    view.release()
    for m, fd in ((src, src_fd), (dst, dst_fd)):
        m.close()
        os.close(fd)


def test_missing_object_and_short_stream(pair: tuple[socket.socket, socket.socket], tmp_path: Path) -> None:
    sender, receiver = pair
    transfer.serve(sender, -1, None)
    assert transfer.read_header(receiver) == (transfer.MISSING, 0, False)
    # the source says what became of the object (its last events there), bounded
    transfer.serve(sender, -1, None, "sealed; released by w1; freed")
    status, size, _ = transfer.read_header(receiver)
    assert status == transfer.MISSING and transfer.read_reason(receiver, size) == "sealed; released by w1; freed"
    transfer.serve(sender, -1, None, "x" * (transfer.MAX_REASON + 100))
    status, size, _ = transfer.read_header(receiver)
    assert size == transfer.MAX_REASON and len(transfer.read_reason(receiver, size)) == transfer.MAX_REASON
    # a source that goes away mid-object: the destination says how far it got
    sender.sendall(b"x" * 1000)
    sender.close()
    buf = bytearray(5000)
    with pytest.raises(ConnectionError, match="after 1,000 of 5,000 bytes"):
        transfer.receive(receiver, memoryview(buf), None, 0)


def test_source_without_confirmation_fails(pair: tuple[socket.socket, socket.socket], tmp_path: Path) -> None:
    sender, receiver = pair
    fd, mm = _store(tmp_path / "src", 4096, b"abc")
    receiver.shutdown(socket.SHUT_WR)  # the destination ends without its DONE byte
    with pytest.raises(ConnectionError, match="did not confirm"):
        transfer.serve(sender, fd, ("pull:1", 0, 3, False))
    mm.close()
    os.close(fd)


def test_worker_address_same_node_unix_first_other_node_tcp_only() -> None:
    grant = {"address": "unix:/tmp/s/w.sock", "tcp": "198.51.100.3:4000", "node_id": "n1"}
    assert worker_addresses(grant, "n1") == ["unix:/tmp/s/w.sock", "198.51.100.3:4000"]
    assert worker_addresses(grant, "n2") == ["198.51.100.3:4000"]
    # a node outside a cluster has no TCP address: the Unix socket is all there is
    assert worker_addresses({**grant, "tcp": ""}, "n2") == ["unix:/tmp/s/w.sock"]


def test_connect_first_names_every_address_that_failed(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(OSError) as e:
            connect_first([f"unix:{tmp_path}/none.sock", f"127.0.0.1:{port}"], b"t" * 32)
    assert "none.sock" in str(e.value) and f"127.0.0.1:{port}" in str(e.value)
