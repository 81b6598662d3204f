"""carme-only: a cluster of several node daemons on loopback (carme.testing.Cluster)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.processes


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    monkeypatch.setenv("CARME_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("CARME_ADDRESS", raising=False)
    from carme.testing import Cluster
    c = Cluster(head_node_args={"num_cpus": 1, "resources": {"head": 1}})
    try:
        yield c
    finally:
        c.shutdown()


def _node_of(carme):
    @carme.remote
    def where(delay: float = 0.0) -> str:
        time.sleep(delay)
        return carme.get_runtime_context().get_node_id()
    return where


def test_nodes_join_and_tasks_spill_and_spread(cluster) -> None:
    a = cluster.add_node(num_cpus=2, resources={"a": 2})
    b = cluster.add_node(num_cpus=2, resources={"b": 1})
    cluster.connect()
    import carme
    assert {n["NodeID"] for n in carme.nodes()} == {cluster.head.node_id, a.node_id, b.node_id}
    res = carme.cluster_resources()
    assert res["CPU"] == 5 and res["a"] == 2 and res["b"] == 1
    where = _node_of(carme)
    # a custom resource only one node has: the task spills there
    assert carme.get(where.options(resources={"b": 1}).remote(), timeout=60) == b.node_id
    # SPREAD puts tasks on every node
    spread = carme.get([where.options(scheduling_strategy="SPREAD").remote(0.3) for _ in range(6)], timeout=60)
    assert set(spread) == {cluster.head.node_id, a.node_id, b.node_id}
    # a resource no node has is still a clear error
    with pytest.raises(carme.exceptions.TaskUnschedulableError, match="unicorn"):
        carme.get(where.options(resources={"unicorn": 1}).remote(), timeout=30)


def test_node_affinity_hard_and_soft(cluster) -> None:
    from carme.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity
    a = cluster.add_node(num_cpus=1)
    cluster.connect()
    import carme
    where = _node_of(carme)
    for target in (a.node_id, cluster.head.node_id):
        got = carme.get([where.options(scheduling_strategy=Affinity(target, soft=False)).remote() for _ in range(3)], timeout=60)
        assert set(got) == {target}
    missing = "ff" * 28
    assert carme.get(where.options(scheduling_strategy=Affinity(missing, soft=True)).remote(), timeout=60)
    with pytest.raises(carme.exceptions.TaskUnschedulableError):
        carme.get(where.options(scheduling_strategy=Affinity(missing, soft=False)).remote(), timeout=30)


def test_large_array_moves_between_nodes_once(cluster) -> None:
    np = pytest.importorskip("numpy")
    a = cluster.add_node(num_cpus=1, resources={"a": 1})
    cluster.connect()
    import carme

    @carme.remote(resources={"a": 1})
    def make() -> object:
        return np.arange(200 * 1024 * 1024 // 8, dtype=np.int64)  # 200 MB, made on node a

    @carme.remote(resources={"head": 1})
    def total(x) -> int:
        return int(x[-1]) + int(x[0])

    ref = make.remote()
    arr = carme.get(ref, timeout=120)  # the driver (on the head node) pulls it
    assert arr.nbytes == 200 * 1024 * 1024 and int(arr[-1]) == len(arr) - 1
    assert not arr.flags.writeable
    # a task on the head node reads the head's copy: no second transfer
    t0 = time.monotonic()
    assert carme.get(total.remote(ref), timeout=120) == len(arr) - 1
    assert a.node_id != cluster.head.node_id
    del arr, ref
    assert time.monotonic() - t0 < 60


def test_node_killed_tasks_retry_elsewhere_and_view_updates(cluster, tmp_path: Path) -> None:
    victim = cluster.add_node(num_cpus=1, resources={"spot": 1})
    cluster.add_node(num_cpus=1, resources={"spot": 1})
    cluster.connect()
    import carme
    started = tmp_path / "started"

    @carme.remote(resources={"spot": 1}, max_retries=2)
    def slow(path: str) -> str:
        with open(path, "a") as f:
            f.write(carme.get_runtime_context().get_node_id() + "\n")
        time.sleep(2)
        return carme.get_runtime_context().get_node_id()

    refs = [slow.remote(str(started)) for _ in range(2)]
    deadline = time.monotonic() + 60
    while not (started.exists() and victim.node_id in started.read_text()):
        assert time.monotonic() < deadline, "no task started on the victim node"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    results = carme.get(refs, timeout=120)
    assert victim.node_id not in results  # retried on the surviving node
    deadline = time.monotonic() + 10
    while victim.node_id in cluster.alive_node_ids():
        assert time.monotonic() < deadline, "the dead node is still in the cluster view after 10 s"
        time.sleep(0.2)
    cluster.nodes.remove(victim)
    from carme import cluster as cl
    cl.stop_node(victim)  # removes what the killed daemon left (its store, session dir)


def test_node_removed_cleanly(cluster) -> None:
    a = cluster.add_node(num_cpus=1)
    cluster.connect()
    import carme
    assert len(carme.nodes()) == 2
    cluster.remove_node(a)
    deadline = time.monotonic() + 10
    while len([n for n in carme.nodes() if n["Alive"]]) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    where = _node_of(carme)
    assert carme.get(where.remote(), timeout=60) == cluster.head.node_id


def test_actor_on_a_chosen_node_and_restarted_when_its_node_dies(cluster) -> None:
    from carme.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity
    a = cluster.add_node(num_cpus=1, resources={"gpu_box": 1})
    b = cluster.add_node(num_cpus=1, resources={"gpu_box": 1})
    cluster.connect(namespace="mn")
    import carme

    @carme.remote
    class Where:
        def __init__(self):
            self.calls = 0

        def node(self):
            self.calls += 1
            return carme.get_runtime_context().get_node_id(), self.calls

    pinned = Where.options(scheduling_strategy=Affinity(a.node_id, soft=False), name="pinned").remote()
    assert carme.get(pinned.node.remote(), timeout=60) == (a.node_id, 1)
    assert carme.get(carme.get_actor("pinned").node.remote(), timeout=60) == (a.node_id, 2)
    names = {r["name"] for r in carme.util.state.list_actors()}
    assert "pinned" in names
    movable = Where.options(resources={"gpu_box": 1}, max_restarts=1).remote()
    first, _ = carme.get(movable.node.remote(), timeout=60)
    assert first in (a.node_id, b.node_id)
    victim = a if first == a.node_id else b
    os.kill(victim.pid, signal.SIGKILL)
    # restarted on the surviving node (state is new: calls start over)
    # (its worker may answer once more while the kill reaches it)
    deadline = time.monotonic() + 60
    while True:
        try:
            node, calls = carme.get(movable.node.remote(), timeout=60)
            if node != victim.node_id:
                break
        except carme.exceptions.RayActorError:
            pass
        assert time.monotonic() < deadline, "the actor was not restarted on the other node"
        time.sleep(0.2)
    assert calls == 1
    cluster.nodes.remove(victim)
    from carme import cluster as cl
    cl.stop_node(victim)


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])
def test_placement_groups_across_nodes(cluster, strategy: str) -> None:
    from carme.util.placement_group import (
        placement_group,
        placement_group_table,
        remove_placement_group,
    )
    from carme.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    cluster.add_node(num_cpus=2)
    cluster.add_node(num_cpus=2)
    cluster.connect()
    import carme
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy=strategy)
    assert pg.wait(30), placement_group_table(pg)
    placed = placement_group_table(pg)["bundles_to_node_id"]
    nodes = {placed[i] for i in (0, 1)}
    if strategy in ("SPREAD", "STRICT_SPREAD"):
        assert len(nodes) == 2
    else:
        assert len(nodes) == 1
    where = _node_of(carme)
    for i in (0, 1):
        strat = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
        assert carme.get(where.options(scheduling_strategy=strat).remote(), timeout=60) == placed[i]
    remove_placement_group(pg)
    # more bundles than nodes: STRICT_SPREAD cannot be placed
    if strategy == "STRICT_SPREAD":
        too_many = placement_group([{"CPU": 0.1}] * 4, strategy=strategy)
        assert not too_many.wait(2)
        remove_placement_group(too_many)


def test_names_and_placement_groups_are_cluster_wide(cluster) -> None:
    from carme.util.placement_group import get_placement_group, placement_group
    cluster.add_node(num_cpus=1, resources={"b": 1})
    cluster.connect(namespace="wide")
    import carme

    @carme.remote
    class Named:
        def hello(self):
            return "hi"

    @carme.remote(resources={"b": 1})
    def make_on_b():
        # created from a worker on another node: the name and the group are the cluster's
        Named.options(name="from-b", lifetime="detached", namespace="wide").remote()
        pg = placement_group([{"CPU": 0.5}], name="pg-from-b")
        return pg.wait(30)

    assert carme.get(make_on_b.remote(), timeout=60)
    assert carme.get(carme.get_actor("from-b").hello.remote(), timeout=60) == "hi"
    assert get_placement_group("pg-from-b").wait(10)


def test_lost_task_returns_are_rebuilt_from_lineage(cluster, tmp_path: Path) -> None:
    """Objects whose only copy was on a node that died are made again by re-running the
    tasks that made them (and, first, the lost arguments those tasks need)."""
    np = pytest.importorskip("numpy")
    victim = cluster.add_node(num_cpus=1, resources={"spot": 1})
    cluster.add_node(num_cpus=1, resources={"spot": 1})
    cluster.connect()
    import carme
    from carme.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

    on_victim = Affinity(victim.node_id, soft=True)
    runs = tmp_path / "runs"
    runs.mkdir()

    @carme.remote(resources={"spot": 1}, max_retries=2)
    def make(i: int) -> object:
        (runs / f"make-{i}-{os.getpid()}").touch()
        return np.full(64 * 1024, i, dtype=np.int64)  # 512 KB: kept in its node's store

    @carme.remote(resources={"spot": 1}, max_retries=2)
    def double(a) -> object:
        return a * 2

    made = [make.options(scheduling_strategy=on_victim).remote(i) for i in range(10)]
    doubled = double.options(scheduling_strategy=on_victim).remote(made[3])  # a lost argument too
    spare = make.options(scheduling_strategy=on_victim).remote(7)  # an argument of a later task
    ready, _ = carme.wait(made + [doubled, spare], num_returns=12, timeout=120, fetch_local=False)
    assert len(ready) == 12
    nodes_of = carme.get([carme.remote(lambda: carme.get_runtime_context().get_node_id())
                          .options(scheduling_strategy=on_victim).remote()], timeout=60)
    assert nodes_of == [victim.node_id]  # the soft affinity placed work on the victim
    os.kill(victim.pid, signal.SIGKILL)
    values = carme.get(made, timeout=120)
    assert [int(v[0]) for v in values] == list(range(10))
    assert all(len(v) == 64 * 1024 for v in values)
    assert int(carme.get(doubled, timeout=120)[0]) == 6
    assert len(list(runs.iterdir())) >= 20  # every make ran twice (once on the victim)
    # a task submitted after the death, whose argument's only copy was on the victim:
    # its worker cannot read the argument, so the argument is made again and it runs again
    assert int(carme.get(double.remote(spare), timeout=120)[0]) == 14
    cluster.nodes.remove(victim)
    from carme import cluster as cl
    cl.stop_node(victim)


def test_lost_objects_past_their_retries_say_so(cluster) -> None:
    np = pytest.importorskip("numpy")
    victim = cluster.add_node(num_cpus=1, resources={"spot": 1})
    cluster.add_node(num_cpus=1, resources={"spot": 1})
    cluster.connect()
    import carme
    from carme.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

    @carme.remote(resources={"spot": 1}, max_retries=0)
    def make() -> object:
        return np.ones(64 * 1024)

    ref = make.options(scheduling_strategy=Affinity(victim.node_id, soft=False)).remote()
    carme.wait([ref], timeout=120, fetch_local=False)
    os.kill(victim.pid, signal.SIGKILL)
    with pytest.raises(carme.exceptions.ObjectReconstructionFailedMaxAttemptsExceededError,
                       match="max_retries"):
        carme.get(ref, timeout=120)
    cluster.nodes.remove(victim)
    from carme import cluster as cl
    cl.stop_node(victim)
