"""`FakeBackend`: stands in for `carme.cluster` in the server-extension tests (it answers at
once and records what it was asked), and the snapshot it serves. A module of its own
(not conftest) so tests can import it whatever other conftest modules are loaded."""

from __future__ import annotations

from typing import Any

SNAPSHOT = {
    "time": 1700000000.0,
    "nodes": [{
        "node_id": "n1", "node_name": "box", "node_ip": "127.0.0.1", "is_head_node": True,
        "state": "ALIVE", "resources_total": {"CPU": 2.0}, "resources_available": {"CPU": 1.0},
        "object_store": {"used": 100, "capacity": 1000},
        "metrics": {"cpu_percent": 50.0, "num_cpus": 2, "memory_used": 1, "memory_total": 4,
                    "gpus": [{"index": 0, "name": "G", "utilization_gpu": 7,
                              "memory_used": 1, "memory_total": 8}]},
    }],
    "resources": {"total": {"CPU": 2.0}, "available": {"CPU": 1.0}},
    "tasks_by_state": {"FINISHED": 3, "RUNNING": 1, "PENDING_NODE_ASSIGNMENT": 2, "FAILED": 1},
    "actors": [{"actor_id": "a1", "class_name": "Counter", "state": "ALIVE", "name": "c"}],
    "objects": {"used": 100, "capacity": 1000, "count": 1,
                "largest": [{"object_id": "o1", "object_size": 100, "type": "ndarray"}]},
    "events": [{"task_id": "t1", "name": "f", "state": "FINISHED",
                "creation_time_ms": 1, "start_time_ms": 2, "end_time_ms": 3}],
}


class FakeBackend:
    """A `carme_lab._service.Backend` without processes."""

    def __init__(self) -> None:
        self.local: list[dict[str, Any]] = []
        self.calls: list[tuple[str, Any]] = []
        self.unreachable: set[str] = set()
        self._port = 7000

    def list_local(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.local]

    def start(self, spec: Any) -> dict[str, Any]:
        self._port += 1
        prefix = "ray:" if spec.engine == "ray" else ""
        info = {"address": f"{prefix}127.0.0.1:{self._port}", "pid": 4242, "started": 1.0,
                "cluster_id": str(self._port),
                "resources": {"CPU": spec.num_cpus or 1, "GPU": spec.num_gpus or 0,
                              **(spec.resources or {})}}
        self.calls.append(("start", (spec.num_cpus, spec.num_gpus, spec.resources)))
        self.local.append(info)
        return info

    def stop(self, address: str) -> bool:
        self.calls.append(("stop", address))
        before = len(self.local)
        self.local = [r for r in self.local if r["address"] != address]
        return len(self.local) < before

    def _check(self, address: str) -> None:
        if address in self.unreachable or not any(r["address"] == address for r in self.local):
            raise ConnectionRefusedError(f"nothing listens at {address}")

    def snapshot(self, address: str) -> dict[str, Any]:
        self._check(address)
        return dict(SNAPSHOT)

    def timeline(self, address: str) -> list[dict[str, Any]]:
        self._check(address)
        return [{"name": "f", "ph": "X", "ts": 1, "dur": 2, "pid": 1, "tid": 1}]

    def given(self, address: str, dashboard: str | None) -> None:
        self.calls.append(("given", (address, dashboard)))

    def close(self) -> None:
        self.calls.append(("close", None))


