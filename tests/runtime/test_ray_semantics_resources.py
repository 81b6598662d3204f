"""Differential tests: resources, GPUs, nodes, placement groups.

The `ray_impl` cluster declares 2 CPUs, 2 GPUs and ``custom_a: 2`` (see conftest).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.ray]


def _holder(ray, **options):
    """A task that holds its resources until `gate` exists."""

    def hold(gate):
        while not Path(gate).exists():
            time.sleep(0.02)
        return "released"

    return ray.remote(**options)(hold) if options else ray.remote(hold)


def test_cluster_resources(ray_impl):
    ray = ray_impl
    res = ray.cluster_resources()
    assert res["CPU"] == 2
    assert res["GPU"] == 2
    assert res["custom_a"] == 2


def test_available_resources_during_task(ray_impl, tmp_path, wait_for):
    ray = ray_impl
    wait_for(lambda: ray.available_resources().get("CPU", 0) == 2, timeout=20)
    gate = tmp_path / "gate"
    ref = _holder(ray, num_cpus=1, resources={"custom_a": 0.5}).remote(str(gate))
    wait_for(lambda: ray.available_resources().get("CPU", 0) == 1, timeout=20)
    assert ray.available_resources().get("custom_a", 0) == 1.5
    gate.write_text("go")
    assert ray.get(ref, timeout=20) == "released"
    wait_for(lambda: ray.available_resources().get("CPU", 0) == 2, timeout=20)
    assert ray.cluster_resources()["CPU"] == 2


def test_custom_resources_assigned(ray_impl):
    ray = ray_impl

    @ray.remote(resources={"custom_a": 1})
    def assigned():
        return ray.get_runtime_context().get_assigned_resources()

    res = ray.get(assigned.remote())
    assert res["custom_a"] == 1.0
    assert res["CPU"] == 1.0


def test_fractional_gpus(ray_impl):
    ray = ray_impl

    @ray.remote(num_gpus=0.5)
    def half():
        return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

    @ray.remote(num_gpus=2)
    def both():
        return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

    ids, visible = ray.get(half.remote())
    assert len(ids) == 1
    assert visible == str(ids[0])
    ids, visible = ray.get(both.remote())
    assert sorted(str(i) for i in ids) == ["0", "1"]
    assert sorted(visible.split(",")) == ["0", "1"]
    assert ray.get_gpu_ids() == []  # the driver holds no GPU


def test_gpu_actor_keeps_its_gpu(ray_impl):
    ray = ray_impl

    @ray.remote(num_gpus=1)
    class OnGpu:
        def ids(self):
            return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

    a = OnGpu.remote()
    first = ray.get(a.ids.remote())
    assert len(first[0]) == 1 and first[1] == str(first[0][0])
    assert ray.get(a.ids.remote()) == first
    ray.kill(a)


def test_nodes(ray_impl):
    ray = ray_impl
    nodes = ray.nodes()
    assert len(nodes) == 1
    node = nodes[0]
    assert node["Alive"] is True
    assert isinstance(node["NodeID"], str) and node["NodeID"]
    assert node["Resources"]["CPU"] == 2
    assert node["NodeID"] == ray.get_runtime_context().get_node_id()


def test_infeasible_resource_is_a_clear_error(ray_impl):
    # Ray logs a warning and leaves such a task pending forever; carme fails it
    # with an error that names the missing resource (a deliberate difference).
    ray = ray_impl
    if ray.__name__ == "ray":
        pytest.skip("Ray hangs on infeasible tasks by design; carme reports an error")

    @ray.remote(resources={"no_such_accelerator": 1})
    def never():
        return 1

    with pytest.raises(Exception, match="no_such_accelerator") as ei:
        ray.get(never.remote(), timeout=20)
    assert not isinstance(ei.value, ray.exceptions.GetTimeoutError)

    @ray.remote(num_cpus=64)
    def too_big():
        return 1

    with pytest.raises(Exception, match="CPU") as ei:
        ray.get(too_big.remote(), timeout=20)
    assert not isinstance(ei.value, ray.exceptions.GetTimeoutError)


# -- placement groups ---------------------------------------------------------


def test_placement_group_ready_wait_remove(ray_impl, submodule, wait_for):
    ray = ray_impl
    pgm = submodule(ray, "util.placement_group")
    pg = pgm.placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
    assert isinstance(pg.ready(), ray.ObjectRef)
    ray.get(pg.ready(), timeout=30)
    assert pg.wait(timeout_seconds=10) is True
    assert pg.bundle_count == 2
    assert pg.bundle_specs == [{"CPU": 1.0}, {"CPU": 1.0}]
    wait_for(lambda: ray.available_resources().get("CPU", 0) == 0, timeout=20)
    table = pgm.placement_group_table(pg)
    assert table["strategy"] == "PACK"
    assert table["state"] == "CREATED"
    pgm.remove_placement_group(pg)
    wait_for(lambda: ray.available_resources().get("CPU", 0) == 2, timeout=20)


def test_bundle_scheduling(ray_impl, submodule, tmp_path, wait_for):
    ray = ray_impl
    pgm = submodule(ray, "util.placement_group")
    strategies = submodule(ray, "util.scheduling_strategies")
    pg = pgm.placement_group([{"CPU": 1}, {"CPU": 1}])
    assert pg.wait(timeout_seconds=30)

    @ray.remote(num_cpus=1)
    def where():
        return ray.get_runtime_context().get_placement_group_id()

    in_bundle = strategies.PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=1
    )
    assert ray.get(where.options(scheduling_strategy=in_bundle).remote(), timeout=30) == pg.id.hex()

    # The group holds both CPUs: a task outside it waits until the group is removed.
    outside = where.remote()
    ready, _ = ray.wait([outside], timeout=1.0)
    assert ready == []
    pgm.remove_placement_group(pg)
    assert ray.get(outside, timeout=30) is None


def test_placement_group_that_cannot_fit(ray_impl, submodule):
    ray = ray_impl
    pgm = submodule(ray, "util.placement_group")
    pg = pgm.placement_group([{"CPU": 8}])
    assert pg.wait(timeout_seconds=1) is False
    pgm.remove_placement_group(pg)


def test_placement_group_bad_arguments(ray_impl, submodule):
    pgm = submodule(ray_impl, "util.placement_group")
    with pytest.raises(ValueError, match="strategy"):
        pgm.placement_group([{"CPU": 1}], strategy="BOGUS")
    with pytest.raises(ValueError):
        pgm.placement_group([])


def test_actor_in_bundle_and_named_group(ray_impl, submodule):
    ray = ray_impl
    pgm = submodule(ray, "util.placement_group")
    strategies = submodule(ray, "util.scheduling_strategies")
    pg = pgm.placement_group([{"CPU": 1}], name="sem-named-pg")
    assert pg.wait(timeout_seconds=30)
    assert pgm.get_placement_group("sem-named-pg").id == pg.id

    @ray.remote(num_cpus=1)
    class InGroup:
        def group(self):
            current = pgm.get_current_placement_group()
            return current.id.hex() if current else None

    a = InGroup.options(
        scheduling_strategy=strategies.PlacementGroupSchedulingStrategy(placement_group=pg)
    ).remote()
    assert ray.get(a.group.remote(), timeout=30) == pg.id.hex()
    ray.kill(a)
    pgm.remove_placement_group(pg)


def test_scheduling_strategies(ray_impl, submodule):
    ray = ray_impl
    strategies = submodule(ray, "util.scheduling_strategies")

    @ray.remote
    def node():
        return ray.get_runtime_context().get_node_id()

    here = ray.get_runtime_context().get_node_id()
    pinned = strategies.NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    assert ray.get(node.options(scheduling_strategy=pinned).remote(), timeout=30) == here
    assert ray.get(node.options(scheduling_strategy="SPREAD").remote(), timeout=30) == here
    assert ray.get(node.options(scheduling_strategy="DEFAULT").remote(), timeout=30) == here
