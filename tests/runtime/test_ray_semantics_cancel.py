"""Differential tests: ray.cancel on running, pending and finished tasks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.ray]


def _looper(ray, **options):
    """A task that marks each start in `path`, then sleeps in short steps for 30 s.

    (Short steps: an interrupt is delivered between Python bytecodes, so a
    single long C-level sleep would not be interrupted promptly under Ray.)
    """

    def loop(path):
        with open(path, "a") as f:
            f.write("x")
        for _ in range(600):
            time.sleep(0.05)
        return "finished"

    # (Ray rejects a bare `@ray.remote()`, so pass options only when there are some.)
    return ray.remote(**options)(loop) if options else ray.remote(loop)


def _started(path: Path, wait_for) -> None:
    wait_for(lambda: path.exists() and path.read_text(), timeout=30)


def test_cancel_running_task(ray_impl, tmp_path, wait_for):
    ray = ray_impl
    marks = tmp_path / "marks"
    ref = _looper(ray).remote(str(marks))
    _started(marks, wait_for)
    ray.cancel(ref)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=20)


def test_force_cancel_running_task(ray_impl, tmp_path, wait_for):
    ray = ray_impl
    marks = tmp_path / "marks"
    ref = _looper(ray).remote(str(marks))
    _started(marks, wait_for)
    ray.cancel(ref, force=True)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=20)


@pytest.mark.parametrize("force", [False, True])
def test_cancelled_task_is_not_retried(ray_impl, tmp_path, wait_for, force):
    ray = ray_impl
    marks = tmp_path / "marks"
    ref = _looper(ray, max_retries=3, retry_exceptions=True).remote(str(marks))
    _started(marks, wait_for)
    ray.cancel(ref, force=force)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=20)
    time.sleep(1.0)
    assert marks.read_text() == "x"


def test_cancel_pending_task(ray_impl, tmp_path, wait_for):
    ray = ray_impl

    @ray.remote(resources={"custom_a": 2})
    def blocker(path):
        while not Path(path).exists():
            time.sleep(0.02)
        return "released"

    @ray.remote(resources={"custom_a": 1})
    def queued():
        return "ran"

    # `queued` waits for a resource that `blocker` holds. (A task waiting on an
    # argument instead would trip a reference-counting crash in Ray 2.60's
    # driver when the argument arrives after the cancel.)
    gate = tmp_path / "gate"
    upstream = blocker.remote(str(gate))
    wait_for(lambda: ray.available_resources().get("custom_a", 0) == 0, timeout=20)
    pending = queued.remote()
    ray.cancel(pending)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(pending, timeout=20)
    gate.write_text("go")
    assert ray.get(upstream, timeout=20) == "released"
    assert ray.get(queued.remote(), timeout=20) == "ran"


def test_cancel_finished_task_is_a_no_op(ray_impl):
    ray = ray_impl

    @ray.remote
    def quick():
        return 7

    ref = quick.remote()
    assert ray.get(ref) == 7
    if ray.__name__ == "ray":
        # Ray 2.60's get returns as soon as the value is in, a moment before the task
        # manager sees the task complete (on another thread); a cancel in that moment
        # makes the completion fail a check that ends the driver, here the pytest process
        # ("Tried to complete task that was not pending"; seen once in CI). Let it land.
        time.sleep(1.0)
    ray.cancel(ref)
    assert ray.get(ref) == 7


def test_cluster_usable_after_cancels(ray_impl):
    ray = ray_impl

    @ray.remote
    def ok(i):
        return i

    assert ray.get([ok.remote(i) for i in range(10)], timeout=30) == list(range(10))
