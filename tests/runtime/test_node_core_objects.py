"""The node's pure parts, driven synchronously: the object table, typed messages, limits.

No process, socket or thread: `ObjectTable` returns `Answer` effects, `decode` checks what
crosses the boundary, `Connection` framing is fed from a socketpair in this process.
"""

from __future__ import annotations

import math
import pickle
import socket
import struct

import pytest

from carme import _messages as M
from carme import exceptions as exc
from carme._node_objects import FREED_KEPT, LOG_SIZE, ObjectTable
from carme._protocol import AuthenticationError, Connection, ConnectionClosed, FrameTooLarge
from carme._scheduler import DefaultStrategy
from carme._store import Arena
from carme._task_tags import TaskTags

NODE = "n" * 56
A, B, C = b"a" * 28, b"b" * 28, b"c" * 28


def _table() -> ObjectTable:
    return ObjectTable(Arena(1 << 20), NODE)


def _inline(data: bytes = b"x") -> tuple:
    return (M.INLINE, data, [], False)


# ---------------------------------------------------------------------------- objects
def test_alloc_seal_and_free_returns_the_block():
    t = _table()
    off = t.alloc(A, 1000, 1, "w1")
    assert t.arena.used_bytes > 0
    assert t.export(A, (M.SHARED, off, 1000, False, NODE), [], 0, "bytes", "w1", 1) == []
    assert t.get("client", 7, A)[0].value[1] == off
    t.decref([A], "w1")
    assert len(t) == 0 and t.arena.used_bytes == 0


def test_pending_object_freed_before_sealing_returns_its_block():
    t = _table()
    t.alloc(A, 1000, 1, "w1")
    t.release_holder("w1")
    assert t.arena.used_bytes == 0 and len(t) == 0


def test_waiters_get_the_value_when_sealed():
    t = _table()
    t.export(A, None, [], 1, "", "w1", 1)
    assert t.get("c1", 1, A) == [] and t.get("c2", 2, A) == []
    answers = t.export(A, _inline(), [], 0, "int", "w1", 1)
    assert [(a.client, a.req, a.ok) for a in answers] == [("c1", 1, True), ("c2", 2, True)]


def test_a_process_holds_once_a_stored_value_once_per_reference():
    t = _table()
    t.export(A, _inline(), [], 1, "", "w1", 1)
    t.incref([A, A], "w1")
    assert t.get_entry(A).count == 1  # type: ignore[union-attr]
    t.incref([A, A], "w2:blob")
    assert t.get_entry(A).count == 3  # type: ignore[union-attr]


def test_contained_references_live_as_long_as_the_value():
    t = _table()
    t.export(B, _inline(), [], 1, "", "w1", 1)
    t.export(A, _inline(), [B], 1, "", "w1", 1)
    t.decref([B], "w1")
    assert t.get_entry(B) is not None  # A's value still refers to B
    t.decref([A], "w1")
    assert len(t) == 0


def test_unknown_ids_are_reported_by_incref():
    t = _table()
    t.export(A, _inline(), [], 1, "", "w1", 1)
    assert t.incref([A, C], "w2") == [C]


def test_waiters_of_a_freed_object_hear_it_is_lost_with_its_story():
    t = _table()
    t.export(A, None, [], 1, "", "w1", 1)
    t.get("c1", 3, A)
    (answer,) = t.release_holder("w1")
    assert answer.ok is False and isinstance(answer.value, exc.ObjectLostError)
    err = answer.value
    assert err.object_ref_hex == A.hex()  # the id is the id, not the message
    assert "released by w1" in str(err) and "freed" in str(err)
    late = t.get("c2", 4, A)[0].value
    assert isinstance(late, exc.ObjectLostError) and "released by w1" in str(late)
    again = pickle.loads(pickle.dumps(late))
    assert again.object_ref_hex == A.hex() and again.detail == late.detail


def test_the_story_of_each_object_is_bounded_and_so_are_freed_stories():
    t = _table()
    t.export(A, _inline(), [], 1, "", "w1", 1)
    for i in range(100):
        t.incref([A], f"h{i}:blob")
    assert len(t.story(A)) == LOG_SIZE
    for i in range(FREED_KEPT + 50):
        oid = i.to_bytes(28, "big")
        t.export(oid, _inline(), [], 1, "", "w1", 1)
        t.decref([oid], "w1")
    assert len(t.freed) == FREED_KEPT


def test_export_refuses_a_store_block_it_did_not_hand_out():
    t = _table()
    with pytest.raises(M.BadMessage, match="not allocated"):
        t.export(A, (M.SHARED, 4096, 100, False, NODE), [], 1, "", "w1", 1)
    assert len(t) == 0
    off = t.alloc(B, 100, 1, "w1")
    with pytest.raises(M.BadMessage, match="not allocated"):
        t.export(B, (M.SHARED, off, 1 << 30, False, NODE), [], 0, "", "w1", 1)
    assert t.get_entry(B).payload is None  # type: ignore[union-attr]


def test_cached_copies_are_evicted_for_new_objects():
    t = ObjectTable(Arena(4096), NODE)
    t.start_pull(A)
    off = t.alloc_secondary(A, 3000)
    assert off is not None
    t.pulled(A, off, 3000, False, None)
    assert t.cached == [A]
    t.alloc(B, 3000, 1, "w1")  # does not fit next to the copy: the copy goes
    assert t.cached == [] and t.get_entry(A) is None


def test_dropping_a_client_forgets_its_waits():
    t = _table()
    t.export(A, None, [], 1, "", "w1", 1)
    t.get("gone", 1, A)
    t.drop_client("gone")
    assert t.export(A, _inline(), [], 0, "", "w1", 1) == []


# ---------------------------------------------------------------------------- messages
@pytest.mark.parametrize("raw, field", [
    ((M.EVENTS, [("ab", "RUNNING", "not a time")]), "timestamp"),
    ((M.EVENTS, [("ab", "RUNNING", math.nan)]), "timestamp"),
    ((M.EVENTS, [("ab", "DANCING", 1.0)]), "state"),
    ((M.EVENTS, [("ab", "RUNNING", 1.0, {"evil": 1})]), "unknown attributes"),
    ((M.EVENTS, [("ab", "FINISHED", 2.0, {"started": math.inf})]), "started"),
    ((M.EVENTS, [("ab", "FINISHED", 2.0, {"started": "1.0"})]), "started"),
    ((M.DECREF, [1, 2]), "Decref.oids"),
    ((M.ALLOC, 1, A, -5, 1), "Alloc.size"),
    ((M.ALLOC, 1, A, True, 1), "Alloc.size"),
    ((M.GET_OBJECT, 1, "not bytes"), "GetObject.oid"),
    ((M.LEASE, 1, {"CPU": math.inf}, DefaultStrategy(), None, "t"), "Lease.shape"),
    ((M.LEASE, 1, {"CPU": 1}, "spread", None, "t"), "Lease.strategy"),
    ((M.EXPORT, None, A, ("s", -1, 10, False, NODE), [], 0, ""), "payload"),
    ((M.EXPORT, None, A, ("i", b"x", [], False), [], -1, ""), "Export.add"),
    ((M.CREATE_ACTOR, 1, A, {"class_name": "X", "placement_shape": {}}), "strategy"),
    ((M.HELLO, 1, "driver"), "fields"),
    ((99, 1), "unknown message kind"),
    (("LEASE", 1), "kind"),
])
def test_malformed_messages_are_refused_naming_the_field(raw, field):
    with pytest.raises(M.BadMessage, match=field):
        M.decode(raw)


def test_good_messages_decode_to_their_typed_form():
    msg = M.decode((M.LEASE, 4, {"CPU": 1.0}, DefaultStrategy(), None, "task f"))
    assert isinstance(msg, M.Lease) and msg.req == 4 and msg.no_spill is False
    ev = M.decode((M.EVENTS, [["ab", "RUNNING", 3, {"attempt": 1}]]))
    assert isinstance(ev, M.Events) and ev.events == [("ab", "RUNNING", 3.0, {"attempt": 1})]
    assert M.request_id((M.GET_OBJECT, 9, "bad")) == 9
    assert M.request_id((M.DECREF, [1])) is None


# ---------------------------------------------------------------------------- framing limits
def _pair(**kw) -> tuple[Connection, socket.socket]:
    a, b = socket.socketpair()
    return Connection(a, "test", **kw), b


def test_nothing_beyond_the_token_is_read_before_authentication():
    conn, peer = _pair(expect_token=b"t" * 32)
    peer.sendall(struct.pack(">I", 0x7FFFFFFF) + b"x" * 1000)
    with pytest.raises(AuthenticationError, match="32-byte cluster token"):
        conn.feed()
    assert len(conn._buf) <= 36  # read at most one token frame's worth


def test_a_wrong_token_is_refused_before_any_pickle():
    conn, peer = _pair(expect_token=b"t" * 32)
    peer.sendall(struct.pack(">I", 32) + b"u" * 32)
    with pytest.raises(AuthenticationError):
        conn.feed()


def test_authenticated_frames_have_a_size_limit():
    conn, peer = _pair(expect_token=b"t" * 32, max_frame=1000)
    peer.sendall(struct.pack(">I", 32) + b"t" * 32)
    assert conn.feed() == []
    peer.sendall(struct.pack(">I", 5000))
    with pytest.raises(FrameTooLarge):
        conn.feed()


def test_buffered_sends_never_block_and_give_up_past_the_backlog():
    conn, peer = _pair(buffered=True, max_backlog=1 << 20)
    backlogged = []
    conn.on_backlog = backlogged.append
    with pytest.raises(ConnectionClosed, match="not reading"):
        for _ in range(10_000):
            conn.send((M.LOG, None, "stdout", "x" * 1000, None))
    assert backlogged == [conn]
    peer.close()


def test_buffered_output_drains_when_the_peer_reads():
    conn, peer = _pair(buffered=True)
    for _ in range(2000):
        conn.send((M.LOG, None, "stdout", "x" * 1000, None))
    assert conn.backlog > 0
    reader = Connection(peer, "reader")
    got = 0
    while got < 2000:
        conn.flush_out()
        got += len(reader.feed())
    assert conn.flush_out() and conn.backlog == 0


# ---------------------------------------------------------------------------- task tags
def test_task_tags_are_bounded_by_the_tasks_in_flight():
    tags = TaskTags(recent=10)
    for i in range(1000):
        tags[i.to_bytes(16, "big")] = ("cell", "f")
        tags.finished(i.to_bytes(16, "big"))
    assert len(tags.live) == 0 and len(tags) == 10
    assert tags.get((999).to_bytes(16, "big")) == ("cell", "f")  # late output still routed
    assert tags.get((0).to_bytes(16, "big")) is None


def test_a_return_exported_while_pending_keeps_its_holds_and_waiters_when_allocated():
    t = _table()
    t.export(A, None, [], 1, "", "owner", 1)  # the owner passed the pending ref on
    t.get("reader", 1, A)
    off = t.alloc(A, 500, 2, "owner")  # the worker writes the value
    (answer,) = t.export(A, (M.SHARED, off, 500, False, NODE), [], 0, "bytes", "worker", 2)
    assert answer.client == "reader" and answer.ok
    assert t.get_entry(A).holders == {"owner": 1}  # type: ignore[union-attr]


def test_a_retried_task_s_second_value_is_dropped_and_every_block_returns():
    t = _table()
    first = t.alloc(A, 500, 2, "owner")
    t.export(A, (M.SHARED, first, 500, False, NODE), [], 0, "", "w1", 2)
    second = t.alloc(A, 500, 3, "owner")  # a retry writes it again
    t.export(A, (M.SHARED, second, 500, False, NODE), [], 0, "", "w2", 3)
    assert t.get_entry(A).payload[1] == first  # type: ignore[union-attr]
    t.release_holder("owner")
    assert t.arena.used_bytes == 0
