"""The engine seam's pure parts: addresses, Ray rows -> carme rows, cells, log routing."""

from __future__ import annotations

import os
import sys

import pytest

from carme_kernel.engines import Capabilities, Target, parse_target
from carme_kernel.engines._ray_logs import LogResolver
from carme_kernel.engines._ray_rows import (
    CellWindows,
    assign_cells,
    node_rows,
    remote_cell_name,
    timeline_events,
)
from carme_kernel.widgets import _data

JOB = "01000000"
DRIVER = "f" * 40 + JOB


def test_parse_target_forms() -> None:
    assert parse_target(None) == Target("carme", None)
    assert parse_target("") == Target("carme", None)
    assert parse_target("127.0.0.1:6380") == Target("carme", "127.0.0.1:6380")
    assert parse_target("auto") == Target("carme", "auto")
    assert parse_target("ray") == Target("ray", None)
    assert parse_target("ray:127.0.0.1:6379") == Target("ray", "127.0.0.1:6379")
    assert parse_target("ray://10.0.0.1:10001") == Target("ray", "ray://10.0.0.1:10001", client=True)


@pytest.mark.parametrize("bad", ["ray:", "ray:host", "ray:host:port", "ray://:1", "ray:h:70000"])
def test_bad_ray_address_is_named(bad: str) -> None:
    with pytest.raises(ValueError, match="not a Ray address: expected ray, ray:HOST:PORT"):
        parse_target(bad)


def test_capability_gaps() -> None:
    assert Capabilities().gaps() == []
    gaps = Capabilities(output_routing="by name and task state", object_holders=False).gaps()
    assert gaps == ["remote output routed by name and task state", "object holders unknown"]


def test_ray_modules_do_not_import_ray() -> None:
    assert "carme_kernel.engines._ray_rows" in sys.modules
    # the conversions work where Ray is absent (the Jupyter server never joins a cluster)
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import carme_kernel.engines._ray_rows, carme_kernel.engines._ray_logs\n"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


def _task(tid: str, **kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "task_id": tid, "attempt_number": 0, "name": "f", "func_or_class_name": "f",
        "state": "FINISHED", "job_id": JOB, "type": "NORMAL_TASK", "parent_task_id": DRIVER,
        "node_id": "n" * 56, "worker_id": "w" * 56, "worker_pid": 100,
    }
    row.update(kw)
    return row


def _windows() -> tuple[CellWindows, dict, dict]:
    w = CellWindows()
    c1 = {"run": "a", "execution_count": 1}
    c2 = {"run": "b", "execution_count": 2}
    w.open(c1, 1000)
    w.open(c2, 2000)
    return w, c1, c2


def test_cells_by_creation_time_parent_chain_and_name() -> None:
    w, c1, c2 = _windows()
    rows = [
        _task("t1", creation_time_ms=1500),
        _task("t2", creation_time_ms=2500),
        _task("child", creation_time_ms=9000, parent_task_id="t1"),  # nested: its root's cell
        _task("t3", creation_time_ms=500),  # before any cell
        _task("r", creation_time_ms=2600, name=remote_cell_name("In[1]")),  # name wins
        _task("other", creation_time_ms=1500, job_id="02000000"),
    ]
    cells = {r["task_id"]: r["cell"] for r in assign_cells(rows, w, JOB)}
    assert cells == {"t1": c1, "t2": c2, "child": c1, "t3": None, "r": c1, "other": None}
    assert w.by_count(2) == c2 and w.at(1999) == c1 and w.at(10**9) == c2


def test_node_rows_take_the_reporter_summary() -> None:
    nodes = [{"node_id": "n1", "state": "ALIVE", "node_ip": "127.0.0.1",
              "resources_total": {"CPU": 2.0}}]
    summary = [{"cpu": 50.0, "cpus": [2, 2], "mem": [8000, 6000, 25.0, 2000],
                "gpus": [{"index": 0, "name": "H200", "uuid": "GPU-1", "utilizationGpu": 40,
                          "memoryUsed": 1024, "memoryTotal": 2048}],
                "workers": [{"memoryInfo": {"rss": 300}}],
                "raylet": {"nodeId": "n1", "objectStoreUsedMemory": 10,
                           "objectStoreAvailableMemory": 90}}]
    (row,) = node_rows(nodes, summary)
    assert row["metrics"]["cpu_percent"] == 50.0 and row["metrics"]["num_cpus"] == 2
    assert (row["metrics"]["memory_total"], row["metrics"]["memory_used"]) == (8000, 2000)
    assert row["metrics"]["workers_rss"] == 300
    assert row["metrics"]["gpus"][0]["memory_used"] == 1024 * 1024 * 1024
    assert row["object_store"] == {"used": 10, "capacity": 100}
    model = _data.cluster_model([row])
    assert model["nodes"][0]["store_capacity"] == 100
    assert _data.gpu_model([row])["gpu_count"] == 1
    (bare,) = node_rows(nodes)  # no summary: no metrics, still a valid row
    assert bare["metrics"] == {} and _data.cluster_model([bare])["totals"]["nodes"] == 1


def test_timeline_from_task_state() -> None:
    w, c1, _ = _windows()
    rows = assign_cells(
        [
            _task("t1", creation_time_ms=1500, start_time_ms=1600, end_time_ms=1700),
            _task("t2", creation_time_ms=1500, start_time_ms=1650, state="RUNNING", end_time_ms=0),
            _task("t3", creation_time_ms=1500, state="PENDING_NODE_ASSIGNMENT"),
            _task("t4", creation_time_ms=1500, start_time_ms=1600, end_time_ms=1800,
                  state="FAILED", error_type="ValueError", error_message="bad",
                  type="ACTOR_TASK", func_or_class_name="A.m"),
        ],
        w, JOB,
    )
    events = timeline_events(rows, now_ms=2000)
    spans = {e["args"]["task_id"]: e for e in events if e["ph"] == "X"}
    assert set(spans) == {"t1", "t2", "t4"}
    assert (spans["t1"]["ts"], spans["t1"]["dur"]) == (1600000.0, 100000.0)
    assert spans["t2"]["dur"] == 350000.0  # running: up to now
    assert spans["t4"]["cat"] == "actor_task" and spans["t4"]["args"]["error"] == "ValueError: bad"
    assert spans["t1"]["args"]["cell"] == c1
    model = _data.timeline_model(events)
    assert len(model["lanes"]) == 1 and model["spans"][0]["cell"] == "In [1]"


def _batch(**kw: object) -> dict[str, object]:
    data: dict[str, object] = {"pid": "100", "job": JOB, "is_err": False, "lines": ["hi"],
                               "task_name": "f", "actor_name": ""}
    data.update(kw)
    return data


def test_log_resolver_by_name_is_immediate() -> None:
    w, c1, c2 = _windows()
    r = LogResolver(w, JOB)
    (out,) = r.add(_batch(task_name=remote_cell_name("In[2]"), lines=["a", "b"]), 2100)
    assert (out.tag, out.stream, out.text) == (c2, "stdout", "a\nb\n")
    assert r.add(_batch(job="02000000"), 2100) == []  # another job's output: dropped
    assert r.add(_batch(pid="autoscaler", job=""), 2100) == []


def test_log_resolver_waits_for_task_state_and_keeps_order() -> None:
    w, c1, c2 = _windows()
    r = LogResolver(w, JOB, give_up_ms=5000)
    assert r.add(_batch(lines=["first"]), 2100) == []
    assert r.add(_batch(lines=["second"], is_err=True), 2200) == []
    assert r.resolve([], now_ms=2300) == [] and r.pending() == 2
    # an old run of f on the same worker (ended long ago) must not claim the line
    old = _task("old", creation_time_ms=1100, start_time_ms=1100, end_time_ms=1200)
    old["cell"] = c1
    assert r.resolve([old], now_ms=2400) == []
    new = _task("new", creation_time_ms=2050, start_time_ms=2060, state="RUNNING")
    new["cell"] = c2
    got = r.resolve([old, new], now_ms=2500)
    assert [(g.tag, g.stream, g.text) for g in got] == [
        (c2, "stdout", "first\n"), (c2, "stderr", "second\n")]
    assert r.pending() == 0


def test_log_resolver_gives_up_to_the_fallback() -> None:
    w, _, _ = _windows()
    r = LogResolver(w, JOB, give_up_ms=1000)
    r.add(_batch(), 2100)
    assert r.resolve([], now_ms=2500) == []
    (out,) = r.resolve([], now_ms=3200)
    assert out.tag is None and out.text == "hi\n"


def test_actor_output_matches_actor_calls() -> None:
    w, _, c2 = _windows()
    r = LogResolver(w, JOB)
    r.add(_batch(task_name="", actor_name="Counter"), 2300)
    call = _task("m", type="ACTOR_TASK", name="Counter.incr", creation_time_ms=2100,
                 start_time_ms=2200, state="RUNNING")
    call["cell"] = c2
    plain = _task("p", creation_time_ms=2100, start_time_ms=2250, state="RUNNING")
    (out,) = r.resolve([plain, call], now_ms=2400)
    assert out.tag == c2


def test_version_mismatch_hint() -> None:
    from carme_kernel.engines._ray import version_mismatch_hint

    assert version_mismatch_hint(RuntimeError("connection refused")) is None
    hint = version_mismatch_hint(RuntimeError(
        "Version mismatch: The cluster was started with:\n Ray: 2.50.0\n Python: 3.12.1\n"))
    assert hint is not None and "different Ray or Python version" in hint
    assert "Install the cluster's Ray and Python versions" in hint


def test_a_ray_cluster_selected_in_the_panel_prepares_ray_drivers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The panel's selection file carries what Ray drivers of that cluster need; a value the
    user set stays theirs."""
    from carme.notebook import Choice
    from carme_kernel._session import _use_choice

    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE"):
        monkeypatch.setenv(name, "")  # so monkeypatch restores what was there (or nothing)
        monkeypatch.delenv(name)
    _use_choice(Choice("ray:10.0.0.5:6379", "the panel", {"RAY_AUTH_MODE": "token"}))
    assert os.environ["RAY_ADDRESS"] == "10.0.0.5:6379" and os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _use_choice(Choice("ray:10.0.0.5:6379", "the panel", {"RAY_AUTH_MODE": "token"}))
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    monkeypatch.delenv("RAY_AUTH_MODE")
    _use_choice(Choice("127.0.0.1:6380", "the panel", {"RAY_AUTH_MODE": "token"}))
    assert "RAY_AUTH_MODE" not in os.environ  # a carme cluster needs none of Ray's settings
