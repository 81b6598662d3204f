"""The per-task messages (PUSH, ACTOR_CALL, RESULT, ITEM): typed at both ends, checked
at the receiver; a worker and a submitter refuse malformed ones without storing them and
fail the task they name instead of leaving its caller waiting.

The first tests are plain calls; the last two talk to a real worker over its socket and
feed a real driver's submitter a malformed reply.
"""

from __future__ import annotations

import math
import pickle
import time

import pytest

import carme
from carme import _messages as M
from carme import exceptions as exc
from carme._protocol import connect
from carme._serialization import dumps, dumps_function, inline_payload
from carme._task_messages import ActorCall, Item, Push, Result, read_from_worker

ARGS = inline_payload(*dumps(((1, 2), {}))[:2])
SHARED = (M.SHARED, 64, 128, False, "node-1")


def _push(**changes):
    fields = dict(kind=M.PUSH, task_id=b"t" * 24, fn_key=b"k" * 20, fn_blob=None, args=ARGS,
                  ref_pos=[(False, 1)], resolved=[(b"o" * 24, SHARED)], num_returns=1,
                  streaming=False, name="f", lease_id="lease-1", gpu_ids=["0"], attempt=0,
                  shape={"CPU": 1.0}, pg_id=None, max_calls=0, pg_capture=False)
    fields.update(changes)
    return Push(**fields)


def _call(**changes):
    fields = dict(kind=M.ACTOR_CALL, task_id=b"t" * 24, method="m", args=ARGS, ref_pos=[],
                  resolved=[], num_returns="streaming", streaming=True, name="A.m", attempt=1)
    fields.update(changes)
    return ActorCall(**fields)


def _result(**changes):
    fields = dict(kind=M.RESULT, task_id=b"t" * 24, payloads=[ARGS, SHARED],
                  contained=[[], [b"o" * 24]],
                  info={"start": 1.0, "end": 2.0, "error_type": "ValueError", "retryable": True})
    fields.update(changes)
    return Result(**fields)


def _item(**changes):
    fields = dict(kind=M.ITEM, task_id=b"t" * 24, position=3, payload=ARGS, contained=[])
    fields.update(changes)
    return Item(**fields)


@pytest.mark.parametrize("make", [_push, _call, _result, _item])
def test_each_message_crosses_as_a_plain_tuple_and_reads_back_by_name(make):
    msg = make()
    wire = msg.wire()
    assert type(wire) is tuple and wire[0] == msg.kind
    again = type(msg).read(pickle.loads(pickle.dumps(wire, 5)))
    assert type(again) is type(msg) and again == msg
    assert again.task_id == b"t" * 24


def test_inline_payloads_carry_their_buffers_as_a_list_or_none_as_an_empty_tuple():
    assert ARGS[2] == ()  # (no buffers: the payload holds atomic values only)
    with_buffers = (M.INLINE, b"x", [b"buffer"], False)
    assert Result.read(_result(payloads=[with_buffers, ARGS]).wire()).payloads == [with_buffers, ARGS]


def test_a_worker_reply_is_read_as_its_kind():
    assert isinstance(read_from_worker(_result().wire()), Result)
    assert isinstance(read_from_worker(_item().wire()), Item)
    log = read_from_worker(M.Log(b"t" * 24, "stdout", "hi\n", "f pid=1").wire())
    assert log.text == "hi\n"
    with pytest.raises(M.BadMessage, match="RESULT, ITEM and LOG"):
        read_from_worker(_push().wire())
    with pytest.raises(M.BadMessage, match="RESULT, ITEM and LOG"):
        read_from_worker("not a message")


@pytest.mark.parametrize("wire, field", [
    (_push().wire()[:-1], "tuple of 17 fields"),
    (_push(task_id="abc").wire(), "PUSH.task_id"),
    (_push(max_calls=True).wire(), "PUSH.max_calls"),
    (_push(streaming=1).wire(), "PUSH.streaming"),
    (_push(args=("s", 0, 10, False)).wire(), "inline payload"),
    (_push(args=("i", "not bytes", [], False)).wire(), "PUSH.payload is malformed"),
    (_push(args=("i", b"x", {"not": "buffers"}, False)).wire(), "PUSH.payload is malformed"),
    (_push(ref_pos=[(False, 1), (True, 2)]).wire(), "2 ref positions but 1"),
    (_push(ref_pos=[(True, 1)]).wire(), "PUSH.ref_pos"),
    (_push(resolved=[(b"o" * 24, ("s", -1, 5, False))]).wire(), "PUSH.payload is malformed"),
    (_push(resolved=[(b"o" * 24, ("s", 0, 5, False, "n"), 1)]).wire(), "PUSH.resolved"),
    (_call(ref_pos=[(False, 0)], resolved=[(b"o" * 24, ("s", 0, 5, False, "n"), True, True)]).wire(),
     "ACTOR_CALL.resolved"),
    (_push(num_returns=-2).wire(), "PUSH.num_returns"),
    (_push(num_returns="many").wire(), "PUSH.num_returns"),
    (_push(gpu_ids=[1.5]).wire(), "PUSH.gpu_ids"),
    (_push(shape={"CPU": math.nan}).wire(), "PUSH.shape"),
    (_push(shape={"CPU": -1}).wire(), "PUSH.shape"),
    (_push(kind=M.ACTOR_CALL).wire(), "PUSH.kind"),
    (_call(method=None).wire(), "ACTOR_CALL.method"),
    (_call(attempt=1.0).wire(), "ACTOR_CALL.attempt"),
    (_result(payloads=[("x",)]).wire(), "RESULT.payload is malformed"),
    (_result(contained=[[], [], []]).wire(), "3 contained-id lists for 2 payloads"),
    (_result(contained=[["not bytes"]]).wire(), "RESULT.contained"),
    (_result(info={"start": "yesterday"}).wire(), "RESULT.info\\['start'\\]"),
    (_result(info={"end": math.inf}).wire(), "RESULT.info\\['end'\\]"),
    (_result(info={"surprise": 1}).wire(), "unknown field"),
    (_item(position=-1).wire(), "ITEM.position"),
    (_item(payload=("i", b"", [], "no")).wire(), "ITEM.payload is malformed"),
    ([M.PUSH, *_push().wire()[1:]], "must be a tuple"),
])
def test_malformed_messages_are_refused_naming_the_field(wire, field):
    cls = {M.PUSH: Push, M.ACTOR_CALL: ActorCall, M.RESULT: Result, M.ITEM: Item}[wire[0]]
    if field == "PUSH.kind":
        cls = Push
    with pytest.raises(M.BadMessage, match=field):
        cls.read(wire if isinstance(wire, list) else tuple(wire))


# -- real processes -------------------------------------------------------------------------

@pytest.fixture
def cluster():
    carme.init(num_cpus=2)
    yield
    carme.shutdown()


def _lease(core):
    from carme._remote import _strategy
    return core.request(M.LEASE, {"CPU": 1.0}, _strategy(core, {}), None, "test")


@pytest.mark.processes
def test_a_worker_fails_a_malformed_push_and_goes_on_serving(cluster):
    from carme._context import STATE
    core = STATE.core
    grant = _lease(core)
    conn = connect(grant["address"], core.token, M.Peer(core.worker_id).wire())
    try:
        def add(a, b):
            return a + b
        blob, _ = dumps_function(add)
        bad = _push(task_id=b"b" * 24, shape={"CPU": math.nan}, ref_pos=[], resolved=[],
                    lease_id=grant["lease_id"], gpu_ids=[])
        conn.send(bad.wire())
        reply = Result.read(conn.recv())
        assert reply.task_id == b"b" * 24
        with pytest.raises(exc.RaySystemError, match="PUSH.shape"):
            core.deserialize(b"", reply.payloads[0])
        good = _push(task_id=b"g" * 24, fn_key=b"add-key-of-twenty-by", fn_blob=blob, ref_pos=[],
                     resolved=[], lease_id=grant["lease_id"], gpu_ids=[])
        conn.send(good.wire())
        reply = Result.read(conn.recv())
        assert reply.task_id == b"g" * 24
        assert core.deserialize(b"", reply.payloads[0]) == 3
    finally:
        conn.close()
        core.daemon_send((M.RETURN_LEASE, grant["lease_id"], False))


@carme.remote
def _slow(x):
    import time
    time.sleep(0.5)
    return x


@pytest.mark.processes
def test_a_malformed_result_fails_its_task_and_stores_nothing(cluster):
    from carme._context import STATE
    core = STATE.core
    sub = core.submitter
    assert carme.get(_slow.remote(0)) == 0  # a lease exists now
    ref = _slow.remote(1)
    task_id = ref._id[:-4]  # a return id is its task's id and the return's index

    def holder():
        return next((ls for q in list(sub.queues.values()) for ls in q.leases
                     if task_id in ls.inflight), None)
    deadline = time.monotonic() + 60
    while holder() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    lease = holder()
    assert lease is not None, "the task never went to a worker"
    bad = _result(task_id=task_id, payloads=[("i", b"x", [], "not a bool")], contained=[],
                  info={})
    sub.on_worker_msgs(lease, [bad.wire()])
    with pytest.raises(exc.RaySystemError, match="malformed reply.*RESULT.payload"):
        carme.get(ref, timeout=60)
    # the worker's real reply arrives later and is dropped; the lease still serves
    assert carme.get(_slow.remote(2), timeout=60) == 2
