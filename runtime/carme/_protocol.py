"""Framed, authenticated message connections over Unix and TCP sockets.

A frame is a 4-byte big-endian length followed by that many bytes; a message is a pickled
tuple whose first item is its kind. The first frame a connecting peer sends is the
cluster token in plain bytes; the accepting side compares it in constant time and closes
the connection on a mismatch *before* unpickling anything, because a pickle is code. Just
before closing it sends one raw frame, `REFUSED` (not a pickle, and nothing secret), so
that the connecting side can say "wrong token" (`first_reply`, `TokenRefused`) instead of
"connection reset by peer".

`Connection` is used from several threads: sends take a lock and write the whole frame;
reads happen in one thread at a time (the owner's I/O thread), either blocking
(`recv`) or fed from a selector (`feed`, which never blocks).

Limits, so that no peer can make the reader buffer without bound:
  * before authentication nothing is read beyond the token: the reader asks the socket
    for at most the bytes of one token frame, and a first frame whose length is not the
    token's is refused before its body is read;
  * after authentication a frame may be at most `max_frame` bytes (MAX_FRAME unless
    the owner says otherwise); a larger length prefix closes the connection at once.

Buffered sending (`buffered=True`, the node daemon's side): the socket is non-blocking,
`send` writes what the kernel takes and keeps the rest in a per-connection outgoing
buffer that the owner's loop drains when the socket becomes writable (`flush_out`). A
peer that does not read therefore only delays itself; past `max_backlog` bytes waiting
for it, `send` raises `ConnectionClosed` and the owner drops the connection.

Batched sending (`post`, a driver's calls and a worker's results): a message that its
peer does not wait for at once (the peer still has earlier work of ours in hand) joins
the frames waiting in `_later`, and the owner's I/O thread sends them all in one
non-blocking write before it next waits for I/O (`flush_later`; what the kernel does not
take then is sent when the socket turns writable). A burst of calls or results thus
costs one system call, and one wake-up of the peer, per batch instead of per message.
The poster sends a batch itself once it reaches LATER_MAX bytes or its oldest frame has
waited LATER_AGE: the I/O thread may be waiting for the GIL the poster holds (up to the
interpreter's 5 ms switch interval), and the peer must not sit idle that long.
Any direct send on the connection sends what waits first, so order is kept. The I/O
thread never waits for another thread's send (`flush_later` returns None then, and the
owner tries again a moment later): that send may wait for the peer to read, and the
peer's for us to read.
"""

from __future__ import annotations

import hmac
import mmap
import pickle
import socket
import struct
import threading
from collections.abc import Callable, Generator
from time import monotonic as _monotonic
from typing import Any

_LEN = struct.Struct(">I")
MAX_FRAME = 512 << 20          # the largest frame an authenticated peer may send
CONNECT_TIMEOUT = 10.0        # seconds a TCP connect may take
MAX_BACKLOG = 64 << 20         # bytes a buffered connection keeps for a peer that does not read
LATER_MAX = 256 << 10          # a batch of posted frames this large is sent by the poster
LATER_AGE = 0.0005             # ... and one whose oldest frame waited this long (seconds)
_dumps = pickle.dumps
_loads = pickle.loads
READ_SIZE = 1 << 20            # bytes one read may take
# each thread reads into a buffer of its own, kept: a fresh 1 MiB bytes object per recv
# cost an mmap, a page fault, an mremap and a munmap on every message read. The buffer is
# an anonymous mapping, not a bytearray (which zeroes, so takes, all of its pages): a
# thread holds only the pages its largest read touched (a small message: one)
_scratch = threading.local()


class ConnectionClosed(Exception):
    """The peer went away."""


class AuthenticationError(Exception):
    """A peer did not present the cluster token."""


class TokenRefused(ConnectionError):
    """The peer refused the cluster token this process presented (the `REFUSED` frame)."""


# What an accepting side sends, raw, to a peer whose first frame is not the token. A
# pickle (protocol 2 and later) starts with 0x80, so no message frame can equal it.
REFUSED = b"carme: the cluster token was refused"


class FrameTooLarge(ConnectionClosed):
    """A peer announced a frame larger than this connection accepts."""


class Connection:
    __slots__ = ("sock", "_send_lock", "_buf", "peer", "closed", "meta", "expect_token",
                 "max_frame", "buffered", "max_backlog", "_out", "on_backlog", "_later",
                 "_later_since", "__weakref__")

    def __init__(self, sock: socket.socket, peer: str = "", expect_token: bytes | None = None,
                 *, max_frame: int = MAX_FRAME, buffered: bool = False,
                 max_backlog: int = MAX_BACKLOG) -> None:
        self.sock = sock
        # Set on the accepting side: the first frame must be this token, checked before
        # any frame is unpickled.
        self.expect_token = expect_token
        self._send_lock = threading.Lock()
        self._buf = bytearray()
        self.peer = peer
        self.closed = False
        self.meta: dict[str, Any] = {}
        self.max_frame = max_frame
        self.buffered = buffered
        self.max_backlog = max_backlog
        self._out = bytearray()  # buffered mode: bytes the peer has not taken yet
        # buffered mode: called (under the send lock) when bytes start waiting
        self.on_backlog: Any = None
        self._later = bytearray()  # posted frames the owner's I/O thread sends (`post`)
        self._later_since = 0.0  # when the oldest of them was posted
        if buffered:
            sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def backlog(self) -> int:
        """Bytes waiting for the peer to read them (buffered mode)."""
        return len(self._out)

    # ---- sending ---------------------------------------------------------------------
    def send(self, msg: tuple) -> None:
        data = _dumps(msg, 5)
        self._write(_LEN.pack(len(data)) + data)

    def send_many(self, msgs: list[tuple]) -> None:
        parts = []
        for m in msgs:
            data = _dumps(m, 5)
            parts.append(_LEN.pack(len(data)))
            parts.append(data)
        self._write(b"".join(parts))

    def send_raw(self, data: bytes) -> None:
        self._write(_LEN.pack(len(data)) + data)

    def post(self, msgs: list[tuple], flush_soon: Callable[[Connection], None] | None) -> None:
        """Send `msgs`; with `flush_soon` (the peer is busy with earlier work of ours, so it
        does not wait for these) add them to the frames that `flush_soon(self)` has the
        owner's I/O thread send together, soon (see the module's docstring)."""
        parts = []
        for m in msgs:
            data = _dumps(m, 5)
            parts.append(_LEN.pack(len(data)))
            parts.append(data)
        frames = b"".join(parts)
        if flush_soon is None or self.buffered:  # (a buffered send never blocks anyway)
            self._write(frames)
            return
        with self._send_lock:
            if self.closed:
                raise ConnectionClosed("connection is closed")
            first = not self._later
            self._later += frames
            now = _monotonic()
            if first:
                self._later_since = now
            # the I/O thread may be waiting for the GIL the poster holds: a batch that has
            # waited LATER_AGE goes now, so a peer that ran out of work is not kept idle
            full = len(self._later) >= LATER_MAX or now - self._later_since >= LATER_AGE
        if full:
            self.send_raw_frames()  # a large batch: the poster sends it, blocking as `send` does
        elif first:
            flush_soon(self)

    def send_raw_frames(self, frames: bytes = b"") -> None:
        """Send the posted frames, then `frames` (whole frames), blocking as `send` does."""
        self._write(frames)

    def flush_later(self) -> bool | None:
        """The owner's I/O thread: send the posted frames without blocking; True once none
        are left, False when the socket took only part (call again when it is writable).

        None when another thread holds the send lock: call again a moment later. It does
        not wait for the lock. The holder may be in a blocking send that waits for the
        peer to read while the peer's own sender waits for us to read: the reader must
        not be the one waiting (both sides' buffers full of each other's calls and
        results, for ever)."""
        if not self._send_lock.acquire(blocking=False):
            return None
        try:
            return self.closed or self._drain(self._later)
        finally:
            self._send_lock.release()

    def _write(self, frame: bytes | bytearray) -> None:
        with self._send_lock:
            if self.closed:
                raise ConnectionClosed("connection is closed")
            if self._later:  # posted frames go first
                self._later += frame
                frame, self._later = self._later, bytearray()
            try:
                if not self.buffered:
                    self.sock.sendall(frame)
                    return
                if self._out:
                    self._out += frame
                else:
                    try:
                        sent = self.sock.send(frame)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    if sent == len(frame):
                        return
                    self._out += memoryview(frame)[sent:]
                    if self.on_backlog is not None:
                        self.on_backlog(self)
            except OSError as e:
                self.closed = True
                raise ConnectionClosed(str(e)) from e
            if len(self._out) > self.max_backlog:
                self.closed = True
                raise ConnectionClosed(
                    f"peer {self.peer or '?'} is not reading: {len(self._out):,} bytes waited for it "
                    f"(limit {self.max_backlog:,})")

    def flush_out(self) -> bool:
        """Buffered mode, socket writable: send what waits; True once nothing is left."""
        with self._send_lock:
            return self._drain(self._out)

    def _drain(self, buf: bytearray) -> bool:
        """(Under the send lock) send what `buf` holds without blocking; True once empty."""
        while buf:
            try:
                sent = self.sock.send(buf, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as e:
                self.closed = True
                raise ConnectionClosed(str(e)) from e
            del buf[:sent]
        return True

    # ---- receiving -------------------------------------------------------------------
    def _frames(self) -> Generator[bytes, None, None]:
        buf = self._buf
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            if pos == 0 and self.expect_token is not None and size != len(self.expect_token):
                self._refuse()
                raise AuthenticationError(
                    f"the first frame must be the {len(self.expect_token)}-byte cluster token, "
                    f"not {size} bytes")
            if size > self.max_frame:
                self.closed = True
                raise FrameTooLarge(f"peer announced a frame of {size:,} bytes; the limit is "
                                    f"{self.max_frame:,}")
            if n - pos - 4 < size:
                break
            frame = bytes(buf[pos + 4 : pos + 4 + size])
            pos += 4 + size
            try:
                yield frame
            except GeneratorExit:
                break  # the caller took what it wanted: consume only what was yielded
        if pos:
            del buf[:pos]

    def _read(self) -> bool:
        """One recv into the buffer; False if nothing was there to read."""
        want = READ_SIZE
        if self.expect_token is not None:  # before the token: not one byte more than it
            want = max(1, 4 + len(self.expect_token) - len(self._buf))
        try:
            view = _scratch.view
        except AttributeError:  # (this thread's first read)
            view = _scratch.view = memoryview(mmap.mmap(-1, READ_SIZE))
        try:
            n = self.sock.recv_into(view, want)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            self.closed = True
            raise ConnectionClosed(str(e)) from e
        if not n:
            self.closed = True
            raise ConnectionClosed("peer closed the connection")
        self._buf += view[:n]
        return True

    def feed(self) -> list[tuple]:
        """Read what is available (the socket is readable) and return complete messages."""
        if not self._read():
            return []
        out = []
        for frame in self._frames():
            if self.expect_token is not None:
                try:
                    check_token(frame, self.expect_token)
                except AuthenticationError:
                    self._refuse()
                    raise
                self.expect_token = None
                continue
            out.append(_loads(frame))
        return out

    def _refuse(self) -> None:
        """Tell a peer that failed the token so (one raw frame, best effort); the owner
        closes the connection, as for any AuthenticationError."""
        self.closed = True
        try:
            self.sock.send(_LEN.pack(len(REFUSED)) + REFUSED)
        except OSError:
            pass  # gone already, or its buffer is full: it sees the connection close

    def recv_raw(self) -> bytes:
        """Blocking read of one frame, without unpickling."""
        while True:
            frames = self._frames()
            for frame in frames:
                frames.close()  # consumes this frame only; the rest stay buffered
                return frame
            self._read()

    def recv(self) -> tuple:
        return _loads(self.recv_raw())

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def _sock_for(address: str) -> socket.socket:
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(address[5:])
        return s
    host, _, port = address.rpartition(":")
    # bounded: a host that dropped off the network must not stall the caller for minutes
    s = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT)
    s.settimeout(None)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def connect(address: str, token: bytes, hello: tuple | None = None) -> Connection:
    """Connect, authenticate with the token, then send `hello` (pickled) if given."""
    conn = Connection(_sock_for(address), address)
    conn.send_raw(token)
    if hello is not None:
        conn.send(hello)
    return conn


def first_reply(conn: Connection, hello: tuple) -> tuple:
    """Send `hello` on a fresh connection and return the peer's first message.

    `TokenRefused` if the peer refused our token (its `REFUSED` frame arrives before the
    connection closes, even when the close is a reset); `ConnectionClosed` as before if
    the connection went without a word."""
    try:
        conn.send(hello)
    except ConnectionClosed:
        pass  # the peer may have refused the token already: its answer can still be read
    frame = conn.recv_raw()
    if frame == REFUSED:
        conn.close()
        raise TokenRefused(f"the carme node at {conn.peer} refused the cluster token")
    return _loads(frame)  # type: ignore[no-any-return]


def worker_addresses(info: dict, here: str) -> list[str]:
    """Where to reach the worker a lease grant or an actor lookup names, best first.

    A worker listens on a Unix socket, and on a cluster node also on TCP (`info["tcp"]`,
    HOST:PORT). A process on the worker's own node (`info["node_id"] == here`) uses the
    Unix socket (the fast path) and TCP only if the socket is not there (another mount
    namespace); a process on another node has its own /tmp and uses TCP."""
    unix, tcp = info.get("address"), info.get("tcp")
    order = [unix, tcp] if info.get("node_id") == here or not tcp else [tcp]
    return [a for a in order if a]


def connect_first(addresses: list[str], token: bytes, hello: tuple | None = None) -> Connection:
    """Connect to the first of `addresses` that answers; OSError naming each failure."""
    errors = []
    for address in addresses:
        try:
            return connect(address, token, hello)
        except OSError as e:
            errors.append(f"{address}: {e}")
    raise OSError("could not connect to " + ("; ".join(errors) or "(no address given)"))


def listen(address: str) -> socket.socket:
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(address[5:])
    else:
        host, _, port = address.rpartition(":")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
    s.listen(512)
    return s


def check_token(frame: bytes, token: bytes) -> None:
    if not hmac.compare_digest(frame, token):
        raise AuthenticationError("peer did not present the cluster token")


