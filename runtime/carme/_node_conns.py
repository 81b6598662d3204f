"""The node daemon's sockets: one selector, buffered connections, deadlines, a wake-up.

Theory of operation. Everything the daemon's single thread waits on is registered in
one selector with a tag (`watch`): listeners ("accept"), connections ("conn"), worker
output pipes, stdin, the link's wake-up pipe and our own ("signal"), which a signal or
another thread (`post`) writes to. Connections are non-blocking with an outgoing buffer
(`Connection(buffered=True)`): `send` never blocks, and a connection with output waiting
is watched for writability until it drains. Two deadlines are checked once a loop turn
(`tick`): a new connection must present the cluster token within `auth_timeout` (and at
most `max_unauthenticated` may be waiting to), and a peer that reads none of its
waiting output for `stall_timeout` seconds, or lets more than `max_backlog` bytes pile
up, is dropped. Dropping a connection (`close`) is this module's; what the node makes
of a departure is the `gone` callback's (the daemon's).
"""

from __future__ import annotations

import os
import queue
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from ._protocol import AuthenticationError, Connection, ConnectionClosed, listen

AUTH_TIMEOUT = 5.0          # seconds a new connection has to present the token
MAX_UNAUTHENTICATED = 64    # connections waiting to authenticate at one time
STALL_TIMEOUT = 300.0       # seconds a peer may leave our output unread before it is dropped
MAX_BACKLOG = 64 << 20      # bytes waiting for a peer before it is dropped
MAX_FRAME = 512 << 20       # largest frame an authenticated peer may send


def log(text: str) -> None:
    print(f"carme node daemon: {text}", file=sys.stderr, flush=True)


class Sockets:
    def __init__(self, token: bytes, options: dict, gone: Callable[[Connection], None]) -> None:
        self.token = token
        self.gone = gone  # a connection was dropped (called once per connection)
        self.sel = selectors.DefaultSelector()
        self.auth_timeout = float(options.get("auth_timeout") or AUTH_TIMEOUT)
        self.max_unauthenticated = int(options.get("max_unauthenticated") or MAX_UNAUTHENTICATED)
        self.stall_timeout = float(options.get("stall_timeout") or STALL_TIMEOUT)
        self.max_backlog = int(options.get("max_backlog") or MAX_BACKLOG)
        self.max_frame = int(options.get("max_frame") or MAX_FRAME)
        # connections that have not presented the token yet -> when they connected
        self.unauthenticated: dict[Connection, float] = {}
        # connections with output waiting for the peer -> when it last made progress
        self.backlogged: dict[Connection, float] = {}
        # functions that threads (state queries) hand to the loop
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        # a signal (SIGTERM from `carme stop`) or a `post` wakes the loop
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)
        self.watch(self._wake_r, "signal", None)

    def watch(self, fileobj: Any, kind: str, obj: Any) -> None:
        self.sel.register(fileobj, selectors.EVENT_READ, (kind, obj))

    def unwatch(self, fileobj: Any) -> None:
        self.sel.unregister(fileobj)

    def listen(self, address: str) -> socket.socket:
        listener = listen(address)
        listener.setblocking(False)
        self.watch(listener, "accept", listener)
        return listener

    def post(self, fn: Callable[[], Any]) -> None:
        """From another thread: run `fn` in the loop."""
        self.inbox.put(fn)
        try:
            os.write(self._wake_w, b"p")
        except OSError:
            pass

    def woken(self) -> None:
        """In the loop: the wake-up pipe is readable; run what was posted."""
        os.read(self._wake_r, 512)
        while True:
            try:
                fn = self.inbox.get_nowait()
            except queue.Empty:
                return
            fn()

    # ------------------------------------------------------------------ connections
    def adopt(self, sock: socket.socket, peer: str, token: bytes | None = None) -> Connection:
        """A socket of ours becomes a buffered connection watched by the loop."""
        conn = Connection(sock, peer, expect_token=token, buffered=True,
                          max_frame=self.max_frame, max_backlog=self.max_backlog)
        conn.on_backlog = self._on_backlog
        self.watch(sock, "conn", conn)
        return conn

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        if len(self.unauthenticated) >= self.max_unauthenticated:
            sock.close()  # too many peers are still to show the token
            return
        if sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = self.adopt(sock, "client", token=self.token)
        conn.meta["role"] = "unknown"
        self.unauthenticated[conn] = time.monotonic()

    def read(self, conn: Connection) -> list[Any]:
        """The frames that arrived (a connection that closed or failed the token is dropped)."""
        try:
            msgs = conn.feed()
        except (ConnectionClosed, AuthenticationError):
            self.drop(conn)
            return []
        if conn.expect_token is None and conn in self.unauthenticated:
            del self.unauthenticated[conn]
        return msgs  # type: ignore[no-any-return]

    def _on_backlog(self, conn: Connection) -> None:
        if conn not in self.backlogged and not conn.closed:
            self.backlogged[conn] = time.monotonic()
            try:
                self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, ("conn", conn))
            except (KeyError, ValueError):
                pass

    def writable(self, conn: Connection) -> None:
        before = conn.backlog
        try:
            done = conn.flush_out()
        except ConnectionClosed:
            self.drop(conn)
            return
        if done:
            self.backlogged.pop(conn, None)
            try:
                self.sel.modify(conn.sock, selectors.EVENT_READ, ("conn", conn))
            except (KeyError, ValueError):
                pass
        elif conn.backlog < before:
            self.backlogged[conn] = time.monotonic()

    def send(self, conn: Connection, msg: tuple) -> bool:
        """Queue a message for `conn` (never blocks); a peer that cannot take it is dropped."""
        if conn.closed:
            return False
        try:
            conn.send(msg)
            return True
        except ConnectionClosed as e:
            if conn.backlog:
                log(f"dropping {conn.peer}: {e}")
            self.post(lambda: self.drop(conn))
            return False

    def drop(self, conn: Connection) -> None:
        """Close a connection and tell `gone` (once)."""
        self.unauthenticated.pop(conn, None)
        self.backlogged.pop(conn, None)
        if conn.meta.get("gone"):
            return
        conn.meta["gone"] = True
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.close()
        self.gone(conn)

    def release(self, conn: Connection) -> socket.socket:
        """Take a connection's socket out of the loop (blocking again) for a thread of its
        own; the loop forgets the connection without telling `gone`."""
        self.unauthenticated.pop(conn, None)
        self.backlogged.pop(conn, None)
        conn.meta["gone"] = True
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.closed = True
        conn.sock.setblocking(True)
        return conn.sock

    def tick(self, now: float) -> None:
        """Once a loop turn: deadlines of unauthenticated and stalled peers."""
        for conn, since in list(self.unauthenticated.items()):
            if now - since > self.auth_timeout:
                self.drop(conn)
        for conn, since in list(self.backlogged.items()):
            if now - since > self.stall_timeout:
                log(f"dropping {conn.peer}: it read none of {conn.backlog:,} waiting bytes "
                    f"for {self.stall_timeout:.0f} s")
                self.drop(conn)


__all__ = ["Sockets", "log"]
