"""Differential tests: actors (state, ordering, concurrency, names, lifetimes, failures)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.ray]


def _counter_class(ray):
    @ray.remote
    class Counter:
        def __init__(self, start=0):
            self.value = start

        def inc(self, by=1):
            self.value += by
            return self.value

        def get(self):
            return self.value

        def pid(self):
            return os.getpid()

        def die(self):
            os._exit(1)

    return Counter


def _expect_actor_error(ray, ref, timeout=30):
    with pytest.raises(ray.exceptions.RayActorError) as ei:
        ray.get(ref, timeout=timeout)
    return ei.value


def test_actor_state_and_call_order(ray_impl):
    ray = ray_impl
    c = _counter_class(ray).remote(10)
    refs = [c.inc.remote() for _ in range(100)]
    assert ray.get(refs) == list(range(11, 111))
    assert ray.get(c.get.remote()) == 110
    assert ray.get(c.inc.remote(by=5)) == 115
    ray.kill(c)


def test_more_actors_than_cpus(ray_impl):
    # Actors need a CPU to be scheduled but hold none while alive (Ray's default).
    ray = ray_impl
    Counter = _counter_class(ray)
    actors = [Counter.remote(i) for i in range(4)]
    assert ray.get([a.inc.remote() for a in actors], timeout=60) == [1, 2, 3, 4]
    assert len(set(ray.get([a.pid.remote() for a in actors]))) == 4
    for a in actors:
        ray.kill(a)


def test_method_num_returns_and_direct_call(ray_impl):
    ray = ray_impl

    @ray.remote
    class Pair:
        @ray.method(num_returns=2)
        def split(self):
            return "left", "right"

    p = Pair.remote()
    left, right = p.split.remote()
    assert ray.get([left, right]) == ["left", "right"]
    with pytest.raises(TypeError):
        Pair()
    with pytest.raises(TypeError):
        p.split()
    ray.kill(p)


def test_handle_passed_to_tasks_and_actors(ray_impl):
    ray = ray_impl
    c = _counter_class(ray).remote()

    @ray.remote
    def bump(handle, n):
        return ray.get([handle.inc.remote() for _ in range(n)])[-1]

    @ray.remote
    class Forwarder:
        def __init__(self, handle):
            self.handle = handle

        def bump(self):
            return ray.get(self.handle.inc.remote(by=100))

    assert ray.get(bump.remote(c, 3)) == 3
    fwd = Forwarder.remote(c)
    assert ray.get(fwd.bump.remote()) == 103
    assert ray.get(c.get.remote()) == 103
    ray.kill(fwd)
    ray.kill(c)


def test_threaded_actor_max_concurrency(ray_impl):
    ray = ray_impl

    @ray.remote(max_concurrency=2)
    class Meeting:
        def __init__(self):
            self.barrier = threading.Barrier(2, timeout=10)

        def meet(self):
            # Returns only if two calls run at the same time.
            return self.barrier.wait() in (0, 1)

    m = Meeting.remote()
    assert ray.get([m.meet.remote(), m.meet.remote()], timeout=30) == [True, True]
    ray.kill(m)


def test_async_actor(ray_impl):
    ray = ray_impl

    @ray.remote
    class Waiter:
        def __init__(self):
            self.event = asyncio.Event()

        async def wait(self):
            await asyncio.wait_for(self.event.wait(), 10)
            return "released"

        async def release(self):
            self.event.set()
            return "set"

    w = Waiter.remote()
    waiting = w.wait.remote()  # blocks in the actor until release runs concurrently
    assert ray.get(w.release.remote(), timeout=30) == "set"
    assert ray.get(waiting, timeout=30) == "released"

    async def driver():
        return await w.release.remote()

    assert asyncio.run(driver()) == "set"
    ray.kill(w)


def test_named_actor_and_get_actor(ray_impl):
    ray = ray_impl
    Counter = _counter_class(ray)
    c = Counter.options(name="sem-named").remote()
    ray.get(c.inc.remote())
    again = ray.get_actor("sem-named")
    assert ray.get(again.inc.remote()) == 2
    with pytest.raises(ValueError):
        Counter.options(name="sem-named").remote()
    with pytest.raises(ValueError):
        ray.get_actor("sem-no-such-actor")
    ray.kill(c)


def test_namespaces(ray_impl):
    ray = ray_impl
    Counter = _counter_class(ray)
    c = Counter.options(name="sem-ns", namespace="sem-space").remote()
    ray.get(c.inc.remote())
    assert ray.get(ray.get_actor("sem-ns", namespace="sem-space").get.remote()) == 1
    with pytest.raises(ValueError):
        ray.get_actor("sem-ns")
    # The same name in another namespace is a different actor.
    d = Counter.options(name="sem-ns", namespace="other-space").remote(100)
    assert ray.get(ray.get_actor("sem-ns", namespace="other-space").get.remote()) == 100
    ray.kill(c)
    ray.kill(d)


def test_get_if_exists(ray_impl):
    ray = ray_impl
    Counter = _counter_class(ray)
    a = Counter.options(name="sem-gie", get_if_exists=True).remote()
    b = Counter.options(name="sem-gie", get_if_exists=True).remote()
    assert ray.get(a.inc.remote()) == 1
    assert ray.get(b.inc.remote()) == 2
    ray.kill(a)


def test_detached_actor(ray_impl, wait_for):
    ray = ray_impl
    Counter = _counter_class(ray)
    d = Counter.options(name="sem-detached", lifetime="detached").remote()
    assert ray.get(ray.get_actor("sem-detached").inc.remote()) == 1
    ray.kill(d)

    def gone():
        try:
            ray.get_actor("sem-detached")
        except ValueError:
            return True
        return False

    wait_for(gone, timeout=15)


def test_kill_then_calls_fail(ray_impl, wait_for):
    ray = ray_impl
    c = _counter_class(ray).remote()
    assert ray.get(c.inc.remote()) == 1
    ray.kill(c)

    def dead():  # ray.kill is asynchronous: a call right after it may still run
        try:
            ray.get(c.inc.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return True
        return False

    wait_for(dead, timeout=30)
    _expect_actor_error(ray, c.inc.remote())


def test_constructor_error_reported_on_every_call(ray_impl):
    ray = ray_impl

    @ray.remote
    class Broken:
        def __init__(self):
            raise ValueError("constructor exploded")

        def ping(self):
            return "pong"

    b = Broken.remote()
    for _ in range(2):
        err = _expect_actor_error(ray, b.ping.remote())
        assert "constructor exploded" in str(err)


def test_max_restarts(ray_impl, wait_for):
    ray = ray_impl
    c = _counter_class(ray).options(max_restarts=1).remote()
    assert ray.get(c.inc.remote()) == 1
    first_pid = ray.get(c.pid.remote())
    _expect_actor_error(ray, c.die.remote())

    def restarted():
        try:
            return ray.get(c.inc.remote(), timeout=30) == 1  # fresh state
        except ray.exceptions.RayActorError:
            time.sleep(0.1)
            return False

    wait_for(restarted, timeout=60)
    assert ray.get(c.pid.remote()) != first_pid
    _expect_actor_error(ray, c.die.remote())
    _expect_actor_error(ray, c.inc.remote())


def test_actor_without_restarts_dies_for_good(ray_impl):
    ray = ray_impl
    c = _counter_class(ray).remote()
    ray.get(c.inc.remote())
    _expect_actor_error(ray, c.die.remote())
    _expect_actor_error(ray, c.inc.remote())


def test_constructor_args_refs_resolved(ray_impl):
    ray = ray_impl
    c = _counter_class(ray).remote(ray.put(40))
    assert ray.get(c.inc.remote(by=2)) == 42
    ray.kill(c)


def test_kill_with_restart_and_name_reuse(ray_impl, wait_for):
    ray = ray_impl
    Counter = _counter_class(ray)
    c = Counter.options(name="sem-reuse", max_restarts=1).remote(7)
    first_pid = ray.get(c.pid.remote())
    ray.kill(c, no_restart=False)  # killed, then restarted from its constructor

    def restarted():
        try:
            return ray.get(c.pid.remote(), timeout=30) != first_pid
        except ray.exceptions.RayActorError:
            return False

    wait_for(restarted, timeout=60)
    assert ray.get(c.get.remote()) == 7
    ray.kill(c)  # no_restart=True by default: gone for good, and the name is free

    def name_free():
        try:
            d = Counter.options(name="sem-reuse").remote(8)
        except ValueError:
            return None
        return d

    d = wait_for(name_free, timeout=30)
    assert ray.get(d.get.remote()) == 8
    ray.kill(d)


def test_actor_generator_method_streams(ray_impl):
    ray = ray_impl

    @ray.remote
    class Source:
        def items(self, n):
            for i in range(n):
                yield i * i

    s = Source.remote()
    g = s.items.remote(4)
    assert isinstance(g, ray.ObjectRefGenerator)
    assert [ray.get(r) for r in g] == [0, 1, 4, 9]
    ray.kill(s)


def test_cancel_async_actor_task(ray_impl):
    ray = ray_impl

    @ray.remote
    class Sleeper:
        async def nap(self):
            await asyncio.sleep(60)
            return "woke"

        async def ping(self):
            return "pong"

    a = Sleeper.remote()
    ref = a.nap.remote()
    assert ray.get(a.ping.remote(), timeout=30) == "pong"  # nap is running by now
    ray.cancel(ref)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=20)
    assert ray.get(a.ping.remote(), timeout=30) == "pong"  # the actor lives on
    ray.kill(a)
