"""The node's worker pool, driven synchronously: readiness, idle pools per env, retiring."""

from __future__ import annotations

from carme._node_workers import WorkerPool, WorkerRec


def _w(i: int, env: str = "") -> WorkerRec:
    return WorkerRec(f"w{i}", 1000 + i, conn=f"conn{i}", env_key=env)


def test_a_ready_worker_serves_who_waited_for_it_or_goes_idle():
    pool = WorkerPool(max_idle=2)
    a, b = _w(1), _w(2)
    pool.add(a)
    pool.add(b)
    got = []
    pool.wait_for(a, got.append)
    assert pool.ready(a, "unix:a") == [got.append] and a.state == "IDLE" and a.address == "unix:a"
    assert pool.ready(b, "unix:b") == []
    assert pool.take("") is b and pool.take("") is None


def test_idle_workers_are_kept_per_runtime_env():
    pool = WorkerPool(max_idle=2)
    plain, env = _w(1), _w(2, "numpy-env")
    for w in (plain, env):
        pool.add(w)
        pool.ready(w, "x")
    assert pool.take("numpy-env") is env
    assert pool.take("numpy-env") is None
    assert pool.take("") is plain


def test_past_max_idle_a_returned_worker_retires_and_is_forgotten():
    pool = WorkerPool(max_idle=1)
    a, b = _w(1), _w(2)
    for w in (a, b):
        pool.add(w)
    pool.ready(a, "x")  # idle
    b.state, b.lease_id = "LEASED", "lease-1"
    assert pool.give_back(b) is False
    assert b.state == "DEAD" and pool.get("w2") is None and pool.pids() == [1001]
    assert pool.remove(b) == "DEAD"  # its connection dropping later changes nothing


def test_a_dead_idle_worker_is_never_handed_out():
    pool = WorkerPool(max_idle=3)
    a = _w(1)
    pool.add(a)
    pool.ready(a, "x")
    assert pool.remove(a) == "IDLE"
    assert pool.take("") is None and len(pool) == 0 and pool.pids() == []
