"""Posted frames: calls and results that go out in batches (`Connection.post`).

A message its peer does not wait for at once (the peer has earlier work of ours in hand)
is posted: it waits with others until the owner's I/O thread sends them in one write.
The first tests drive a real `Connection` over a socketpair; the last ones run real
workers and check that a posted call or result is never held back by the work queued
after it.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from tests.conftest import CLUSTER_CPUS

from carme import _protocol
from carme._protocol import Connection, ConnectionClosed


@pytest.fixture
def pair(monkeypatch):
    # posted frames wait for the flush however slow this machine is (one test lowers it)
    monkeypatch.setattr(_protocol, "LATER_AGE", 3600.0)
    a, b = socket.socketpair()
    conn, peer = Connection(a), Connection(b)
    yield conn, peer
    conn.close()
    peer.close()


def _pending(conn: Connection) -> int:
    """Bytes the peer could read now, without taking them."""
    conn.sock.setblocking(False)
    try:
        return len(conn.sock.recv(1 << 20, socket.MSG_PEEK))
    except BlockingIOError:
        return 0
    finally:
        conn.sock.setblocking(True)


def test_posted_messages_wait_for_the_flush_and_ask_for_it_once(pair):
    conn, peer = pair
    asked: list = []
    conn.post([("a", 1)], asked.append)
    conn.post([("b", 2), ("c", 3)], asked.append)
    assert asked == [conn]  # one flush for the batch, asked by its first post
    assert _pending(peer) == 0
    assert conn.flush_later() is True
    assert [peer.recv() for _ in range(3)] == [("a", 1), ("b", 2), ("c", 3)]
    conn.post([("d", 4)], asked.append)  # a new batch asks again
    assert asked == [conn, conn]


def test_a_message_posted_without_a_flusher_goes_at_once(pair):
    conn, peer = pair
    conn.post([("now", 1)], None)
    assert peer.recv() == ("now", 1)
    assert conn.flush_later() is True  # nothing waits


def test_a_direct_send_takes_the_posted_frames_with_it_in_order(pair):
    conn, peer = pair
    conn.post([("first", 1)], lambda c: None)
    conn.send(("cancel", 2))
    assert peer.recv() == ("first", 1)
    assert peer.recv() == ("cancel", 2)
    assert _pending(peer) == 0 and conn.flush_later() is True


def test_a_flush_never_blocks_and_sends_the_rest_when_the_peer_reads(pair):
    conn, peer = pair
    blob = b"x" * 100_000
    n = 0
    # fill the socket: the flush takes what the kernel accepts and keeps the rest
    while True:
        conn.post([("blob", n, blob)], lambda c: None)
        n += 1
        if not conn.flush_later():
            break
        assert n < 1000, "the socket never filled"
    got = []
    t0 = time.monotonic()
    while len(got) < n:
        got.append(peer.recv())
        conn.flush_later()
        assert time.monotonic() - t0 < 30
    assert conn.flush_later() is True
    assert [(m[0], m[1]) for m in got] == [("blob", i) for i in range(n)]
    assert all(m[2] == blob for m in got)


def test_a_large_batch_is_sent_by_its_poster(pair, monkeypatch):
    conn, peer = pair
    monkeypatch.setattr(_protocol, "LATER_MAX", 1000)
    asked: list = []
    conn.post([("small", b"y" * 10)], asked.append)
    conn.post([("big", b"y" * 2000)], asked.append)  # over the limit: written by this call
    assert asked == [conn]
    assert peer.recv()[0] == "small" and peer.recv()[0] == "big"
    assert conn.flush_later() is True


def test_a_batch_whose_oldest_frame_waited_long_enough_is_sent_by_its_poster(pair, monkeypatch):
    """(The I/O thread may be waiting for the GIL that the poster holds.)"""
    conn, peer = pair
    asked: list = []
    conn.post([("a", 1)], asked.append)
    conn.post([("b", 2)], asked.append)
    assert _pending(peer) == 0  # young: both wait for the flush
    monkeypatch.setattr(_protocol, "LATER_AGE", 0.0)
    conn.post([("c", 3)], asked.append)  # the batch is old now: this call sends it
    assert asked == [conn]
    assert [peer.recv() for _ in range(3)] == [("a", 1), ("b", 2), ("c", 3)]
    assert conn.flush_later() is True


def test_posting_on_a_closed_connection_raises(pair):
    conn, _ = pair
    conn.close()
    with pytest.raises(ConnectionClosed):
        conn.post([("late", 1)], lambda c: None)


# ---------------------------------------------------------------- real workers

def _in_workers():
    """Helpers for the tasks below (made here, so they travel by value to the workers)."""

    def wait_for_file(path: str, timeout: float = 60) -> None:
        t0 = time.monotonic()
        while not Path(path).exists():
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{path} never appeared")
            time.sleep(0.01)

    def end_once_queued(n: int = 1) -> None:
        """Return only once `n` more calls are queued on this worker's main thread (with
        one: the result of the running call is posted behind the next)."""
        from carme import _context
        core = _context.maybe_core()
        assert core is not None and core.executor is not None
        t0 = time.monotonic()
        while core.executor.q.qsize() < n:
            if time.monotonic() - t0 > 60:
                raise TimeoutError(f"only {core.executor.q.qsize()} of {n} calls reached this worker")
            time.sleep(0.005)

    return wait_for_file, end_once_queued


@pytest.mark.processes
@pytest.mark.timeout(120)
def test_an_actor_result_posted_behind_a_long_call_arrives_before_that_call_ends(carme, tmp_path):
    _wait_for_file, _end_once_queued = _in_workers()

    @carme.remote
    class Slow:
        def first(self):
            _end_once_queued()
            return "first"

        def second(self, path):
            _wait_for_file(path)
            return "second"

    release = str(tmp_path / "release")
    a = Slow.remote()
    first = a.first.remote()
    second = a.second.remote(release)  # posted: `first` is in flight
    # `first` ends only once `second` is queued behind it, and `second` runs until this
    # process has `first`'s result: a result held back until `second` ends never arrives
    assert carme.get(first, timeout=30) == "first"
    Path(release).touch()
    assert carme.get(second, timeout=30) == "second"


@pytest.mark.processes
@pytest.mark.timeout(120)
def test_calls_posted_behind_a_running_call_reach_the_actor_without_another_send(carme):
    """Calls behind POST_AFTER earlier ones are posted; the driver's I/O thread sends them
    although nothing else is sent after them (the first call ends only once they are all
    queued at the actor)."""
    from carme._submit import POST_AFTER
    _, _end_once_queued = _in_workers()
    n = POST_AFTER + 3

    @carme.remote
    class Counter:
        def first(self, n):
            _end_once_queued(n)
            return "first"

        def quick(self, i):
            return i

    a = Counter.remote()
    carme.get(a.quick.remote(-1))  # (the actor is up and connected)
    first = a.first.remote(n)
    rest = [a.quick.remote(i) for i in range(n)]  # the last three are posted
    assert carme.get(first, timeout=30) == "first"
    assert carme.get(rest, timeout=30) == list(range(n))


@pytest.mark.processes
@pytest.mark.timeout(120)
def test_a_task_result_posted_behind_a_long_task_arrives_before_that_task_ends(carme, tmp_path):
    _wait_for_file, _end_once_queued = _in_workers()

    # tasks taking all the cluster's CPUs: one lease, one worker
    @carme.remote(num_cpus=CLUSTER_CPUS)
    def quick():
        return None

    @carme.remote(num_cpus=CLUSTER_CPUS)
    def first():
        _end_once_queued()
        return "first"

    @carme.remote(num_cpus=CLUSTER_CPUS)
    def second(path):
        _wait_for_file(path)
        return "second"

    # short tasks of one shape are pipelined onto their lease's worker (once their
    # queue has seen them be short): `second` goes to `first`'s worker while it runs
    for _ in range(30):
        carme.get(quick.remote())
    release = str(tmp_path / "release")
    refs = [first.remote(), second.remote(release)]
    done, _ = carme.wait(refs[:1], timeout=30)
    assert done, "the first task's result waited for the task queued behind it"
    Path(release).touch()
    assert carme.get(refs, timeout=30) == ["first", "second"]


@pytest.mark.processes
@pytest.mark.timeout(120)
def test_a_worker_that_retires_after_max_calls_sends_the_results_it_posted(carme):
    _, _end_once_queued = _in_workers()

    @carme.remote(num_cpus=CLUSTER_CPUS)
    def quick():
        return None

    @carme.remote(num_cpus=CLUSTER_CPUS, max_calls=2)
    def twice(wait):
        if wait:
            _end_once_queued()  # its result is posted behind the second call
        return os.getpid()

    for _ in range(30):
        carme.get(quick.remote())
    # the second call is the worker's last: it exits right after, with the first's result
    # possibly still posted
    first, second = carme.get([twice.remote(True), twice.remote(False)], timeout=60)
    assert first == second


@pytest.mark.processes
@pytest.mark.timeout(60)
def test_the_periodic_flush_fires_in_an_idle_process(carme, wait_for):
    """The driver's I/O thread sends queued releases and task events every 100 ms, also
    when nothing else happens: a timer set by a timer that just fired counts in the wait
    that follows (it used to wait for the next I/O event, for ever in an idle driver)."""
    from carme import _context
    core = _context.maybe_core()
    flushes = []
    real = core.flush
    core.flush = lambda: (flushes.append(1), real())[1]  # (only _flush_periodic calls it here)
    wait_for(lambda: len(flushes) >= 5, timeout=20)


def test_a_flush_does_not_wait_for_a_send_blocked_on_the_peer(pair):
    """Another thread holds the send lock in a send the peer does not read: the I/O
    thread's flush gives up at once (None: the loop tries again a moment later) instead
    of waiting for that send, so it goes on reading what the peer sends. Waiting
    there was a deadlock when the peer's sender waited in turn for this side to read."""
    import threading

    conn, peer = pair
    asked: list = []
    conn.post([("posted", 1)], asked.append)
    assert asked == [conn]  # the I/O thread is to flush it
    blob = b"x" * (4 << 20)  # more than the socket takes: this send blocks
    sender = threading.Thread(target=conn.send, args=(("big", blob),), daemon=True)
    sender.start()
    deadline = time.monotonic() + 30
    while not conn._send_lock.locked() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert conn._send_lock.locked(), "the sender never took the send lock"
    flushed: list = []
    flusher = threading.Thread(target=lambda: flushed.append(conn.flush_later()), daemon=True)
    flusher.start()
    flusher.join(timeout=10)
    assert flushed == [None], "flush_later waited for a send blocked on the peer"
    # the peer reads: the posted message first (the sender took it along), then its own
    assert peer.recv() == ("posted", 1)
    assert peer.recv() == ("big", blob)
    sender.join(timeout=30)
    assert not sender.is_alive()
    assert conn.flush_later() is True and _pending(peer) == 0


@pytest.mark.processes
@pytest.mark.timeout(180)
def test_a_batch_of_calls_larger_than_both_sockets_hold_completes(carme):
    """A batch of actor calls whose calls fill the socket to the actor while its results
    fill the socket back: each side's sender blocks until the other side reads, so each
    side's I/O thread must keep reading (it did not while it waited for the send lock,
    and the batch hung for ever)."""

    @carme.remote
    class Echo:
        def echo(self, b):
            return b

    a = Echo.remote()
    carme.get(a.echo.remote(b""))
    blob = b"y" * 4096
    for _ in range(3):
        refs = [a.echo.remote(blob) for _ in range(3000)]  # ~12 MB each way
        out = carme.get(refs, timeout=90)
        assert len(out) == 3000 and all(o == blob for o in out)
