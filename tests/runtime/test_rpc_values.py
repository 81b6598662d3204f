"""The driver core's request layer (`_rpc.Rpc`) and value layer (`_values.Values`) alone.

No cluster: each test gives the module a small core made of real parts (a real
`Connection` over a socketpair whose other end the test reads and answers as the daemon
would, the real `Ownership` table, a real lock) and checks what goes over the socket and
what comes back to the caller.
"""

from __future__ import annotations

import socket
import threading
import types

import numpy as np
import pytest

from carme import _messages as M
from carme import exceptions as exc
from carme._core import CoreWorker, TaskLocal
from carme._ownership import Ownership
from carme._poll_role import PollRole
from carme._protocol import Connection
from carme._rpc import Rpc, error_from_reply
from carme._serialization import INLINE_LIMIT, loads, read_layout
from carme._values import Values, error_payload, lost_payload


@pytest.fixture
def core():
    mine, theirs = socket.socketpair()
    c = types.SimpleNamespace(
        lock=threading.RLock(), daemon=Connection(mine), daemon_lost=False, peers={},
        own=Ownership("node-1"), _events=[], _running_events={}, _unsent_submits={}, worker_id="w1",
        role="driver", node_id="node-1",
        info={"head_node": "node-1"}, executor=None, logs=[], current_task=TaskLocal(),
        objects={}, _unprotected=set(), pid=1)
    c.own_conn = Connection(theirs)
    c.record = types.MethodType(CoreWorker.record, c)  # the real one, on this stand-in
    c._role, c._main_ident = PollRole(), None  # (no thread here reads for itself)
    c.wait_for = types.MethodType(CoreWorker.wait_for, c)
    c.on_log = lambda task, stream, text, label: c.logs.append((stream, text))
    c.rpc = Rpc(c)
    c.daemon_send = c.rpc.daemon_send
    c.request = c.rpc.request
    yield c
    c.daemon.close()
    c.own_conn.close()


def _answer_next(core, ok=True, value=None):
    """Read the next request on the daemon's end of the socket and answer it."""
    msg = core.own_conn.recv()
    core.rpc.on_daemon_msgs(core.daemon, [M.Reply(msg[1], ok, value).wire()])
    return msg


def test_a_request_gets_the_reply_with_its_id(core):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", core.rpc.request(M.STORE_STATS)))
    t.start()
    msg = _answer_next(core, value={"used": 5})
    t.join(10)
    assert msg[0] == M.STORE_STATS and out["v"] == {"used": 5}
    assert core.rpc.requests == {}


def test_a_malformed_reply_is_refused_and_the_request_still_waits_for_its_answer(core, capfd):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", core.rpc.request(M.STORE_STATS)))
    t.start()
    msg = core.own_conn.recv()
    core.rpc.on_daemon_msgs(core.daemon, [(M.REPLY, msg[1], "yes", None)])
    assert "Reply.ok must be bool" in capfd.readouterr().err and "v" not in out
    core.rpc.on_daemon_msgs(core.daemon, [M.Reply(msg[1], True, 7).wire()])
    t.join(10)
    assert out["v"] == 7


def test_a_failed_reply_raises_the_exception_it_carries(core):
    err = exc.ObjectLostError("ab" * 12, detail="gone with its node")
    result = {}

    def call():
        try:
            core.rpc.request(M.GET_OBJECT, b"o" * 28)
        except Exception as e:  # noqa: BLE001
            result["e"] = e
    t = threading.Thread(target=call)
    t.start()
    _answer_next(core, ok=False, value=err)
    t.join(10)
    assert result["e"] is err and result["e"].detail == "gone with its node"


def test_a_request_that_gets_no_answer_times_out_and_is_forgotten(core):
    with pytest.raises(exc.GetTimeoutError, match="within 0.05 s"):
        core.rpc.request(M.STORE_STATS, timeout=0.05)
    assert core.rpc.requests == {}


def test_requests_fail_at_once_when_the_daemon_is_gone(core):
    core.daemon_lost = True
    with pytest.raises(exc.LocalRayletDiedError):
        core.rpc.request(M.STORE_STATS)
    answers = []
    core.rpc.request_async(M.STORE_STATS, (), lambda ok, v: answers.append((ok, type(v))))
    assert answers == [(False, exc.LocalRayletDiedError)]
    assert core.rpc.requests == {}


def test_requests_to_a_peer_fail_with_node_died_when_it_goes(core):
    a, b = socket.socketpair()
    peer = Connection(a, peer="node-2")
    answers = []
    core.rpc.request_async(M.GET_OBJECT, (b"o" * 28,), lambda ok, v: answers.append((ok, v)), conn=peer)
    core.rpc.on_daemon_msgs(peer, None)  # the connection closed
    assert answers[0][0] is False
    assert isinstance(error_from_reply(answers[0][1]), exc.NodeDiedError)
    assert core.rpc.requests == {}
    a.close()
    b.close()


def test_queued_releases_go_out_ahead_of_the_next_message(core):
    oid = b"x" * 28
    entry = core.own.new_owned(oid)
    entry.held = True
    core.own.add(oid)
    core.own.remove(oid)
    core.own.ref_zero(oid)
    core.rpc.daemon_send((M.STORE_STATS, 99))
    first, second = core.own_conn.recv(), core.own_conn.recv()
    assert first == (M.DECREF, [oid]) and second == (M.STORE_STATS, 99)


def test_flush_sends_releases_and_events_together(core):
    core._events = [("ab" * 12, "RUNNING", 1.0, {})]
    core.rpc.flush()
    assert core.own_conn.recv() == (M.EVENTS, [("ab" * 12, "RUNNING", 1.0, {})])
    assert core._events == []


def test_a_task_that_ends_before_the_flush_sends_one_event(core):
    """Its SUBMITTED, not sent yet, becomes the final event (with `submitted`); a task
    whose SUBMITTED went out with an earlier flush sends its end on its own."""
    early, late = b"e" * 24, b"l" * 24
    core.record(early, "SUBMITTED", ts=1.0, name="f", attempt=0)
    core.rpc.flush()
    core.record(late, "SUBMITTED", ts=2.0, name="g", attempt=0)
    core.record(early, "FINISHED", ts=3.0, started=2.5, worker_id="w")
    core.record(late, "FAILED", ts=4.0, started=3.5, error_type="ValueError")
    core.rpc.flush()
    assert core.own_conn.recv() == (M.EVENTS, [(early.hex(), "SUBMITTED", 1.0, {"name": "f", "attempt": 0})])
    assert core.own_conn.recv() == (M.EVENTS, [
        (late.hex(), "FAILED", 4.0, {"name": "g", "attempt": 0, "started": 3.5,
                                      "error_type": "ValueError", "submitted": 2.0}),
        (early.hex(), "FINISHED", 3.0, {"started": 2.5, "worker_id": "w"})])
    assert core._unsent_submits == {}


def test_logs_from_the_daemon_reach_the_core(core):
    core.rpc.on_daemon_msgs(core.daemon, [M.Log(b"t" * 24, "stderr", "oops\n", "f pid=3").wire()])
    assert core.logs == [("stderr", "oops\n")]


@pytest.mark.parametrize("value, cls", [
    (("ObjectStoreFullError", "full"), exc.ObjectStoreFullError),
    (("ValueError", "bad name"), ValueError),
    (("NoSuchError", "what"), exc.RaySystemError),
    ("a plain string", exc.RaySystemError),
])
def test_error_from_reply_keeps_what_it_can(value, cls):
    assert type(error_from_reply(value)) is cls


# -- values -------------------------------------------------------------------------------

def test_a_small_value_travels_inline_and_reads_back(core):
    values = Values(core)
    payload, contained = values.serialize({"a": [1, 2, 3]}, oid=b"o" * 28)
    assert payload[0] == M.INLINE and contained == []
    assert values.deserialize(b"o" * 28, payload) == {"a": [1, 2, 3]}


def test_small_arrays_read_back_read_only(core):
    values = Values(core)
    payload, _ = values.serialize(np.arange(10), oid=b"o" * 28)
    out = values.deserialize(b"o" * 28, payload)
    assert out.tolist() == list(range(10)) and not out.flags.writeable


def test_an_error_payload_raises_as_the_users_exception_too(core):
    values = Values(core)
    err = exc.RayTaskError.from_exception(KeyError("k"), "f", pid=1, ip="127.0.0.1")
    with pytest.raises(KeyError) as info:
        values.deserialize(b"", error_payload(err))
    assert isinstance(info.value, exc.RayTaskError)
    with pytest.raises(exc.ObjectLostError, match="holds no reference"):
        values.deserialize(b"", lost_payload(b"o" * 28))


def test_a_small_put_stays_in_this_process(core):
    values = Values(core)
    ref = values.put([1, 2])
    entry = core.objects[ref._id]
    assert entry.payload[0] == M.INLINE and entry.size < INLINE_LIMIT
    assert values.deserialize(ref._id, entry.payload) == [1, 2]
    with pytest.raises(TypeError, match="Calling 'put' on an ObjectRef"):
        values.put(ref)


def test_a_large_value_is_allocated_written_and_sealed_in_the_store(core):
    """ALLOC, then the write into the arena, then EXPORT of the block ALLOC gave."""
    store = bytearray(4 << 20)
    core.arena = types.SimpleNamespace(writable=lambda off, n: memoryview(store)[off:off + n])
    core.export = lambda refs: None
    values = Values(core)
    big = np.ones(INLINE_LIMIT, dtype=np.uint8)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("p", values.serialize(big, oid=b"b" * 28)))
    t.start()
    alloc = _answer_next(core, value=4096)
    export = _answer_next(core, value=None)
    t.join(10)
    payload, _ = out["p"]
    assert alloc[0] == M.ALLOC and alloc[2] == b"b" * 28
    assert payload == (M.SHARED, 4096, alloc[3], False, "node-1")
    assert export[0] == M.EXPORT and export[2] == b"b" * 28 and export[3] == payload
    data, bufs = read_layout(memoryview(store)[4096:4096 + alloc[3]])
    value, _ = loads(data, bufs)
    assert value.shape == big.shape and (value == 1).all()  # what was written reads back


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_buffers_are_copied_whole_by_several_threads(monkeypatch, threads):
    """A buffer over PARALLEL_COPY_MIN is split into page-aligned slices copied by
    `threads` threads; every byte lands where it belongs, and the layout reads back."""
    from carme import _serialization as S
    monkeypatch.setattr(S, "PARALLEL_COPY_MIN", 1 << 16)
    monkeypatch.setattr(S, "COPY_THREADS", threads)
    monkeypatch.setattr(S, "_copy_pool", None)
    used = []
    real_copyto = np.copyto
    monkeypatch.setattr(np, "copyto", lambda d, s: (used.append(threading.get_ident()), real_copyto(d, s)))
    rng = np.random.default_rng(7)
    arrays = [rng.integers(0, 255, n, dtype=np.uint8) for n in ((1 << 20) + 4097, 1000, 3 << 16)]
    data, bufs, _ = S.dumps(arrays)
    store = bytearray(S.layout_size(data, bufs) + 64)
    S.write_layout(memoryview(store)[64:], data, bufs)
    out, _ = loads(*read_layout(memoryview(store)[64:]))
    assert all((a == b).all() and a.shape == b.shape for a, b in zip(arrays, out, strict=True))
    if threads == 1:
        assert used == []  # one plain copy per buffer
    else:
        assert len(used) == 2 * threads  # each of the two large buffers in `threads` slices
        assert len(set(used)) > 1  # by more than the caller's thread
        S._copier().shutdown()


def test_a_copy_with_no_thread_to_be_had_is_done_whole_by_the_caller(monkeypatch):
    """Under an address-space limit a copy thread may not start: the caller copies
    the slices no thread took, and every byte still lands."""
    from carme import _serialization as S
    monkeypatch.setattr(S, "PARALLEL_COPY_MIN", 1 << 16)
    monkeypatch.setattr(S, "COPY_THREADS", 4)

    class OneThreadThenNone:
        n = 0

        def submit(self, fn, *args):
            self.n += 1
            if self.n > 1:
                raise RuntimeError("can't start new thread")
            fn(*args)
            return types.SimpleNamespace(result=lambda: None)

    monkeypatch.setattr(S, "_copier", OneThreadThenNone)
    src = np.random.default_rng(3).integers(0, 255, (1 << 20) + 123, dtype=np.uint8)
    dest = bytearray(src.nbytes)
    S.copy_into(memoryview(dest), memoryview(src))
    assert bytes(dest) == src.tobytes()


def test_a_child_forked_while_the_copy_pool_was_being_made_copies_with_threads_of_its_own(monkeypatch):
    """fork() while another thread holds the copy pool's lock (making the pool): the
    child gets a lock and threads of its own, and its large copy completes."""
    import os
    import time

    from carme import _serialization as S
    monkeypatch.setattr(S, "COPY_THREADS", 2)  # (one CPU would copy without the pool)
    src = np.random.default_rng(5).integers(0, 255, S.PARALLEL_COPY_MIN + 4096, dtype=np.uint8)
    S._copy_pool_lock.acquire()  # as another thread would, making the pool
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                dest = bytearray(src.nbytes)
                S.copy_into(memoryview(dest), memoryview(src))
                code = 0 if bytes(dest) == src.tobytes() else 2
            finally:
                os._exit(code)
    finally:
        S._copy_pool_lock.release()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child's copy never finished (it waited on the parent's lock)")


def test_an_io_thread_wakes_the_threads_it_hands_to_when_it_next_waits() -> None:
    """On an I/O loop's thread a waiter it sets, and work it hands over, wake their
    thread only at `wake_deferred` (as the loop goes back to waiting for I/O); on any
    other thread at once."""
    from carme import _rpc
    w = _rpc._Waiter()
    w.set(True, 1)  # (not an I/O thread: at once)
    assert w.wait(0) and w.value == 1
    got: list = []
    woken = _rpc.defer_wakes()
    try:
        w = _rpc._Waiter()
        w.set(True, 2)
        _rpc.hand_over(got.append, "task")
        assert not w.wait(0) and got == []  # nothing woken yet
        _rpc.wake_deferred(woken)
        assert w.wait(0) and w.value == 2 and got == ["task"] and woken == []
        # a wake-up that fails (a waiter set twice) is reported and the others still happen
        w = _rpc._Waiter()
        w.set(True, 3)
        w.set(True, 3)
        _rpc.hand_over(got.append, "after")
        _rpc.wake_deferred(woken)
        assert got == ["task", "after"] and woken == []
    finally:
        del _rpc._io_wakes.pending
    _rpc.hand_over(got.append, "again")  # (this thread is no I/O loop any more)
    assert got == ["task", "after", "again"]


def test_a_countdown_calls_then_on_its_last_call_from_any_thread():
    """`Countdown`: what a `get` of several refs and a task waiting on its arguments
    share; `then` runs once, on the n-th call, whichever thread makes it."""
    import threading

    from carme._rpc import Countdown

    ran: list[int] = []
    one = Countdown(1, lambda: ran.append(1))
    assert one.left == 1
    one()
    assert ran == [1] and one.left == 0
    many = Countdown(200, lambda: ran.append(200))
    threads = [threading.Thread(target=lambda: [many() for _ in range(50)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ran == [1, 200] and many.left == 0
