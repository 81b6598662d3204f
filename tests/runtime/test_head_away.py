"""carme-only: work that only the head can run waits for a head that is away.

Real processes on 127.0.0.1 (the `cluster_on_port` fixture of test_head_restart: a head
with {"head": 1} on a fixed port, a node with {"a": 1}, a driver joined to the node).
While the head does not answer, the node keeps it in its scheduler as fully busy: a task
needing {"head": 1} stays pending (as in Ray) instead of failing at once as infeasible;
a `get` with a timeout times out; the head started again on its port runs the task.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import test_head_restart

pytestmark = pytest.mark.processes
cluster_on_port = test_head_restart.cluster_on_port


def test_a_task_only_the_head_can_run_waits_for_the_head(cluster_on_port, wait_for) -> None:
    import carme
    from carme import cluster
    c = cluster_on_port
    head, node = c["head"], c["node"]
    os.environ["CARME_CLUSTER_TOKEN"] = json.loads(Path(head["token_file"]).read_text())["token"]
    try:
        carme.init(address=node["address"])  # a driver of the node, which outlives the head
    finally:
        del os.environ["CARME_CLUSTER_TOKEN"]

    @carme.remote(num_cpus=0)
    def where() -> str:
        return carme.get_runtime_context().get_node_id()

    on_head = where.options(resources={"head": 1})
    assert carme.get(on_head.remote(), timeout=60) == head["node_id"]
    os.kill(head["pid"], signal.SIGKILL)
    wait_for(lambda: not next(n for n in carme.nodes() if n["NodeID"] == head["node_id"])["Alive"],
             timeout=60)

    waiting = on_head.remote()
    # not failed as infeasible ("no node can ever provide head: 1"): pending, so a get
    # with a timeout times out as usual
    with pytest.raises(carme.exceptions.GetTimeoutError):
        carme.get(waiting, timeout=3)
    ready, _ = carme.wait([waiting], timeout=0)
    assert ready == []
    # work the live node can do goes on meanwhile
    assert carme.get(where.options(resources={"a": 1}).remote(), timeout=60) == node["node_id"]
    # a task that no node, not even the head, could ever run still fails at once
    with pytest.raises(carme.exceptions.TaskUnschedulableError, match="no node can ever provide"):
        carme.get(where.options(resources={"nowhere": 1}).remote(), timeout=60)

    again = cluster.start_head(num_cpus=1, resources={"head": 1}, port=c["port"])
    c["started"].append(again)
    assert carme.get(waiting, timeout=60) == head["node_id"]  # run by the head, back
    assert carme.get(on_head.remote(), timeout=60) == head["node_id"]
