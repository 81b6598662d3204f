"""Differential tests: task errors, bad options, serialization errors."""

from __future__ import annotations

import threading

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.ray]


def test_task_error_is_user_class_and_ray_task_error(ray_impl):
    ray = ray_impl

    class MyError(ValueError):
        pass

    @ray.remote
    def explode():
        raise MyError("boom")

    with pytest.raises(MyError) as ei:
        ray.get(explode.remote())
    err = ei.value
    assert isinstance(err, ray.exceptions.RayTaskError)
    assert isinstance(err, ray.exceptions.RayError)
    assert isinstance(err.cause, MyError) and str(err.cause) == "boom"
    text = str(err)
    assert "boom" in text
    assert "explode" in text  # the remote frame ...
    assert 'File "' in text  # ... with its traceback
    assert "MyError" in text


def test_builtin_exception_keeps_its_type(ray_impl):
    ray = ray_impl

    @ray.remote
    def divide(a, b):
        return a / b

    with pytest.raises(ZeroDivisionError):
        ray.get(divide.remote(1, 0))
    with pytest.raises(ray.exceptions.RayTaskError):
        ray.get(divide.remote(1, 0))


def test_memory_error_keeps_its_type(ray_impl):
    ray = ray_impl

    @ray.remote(max_retries=0)
    def allocate():
        raise MemoryError("needed 64 GiB")

    with pytest.raises(MemoryError, match="needed 64 GiB") as ei:
        ray.get(allocate.remote())
    assert isinstance(ei.value, ray.exceptions.RayTaskError)


def test_error_propagates_through_dependent_tasks(ray_impl):
    ray = ray_impl

    @ray.remote
    def fail():
        raise KeyError("root cause")

    @ray.remote
    def use(x):
        return x

    @ray.remote
    def nested():
        return ray.get(fail.remote())

    with pytest.raises(KeyError) as ei:
        ray.get(use.remote(use.remote(fail.remote())))
    assert "root cause" in str(ei.value)
    with pytest.raises(KeyError):
        ray.get(nested.remote())


def test_actor_method_error_keeps_actor_alive(ray_impl):
    ray = ray_impl

    @ray.remote
    class A:
        def bad(self):
            raise IndexError("method failed")

        def ok(self):
            return "ok"

    a = A.remote()
    with pytest.raises(IndexError) as ei:
        ray.get(a.bad.remote())
    assert isinstance(ei.value, ray.exceptions.RayTaskError)
    assert ray.get(a.ok.remote()) == "ok"
    ray.kill(a)


@pytest.mark.parametrize(
    "options, name",
    [
        ({"not_an_option": 1}, "not_an_option"),
        ({"num_cpus": -1}, "num_cpus"),
        ({"num_gpus": -1}, "num_gpus"),
        ({"max_retries": -5}, "max_retries"),
        ({"max_concurrency": 2}, "max_concurrency"),  # an actor option
    ],
)
def test_bad_function_options_fail_at_options(ray_impl, options, name):
    ray = ray_impl

    @ray.remote
    def f():
        return 1

    with pytest.raises(ValueError, match=name):
        f.options(**options)
    with pytest.raises(ValueError, match=name):
        ray.remote(**options)(lambda: 1)


@pytest.mark.parametrize(
    "options, name",
    [
        ({"max_retries": 1}, "max_retries"),  # a task option
        ({"max_restarts": -2}, "max_restarts"),
        ({"num_cpus": -1}, "num_cpus"),
        ({"bogus": True}, "bogus"),
    ],
)
def test_bad_actor_options_fail_at_options(ray_impl, options, name):
    ray = ray_impl

    @ray.remote
    class A:
        pass

    with pytest.raises(ValueError, match=name):
        A.options(**options)


def test_unpicklable_argument_names_the_argument(ray_impl):
    ray = ray_impl

    @ray.remote
    def f(x=None):
        return 1

    lock = threading.Lock()
    with pytest.raises(TypeError, match="lock"):
        f.remote(lock)
    with pytest.raises(TypeError, match="lock"):
        f.remote(x=lock)
    with pytest.raises(TypeError, match="lock"):
        ray.put(lock)
    assert ray.get(f.remote()) == 1  # the cluster is still fine


def test_exception_classes(ray_impl):
    ex = ray_impl.exceptions
    assert issubclass(ex.GetTimeoutError, TimeoutError)
    assert issubclass(ex.GetTimeoutError, ex.RayError)
    assert issubclass(ex.RayTaskError, ex.RayError)
    assert issubclass(ex.ActorDiedError, ex.RayActorError)
    assert issubclass(ex.ActorUnavailableError, ex.RayActorError)
    assert issubclass(ex.TaskCancelledError, ex.RayError)
    assert issubclass(ex.WorkerCrashedError, ex.RayError)
    assert issubclass(ex.ObjectLostError, ex.RayError)
    assert issubclass(ex.RuntimeEnvSetupError, ex.RayError)
