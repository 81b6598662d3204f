"""Differential tests: Ray core names carme lacked (issue 16): runtime-context accessors,
type-hint subscripts, `ray.actor.ActorProxy`, worker process titles."""

from __future__ import annotations

import os
import typing

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.ray]

HANG_GUARD_S = 60


def test_runtime_context_node_id(ray_impl):
    ray = ray_impl
    ctx = ray.get_runtime_context()
    assert ctx.node_id.hex() == ctx.get_node_id()

    @ray.remote
    def where():
        c = ray.get_runtime_context()
        return c.node_id.hex(), c.get_node_id()

    a, b = ray.get(where.remote(), timeout=HANG_GUARD_S)
    assert a == b


def test_is_canceled(ray_impl, tmp_path, wait_for):
    ray = ray_impl
    with pytest.raises(RuntimeError):
        ray.get_runtime_context().is_canceled()

    @ray.remote
    def plain():
        return ray.get_runtime_context().is_canceled()

    assert ray.get(plain.remote(), timeout=HANG_GUARD_S) is False

    started = tmp_path / "started"
    seen = tmp_path / "seen"

    @ray.remote(max_retries=0)
    def patient(started, seen):
        import time

        ctx = ray.get_runtime_context()
        open(started, "w").close()
        try:
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt:
            with open(seen, "w") as f:
                f.write(str(ctx.is_canceled()))
            raise

    ref = patient.remote(str(started), str(seen))
    wait_for(started.exists, timeout=HANG_GUARD_S)
    ray.cancel(ref)
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError)):
        ray.get(ref, timeout=HANG_GUARD_S)
    wait_for(seen.exists, timeout=HANG_GUARD_S)
    assert seen.read_text() == "True"


def test_type_hint_subscripts_and_actor_proxy(ray_impl):
    ray = ray_impl

    class Box:
        pass

    hint = ray.ObjectRef[int]
    assert typing.get_origin(hint) is ray.ObjectRef
    assert typing.get_args(hint) == (int,)
    assert typing.get_origin(ray.actor.ActorClass[Box]) is ray.actor.ActorClass
    assert ray.actor.ActorProxy[Box] is not None


def test_worker_process_title_names_the_running_task(ray_impl):
    ray = ray_impl
    if ray.__name__ == "carme":
        pytest.importorskip("setproctitle")

    @ray.remote
    def titled_task():
        with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode().strip()

    assert ray.get(titled_task.remote(), timeout=HANG_GUARD_S).startswith("ray::titled_task")

    @ray.remote
    class Titled:
        def method(self):
            with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode().strip()

    t = Titled.remote()
    assert ray.get(t.method.remote(), timeout=HANG_GUARD_S).startswith("ray::Titled")
