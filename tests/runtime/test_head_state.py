"""A head's persisted state and how a restarted head and its nodes use it. Plain calls,
no processes (the kill and restart scenarios are in test_head_restart.py)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from carme import _head_state as hs
from carme._head import HeadState, registry_entry
from carme._link import mark_head_down
from carme._node_actors import ActorDirectory
from carme._node_state import parse_view, view_row
from carme.protos import carme_pb2 as pb

HEAD = "ab" * 28
NODE = "cd" * 28
GONE = "ef" * 28


def _entry(**over: object) -> dict:
    e = {"host": "127.0.0.1", "address": "127.0.0.1:7001", "grpc_address": "127.0.0.1:7002",
         "resources": {"CPU": 2.0, "a": 1.0}, "labels": {"zone": "x"}, "store_file": "/dev/shm/s",
         "object_store_memory": 1 << 20, "is_head": False, "start_time": 100.5}
    e.update(over)
    return e


def _record(**over: object) -> hs.HeadRecord:
    rec = hs.HeadRecord(port=6380, grpc_port=6381, token="00" * 32, node_id=HEAD, job_id="0a0b0c0d",
                        nodes={NODE: _entry()},
                        actors=[hs.actor_entry(b"\x01" * 16, {"class_name": "K", "methods": {"ping": {}},
                                                              "lifetime": "detached", "max_restarts": 2},
                                               "keeper", "ns", NODE)],
                        placement_groups=[{"placement_group_id": "pg1", "state": "CREATED", "strategy": "PACK",
                                           "bundles": {"0": {"CPU": 1}}, "name": ""}],
                        jobs=[{"job_id": "0a0b0c0d", "status": "RUNNING"}])
    for k, v in over.items():
        setattr(rec, k, v)
    return rec


def test_a_record_survives_its_file(tmp_path: Path) -> None:
    path = hs.state_file(str(tmp_path / "state"), 6380)
    assert hs.load(path) is None  # no file: a new cluster
    rec = _record()
    hs.save(path, rec)
    assert hs.load(path) == rec
    # 0600 file in a 0700 directory, and no temporary file left beside it
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert os.listdir(os.path.dirname(path)) == ["6380.json"]
    hs.remove(path)
    hs.remove(path)  # twice is fine
    assert hs.load(path) is None


def test_an_atomic_write_that_fails_keeps_the_old_file(tmp_path: Path) -> None:
    path = hs.state_file(str(tmp_path), 1)
    hs.save(path, _record())
    before = Path(path).read_text()

    with pytest.raises(TypeError):
        hs.write_atomic(path, 12345)  # type: ignore[arg-type]  # not text: the write fails
    assert Path(path).read_text() == before
    assert os.listdir(os.path.dirname(path)) == ["1.json"]


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda d: "{not json", "Expecting property name"),
    (lambda d: "[]", "the file must be dict"),
    (lambda d: {**d, "format": 99}, "format is 99"),
    (lambda d: {**d, "port": "6380"}, "port must be int"),
    (lambda d: {**d, "port": 70000}, "port must be a port in 1..65535"),
    (lambda d: {**d, "grpc_port": True}, "grpc_port must be int"),
    (lambda d: {**d, "token": "zz" * 32}, "token must be hex digits"),
    (lambda d: {**d, "token": "00"}, "token is too short"),
    (lambda d: {**d, "nodes": []}, "nodes must be dict"),
    (lambda d: {**d, "nodes": {NODE: {**_entry(), "resources": {"CPU": -1}}}}, "resources['CPU'] must be a finite number"),
    (lambda d: {**d, "nodes": {NODE: {k: v for k, v in _entry().items() if k != "grpc_address"}}}, "has no 'grpc_address'"),
    (lambda d: {**d, "nodes": {"not-hex": _entry()}}, "must be hex digits"),
    (lambda d: {**d, "actors": [{**d["actors"][0], "node_id": 5}]}, "actors[0].node_id must be str"),
    (lambda d: {**d, "jobs": "x"}, "jobs must be list"),
])
def test_a_file_that_does_not_check_names_itself_and_the_field(tmp_path: Path, mutate, field: str) -> None:
    path = str(tmp_path / "heads" / "6380.json")
    os.makedirs(os.path.dirname(path))
    data = mutate(json.loads(hs.encode(_record())))
    Path(path).write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(hs.HeadStateError) as err:
        hs.load(path)
    assert path in str(err.value) and field in str(err.value) and "Move it away" in str(err.value)


def test_merge_of_a_registering_node() -> None:
    entry, how = hs.merge_node(None, _entry())
    assert how == "new" and entry == _entry()
    # the same node after a head restart: same start time; what it reports now wins
    entry, how = hs.merge_node(_entry(), _entry(address="127.0.0.1:9999"))
    assert how == "rejoined" and entry["address"] == "127.0.0.1:9999"
    _, how = hs.merge_node(_entry(), _entry(start_time=200.0))
    assert how == "restarted"
    with pytest.raises(KeyError):
        hs.merge_node(None, {"host": "x"})  # a registration lacking fields is not an entry


def _info(nid: str, **over: object) -> pb.NodeInfo:
    e = _entry(**over)
    return pb.NodeInfo(node_id=nid, host=e["host"], address=e["address"], grpc_address=e["grpc_address"],
                       resources_json=json.dumps(e["resources"]), labels_json=json.dumps(e["labels"]),
                       store_file=e["store_file"], object_store_memory=e["object_store_memory"],
                       is_head=e["is_head"], start_time=e["start_time"])


def test_a_restarted_heads_registry_takes_its_nodes_back() -> None:
    state = HeadState()
    state.restore({NODE: _entry(), GONE: _entry(start_time=5.0)})
    # restored nodes count as alive (for one NODE_TIMEOUT) and heartbeat without registering
    assert state.heartbeat(pb.Heartbeat(node_id=NODE, available_json='{"CPU": 1}', metrics_json="{}"))
    assert {n.info.node_id: n.state for n in state.view().nodes} == {NODE: "ALIVE", GONE: "ALIVE"}
    assert registry_entry(state.nodes[NODE]["info"]) == _entry()
    assert state.register(_info(NODE)) == "rejoined"
    assert state.register(_info(GONE, start_time=6.0)) == "restarted"
    assert state.register(_info("12" * 28)) == "new"
    # one that stays silent goes DEAD and out of what is persisted
    state.nodes[GONE]["last"] -= 60
    assert {n.info.node_id: n.state for n in state.view().nodes}[GONE] == "DEAD"
    assert set(state.registry()) == {NODE, "12" * 28}


def test_actors_persisted_and_restored() -> None:
    d = ActorDirectory("ns")
    remote, _ = d.create(b"\x01" * 16, {"class_name": "K", "methods": {"ping": {}}, "name": "keeper",
                                        "lifetime": "detached", "max_restarts": 3}, "owner")
    remote.state, remote.remote_node = "ALIVE", NODE
    local, _ = d.create(b"\x02" * 16, {"class_name": "L", "methods": {}, "lifetime": "detached"}, "owner")
    local.state = "ALIVE"
    d.create(b"\x03" * 16, {"class_name": "Plain", "methods": {}}, "owner")  # neither: not kept
    d.create(b"\x04" * 16, {"class_name": "Named", "methods": {}, "name": "n2", "namespace": "other"}, "o")
    rows = hs.persisted_actors(d, HEAD)
    assert [(r["name"], r["namespace"], r["node_id"], r["detached"]) for r in rows] == [
        ("keeper", "ns", NODE, True), ("", "ns", HEAD, True), ("n2", "other", HEAD, False)]
    rec = _record(actors=rows)
    rec = hs.decode(hs.encode(rec), "f")  # through the file's form
    fresh = ActorDirectory("ns")
    hs.restore_actors(fresh, rec)
    keeper = fresh.lookup("keeper", "ns")
    assert keeper.remote_node == NODE and keeper.state == "ALIVE" and keeper.no_restart
    assert keeper.spec["class_name"] == "K" and keeper.spec["methods"] == {"ping": {}}
    # what ran on the head died with it: dead, with the reason, its name free again
    dead = fresh.get(b"\x02" * 16)
    assert dead is not None and dead.state == "DEAD" and "ran on the head node" in dead.death[1]
    with pytest.raises(ValueError, match="no live actor has that name"):
        fresh.lookup("n2", "other")
    fresh.create(b"\x05" * 16, {"class_name": "Named", "methods": {}, "name": "n2", "namespace": "other"}, "o")


def test_snapshot_keeps_identity_and_sorts() -> None:
    base = _record(nodes={}, actors=[])
    a2 = hs.actor_entry(b"\x02" * 16, {"class_name": "B"}, "b", "ns", NODE)
    a1 = hs.actor_entry(b"\x01" * 16, {"class_name": "A", "not_kept": 1}, "a", "ns", NODE)
    snap = hs.snapshot(base, {NODE: _entry(), HEAD: _entry(is_head=True)}, [a2, a1], [], [])
    assert (snap.token, snap.port, snap.grpc_port, snap.node_id) == (base.token, 6380, 6381, HEAD)
    assert list(snap.nodes) == sorted([NODE, HEAD]) and [a["name"] for a in snap.actors] == ["a", "b"]
    assert "not_kept" not in snap.actors[0]["spec"]
    # the same tables give the same text: the head writes only when something changed
    assert hs.encode(snap) == hs.encode(hs.snapshot(base, {HEAD: _entry(is_head=True), NODE: _entry()},
                                                    [a1, a2], [], []))


def test_a_node_marks_an_unreachable_head_dead_with_a_message() -> None:
    view = pb.ClusterView(version=3, nodes=[
        pb.NodeState(info=_info(HEAD, is_head=True, address="127.0.0.1:6380"), available_json="{}",
                     metrics_json='{"cpu_percent": 3}', state="ALIVE"),
        pb.NodeState(info=_info(NODE), available_json="{}", metrics_json="{}", state="ALIVE")])
    message = hs.head_unreachable("127.0.0.1:6380", 4.2)
    rows, notes = parse_view(mark_head_down(view, message))
    assert notes == []
    by_id = {r["node_id"]: view_row(r) for r in rows}
    assert by_id[HEAD]["state"] == "DEAD" and by_id[HEAD]["state_message"] == message
    assert by_id[NODE]["state"] == "ALIVE" and by_id[NODE]["state_message"] is None
    assert by_id[HEAD]["metrics"]["cpu_percent"] == 3
    assert view.nodes[0].state == "ALIVE"  # the last real view is left as it was
    for part in ("127.0.0.1:6380", "unreachable", "4 s", "carme status --address 127.0.0.1:6380",
                 "carme start --head --port 6380"):
        assert part in message


def test_placement_groups_come_back_and_are_placed_again() -> None:
    from carme._scheduler import ClusterScheduler
    old = ClusterScheduler()
    old.add_node(NODE, {"CPU": 4})
    old.create_placement_group("pg-a", [{"CPU": 1}, {"CPU": 2}], "PACK", "alpha")
    old.create_placement_group("pg-gone", [{"CPU": 1}], "SPREAD", "")
    old.remove_placement_group("pg-gone")
    rec = hs.decode(hs.encode(_record(placement_groups=old.placement_groups())), "f")
    fresh = ClusterScheduler()
    assert hs.restore_placement_groups(fresh, rec) == ["pg-a"]
    assert fresh.placement_group("pg-a")["state"] == "PENDING"  # no node back yet
    fresh.add_node(NODE, {"CPU": 4})
    fresh.poll()
    pg = fresh.placement_group("pg-a")
    assert (pg["state"], pg["name"], pg["strategy"]) == ("CREATED", "alpha", "PACK")
    assert pg["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 2.0}}


@pytest.mark.parametrize(("pg", "field"), [
    ({"strategy": "SIDEWAYS"}, "Invalid placement group strategy 'SIDEWAYS'"),
    ({"bundles": {"x": {"CPU": 1}}}, "must be a bundle index"),
    ({"bundles": {"0": {"CPU": "1"}}}, "bundles[0]['CPU'] must be a finite number"),
    ({"name": None}, "placement_groups[0].name must be str"),
])
def test_a_bad_placement_group_in_the_file_is_named(tmp_path: Path, pg: dict, field: str) -> None:
    row = {"placement_group_id": "pg1", "state": "CREATED", "strategy": "PACK",
           "bundles": {"0": {"CPU": 1}}, "name": "", **pg}
    text = hs.encode(_record(placement_groups=[row]))
    with pytest.raises(hs.HeadStateError, match=re.escape(field)):
        hs.decode(text, str(tmp_path / "x.json"))


def test_a_node_says_the_head_is_down_only_after_the_grace_and_once() -> None:
    from carme._link import HEAD_GRACE, ClusterLink
    link = ClusterLink.__new__(ClusterLink)  # just the heartbeat bookkeeping, no sockets
    posted: list[tuple] = []
    link.post = posted.append  # type: ignore[method-assign]
    link.is_head, link.head_address = False, "127.0.0.1:7002"
    link.head_down_since, link.head_marked_down = None, False
    link.last_view = pb.ClusterView(nodes=[pb.NodeState(
        info=_info(HEAD, is_head=True, address="127.0.0.1:6380"), state="ALIVE")])
    link.head_failed()
    assert posted == [] and link.head_down_since is not None  # one failure: not yet
    link.head_down_since -= HEAD_GRACE
    link.head_failed()
    link.head_failed()
    assert len(posted) == 1 and posted[0][0] == "view"  # said once, not every beat
    (row,), _ = parse_view(posted[0][1])
    assert row["state"] == "DEAD" and "127.0.0.1:6380" in row["metrics"]["state_message"]
    # the head itself never marks itself down
    head = ClusterLink.__new__(ClusterLink)
    head.post = posted.append  # type: ignore[method-assign]
    head.is_head, head.head_down_since, head.head_marked_down = True, 0.0, False
    head.last_view = link.last_view
    head.head_failed()
    assert len(posted) == 1
