"""carme-only: a placement-group bundle placed on a node is reserved by that node itself.

The head's daemon places groups; a node holding a bundle must keep the bundle's
resources from its own leases (a driver on that node), not only in the head's view.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import test_multinode

pytestmark = pytest.mark.processes
cluster = test_multinode.cluster  # a head with 1 CPU and {"head": 1}

DRIVER_ON_B = textwrap.dedent("""
    import sys, carme
    carme.init(address=sys.argv[1])

    @carme.remote(num_cpus=1)
    def where():
        return carme.get_runtime_context().get_node_id()

    print("RAN-ON", carme.get(where.remote(), timeout=60), flush=True)
    carme.shutdown()
""")


def _group_on(b) -> tuple:
    """A group whose one bundle only node b can hold, placed; and a task saying its node."""
    import carme
    from carme.util.placement_group import placement_group, placement_group_table
    pg = placement_group([{"CPU": 1, "b": 1}])
    assert pg.wait(30), placement_group_table(pg)
    assert placement_group_table(pg)["bundles_to_node_id"][0] == b.node_id

    @carme.remote(num_cpus=1)
    def where() -> str:
        return carme.get_runtime_context().get_node_id()
    return pg, where


def test_a_bundle_on_a_node_is_reserved_by_that_node(cluster, tmp_path: Path) -> None:
    from carme.util.placement_group import (
        remove_placement_group,
    )
    from carme.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    b = cluster.add_node(num_cpus=1, resources={"b": 1})
    cluster.connect()
    import carme

    pg, where = _group_on(b)

    in_bundle = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
    assert carme.get([where.options(scheduling_strategy=in_bundle).remote() for _ in range(3)],
                     timeout=60) == [b.node_id] * 3
    # a driver on node b: its plain task may not take the bundle's CPU there
    script = tmp_path / "driver_on_b.py"
    script.write_text(DRIVER_ON_B)
    from carme.cluster import resolve
    env = dict(os.environ, CARME_CLUSTER_TOKEN=resolve(cluster.address)[1].hex())
    out = subprocess.run([sys.executable, str(script), b.address], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    ran_on = out.stdout.split("RAN-ON ")[1].strip()
    assert ran_on == cluster.head.node_id, f"a plain task ran on {ran_on[:8]} (node b: {b.node_id[:8]})"
    # once the group goes, node b's CPU is its own again
    remove_placement_group(pg)
    from carme.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity
    assert carme.get(where.options(scheduling_strategy=Affinity(b.node_id, soft=False)).remote(),
                     timeout=60) == b.node_id


def test_a_driver_on_a_node_without_the_group_runs_in_its_bundles(
        cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver's own node (0 CPU) neither placed the group (the head did) nor holds a
    bundle (node b does): it asks the head where the bundle is and sends the work there."""
    from carme.util.placement_group import (
        remove_placement_group,
    )
    from carme.util.scheduling_strategies import PlacementGroupSchedulingStrategy as InGroup
    b = cluster.add_node(num_cpus=1, resources={"b": 1})
    d = cluster.add_node(num_cpus=0)
    from carme.cluster import resolve
    monkeypatch.setenv("CARME_CLUSTER_TOKEN", resolve(cluster.address)[1].hex())
    import carme
    carme.init(address=d.address)
    assert carme.get_runtime_context().get_node_id() == d.node_id

    pg, where = _group_on(b)

    @carme.remote(num_cpus=1)
    class Where:
        def node(self) -> str:
            return carme.get_runtime_context().get_node_id()

    for index in (0, -1):
        refs = [where.options(scheduling_strategy=InGroup(pg, index)).remote() for _ in range(3)]
        assert carme.get(refs, timeout=60) == [b.node_id] * 3, index
    actor = Where.options(scheduling_strategy=InGroup(pg, 0)).remote()
    assert carme.get(actor.node.remote(), timeout=60) == b.node_id
    carme.kill(actor)
    # what only the head can say still fails at once, with the head's reason (an index
    # out of range is refused by the driver already; test_node_core_pgs covers the node's)
    with pytest.raises(carme.exceptions.TaskUnschedulableError, match="more than bundle 0"):
        carme.get(where.options(num_cpus=2, scheduling_strategy=InGroup(pg, 0)).remote(), timeout=60)
    remove_placement_group(pg)
    with pytest.raises(carme.exceptions.TaskUnschedulableError, match="removed or never existed"):
        carme.get(where.options(scheduling_strategy=InGroup(pg, 0)).remote(), timeout=60)
    with pytest.raises(carme.exceptions.ActorUnschedulableError, match="removed or never existed"):
        late = Where.options(scheduling_strategy=InGroup(pg, -1)).remote()
        carme.get(late.node.remote(), timeout=60)


def test_an_actor_placed_in_a_bundle_on_another_node_is_leased_from_the_bundle(cluster) -> None:
    """The head places the actor in b's bundle and forwards its creation there: b takes it
    from the bundle it reserves (forwarded as a plain hard affinity, it waited forever for
    a CPU that b's reservation of the bundle holds)."""
    from carme.util.scheduling_strategies import PlacementGroupSchedulingStrategy as InGroup
    b = cluster.add_node(num_cpus=1, resources={"b": 1})
    cluster.connect()
    import carme
    pg, _where = _group_on(b)

    @carme.remote(num_cpus=1)
    class Where:
        def node(self) -> str:
            return carme.get_runtime_context().get_node_id()

    actor = Where.options(scheduling_strategy=InGroup(pg, 0)).remote()
    assert carme.get(actor.node.remote(), timeout=60) == b.node_id
