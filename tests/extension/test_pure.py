"""Synchronous tests of the I/O-free parts: the cluster book, start bodies, the panel snapshot."""

from __future__ import annotations

import math
from typing import Any

import pytest

from carme_lab._bodies import BodyError, StartSpec, connect_body, start_spec
from carme_lab._clusters import (
    AddressError,
    ClusterBook,
    check_address,
    check_joinable,
    engine_of,
    kind_of,
)
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
    assert state == {"selected": "127.0.0.1:3", "connected": ["10.0.0.1:5"], "dashboards": {}}

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


# ---------------------------------------------------------------- ids of both engines
@pytest.mark.parametrize(("given", "normal", "engine", "kind"), [
    ("127.0.0.1:6380", "127.0.0.1:6380", "carme", "cluster"),
    (" ray:10.0.0.1:6379 ", "ray:10.0.0.1:6379", "ray", "cluster"),
    ("ray: h:1", "ray:h:1", "ray", "cluster"),
    ("embedded:0042", "embedded:42", "carme", "embedded"),
])
def test_ids_of_both_engines(given: str, normal: str, engine: str, kind: str) -> None:
    assert check_address(given) == normal
    assert (engine_of(normal), kind_of(normal)) == (engine, kind)


@pytest.mark.parametrize(("bad", "says"), [
    ("ray://127.0.0.1:10001", "Ray Client"), ("ray:host", "HOST:PORT"), ("ray:h:0", "HOST:PORT"),
    ("embedded:x", "embedded:PID"), ("embedded:0", "embedded:PID"),
])
def test_bad_ids_say_what_was_expected(bad: str, says: str) -> None:
    with pytest.raises(AddressError, match=says):
        check_address(bad)


def test_embedded_clusters_cannot_be_joined() -> None:
    with pytest.raises(AddressError, match="lives and dies with that kernel"):
        check_joinable("embedded:7")
    with pytest.raises(AddressError, match="lives and dies"):
        ClusterBook().remember("embedded:7")
    assert check_joinable("ray:h:1") == "ray:h:1"


def test_book_shows_the_viewed_then_selected_then_newest_embedded() -> None:
    book = ClusterBook()
    rows: list[dict[str, Any]] = [
        {"address": "embedded:10", "pid": 10, "started": 1.0, "notebook": "a.ipynb"},
        {"address": "embedded:11", "pid": 11, "started": 2.0, "notebook": "b.ipynb"},
        {"address": "ray:127.0.0.1:6379", "pid": 12, "started": 3.0, "owned": False},
    ]
    listing = book.listing(rows)
    assert listing["showing"] == "embedded:11"  # nothing chosen: the newest kernel's cluster
    by_id = {c["id"]: c for c in listing["clusters"]}
    assert by_id["embedded:11"]["showing"] and by_id["embedded:11"]["notebook"] == "b.ipynb"
    assert not by_id["embedded:11"]["stoppable"] and not by_id["embedded:11"]["joinable"]
    assert by_id["ray:127.0.0.1:6379"]["engine"] == "ray"
    assert not by_id["ray:127.0.0.1:6379"]["stoppable"], "a Ray head this server did not start"
    book.select("ray:127.0.0.1:6379")
    assert book.listing(rows)["showing"] == "ray:127.0.0.1:6379"
    book.view("embedded:10")
    assert book.listing(rows)["showing"] == "embedded:10"
    assert book.selected == "ray:127.0.0.1:6379", "watching changes nothing for kernels"
    assert book.listing(rows[1:])["showing"] == "ray:127.0.0.1:6379", "a viewed one that ended"
    book.select(None)
    assert book.listing(rows)["showing"] == "embedded:11"
    assert book.listing([])["showing"] is None


def test_started_ray_heads_and_local_carme_clusters_are_stoppable() -> None:
    book = ClusterBook()
    book.add_started({"address": "ray:127.0.0.1:7000", "pid": 5, "dashboard": "http://127.0.0.1:1"})
    rows: list[dict[str, Any]] = [{"address": "ray:127.0.0.1:7000", "pid": 5, "owned": True},
                                  {"address": "127.0.0.1:6380", "pid": 6}]
    by_id = {e.address: e for e in book.entries(rows)}
    assert by_id["ray:127.0.0.1:7000"].stoppable and by_id["127.0.0.1:6380"].stoppable
    assert by_id["ray:127.0.0.1:7000"].to_json(None)["dashboard"] == "http://127.0.0.1:1"
    # after a server restart the record says this kind of server started it
    again = {e.address: e for e in ClusterBook().entries(rows)}
    assert again["ray:127.0.0.1:7000"].stoppable


# ---------------------------------------------------------------- start bodies
def test_start_spec_defaults_and_ray_fields() -> None:
    assert start_spec({}) == StartSpec()
    spec = start_spec({"engine": "ray", "num_cpus": 2, "num_gpus": 0, "port": 7001,
                       "dashboard_port": 0, "resources": {"disk": 1}, "select": False})
    assert (spec.engine, spec.num_cpus, spec.port, spec.dashboard_port, spec.select) == (
        "ray", 2.0, 7001, 0, False)
    assert spec.resources == {"disk": 1.0}


@pytest.mark.parametrize(("body", "field"), [
    ({"num_cpu": 1}, "'num_cpu'"),
    ({"resources": []}, "'resources'"),
    ({"resources": {"disk": "x"}}, "resources.disk"),
    ({"resources": {"CPU": 1}}, "num_cpus"),
    ({"num_cpus": math.inf}, "num_cpus"),
    ({"num_gpus": math.nan}, "num_gpus"),
    ({"resources": {"disk": math.inf}}, "resources.disk"),
    ({"num_cpus": -1}, "num_cpus"),
    ({"num_cpus": True}, "num_cpus"),
    ({"num_cpus": "2"}, "num_cpus"),
    ({"select": "yes"}, "select"),
    ({"engine": "spark"}, "engine"),
    ({"port": 7001}, "'port'"),  # a Ray field on a carme cluster
    ({"engine": "ray", "port": 70000}, "port"),
    ({"engine": "ray", "dashboard_port": 1.5}, "dashboard_port"),
    ({"engine": "ray", "num_cpus": 1.5}, "whole number"),
    ({"engine": "ray", "port": 7001, "dashboard_port": 7001}, "must differ"),
])
def test_start_spec_names_the_bad_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(BodyError) as e:
        start_spec(body)
    assert field in str(e.value)


def test_connect_body_takes_a_ray_dashboard() -> None:
    assert connect_body({"address": "ray:h:1", "dashboard": "http://h:8266/"}) == (
        "ray:h:1", True, "http://h:8266")
    assert connect_body({"address": None}) == (None, True, None)
    assert connect_body({"address": "", "select": False}) == (None, False, None)
    book = ClusterBook()
    book.remember("ray:h:1", "http://h:8266")
    assert book.listing([])["clusters"][0]["dashboard"] == "http://h:8266"
    state = book.to_state()
    assert state["dashboards"] == {"ray:h:1": "http://h:8266"}
    again = ClusterBook()
    again.restore(state, [])
    assert again.dashboards() == {"ray:h:1": "http://h:8266"}


@pytest.mark.parametrize(("body", "says"), [
    ({}, "JSON body"),
    ({"address": "h:1", "port": 1}, "'port'"),
    ({"address": "h:1", "select": "no"}, "select"),
    ({"address": "h:1", "dashboard": "http://h:8265"}, "goes with a Ray"),
    ({"address": "ray:h:1", "dashboard": "ftp://h:1"}, "dashboard"),
    ({"address": "ray:h:1", "dashboard": "http://h:99999"}, "dashboard"),
    ({"address": "ray:h:1", "dashboard": "http://h:1/api"}, "dashboard"),
    ({"address": "ray:h:1", "dashboard": "http://u:p@h:1"}, "dashboard"),
    ({"address": "ray:h:1", "dashboard": 8265}, "dashboard"),
])
def test_connect_body_names_what_is_wrong(body: dict[str, Any], says: str) -> None:
    with pytest.raises(BodyError, match=says):
        connect_body(body)
