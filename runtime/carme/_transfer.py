"""Object transfer between node daemons: one plain TCP stream per pulled object.

Theory of operation. A node that needs another node's object (`ClusterLink.pull`, in a
thread) connects to that node's daemon at its TCP address, presents the cluster token
as every peer does, and sends one PULL_OBJECT frame. From then on the connection is a
byte stream, no frames and no pickles: a HEADER (status, size, is_error), then the
object's bytes exactly as they lie in the source's store (or, for MISSING, `size` bytes
of text saying why the object is not there: its last events at the source).

* Source: the daemon takes the socket out of its selector loop (`Sockets.release`) with
  the object pinned, and a thread (`serve`) sends the bytes with `os.sendfile` straight
  from the store file: no copy in user space, no chunk objects.
* Destination (`receive`): the bytes are read with `recv_into` straight into the block
  allocated for the copy in this node's store (one copy: kernel to the mapped store).
  Fresh pages cost a fault each (first touch runs at ~0.4 GB/s here, against ~10 GB/s
  into touched pages), so a helper thread faults the block in ahead of the reader
  (`MADV_POPULATE_WRITE`, in PREFAULT_STEP steps); pages already touched (the arena
  hands out freed blocks lowest first) cost nothing.
* The stream has no per-chunk round trips: TCP keeps the socket buffers full, so many
  chunks are in flight at once. The destination ends with one byte (DONE); only then
  does the source unpin the object (sendfile may pass its pages to the socket by
  reference, so its block must not be reused before they are read).

Only the source's daemon decides what it sends (an object it holds, pinned until the
stream ends); a source that stops sending fails the pull after IDLE_TIMEOUT seconds.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import struct
import threading

from ._store import MADV_POPULATE_WRITE

HEADER = struct.Struct(">BQ?")  # status, size, is_error
OK, MISSING = 0, 1
DONE = b"\x01"                 # the destination's last word: every byte arrived
MAX_REASON = 4096              # bytes of the source's reason for MISSING (in place of the size)
IDLE_TIMEOUT = 60.0            # seconds a pull waits for the next bytes from its source
PREFAULT_STEP = 32 << 20       # bytes faulted in at a time ahead of the reader
_PAGE = mmap.PAGESIZE


def serve(sock: socket.socket, store_fd: int, pinned: tuple | None, why: str = "") -> None:
    """Send a pinned object (`(key, offset, size, is_error)`, or None: not here, because
    of `why`) down `sock` (blocking); the caller closes the socket and unpins."""
    if pinned is None:
        reason = why.encode()[:MAX_REASON]
        sock.sendall(HEADER.pack(MISSING, len(reason), False) + reason)
        return
    _key, offset, size, is_error = pinned
    sock.sendall(HEADER.pack(OK, size, is_error))
    sent = 0
    while sent < size:
        try:
            n = os.sendfile(sock.fileno(), store_fd, offset + sent, size - sent)
        except BlockingIOError:  # (a socket with a timeout is non-blocking underneath)
            if not select.select([], [sock], [], IDLE_TIMEOUT)[1]:
                raise TimeoutError(f"the destination took nothing for {IDLE_TIMEOUT:.0f} s") from None
            continue
        if n == 0:
            raise ConnectionError("the store file ended before the object did")
        sent += n
    # sendfile may hand the store's pages to the socket by reference: the object stays
    # pinned (its block not reused) until the destination says it has every byte
    if sock.recv(1) != DONE:
        raise ConnectionError("the destination did not confirm the object")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the source node closed the connection")
        buf += chunk
    return bytes(buf)


def read_header(sock: socket.socket) -> tuple[int, int, bool]:
    status, size, is_error = HEADER.unpack(_recv_exact(sock, HEADER.size))
    return status, size, is_error


def read_reason(sock: socket.socket, size: int) -> str:
    """After a MISSING header: the source's reason (what it knows of the object)."""
    return _recv_exact(sock, min(size, MAX_REASON)).decode(errors="replace")


def prefault(mm: mmap.mmap, offset: int, size: int, stop: threading.Event) -> None:
    """Fault in [offset, offset+size) of the mapping, step by step, until done or `stop`.
    A kernel without MADV_POPULATE_WRITE: nothing is done (the reader faults them)."""
    start = offset - offset % _PAGE
    end = offset + size
    pos = start
    while pos < end and not stop.is_set():
        n = min(PREFAULT_STEP, end - pos)
        try:
            mm.madvise(MADV_POPULATE_WRITE, pos, n)
        except (OSError, ValueError):
            return
        pos += n


def receive(sock: socket.socket, dest: memoryview, mm: mmap.mmap | None, offset: int) -> None:
    """Read exactly len(dest) bytes from `sock` into `dest` (the block at `offset` of the
    mapping `mm`), with the block faulted in ahead of the reader."""
    size = len(dest)
    stop = threading.Event()
    helper = None
    if mm is not None and size > PREFAULT_STEP:
        helper = threading.Thread(target=prefault, args=(mm, offset, size, stop),
                                  name="carme-prefault", daemon=True)
        helper.start()
    try:
        got = 0
        while got < size:
            n = sock.recv_into(dest[got:], size - got)
            if n == 0:
                raise ConnectionError(f"the source node closed the connection after {got:,} of "
                                      f"{size:,} bytes")
            got += n
        sock.sendall(DONE)
    finally:
        stop.set()
        if helper is not None:
            helper.join()


__all__ = ["HEADER", "IDLE_TIMEOUT", "MISSING", "OK", "prefault", "read_header", "read_reason", "receive", "serve"]
