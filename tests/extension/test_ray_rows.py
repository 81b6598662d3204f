"""Ray's dashboard REST answers -> carme's rows (pure): the shapes Ray 2.60 answers with (``cpus`` is
[logical, physical], GPU memory in MiB)."""

from __future__ import annotations

from typing import Any

import pytest

from carme_lab._ray_rest import (
    CAPABILITIES,
    RayRestError,
    carme_capabilities,
    ray_snapshot,
    ray_timeline,
    state_rows,
    to_camel,
)
from carme_lab._snapshot import panel_snapshot

NODE = "a" * 56
MB = 1024 * 1024


def listed(rows: list[dict[str, Any]], total: int | None = None, **extra: Any) -> dict[str, Any]:
    """A state API list answer, as ``/api/v0/<kind>`` gives it."""
    inner = {"total": len(rows) if total is None else total, "num_after_truncation": len(rows),
             "num_filtered": len(rows), "result": rows, "partial_failure_warning": "",
             "warnings": None, **extra}
    return {"result": True, "msg": "", "data": {"result": inner}}


NODES = listed([{
    "node_id": NODE, "node_ip": "10.0.0.5", "is_head_node": True, "state": "ALIVE",
    "node_name": "10.0.0.5", "resources_total": {"CPU": 4.0, "GPU": 1.0, "custom_a": 2.0,
                                                  "object_store_memory": 1000.0,
                                                  "node:__internal_head__": 1.0},
}, {
    "node_id": "d" * 56, "node_ip": "10.0.0.6", "is_head_node": False, "state": "DEAD",
    "resources_total": {"CPU": 8.0},
}])
NODE_SUMMARY = {"result": True, "data": {"summary": [{
    "cpu": 37.5, "cpus": [4, 2], "mem": [8000, 6000, 25.0, 2000],
    "gpus": [{"index": 0, "name": "H200", "uuid": "u", "utilizationGpu": 61,
              "memoryUsed": 1024, "memoryTotal": 143771, "temperatureC": 40}],
    "raylet": {"nodeId": NODE, "objectStoreUsedMemory": 300, "objectStoreAvailableMemory": 700},
}]}}
CLUSTER_STATUS = {"result": True, "data": {"clusterStatus": {"loadMetricsReport": {"usageByNode": {
    NODE: {"CPU": [1.0, 4.0], "GPU": [1.0, 1.0], "customA": [0.5, 2.0],
           "objectStoreMemory": [300.0, 1000.0], "node:InternalHead": [0.0, 1.0]},
}}}}}
TASKS = listed([
    {"task_id": "t1", "attempt_number": 0, "name": "square", "state": "FINISHED",
     "type": "NORMAL_TASK", "node_id": NODE, "worker_id": "w1", "worker_pid": 11,
     "creation_time_ms": 1000.0, "start_time_ms": 1100.0, "end_time_ms": 1300.0},
    {"task_id": "t2", "attempt_number": 1, "name": "Counter.add", "state": "RUNNING",
     "type": "ACTOR_TASK", "node_id": NODE, "worker_id": "w2", "worker_pid": 12,
     "creation_time_ms": 2000.0, "start_time_ms": 2100.0, "end_time_ms": None},
    {"task_id": "t3", "attempt_number": 0, "name": "boom", "state": "FAILED",
     "type": "NORMAL_TASK", "node_id": NODE, "worker_id": "w1", "error_type": "TASK_EXECUTION_EXCEPTION",
     "error_message": "ValueError: no", "creation_time_ms": 3000.0, "start_time_ms": 3050.0,
     "end_time_ms": 3060.0},
    {"task_id": "t4", "name": "waiting", "state": "PENDING_NODE_ASSIGNMENT",
     "creation_time_ms": 4000.0, "start_time_ms": 0, "end_time_ms": 0},
], total=9)
TASK_SUMMARY = {"result": True, "data": {"result": {"result": {"node_id_to_summary": {"cluster": {
    "summary": {"square": {"state_counts": {"FINISHED": 5}},
                "Counter.add": {"state_counts": {"RUNNING": 1, "FINISHED": 1}},
                "boom": {"state_counts": {"FAILED": 1}},
                "waiting": {"state_counts": {"PENDING_NODE_ASSIGNMENT": 1}}}}}}}}}
ACTORS = listed([{"actor_id": "x1", "class_name": "Counter", "name": "c", "state": "ALIVE",
                  "pid": 12, "node_id": NODE, "serialized_runtime_env": "{}"}])
OBJECTS = listed([
    {"object_id": "o1", "object_size": 100, "reference_type": "LOCAL_REFERENCE", "call_site": "disabled",
     "node_id": NODE, "pid": 11, "type": "WORKER"},
    {"object_id": "o1", "object_size": 100, "reference_type": "USED_BY_PENDING_TASK",
     "call_site": "disabled", "node_id": NODE, "pid": 12, "type": "WORKER"},
    {"object_id": "o2", "object_size": 5000, "reference_type": "PINNED_IN_MEMORY",
     "call_site": "disabled", "node_id": NODE, "pid": 1, "type": "DRIVER"},
], warnings=["Callsite is not being recorded. Set RAY_record_ref_creation_sites=1."])


def snapshot(**overrides: Any) -> dict[str, Any]:
    parts: dict[str, Any] = {"nodes": NODES, "actors": ACTORS, "objects": OBJECTS, "tasks": TASKS,
                             "task_summary": TASK_SUMMARY, "node_summary": NODE_SUMMARY,
                             "cluster_status": CLUSTER_STATUS, "now": 5.0, "version": "2.60.0"}
    parts.update(overrides)
    return ray_snapshot(**parts)


def test_to_camel_is_the_dashboards_conversion() -> None:
    assert to_camel("object_store_memory") == "objectStoreMemory"
    assert to_camel("node:__internal_head__") == "node:InternalHead"
    assert to_camel("CPU") == "CPU"


def test_nodes_carry_reporter_figures_and_per_node_available() -> None:
    snap = snapshot()
    head, dead = snap["nodes"]
    assert head["metrics"]["cpu_percent"] == 37.5 and head["metrics"]["num_cpus"] == 4.0
    assert (head["metrics"]["memory_used"], head["metrics"]["memory_total"]) == (2000.0, 8000.0)
    [gpu] = head["metrics"]["gpus"]
    assert gpu["utilization_gpu"] == 61.0 and gpu["memory_used"] == 1024 * MB
    assert gpu["memory_total"] == 143771 * MB
    assert head["resources_available"] == {"CPU": 3.0, "GPU": 0.0, "custom_a": 1.5,
                                           "object_store_memory": 700.0, "node:__internal_head__": 1.0}
    assert head["object_store"] == {"used": 300.0, "capacity": 1000.0}
    assert dead["state"] == "DEAD" and dead["metrics"] == {}
    # the dead node counts in neither total
    assert snap["resources"]["total"]["CPU"] == 4.0 and snap["resources"]["available"]["CPU"] == 3.0


def test_counts_come_from_the_summary_and_events_from_the_rows() -> None:
    snap = snapshot()
    assert snap["tasks_by_state"] == {"FINISHED": 6, "RUNNING": 1, "FAILED": 1,
                                      "PENDING_NODE_ASSIGNMENT": 1}
    assert [e["task_id"] for e in snap["events"]] == ["t4", "t3", "t2", "t1"]  # newest first
    panel = panel_snapshot(snap, "ray:10.0.0.5:6379", engine="ray")
    assert panel["tasks"] == {"pending": 1, "running": 1, "finished": 6, "failed": 1}
    assert panel["engine"] == "ray" and panel["version"] == "2.60.0"
    assert panel["nodes"][0]["gpus"][0]["utilization"] == 61.0
    # without the summary the listed rows are counted
    assert snapshot(task_summary=None)["tasks_by_state"] == {
        "FINISHED": 1, "RUNNING": 1, "FAILED": 1, "PENDING_NODE_ASSIGNMENT": 1}


def test_objects_are_one_row_each_largest_first() -> None:
    objects = snapshot()["objects"]
    assert objects["count"] == 2
    assert [o["object_id"] for o in objects["largest"]] == ["o2", "o1"]
    assert objects["largest"][0]["call_site"] is None  # Ray says "disabled"
    assert (objects["used"], objects["capacity"]) == (300.0, 1000.0)


def test_capabilities_say_what_ray_cannot_show_and_why() -> None:
    snap = snapshot()
    caps, notes = snap["capabilities"], snap["notes"]
    assert set(caps) == set(CAPABILITIES) == set(carme_capabilities())
    assert caps["node_metrics"] and caps["per_node_available"]
    assert not caps["live_state"] and not caps["object_types"]
    assert not caps["object_call_sites"] and "RAY_record_ref_creation_sites" in notes["object_call_sites"]
    assert not caps["complete_task_list"] and "4 of 9" in notes["complete_task_list"]
    assert set(notes) == {k for k, v in caps.items() if not v}

    bare = snapshot(node_summary=None, cluster_status=None)
    assert not bare["capabilities"]["node_metrics"] and not bare["capabilities"]["per_node_available"]
    head = bare["nodes"][0]
    assert head["resources_available"] == head["resources_total"], "unknown use: shown as free"
    assert panel_snapshot(bare, "ray:h:1")["nodes"][0]["cpu_percent"] is None


@pytest.mark.parametrize("payload", [
    {"result": False, "msg": "Failed to query: timeout"}, None, [],
    {"result": True, "data": {"result": {"result": "nope"}}},
])
def test_a_failed_or_odd_state_answer_raises(payload: Any) -> None:
    with pytest.raises(RayRestError):
        state_rows(payload, "the nodes")
    with pytest.raises(RayRestError):
        snapshot(actors=payload)


def test_timeline_spans_one_per_started_attempt() -> None:
    rows, _ = state_rows(TASKS, "the tasks")
    events = ray_timeline(rows, now_ms=2600.0)
    spans = [e for e in events if e["ph"] == "X"]
    assert [(e["name"], e["ts"], e["dur"]) for e in spans] == [
        ("square", 1100000.0, 200000.0),
        ("Counter.add", 2100000.0, 500000.0),  # still running: up to now
        ("boom", 3050000.0, 10000.0),
    ]
    assert spans[1]["cat"] == "actor_task" and spans[1]["args"]["attempt"] == 1
    assert spans[2]["args"]["error"] == "TASK_EXECUTION_EXCEPTION: ValueError: no"
    assert spans[0]["tid"] == spans[2]["tid"] != spans[1]["tid"]  # a thread per worker
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] != "process_sort_index"}
    assert names == {f"Node {NODE[:8]}", "Worker w1", "Worker w2"}
