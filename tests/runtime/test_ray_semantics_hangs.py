"""Differential tests: programs that used to hang or lose objects in carme (issue 16).

Each case is a documented Ray core behaviour, run against carme and, when Ray is
installed, against Ray. Every `get` carries a generous timeout so a regression fails
as a GetTimeoutError naming the case instead of stalling the whole run (these are hang
guards, not timing assertions). Remote functions are defined inside the tests so they
travel by value: the workers cannot import this test module.
"""

from __future__ import annotations

import asyncio

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.ray]

HANG_GUARD_S = 60


def test_returned_ref_to_pending_object(ray_impl):
    """A task returns a ref to an object still being computed and drops its own ref at
    once; the owner must keep the entry until the value arrives."""
    ray = ray_impl

    @ray.remote
    def inner():
        import time

        time.sleep(0.5)
        return 7

    @ray.remote
    def outer():
        return [inner.remote()]

    refs = ray.get(outer.remote(), timeout=HANG_GUARD_S)
    assert ray.get(refs[0], timeout=HANG_GUARD_S) == 7


def test_returned_ref_to_pending_large_object(ray_impl):
    ray = ray_impl

    @ray.remote
    def inner():
        import time

        time.sleep(0.5)
        return b"x" * 300_000

    @ray.remote
    def outer():
        return inner.remote()

    ref = ray.get(outer.remote(), timeout=HANG_GUARD_S)
    assert len(ray.get(ref, timeout=HANG_GUARD_S)) == 300_000


def test_actor_call_with_pending_argument_inside_task(ray_impl):
    ray = ray_impl

    @ray.remote
    class Adder:
        def add(self, x):
            return x + 1

    @ray.remote
    def one():
        import time

        time.sleep(0.3)
        return 1

    @ray.remote
    def call(h):
        return ray.get(h.add.remote(one.remote()), timeout=HANG_GUARD_S)

    h = Adder.remote()
    assert ray.get(call.remote(h), timeout=HANG_GUARD_S) == 2


def test_pending_large_actor_result_nested_in_list(ray_impl):
    ray = ray_impl

    @ray.remote
    class Maker:
        def big(self):
            import time

            time.sleep(0.3)
            return b"y" * 200_000

    @ray.remote
    def consume(items):
        return len(ray.get(items[0], timeout=HANG_GUARD_S))

    m = Maker.remote()
    assert ray.get(consume.remote([m.big.remote()]), timeout=HANG_GUARD_S) == 200_000


def test_async_for_over_streaming_generator(ray_impl):
    ray = ray_impl

    @ray.remote
    def gen(n):
        for i in range(n):
            yield i * 10

    async def collect():
        return [await ref async for ref in gen.remote(3)]

    assert asyncio.run(asyncio.wait_for(collect(), HANG_GUARD_S)) == [0, 10, 20]


def test_async_actor_event_with_max_concurrency_two(ray_impl):
    """Ray's batching example (async actors, "setting concurrency"): a call woken by an
    asyncio.Event resumes before a queued call takes the freed slot, so every batch of
    two completes."""
    ray = ray_impl

    @ray.remote
    class Batcher:
        def __init__(self, batch_size):
            self.event = asyncio.Event()
            self.current = 0
            self.batch_size = batch_size

        async def run_task(self):
            self.current += 1
            if self.current == self.batch_size:
                self.event.set()
            else:
                await self.event.wait()
                self.event.clear()
                self.current = 0
            return "done"

    b = Batcher.options(max_concurrency=2).remote(2)
    refs = [b.run_task.remote() for _ in range(8)]
    assert ray.get(refs, timeout=HANG_GUARD_S) == ["done"] * 8


def test_placement_group_captures_child_tasks(ray_impl, submodule):
    """Both CPUs are in a group; a child of a task in that group (capture on) runs in
    it too, where it fits, instead of waiting for CPUs outside the group forever."""
    ray = ray_impl
    pgmod = submodule(ray, "util.placement_group")
    strategies = submodule(ray, "util.scheduling_strategies")
    pg = pgmod.placement_group([{"CPU": 2}])
    ray.get(pg.ready(), timeout=HANG_GUARD_S)
    try:

        @ray.remote
        def child():
            return ray.get_runtime_context().get_placement_group_id()

        @ray.remote
        def parent():
            return ray.get(child.remote(), timeout=HANG_GUARD_S)

        strategy = strategies.PlacementGroupSchedulingStrategy(
            pg, placement_group_capture_child_tasks=True)
        got = ray.get(parent.options(scheduling_strategy=strategy).remote(),
                      timeout=HANG_GUARD_S)
        assert got == pg.id.hex()
    finally:
        pgmod.remove_placement_group(pg)


def test_ref_captured_in_closure(ray_impl):
    ray = ray_impl

    def make():
        captured = ray.put([1, 2, 3])

        @ray.remote
        def total():
            return sum(ray.get(captured, timeout=HANG_GUARD_S))

        return total

    total = make()  # the driver's own variable holding the ref is gone
    assert ray.get(total.remote(), timeout=HANG_GUARD_S) == 6
    assert ray.get(total.remote(), timeout=HANG_GUARD_S) == 6


def test_ref_captured_in_closure_large(ray_impl):
    ray = ray_impl

    def make():
        captured = ray.put(b"z" * 300_000)

        @ray.remote
        def size():
            return len(ray.get(captured, timeout=HANG_GUARD_S))

        return size

    size = make()
    assert ray.get(size.remote(), timeout=HANG_GUARD_S) == 300_000
