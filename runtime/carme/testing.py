"""`carme.testing.Cluster`: a head and N nodes as real processes on this machine.

Like Ray's `ray.cluster_utils.Cluster`: every node is a node daemon of its own (its own
workers, object store and resources), they talk to each other over loopback, and a
driver joins with `cluster.connect()` (or `carme.init(address=cluster.address)`).

    cluster = Cluster(head_node_args={"num_cpus": 1})
    a = cluster.add_node(num_cpus=2, resources={"a": 1})
    cluster.wait_for_nodes()
    cluster.connect()
    ...
    cluster.remove_node(a)          # graceful; allow_graceful=False is a SIGKILL
    cluster.shutdown()
"""

from __future__ import annotations

import time
from typing import Any

from . import cluster as _cluster


class NodeHandle(dict):
    """A node started by the Cluster (a dict of its address, pid, node_id, ...)."""

    @property
    def node_id(self) -> str:
        return str(self["node_id"])

    @property
    def pid(self) -> int:
        return int(self["pid"])

    @property
    def address(self) -> str:
        return str(self["address"])


class Cluster:
    def __init__(self, initialize_head: bool = True, connect: bool = False,
                 head_node_args: dict[str, Any] | None = None) -> None:
        self.head: NodeHandle | None = None
        self.nodes: list[NodeHandle] = []
        if initialize_head:
            self.head = NodeHandle(_cluster.start_head(**_node_args(head_node_args or {})))
            self.head["is_head"] = True
            if connect:
                self.connect()

    @property
    def address(self) -> str:
        if self.head is None:
            raise RuntimeError("the cluster has no head yet")
        return str(self.head["address"])

    def add_node(self, wait: bool = True, **node_args: Any) -> NodeHandle:
        if self.head is None:
            self.head = NodeHandle(_cluster.start_head(**_node_args(node_args)))
            return self.head
        node = NodeHandle(_cluster.start_node(self.address, **_node_args(node_args)))
        self.nodes.append(node)
        if wait:
            self.wait_for_nodes()
        return node

    def remove_node(self, node: NodeHandle, allow_graceful: bool = True) -> None:
        if node is self.head:
            raise ValueError("remove the head with shutdown()")
        _cluster.stop_node(node, graceful=allow_graceful)
        if node in self.nodes:
            self.nodes.remove(node)

    def list_all_nodes(self) -> list[NodeHandle]:
        return ([self.head] if self.head else []) + list(self.nodes)

    def alive_node_ids(self) -> set[str]:
        with _cluster.connect(self.address) as c:
            return {n["node_id"] for n in c.rows("nodes") if n["state"] == "ALIVE"}

    def wait_for_nodes(self, timeout: float = 30.0) -> None:
        """Wait until the head's view has exactly the nodes this Cluster runs, alive."""
        want = {n.node_id for n in self.list_all_nodes()}
        deadline = time.monotonic() + timeout
        while True:
            have = self.alive_node_ids()
            if have == want:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes alive {sorted(have)} != started {sorted(want)} after {timeout} s")
            time.sleep(0.1)

    def connect(self, namespace: str | None = None) -> Any:
        import carme
        return carme.init(address=self.address, namespace=namespace)

    def shutdown(self) -> None:
        import carme
        if carme.is_initialized():
            carme.shutdown()
        for node in list(self.nodes):
            _cluster.stop_node(node)
        self.nodes.clear()
        if self.head is not None:
            _cluster.stop(self.address)
            self.head = None

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *a: Any) -> None:
        self.shutdown()


def _node_args(args: dict[str, Any]) -> dict[str, Any]:
    allowed = {"num_cpus", "num_gpus", "resources", "object_store_memory", "labels"}
    unknown = set(args) - allowed
    if unknown:
        raise TypeError(f"unknown node argument(s) {sorted(unknown)}; expected some of {sorted(allowed)}")
    return dict(args)
