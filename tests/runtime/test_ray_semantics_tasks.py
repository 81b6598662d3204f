"""Differential tests: remote functions (run against carme, and Ray when installed).

Remote functions are defined inside the tests so they travel by value: the
workers cannot import this test module.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.ray]


def _counter():
    """A by-value function (workers cannot import this module) that counts attempts."""

    def bump(path: str) -> int:
        """Append one mark to `path`, return how many marks were there before."""
        p = Path(path)
        n = len(p.read_text()) if p.exists() else 0
        with p.open("a") as f:
            f.write("x")
        return n

    return bump


def test_args_kwargs_defaults(ray_impl):
    ray = ray_impl

    @ray.remote
    def f(a, b=2, *args, c=3, **kw):
        return a, b, args, c, kw

    assert ray.get(f.remote(1)) == (1, 2, (), 3, {})
    assert ray.get(f.remote(1, 5, 6, 7, c=8, d=9)) == (1, 5, (6, 7), 8, {"d": 9})
    assert ray.get([f.remote(i) for i in range(5)]) == [(i, 2, (), 3, {}) for i in range(5)]


def test_top_level_refs_resolved_nested_refs_stay_refs(ray_impl):
    ray = ray_impl
    ref = ray.put(41)

    @ray.remote
    def inspect(x, nested, *, kw):
        inner = nested[0]
        return x, kw, isinstance(inner, ray.ObjectRef), ray.get(inner)

    assert ray.get(inspect.remote(ref, [ref], kw=ref)) == (41, 41, True, 41)


def test_task_output_ref_as_argument(ray_impl):
    ray = ray_impl

    @ray.remote
    def inc(x):
        return x + 1

    r = inc.remote(0)
    for _ in range(5):
        r = inc.remote(r)
    assert ray.get(r) == 6


def test_num_returns(ray_impl):
    ray = ray_impl

    @ray.remote(num_returns=2)
    def two():
        return 1, 2

    a, b = two.remote()
    assert isinstance(a, ray.ObjectRef) and isinstance(b, ray.ObjectRef)
    assert ray.get([a, b]) == [1, 2]

    @ray.remote
    def three():
        return "x", "y", "z"

    refs = three.options(num_returns=3).remote()
    assert len(refs) == 3
    assert ray.get(list(refs)) == ["x", "y", "z"]
    # .options() returns a new wrapper: the original is unchanged.
    assert ray.get(three.remote()) == ("x", "y", "z")
    assert tuple(ray.get(two.options(num_returns=1).remote())) == (1, 2)


def test_streaming_generator(ray_impl):
    ray = ray_impl

    @ray.remote(num_returns="streaming")
    def gen(n):
        for i in range(n):
            yield i * 10

    g = gen.remote(4)
    assert isinstance(g, ray.ObjectRefGenerator)
    refs = list(g)
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert ray.get(refs) == [0, 10, 20, 30]


def test_generator_function_streams_by_default(ray_impl):
    ray = ray_impl

    @ray.remote
    def gen():
        yield "a"
        yield "b"

    g = gen.remote()
    assert isinstance(g, ray.ObjectRefGenerator)
    assert [ray.get(r) for r in g] == ["a", "b"]


def test_zero_cpu_task_runs_while_cpus_are_busy(ray_impl, tmp_path):
    ray = ray_impl

    @ray.remote(num_cpus=2)
    def hog(gate):
        while not os.path.exists(gate):
            time.sleep(0.02)
        return "hog done"

    @ray.remote(num_cpus=0)
    def light():
        return "light"

    gate = str(tmp_path / "gate")
    held = hog.remote(gate)
    assert ray.get(light.remote(), timeout=30) == "light"
    Path(gate).write_text("go")
    assert ray.get(held, timeout=30) == "hog done"


def test_streaming_generator_error_mid_stream(ray_impl):
    ray = ray_impl

    @ray.remote(num_returns="streaming")
    def gen():
        yield 1
        raise ValueError("mid-stream")

    it = iter(gen.remote())
    assert ray.get(next(it)) == 1
    with pytest.raises(ValueError, match="mid-stream"):
        ray.get(next(it))
    with pytest.raises(StopIteration):
        next(it)


def test_nested_tasks_and_returned_refs(ray_impl):
    ray = ray_impl

    @ray.remote
    def leaf(x):
        return x * 2

    @ray.remote
    def parent(n):
        return sum(ray.get([leaf.remote(i) for i in range(n)]))

    @ray.remote
    def make_ref():
        return leaf.remote(21)

    assert ray.get(parent.remote(4)) == 12
    inner = ray.get(make_ref.remote())
    assert isinstance(inner, ray.ObjectRef)
    assert ray.get(inner) == 42


def test_options_overrides(ray_impl):
    ray = ray_impl

    @ray.remote(num_cpus=1)
    def f():
        return ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)

    assert ray.get(f.remote()) == 1.0
    assert ray.get(f.options(num_cpus=2).remote()) == 2.0
    assert ray.get(f.options(num_cpus=0.5, name="renamed").remote()) == 0.5
    assert ray.get(f.remote()) == 1.0


def test_remote_function_cannot_be_called_directly(ray_impl):
    ray = ray_impl

    @ray.remote
    def f():
        return 1

    with pytest.raises(TypeError, match="remote"):
        f()


def test_large_argument_and_result(ray_impl):
    ray = ray_impl
    blob = os.urandom(300_000)

    @ray.remote
    def echo(b):
        return b + b

    assert ray.get(echo.remote(blob)) == blob + blob


def test_retry_after_worker_dies(ray_impl, tmp_path):
    ray = ray_impl
    marks = str(tmp_path / "attempts")
    bump = _counter()

    @ray.remote(max_retries=2)
    def crashy(path):
        if bump(path) < 2:
            os._exit(1)
        return "survived"

    assert ray.get(crashy.remote(marks), timeout=60) == "survived"
    assert len(Path(marks).read_text()) == 3


def test_default_max_retries_is_three(ray_impl, tmp_path):
    ray = ray_impl
    marks = str(tmp_path / "attempts")
    bump = _counter()

    @ray.remote
    def crashy(path):
        if bump(path) < 3:
            os._exit(1)
        return "fourth attempt"

    assert ray.get(crashy.remote(marks), timeout=90) == "fourth attempt"


def test_worker_death_without_retries_raises_worker_crashed(ray_impl, tmp_path):
    ray = ray_impl

    @ray.remote(max_retries=0)
    def crash():
        os._exit(1)

    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(crash.remote(), timeout=60)


def test_retry_exceptions(ray_impl, tmp_path):
    ray = ray_impl

    bump = _counter()

    @ray.remote(max_retries=2, retry_exceptions=True)
    def flaky(path):
        n = bump(path)
        if n < 2:
            raise ValueError("flaky")
        return n

    assert ray.get(flaky.remote(str(tmp_path / "a")), timeout=60) == 2

    # Application errors are not retried by default ...
    with pytest.raises(ValueError, match="flaky"):
        ray.get(flaky.options(retry_exceptions=False).remote(str(tmp_path / "b")))
    assert len((tmp_path / "b").read_text()) == 1

    # ... nor when the exception is not in the listed types.
    with pytest.raises(ValueError, match="flaky"):
        ray.get(flaky.options(retry_exceptions=[KeyError]).remote(str(tmp_path / "c")))
    assert len((tmp_path / "c").read_text()) == 1
    assert ray.get(flaky.options(retry_exceptions=[ValueError]).remote(str(tmp_path / "d"))) == 2



def test_max_calls_gives_a_fresh_worker(ray_impl):
    ray = ray_impl

    @ray.remote(max_calls=1)
    def pid():
        return os.getpid()

    first = ray.get(pid.remote())
    second = ray.get(pid.remote())
    assert first != second
