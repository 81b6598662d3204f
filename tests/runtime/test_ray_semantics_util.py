"""Differential tests: ray.util.ActorPool and ray.actor.exit_actor."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.ray]


def test_actor_pool_map_and_unordered(ray_impl, submodule):
    ray = ray_impl
    util = submodule(ray, "util")

    @ray.remote
    class Doubler:
        def double(self, v):
            return 2 * v

    pool = util.ActorPool([Doubler.remote() for _ in range(2)])
    assert list(pool.map(lambda a, v: a.double.remote(v), range(6))) == [0, 2, 4, 6, 8, 10]
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(5))) == [0, 2, 4, 6, 8]
    pool.submit(lambda a, v: a.double.remote(v), 21)
    assert pool.has_next() and pool.get_next() == 42
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    if ray.__name__ == "carme":
        # deliberate difference: Ray 2.60 accepts an empty pool whose submits never run
        with pytest.raises(ValueError, match="non-empty list"):
            util.ActorPool([])


def test_exit_actor_ends_it_for_good(ray_impl, submodule):
    ray = ray_impl
    actor_mod = submodule(ray, "actor")

    @ray.remote(max_restarts=2)
    class Quitter:
        def ping(self):
            return "pong"

        def quit(self):
            actor_mod.exit_actor()

    q = Quitter.remote()
    assert ray.get(q.ping.remote(), timeout=30) == "pong"
    q.quit.remote()
    with pytest.raises(ray.exceptions.RayActorError):
        for _ in range(50):  # the exit is not restarted, whatever max_restarts says
            ray.get(q.ping.remote(), timeout=30)


def test_queue_between_tasks(ray_impl, submodule):
    ray = ray_impl
    qmod = submodule(ray, "util.queue")
    q = qmod.Queue(maxsize=3)

    @ray.remote
    def producer(queue, n):
        for i in range(n):
            queue.put(i)
        return n

    assert ray.get(producer.remote(q, 3), timeout=30) == 3
    assert q.qsize() == 3 and q.full()
    with pytest.raises(qmod.Full):
        q.put_nowait(99)
    assert [q.get(timeout=10) for _ in range(3)] == [0, 1, 2]
    assert q.empty()
    with pytest.raises(qmod.Empty):
        q.get_nowait()
    with pytest.raises(qmod.Empty):
        q.get(timeout=0.2)
    q.put_nowait_batch([5, 6])
    assert q.get_nowait_batch(2) == [5, 6]
    q.shutdown()
