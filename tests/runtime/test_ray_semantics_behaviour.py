"""Differential tests: documented Ray core behaviours carme got wrong (issue 16, semantics).

Run against carme and, when Ray is installed, against Ray. Remote functions and actor
classes are defined inside the tests so they travel by value. Gets carry a generous
timeout only as a hang guard.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from test_lifecycle import _alive  # (a pid that runs, not a zombie)

pytestmark = [pytest.mark.processes, pytest.mark.ray]

HANG_GUARD_S = 60


def _signal(ray):
    """An actor that parks callers until `send()` (a deterministic gate, no sleeps)."""

    @ray.remote(num_cpus=0)
    class Signal:
        def __init__(self):
            self.event = asyncio.Event()

        async def wait(self):
            await self.event.wait()

        async def send(self):
            self.event.set()

    return Signal.remote()


def _gated(ray):
    """A task that returns `x` once the signal is sent."""

    @ray.remote
    def gated(sig, x):
        ray.get(sig.wait.remote())
        return x

    return gated


# ---------------------------------------------------------------- bad use fails at once
def test_wrong_argument_count_raises_type_error_at_remote(ray_impl):
    ray = ray_impl

    @ray.remote
    def one(a):
        return a

    @ray.remote
    class Holder:
        def __init__(self, a, *, b=0):
            self.a = a

    with pytest.raises(TypeError):
        one.remote()
    with pytest.raises(TypeError):
        one.remote(1, 2)
    with pytest.raises(TypeError):
        one.remote(1, c=3)
    with pytest.raises(TypeError):
        Holder.remote()
    with pytest.raises(TypeError):
        Holder.remote(1, 2)
    assert ray.get(one.remote(5), timeout=HANG_GUARD_S) == 5


def test_remote_with_empty_parentheses_is_an_error(ray_impl):
    ray = ray_impl

    class Plain:
        pass

    with pytest.raises((TypeError, AssertionError)):
        ray.remote()(Plain)


def test_wait_on_a_non_list_raises_type_error(ray_impl):
    ray = ray_impl
    with pytest.raises(TypeError):
        ray.wait(1)
    with pytest.raises(TypeError):
        ray.wait([1])


def test_subclassing_an_actor_class_is_an_error(ray_impl):
    ray = ray_impl

    @ray.remote
    class Base:
        pass

    with pytest.raises(TypeError, match="Inheriting from actor classes"):

        class Derived(Base):  # noqa: F841 - defining it is the error
            pass


# ---------------------------------------------------------------- values
def test_small_numpy_array_from_get_is_read_only(ray_impl):
    np = pytest.importorskip("numpy")
    ray = ray_impl
    for n in (4, 100_000):
        arr = ray.get(ray.put(np.arange(n)), timeout=HANG_GUARD_S)
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 1

    @ray.remote
    def small():
        import numpy

        return numpy.zeros(3)

    assert not ray.get(small.remote(), timeout=HANG_GUARD_S).flags.writeable


# ---------------------------------------------------------------- actor classes
def test_actor_class_attributes_through_the_class_name(ray_impl):
    ray = ray_impl

    class Base:
        INHERITED = "from base"

    @ray.remote
    class Config(Base):
        LIMIT = 3

        def read(self):
            return Config.LIMIT, Config.INHERITED

    c = Config.remote()
    assert ray.get(c.read.remote(), timeout=HANG_GUARD_S) == (3, "from base")
    assert Config.LIMIT == 3


# ---------------------------------------------------------------- generators
def test_generator_with_num_returns_three(ray_impl):
    ray = ray_impl

    @ray.remote(num_returns=3)
    def three():
        yield "a"
        yield "b"
        yield "c"

    refs = three.remote()
    assert len(refs) == 3
    assert ray.get(list(refs), timeout=HANG_GUARD_S) == ["a", "b", "c"]


def test_dynamic_num_returns(ray_impl):
    ray = ray_impl

    @ray.remote(num_returns="dynamic")
    def split(n):
        for i in range(n):
            yield i * 2

    ref = split.remote(3)
    assert isinstance(ref, ray.ObjectRef)
    gen = ray.get(ref, timeout=HANG_GUARD_S)
    assert isinstance(gen, ray.DynamicObjectRefGenerator)
    refs = list(gen)
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert ray.get(refs, timeout=HANG_GUARD_S) == [0, 2, 4]


def test_wait_on_a_generator_waits_for_its_next_item(ray_impl):
    ray = ray_impl
    sig = _signal(ray)

    @ray.remote
    def gated(sig):
        yield "first"
        ray.get(sig.wait.remote())
        yield "second"

    gen = gated.remote(sig)
    ready, not_ready = ray.wait([gen], timeout=HANG_GUARD_S)
    assert ready == [gen] and not_ready == []
    assert ray.get(next(gen), timeout=HANG_GUARD_S) == "first"
    ready, not_ready = ray.wait([gen], timeout=0.2)
    assert ready == [] and not_ready == [gen]
    sig.send.remote()
    ready, _ = ray.wait([gen], timeout=HANG_GUARD_S)
    assert ready == [gen]
    assert ray.get(next(gen), timeout=HANG_GUARD_S) == "second"


# ---------------------------------------------------------------- call order
def _log_actor(ray, **options):
    class Log:
        def __init__(self):
            self.items = []

        def add(self, x):
            self.items.append(x)
            return x

        def items_so_far(self):
            return list(self.items)

    class AsyncLog(Log):
        async def add(self, x):
            self.items.append(x)
            return x

    cls = AsyncLog if options.pop("is_async", False) else Log
    return ray.remote(**options)(cls) if options else ray.remote(cls)


@pytest.mark.parametrize("kind", ["async", "threaded"])
def test_concurrent_actor_runs_a_ready_call_before_an_earlier_blocked_one(ray_impl, kind):
    ray = ray_impl
    sig = _signal(ray)
    gated = _gated(ray)

    opts = {"is_async": True} if kind == "async" else {"max_concurrency": 2}
    log = _log_actor(ray, **opts).remote()
    first = log.add.remote(gated.remote(sig, "a"))
    assert ray.get(log.add.remote("b"), timeout=HANG_GUARD_S) == "b"
    assert ray.get(log.items_so_far.remote(), timeout=HANG_GUARD_S) == ["b"]
    sig.send.remote()
    assert ray.get(first, timeout=HANG_GUARD_S) == "a"


def test_sync_actor_keeps_submission_order(ray_impl):
    ray = ray_impl
    sig = _signal(ray)
    gated = _gated(ray)

    log = _log_actor(ray).remote()
    first = log.add.remote(gated.remote(sig, "a"))
    second = log.add.remote("b")
    _, not_ready = ray.wait([second], timeout=0.5)
    assert not_ready == [second]
    sig.send.remote()
    assert ray.get([first, second], timeout=HANG_GUARD_S) == ["a", "b"]
    assert ray.get(log.items_so_far.remote(), timeout=HANG_GUARD_S) == ["a", "b"]


# ---------------------------------------------------------------- actor lifetimes
def _marker_actor(ray):
    @ray.remote
    class Marked:
        def __init__(self, path):
            import atexit

            self.path = path
            atexit.register(lambda: open(path + ".atexit", "w").close())

        def __ray_shutdown__(self):
            open(self.path + ".shutdown", "w").close()

        def pid(self):
            return os.getpid()

        def leave(self):
            ray.actor.exit_actor()

    return Marked


def test_actor_dropped_with_its_last_handle_runs_shutdown_hooks(ray_impl, tmp_path, wait_for):
    ray = ray_impl
    path = str(tmp_path / "gc")
    a = _marker_actor(ray).remote(path)
    ray.get(a.pid.remote(), timeout=HANG_GUARD_S)
    del a
    wait_for(lambda: os.path.exists(path + ".shutdown"), timeout=HANG_GUARD_S)
    wait_for(lambda: os.path.exists(path + ".atexit"), timeout=HANG_GUARD_S)


def test_ray_terminate_runs_shutdown_hooks(ray_impl, tmp_path, wait_for):
    ray = ray_impl
    path = str(tmp_path / "term")
    a = _marker_actor(ray).remote(path)
    ray.get(a.pid.remote(), timeout=HANG_GUARD_S)
    a.__ray_terminate__.remote()
    wait_for(lambda: os.path.exists(path + ".shutdown"), timeout=HANG_GUARD_S)
    wait_for(lambda: os.path.exists(path + ".atexit"), timeout=HANG_GUARD_S)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(a.pid.remote(), timeout=HANG_GUARD_S)


def test_exit_actor_runs_atexit(ray_impl, tmp_path, wait_for):
    ray = ray_impl
    path = str(tmp_path / "exit")
    a = _marker_actor(ray).remote(path)
    ray.get(a.pid.remote(), timeout=HANG_GUARD_S)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(a.leave.remote(), timeout=HANG_GUARD_S)
    wait_for(lambda: os.path.exists(path + ".atexit"), timeout=HANG_GUARD_S)


def test_actor_dies_with_the_task_that_created_it(ray_impl, wait_for):
    ray = ray_impl

    @ray.remote
    class Child:
        def pid(self):
            return os.getpid()

    @ray.remote
    def make():
        c = Child.remote()
        return ray.get(c.pid.remote())

    pid = ray.get(make.remote(), timeout=HANG_GUARD_S)
    # (gone, or a zombie; a process can vanish between two psutil calls)
    wait_for(lambda: not _alive(pid), timeout=HANG_GUARD_S)


def test_actor_dies_with_the_actor_that_created_it(ray_impl, wait_for):
    """Its handle was passed out, so only its owner's death ends it."""
    ray = ray_impl

    @ray.remote
    class Child:
        def ping(self):
            return "pong"

    @ray.remote
    class Parent:
        def make(self):
            self.child = Child.remote()
            return [self.child]

    parent = Parent.remote()
    [child] = ray.get(parent.make.remote(), timeout=HANG_GUARD_S)
    assert ray.get(child.ping.remote(), timeout=HANG_GUARD_S) == "pong"
    ray.kill(parent)

    def child_gone():
        try:
            ray.get(child.ping.remote(), timeout=HANG_GUARD_S)
        except ray.exceptions.RayActorError:
            return True
        return False

    wait_for(child_gone, timeout=HANG_GUARD_S, interval=0.2)
