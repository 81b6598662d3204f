"""TaskEventLog: bounds, rows, timeline JSON, summaries."""

from __future__ import annotations

import json

import pytest

from carme._events import TaskEventLog


def run_task(log: TaskEventLog, tid: str, t0: float, *, fail: bool = False, **attrs: object) -> None:
    log.record(tid, "SUBMITTED", t0, name="f", func_name="f", type="NORMAL_TASK", job_id="01", **attrs)
    log.record(tid, "SCHEDULED", t0 + 0.001, node_id="node-aaaaaaaaaaaa")
    log.record(tid, "RUNNING", t0 + 0.002, worker_id="worker-bbbbbbbb", worker_pid=123)
    if fail:
        log.record(tid, "FAILED", t0 + 0.010, error_type="ValueError", error_message="boom")
    else:
        log.record(tid, "FINISHED", t0 + 0.010)


def test_rows_have_ray_task_state_fields() -> None:
    log = TaskEventLog()
    run_task(log, "t1", 100.0, tag={"cell_id": "c1", "execution_count": 3},
             required_resources={"CPU": 1.0}, parent_task_id="p0")
    (row,) = log.rows()
    assert row["task_id"] == "t1" and row["attempt_number"] == 0
    assert row["state"] == "FINISHED" and row["type"] == "NORMAL_TASK"
    assert row["func_or_class_name"] == "f" and row["name"] == "f" and row["job_id"] == "01"
    assert row["node_id"] == "node-aaaaaaaaaaaa" and row["worker_pid"] == 123
    assert row["creation_time_ms"] == 100000 and row["start_time_ms"] == 100002
    assert row["end_time_ms"] == 100010
    assert [e["state"] for e in row["events"]] == ["SUBMITTED", "SCHEDULED", "RUNNING", "FINISHED"]
    assert row["cell"] == {"cell_id": "c1", "execution_count": 3}
    assert row["required_resources"] == {"CPU": 1.0} and row["parent_task_id"] == "p0"


def test_retries_are_separate_attempts() -> None:
    log = TaskEventLog()
    run_task(log, "t1", 1.0, fail=True)
    log.record("t1", "SUBMITTED", 2.0, attempt=1)
    log.record("t1", "RUNNING", 2.1)  # no attempt given: latest attempt
    log.record("t1", "FINISHED", 2.2)
    rows = log.rows()
    assert [(r["attempt_number"], r["state"]) for r in rows] == [(0, "FAILED"), (1, "FINISHED")]
    assert rows[0]["error_type"] == "ValueError" and log.row("t1")[1]["attempt_number"] == 1


def test_bounded_tasks_evict_finished_first() -> None:
    log = TaskEventLog(max_tasks=20)
    log.record("live", "RUNNING", 0.0)
    for i in range(100):
        run_task(log, f"t{i}", float(i))
    assert len(log) <= 20
    ids = [r["task_id"] for r in log.rows()]
    assert "live" in ids and "t99" in ids and "t0" not in ids
    assert log.evicted == 101 - len(log)


def test_bounded_when_nothing_finished() -> None:
    log = TaskEventLog(max_tasks=10)
    for i in range(50):
        log.record(f"t{i}", "RUNNING", float(i))
    assert len(log) <= 10 and log.rows()[-1]["task_id"] == "t49"


def test_per_task_events_keep_first_and_last() -> None:
    log = TaskEventLog(max_events_per_task=6)
    log.record("a", "SUBMITTED", 0.0)
    for i in range(1, 50):
        log.record("a", "RUNNING" if i % 2 else "SCHEDULED", float(i))
    log.record("a", "FINISHED", 50.0)
    (row,) = log.rows()
    ts = [e["ts_ms"] for e in row["events"]]
    assert len(ts) == 6 and ts[0] == 0 and ts[-1] == 50000 and ts == sorted(ts)
    assert row["events_dropped"] == 45


def test_timeline_is_valid_chrome_trace() -> None:
    log = TaskEventLog()
    run_task(log, "t1", 10.0, tag={"cell_id": "c9"})
    run_task(log, "t2", 10.5, fail=True)
    log.record("a1", "SUBMITTED", 11.0, func_name="Counter.incr", type="ACTOR_TASK",
               node_id="node-ccccccccc", worker_id="worker-dddddddd")
    log.record("a1", "RUNNING", 11.1)  # still running
    log.record("pending", "SUBMITTED", 12.0)  # never ran: no slice
    trace = json.loads(json.dumps(log.timeline()))
    slices = [e for e in trace if e["ph"] == "X"]
    meta = [e for e in trace if e["ph"] == "M"]
    assert len(slices) == 3
    first = slices[0]
    assert first["name"] == "f" and first["cat"] == "task"
    assert first["ts"] == pytest.approx(10.002e6) and first["dur"] == pytest.approx(8000, abs=1)
    assert first["args"]["task_id"] == "t1" and first["args"]["cell"] == {"cell_id": "c9"}
    assert slices[1]["args"]["state"] == "FAILED" and "ValueError: boom" in slices[1]["args"]["error"]
    assert slices[2]["cat"] == "actor_task" and slices[2]["args"]["state"] == "RUNNING"
    for e in trace:
        assert isinstance(e["pid"], int) and e["pid"] > 0
        if "tid" in e:
            assert isinstance(e["tid"], int) and e["tid"] > 0
    names = {e["args"]["name"] for e in meta if e["name"] in ("process_name", "thread_name")}
    assert {"Node node-aaa", "Worker worker-b", "Node node-ccc", "Worker worker-d"} <= names


def test_summarize() -> None:
    log = TaskEventLog()
    run_task(log, "t1", 1.0)
    run_task(log, "t2", 1.0, fail=True)
    log.record("a1", "RUNNING", 1.0, func_name="A.m", type="ACTOR_TASK")
    summary = log.summarize()
    assert summary["total_tasks"] == 3 and summary["total_actor_tasks"] == 1
    assert summary["summary"]["f"]["state_counts"] == {"FINISHED": 1, "FAILED": 1}
    assert summary["summary"]["A.m"]["type_counts"] == {"ACTOR_TASK": 1}


def test_record_many_and_errors() -> None:
    log = TaskEventLog()
    log.record_many([("x", "SUBMITTED", 1.0, {"name": "g"}), ("x", "RUNNING", 2.0), ("x", "FINISHED", 3.0, None)])
    assert log.rows()[0]["state"] == "FINISHED" and log.rows()[0]["name"] == "g"
    with pytest.raises(ValueError, match="unknown task state"):
        log.record("x", "DONE", 1.0)
    with pytest.raises(TypeError, match="unknown task event attribute"):
        log.record("x", "RUNNING", 1.0, colour="red")


def test_one_event_for_a_finished_attempt_records_its_run_too() -> None:
    """A submitter sends one event per finished attempt (`started` with the final state);
    the row, the event list and the timeline read as if RUNNING had come on its own, and
    the worker's own RUNNING at the same time is not counted twice."""
    log = TaskEventLog()
    log.record("t", "SUBMITTED", 1.0, name="f", type="NORMAL_TASK")
    log.record("t", "RUNNING", 1.5, worker_id="w1")  # the worker's, flushed while it ran
    log.record_many([("t", "FINISHED", 2.0, {"started": 1.5, "worker_id": "w1", "node_id": "n1"})])
    log.record("u", "SUBMITTED", 1.0, name="g", type="NORMAL_TASK")
    log.record("u", "FAILED", 3.0, started=2.5, error_type="ValueError")
    t, u = log.rows()
    assert [(e["state"], e["ts_ms"]) for e in t["events"]] == [
        ("SUBMITTED", 1000), ("RUNNING", 1500), ("FINISHED", 2000)]
    assert (t["state"], t["start_time_ms"], t["end_time_ms"], t["node_id"]) == ("FINISHED", 1500, 2000, "n1")
    assert [e["state"] for e in u["events"]] == ["SUBMITTED", "RUNNING", "FAILED"]
    assert (u["state"], u["start_time_ms"], u["error_type"]) == ("FAILED", 2500, "ValueError")
    runs = [e for e in log.timeline() if e.get("ph") == "X"]
    assert sorted((e["ts"], e["dur"]) for e in runs) == [(1.5e6, 0.5e6), (2.5e6, 0.5e6)]


def test_one_event_for_a_whole_attempt_reads_as_its_three() -> None:
    """A task that ends before its submitter's next flush sends one event: the final
    state with `submitted`, `started` and the submission's attributes."""
    log = TaskEventLog()
    log.record_many([("t", "FINISHED", 3.0, {"submitted": 1.0, "started": 2.0, "name": "f",
                                              "type": "NORMAL_TASK", "attempt": 1,
                                              "worker_id": "w1", "tag": {"cell_id": "c"}})])
    (row,) = log.rows()
    assert [(e["state"], e["ts_ms"]) for e in row["events"]] == [
        ("SUBMITTED", 1000), ("RUNNING", 2000), ("FINISHED", 3000)]
    assert (row["attempt_number"], row["name"], row["worker_id"], row["cell"]) == (1, "f", "w1", {"cell_id": "c"})
    assert (row["creation_time_ms"], row["start_time_ms"], row["end_time_ms"]) == (1000, 2000, 3000)


@pytest.mark.parametrize("times", [(1.0, 2.0, 3.0), (2.0, 1.0, 3.0), (1.0, 3.0, 2.0), (3.0, 2.0, 1.0)])
@pytest.mark.parametrize("attempt", [None, 0, 2])
def test_the_one_event_of_a_whole_attempt_is_stored_as_its_three_one_at_a_time(times, attempt) -> None:
    """The one-event form has a record of its own (`_record_run`: the common event, one
    per task); what it stores, and what later events make of it, is what the three
    events recorded one at a time store, whatever order the processes' clocks put them in."""
    submitted, started, ended = times
    attrs = {"name": "f", "func_name": "f", "type": "NORMAL_TASK", "job_id": "j", "tag": None,
             "required_resources": {"CPU": 1.0}, "node_id": "n", "worker_id": "w",
             "worker_pid": 7, "error_type": None}
    if attempt is not None:
        attrs["attempt"] = attempt
    rest = {} if attempt is None else {"attempt": attempt}
    one, three = TaskEventLog(), TaskEventLog()
    one.record_many([("t", "FINISHED", ended, {**attrs, "submitted": submitted, "started": started})])
    three.record("t", "SUBMITTED", submitted, **attrs)
    three.record("t", "RUNNING", started, **rest)
    three.record("t", "FINISHED", ended, **rest)
    assert one._recs == three._recs and one._attempt == three._attempt
    for log in (one, three):  # a late event of the same attempt, and a second one
        log.record("t", "RUNNING", 0.5, **rest)
        log.record_many([("t", "FAILED", 4.0, {**rest, "submitted": 3.5, "started": 3.7})])
    assert one._recs == three._recs and one.rows() == three.rows()
