"""`_lineage`: what a lost object's owner runs again, without processes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from carme import exceptions as exc
from carme._ids import put_id, return_id, task_id
from carme._lineage import keeps_lineage, plan_rebuild
from carme._messages import INLINE, SHARED
from carme._ownership import LocalObject

DEAD, ALIVE = "dead-node", "live-node"


def _shared(node: str) -> tuple:
    return (SHARED, 0, 100, False, node)


def _spec(name: str, args: list = (), retries: int = 3) -> SimpleNamespace:
    tid = task_id()
    return SimpleNamespace(task_id=tid, name=name, arg_refs=[SimpleNamespace(_id=a) for a in args],
                           return_ids=[return_id(tid, 1)], retries_left=retries, actor_id=None,
                           stream=None)


def _made(objects: dict, spec: SimpleNamespace, node: str, lineage: bool = True) -> bytes:
    oid = spec.return_ids[0]
    e = objects[oid] = LocalObject(_shared(node))
    e.task_name = spec.name
    e.lineage = spec if lineage else None
    return oid


def _lost(oid: bytes) -> exc.ObjectLostError:
    return exc.ObjectLostError(oid.hex(), detail="pull failed: node unreachable")


def test_lost_return_and_its_lost_arguments_run_again_arguments_first() -> None:
    objects: dict = {}
    a = _spec("a")
    a_oid = _made(objects, a, DEAD)
    b = _spec("b")
    b_oid = _made(objects, b, ALIVE)          # an argument whose copy is alive
    c = _spec("c", [a_oid, b_oid])
    c_oid = _made(objects, c, DEAD)
    plan = plan_rebuild(objects, c_oid, _lost(c_oid))
    assert [s.name for s in plan] == ["a", "c"]
    assert objects[a_oid].payload is None and objects[c_oid].payload is None  # pending again
    assert objects[b_oid].payload == _shared(ALIVE)                          # untouched
    assert plan_rebuild(objects, c_oid, _lost(c_oid)) == []  # a second reader just waits


def test_a_diamond_runs_each_task_once() -> None:
    objects: dict = {}
    root = _spec("root")
    r = _made(objects, root, DEAD)
    left, right = _spec("left", [r]), _spec("right", [r])
    lo, ro = _made(objects, left, DEAD), _made(objects, right, DEAD)
    top = _spec("top", [lo, ro])
    t = _made(objects, top, DEAD)
    assert [s.name for s in plan_rebuild(objects, t, _lost(t))] == ["root", "left", "right", "top"]


def test_what_cannot_be_rebuilt_says_why() -> None:
    objects: dict = {}
    p = put_id()
    objects[p] = LocalObject(_shared(DEAD))
    with pytest.raises(exc.ObjectReconstructionFailedError, match="made by put"):
        plan_rebuild(objects, p, _lost(p))
    spec = _spec("no_retries", retries=0)
    n = _made(objects, spec, DEAD, lineage=False)
    with pytest.raises(exc.ObjectReconstructionFailedMaxAttemptsExceededError,
                       match=r"\('no_retries'\) has no retries left"):
        plan_rebuild(objects, n, _lost(n))
    spent = _spec("spent", retries=0)  # kept its lineage, but rebuilds used its retries
    s = _made(objects, spent, DEAD)
    with pytest.raises(exc.ObjectReconstructionFailedMaxAttemptsExceededError, match="spent"):
        plan_rebuild(objects, s, _lost(s))
    actor = _spec("Counter.get")
    m = _made(objects, actor, DEAD, lineage=False)
    objects[m].actor_return = True
    with pytest.raises(exc.ObjectReconstructionFailedError, match="actor method"):
        plan_rebuild(objects, m, _lost(m))
    borrowed = return_id(task_id(), 1)
    objects[borrowed] = LocalObject(_shared(DEAD), owned=False)
    lost = _lost(borrowed)
    with pytest.raises(exc.ObjectLostError) as got:
        plan_rebuild(objects, borrowed, lost)
    assert got.value is lost  # only the owner can rebuild: the pull's own error stands


def test_which_finished_tasks_keep_their_lineage() -> None:
    spec = _spec("t")
    assert keeps_lineage(spec, [_shared(ALIVE)])
    assert not keeps_lineage(spec, [(INLINE, b"", [], False)])       # lives in the owner
    assert not keeps_lineage(spec, [(SHARED, 0, 1, True, ALIVE)])     # an error
    assert not keeps_lineage(_spec("t", retries=0), [_shared(ALIVE)])
    actor_call = _spec("A.f")
    actor_call.actor_id = b"actor"
    assert not keeps_lineage(actor_call, [_shared(ALIVE)])
