"""Synchronous tests of the I/O-free parts: the cluster book and the panel snapshot."""

from __future__ import annotations

from typing import Any

import pytest

from carme_lab._clusters import AddressError, ClusterBook, check_address
from carme_lab._snapshot import bucket_of, count_tasks, panel_snapshot


@pytest.mark.parametrize("good", ["127.0.0.1:6380", " host:1 ", "[::1]:65535", "a.b-c:80"])
def test_good_addresses(good: str) -> None:
    assert check_address(good) == good.strip()


@pytest.mark.parametrize("bad", ["", "host", ":80", "host:", "host:0", "host:65536", "h:x",
                                 "a b:1", "h/x:1", None, 6380])
def test_bad_addresses_say_what_was_expected(bad: object) -> None:
    with pytest.raises(AddressError, match="HOST:PORT|host name"):
        check_address(bad)


def test_book_orders_started_local_given_and_marks_dead() -> None:
    book = ClusterBook()
    book.add_started({"address": "127.0.0.1:1", "pid": 1, "started": 1.0, "resources": {"CPU": 2}})
    book.remember("10.0.0.1:5")
    book.remember("127.0.0.1:1")  # already known: stays "started"
    local: list[dict[str, Any]] = [{"address": "127.0.0.1:2", "pid": 2, "started": 2.0},
             {"address": "127.0.0.1:1", "pid": 1, "started": 1.0},
             {"address": "garbage"}]
    entries = book.entries(local)
    assert [(e.address, e.origin, e.alive) for e in entries] == [
        ("127.0.0.1:1", "started", True), ("127.0.0.1:2", "local", True),
        ("10.0.0.1:5", "connected", None)]
    # the started one died: kept, not alive, still stoppable (local)
    entries = book.entries([])
    assert (entries[0].alive, entries[0].local) == (False, True)
    assert [e.address for e in entries] == ["127.0.0.1:1", "10.0.0.1:5"]


def test_book_selection_follows_start_connect_and_stop() -> None:
    book = ClusterBook(given="10.0.0.9:7")
    assert book.selected == "10.0.0.9:7"
    assert book.listing([])["clusters"][0]["origin"] == "env"
    book.select("127.0.0.1:3")
    # a selected local cluster that vanished is still listed, as not alive
    [_, gone] = book.entries([])
    assert (gone.address, gone.alive) == ("127.0.0.1:3", False)
    book.stopped("127.0.0.1:3")
    assert book.selected is None
    listing = book.listing([{"address": "127.0.0.1:4", "pid": 4}])
    assert listing["selected"] is None
    assert [c["selected"] for c in listing["clusters"]] == [False, False]


def test_task_buckets() -> None:
    assert [bucket_of(s) for s in ("FINISHED", "FAILED", "RUNNING", "RUNNING_IN_RAY_GET",
                                   "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER", None)] == [
        "finished", "failed", "running", "running", "pending", "pending", "pending"]
    assert count_tasks({"FINISHED": 2, "NIL": 1}) == {
        "pending": 1, "running": 0, "finished": 2, "failed": 0}


def test_panel_snapshot_tolerates_missing_fields() -> None:
    snap = panel_snapshot({"nodes": [{"node_id": "n"}, "junk"], "events": [{}]}, "h:1", now=2.0)
    assert snap["time_ms"] == 2000.0
    [node] = snap["nodes"]
    assert node["cpu_percent"] is None and node["gpus"] == [] and node["state"] == "ALIVE"
    assert snap["tasks"] == {"pending": 0, "running": 0, "finished": 0, "failed": 0}
    assert snap["events"][0]["bucket"] == "pending"
    assert snap["objects"]["largest"] == []


def test_restore_keeps_running_and_given_selections_only() -> None:
    saved = ClusterBook()
    saved.remember("10.0.0.1:5")
    saved.select("127.0.0.1:3")
    state = saved.to_state()
    assert state == {"selected": "127.0.0.1:3", "connected": ["10.0.0.1:5"]}

    running = ClusterBook()
    running.restore(state, [{"address": "127.0.0.1:3", "pid": 3}])
    assert running.selected == "127.0.0.1:3"
    assert "10.0.0.1:5" in [e.address for e in running.entries([])]

    gone = ClusterBook()
    gone.restore(state, [])
    assert gone.selected is None

    env_wins = ClusterBook(given="10.9.9.9:1")
    env_wins.restore(state, [{"address": "127.0.0.1:3", "pid": 3}])
    assert env_wins.selected == "10.9.9.9:1"

    junks: list[object] = [None, [], {"selected": 5, "connected": ["x", None]}]
    for junk in junks:
        book = ClusterBook()
        book.restore(junk, [])
        assert book.selected is None
