"""Differential tests: runtime context ids, the state API, timeline().

Task events reach the state API asynchronously (under Ray about once a
second), so the tests poll.
"""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.ray]

# Ray serves the state API from its dashboard process.
RAY_INIT_KWARGS = {"include_dashboard": True}


def test_runtime_context_in_driver_task_and_actor(ray_impl):
    ray = ray_impl
    ctx = ray.get_runtime_context()
    job_id, node_id = ctx.get_job_id(), ctx.get_node_id()
    assert isinstance(job_id, str) and job_id
    assert isinstance(node_id, str) and node_id
    assert isinstance(ctx.namespace, str) and ctx.namespace

    @ray.remote
    def in_task():
        c = ray.get_runtime_context()
        return c.get_job_id(), c.get_node_id(), c.get_task_id(), c.get_actor_id(), c.namespace

    @ray.remote
    class InActor:
        def ids(self):
            c = ray.get_runtime_context()
            return c.get_job_id(), c.get_actor_id(), c.get_task_id()

    t_job, t_node, t_task, t_actor, t_ns = ray.get(in_task.remote())
    assert (t_job, t_node, t_ns) == (job_id, node_id, ctx.namespace)
    assert isinstance(t_task, str) and t_task
    assert t_actor is None
    assert t_task != ray.get(in_task.remote())[2]

    a = InActor.remote()
    a_job, a_actor, a_task = ray.get(a.ids.remote())
    assert a_job == job_id
    assert isinstance(a_actor, str) and a_actor
    assert ray.get(a.ids.remote())[1] == a_actor
    assert isinstance(a_task, str) and a_task
    ray.kill(a)


def test_list_tasks(ray_impl, submodule, wait_for):
    ray = ray_impl
    state = submodule(ray, "util.state")

    @ray.remote
    def state_probe_task(x):
        return x

    ray.get([state_probe_task.remote(i) for i in range(3)])
    ray.get(state_probe_task.options(name="state_probe_renamed").remote(0))

    def finished():
        tasks = state.list_tasks(filters=[("name", "=", "state_probe_task")])
        return len(tasks) == 3 and all(t.state == "FINISHED" for t in tasks) and tasks

    tasks = wait_for(finished, timeout=30, interval=0.3)
    t = tasks[0]
    assert t.name == t["name"] == "state_probe_task"
    assert isinstance(t.task_id, str) and t.task_id
    assert t.job_id == ray.get_runtime_context().get_job_id()
    wait_for(
        lambda: [t for t in state.list_tasks() if t.name == "state_probe_renamed"],
        timeout=30,
        interval=0.3,
    )


def test_failed_task_state(ray_impl, submodule, wait_for):
    ray = ray_impl
    state = submodule(ray, "util.state")

    @ray.remote(max_retries=0)
    def state_probe_failing():
        raise RuntimeError("expected failure")

    with pytest.raises(RuntimeError):
        ray.get(state_probe_failing.remote())
    tasks = wait_for(
        lambda: [
            t
            for t in state.list_tasks(filters=[("name", "=", "state_probe_failing")])
            if t.state == "FAILED"
        ],
        timeout=30,
        interval=0.3,
    )
    assert len(tasks) == 1


def test_summarize_tasks(ray_impl, submodule, wait_for):
    ray = ray_impl
    state = submodule(ray, "util.state")

    @ray.remote
    def state_probe_summary():
        return 1

    ray.get([state_probe_summary.remote() for _ in range(2)])

    def counted():
        summary = state.summarize_tasks()["cluster"]["summary"]
        entry = summary.get("state_probe_summary")
        return entry and entry["state_counts"].get("FINISHED") == 2 and entry

    entry = wait_for(counted, timeout=30, interval=0.3)
    assert entry["type"] == "NORMAL_TASK"


def test_list_actors(ray_impl, submodule, wait_for):
    ray = ray_impl
    state = submodule(ray, "util.state")

    @ray.remote
    class StateProbeActor:
        def ping(self):
            return "pong"

    a = StateProbeActor.options(name="state-probe-actor").remote()
    ray.get(a.ping.remote())
    actors = wait_for(
        lambda: [x for x in state.list_actors() if x.name == "state-probe-actor" and x.state == "ALIVE"],
        timeout=30,
        interval=0.3,
    )
    assert actors[0].class_name.endswith("StateProbeActor")  # Ray gives the __qualname__
    ray.kill(a)
    wait_for(
        lambda: [x for x in state.list_actors() if x.name == "state-probe-actor" and x.state == "DEAD"],
        timeout=30,
        interval=0.3,
    )


def test_timeline(ray_impl, wait_for, tmp_path):
    ray = ray_impl

    @ray.remote
    def timeline_probe():
        return 1

    ray.get([timeline_probe.remote() for _ in range(2)])

    def events():
        evs = ray.timeline()
        hits = [e for e in evs if "timeline_probe" in f"{e.get('name')} {e.get('cat')}"]
        return len(hits) >= 2 and (evs, hits)

    evs, hits = wait_for(events, timeout=30, interval=0.3)
    json.dumps(evs)  # plain JSON data
    for e in hits:
        assert e["ph"] == "X"
        assert isinstance(e["ts"], (int, float)) and isinstance(e["dur"], (int, float))
        assert "pid" in e and "tid" in e
    path = tmp_path / "trace.json"
    ray.timeline(filename=str(path))
    loaded = json.loads(path.read_text())
    assert isinstance(loaded, list) and loaded


def test_list_nodes_objects_placement_groups(ray_impl, submodule, wait_for):
    ray = ray_impl
    state = submodule(ray, "util.state")
    pgm = submodule(ray, "util.placement_group")

    nodes = state.list_nodes()
    assert len(nodes) == 1
    assert nodes[0].node_id == ray.get_runtime_context().get_node_id()
    assert nodes[0].state == "ALIVE"

    ref = ray.put(b"x" * 200_000)
    wait_for(lambda: [o for o in state.list_objects() if o.object_id == ref.hex()], timeout=30, interval=0.3)

    pg = pgm.placement_group([{"CPU": 1}])
    assert pg.wait(timeout_seconds=30)
    rows = wait_for(
        lambda: [p for p in state.list_placement_groups() if p.placement_group_id == pg.id.hex()],
        timeout=30,
        interval=0.3,
    )
    assert rows[0].state == "CREATED"
    pgm.remove_placement_group(pg)

    workers = state.list_workers()
    assert workers and all(isinstance(w.worker_id, str) for w in workers)
