"""Framed, authenticated message connections over Unix and TCP sockets.

A frame is a 4-byte big-endian length followed by that many bytes; a message is a pickled
tuple whose first item is its kind. The first frame a connecting peer sends is the
cluster token in plain bytes; the accepting side compares it in constant time and closes
the connection on a mismatch *before* unpickling anything, because a pickle is code.

`Connection` is used from several threads: sends take a lock and write the whole frame;
reads happen in one thread at a time (the owner's I/O thread), either blocking
(`recv`) or fed from a selector (`feed`, which never blocks).
"""

from __future__ import annotations

import hmac
import pickle
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

_LEN = struct.Struct(">I")
MAX_FRAME = 1 << 31
_dumps = pickle.dumps
_loads = pickle.loads


class ConnectionClosed(Exception):
    """The peer went away."""


class AuthenticationError(Exception):
    """A peer did not present the cluster token."""


class Connection:
    __slots__ = ("sock", "_send_lock", "_buf", "peer", "closed", "meta", "expect_token", "__weakref__")

    def __init__(self, sock: socket.socket, peer: str = "", expect_token: bytes | None = None) -> None:
        self.sock = sock
        # Set on the accepting side: the first frame must be this token, checked before
        # any frame is unpickled.
        self.expect_token = expect_token
        self._send_lock = threading.Lock()
        self._buf = bytearray()
        self.peer = peer
        self.closed = False
        self.meta: dict[str, Any] = {}

    def fileno(self) -> int:
        return self.sock.fileno()

    # ---- sending ---------------------------------------------------------------------
    def send(self, msg: tuple) -> None:
        data = _dumps(msg, 5)
        frame = _LEN.pack(len(data)) + data
        with self._send_lock:
            try:
                self.sock.sendall(frame)
            except OSError as e:
                self.closed = True
                raise ConnectionClosed(str(e)) from e

    def send_many(self, msgs: list[tuple]) -> None:
        parts = []
        for m in msgs:
            data = _dumps(m, 5)
            parts.append(_LEN.pack(len(data)))
            parts.append(data)
        payload = b"".join(parts)
        with self._send_lock:
            try:
                self.sock.sendall(payload)
            except OSError as e:
                self.closed = True
                raise ConnectionClosed(str(e)) from e

    def send_raw(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(_LEN.pack(len(data)) + data)

    # ---- receiving -------------------------------------------------------------------
    def _frames(self) -> Iterator[bytes]:
        buf = self._buf
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            if n - pos - 4 < size:
                break
            yield bytes(buf[pos + 4 : pos + 4 + size])
            pos += 4 + size
        if pos:
            del buf[:pos]

    def _read(self) -> bool:
        """One recv into the buffer; False if nothing was there to read."""
        try:
            chunk = self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            self.closed = True
            raise ConnectionClosed(str(e)) from e
        if not chunk:
            self.closed = True
            raise ConnectionClosed("peer closed the connection")
        self._buf += chunk
        return True

    def feed(self) -> list[tuple]:
        """Read what is available (the socket is readable) and return complete messages."""
        if not self._read():
            return []
        out = []
        for frame in self._frames():
            if self.expect_token is not None:
                check_token(frame, self.expect_token)
                self.expect_token = None
                continue
            out.append(_loads(frame))
        return out

    def recv_raw(self) -> bytes:
        """Blocking read of one frame, without unpickling."""
        while True:
            for frame in self._frames():
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
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def connect(address: str, token: bytes, hello: tuple | None = None) -> Connection:
    """Connect, authenticate with the token, then send `hello` (pickled) if given."""
    conn = Connection(_sock_for(address), address)
    conn.send_raw(token)
    if hello is not None:
        conn.send(hello)
    return conn


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


