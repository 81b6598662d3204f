"""Spilling's pure parts, driven synchronously: which objects may go to disk, in what order,
the accounting of spilled and restored bytes, maps, and the error when nothing can go.

No file or process: the table is told "this object is on disk now" (`mark_spilled`) and
"it is back at this offset" (`mark_restored`) as the daemon would after its copies.
"""

from __future__ import annotations

import pytest

from carme import _messages as M
from carme import exceptions as exc
from carme._node_core import NodeCore
from carme._node_effects import Client, ClientGone
from carme._node_objects import ObjectTable
from carme._node_spill import Candidate, SpillSpace, full_message, spill_victims
from carme._spill_files import spill_options
from carme._store import Arena

NODE = "n" * 56
MB = 1 << 20


def _oid(i: int) -> bytes:
    return bytes([i]) * 28


def _put(t: ObjectTable, i: int, size: int = MB, holder: str = "driver") -> bytes:
    oid = _oid(i)
    off = t.alloc(oid, size, 1, holder)
    t.export(oid, (M.SHARED, off, size, False, NODE), [], 0, "ndarray", holder, 1)
    return oid


def _table(capacity: int = 4 * MB, limit: int | None = None) -> ObjectTable:
    return ObjectTable(Arena(capacity), NODE, SpillSpace(limit), "/spill")


def test_victims_are_the_least_recently_used_until_enough_is_freed():
    space = SpillSpace()
    cands = [Candidate(_oid(i), used, 0, MB) for i, used in ((1, 5), (2, 1), (3, 3), (4, 9))]
    assert [c.oid for c in spill_victims(cands, 2 * MB, space)] == [_oid(2), _oid(3)]
    assert [c.oid for c in spill_victims(cands, 1, space)] == [_oid(2)]
    assert spill_victims([], MB, space) == []


def test_victims_respect_the_spill_limit():
    space = SpillSpace(limit=MB + MB // 2)
    space.add(_oid(9), MB)
    cands = [Candidate(_oid(1), 1, 0, MB), Candidate(_oid(2), 2, 0, MB // 4)]
    # the 1 MiB object would pass the limit; the quarter fits
    assert [c.oid for c in spill_victims(cands, MB, space)] == [_oid(2)]


def test_only_sealed_unmapped_local_objects_are_candidates():
    t = _table()
    a = _put(t, 1)
    b = _put(t, 2)
    t.alloc(_oid(3), MB, 1, "driver")  # still being written
    assert t.map_object(b, "w1")[0]  # a process reads b
    t.hold(a, "pull:1")  # a peer pulls a
    assert t.spill_candidates() == []
    t.unhold(a, "pull:1")
    t.unmap_object(b, "w1")
    assert sorted(c.oid for c in t.spill_candidates()) == [a, b]


def test_lru_order_follows_reads():
    t = _table()
    a, b, c = _put(t, 1), _put(t, 2), _put(t, 3)
    t.map_object(a, "w1")
    t.unmap_object(a, "w1")  # a was read last
    order = [v.oid for v in spill_victims(t.spill_candidates(), 3 * MB, t.spill)]
    assert order == [b, c, a]


def test_spill_and_restore_account_and_keep_the_file():
    t = _table()
    a = _put(t, 1)
    used = t.arena.used_bytes
    t.mark_spilled(a)
    assert t.arena.used_bytes == used - MB  # aligned size equals MB here
    assert t.spill.stats()["spilled_bytes"] == MB and t.spill.stats()["spilled_objects"] == 1
    row = t.rows(NODE)[0]
    assert row["spilled"] is True and row["location"] == "spilled"
    ok, err = t.map_object(a, "w1")  # the daemon restores before it maps
    assert not ok and isinstance(err, exc.ObjectStoreFullError)
    assert t.needs_restore(a) == MB
    off = t.arena.allocate(MB)
    t.mark_restored(a, off)
    assert t.needs_restore(a) is None and t.dropped_files == []  # the file stays
    ok, payload = t.map_object(a, "w1")
    assert ok and payload[1] == off and payload[2] == MB
    s = t.spill.stats()
    assert (s["spilled_bytes"], s["spilled_objects"], s["spilled_total"], s["restored_total"]) == (MB, 1, MB, MB)
    assert t.rows(NODE)[0]["spilled"] is False
    # leaving memory again needs no write: the candidate says its file is there
    t.unmap_object(a, "w1")
    assert [(c.oid, c.on_disk) for c in t.spill_candidates()] == [(a, True)]
    t.mark_spilled(a)
    assert t.spill.stats()["spilled_total"] == MB and t.rows(NODE)[0]["spilled"] is True
    t.decref([a], "driver")
    assert t.dropped_files == [a] and t.spill.used == 0


def test_a_restore_drops_its_file_when_the_spill_space_is_short():
    t = _table(limit=MB)
    a, b = _put(t, 1), _put(t, 2)
    t.mark_spilled(a)
    # room for a's restore: b must go to disk, which only fits once a's file goes
    assert [c.oid for c in spill_victims(t.spill_candidates(), MB, t.spill)] == []
    assert [c.oid for c in spill_victims(t.spill_candidates(), MB, t.spill, credit=MB)] == [b]
    t.mark_spilled(b)
    t.mark_restored(a, t.arena.allocate(MB))
    assert t.dropped_files == [a] and t.spill.used == MB and list(t.spill.files) == [b]


def test_victims_already_on_disk_cost_no_spill_space():
    space = SpillSpace(limit=0)
    cands = [Candidate(_oid(1), 1, 0, MB, on_disk=True), Candidate(_oid(2), 2, 0, MB)]
    assert [c.oid for c in spill_victims(cands, 2 * MB, space)] == [_oid(1)]


def test_freeing_a_spilled_object_removes_its_file_not_a_block():
    t = _table()
    a, b = _put(t, 1), _put(t, 2)
    t.mark_spilled(a)
    used = t.arena.used_bytes
    t.decref([a], "driver")
    assert t.dropped_files == [a] and t.arena.used_bytes == used
    assert t.spill.used == 0 and len(t) == 1 and t.get_entry(b) is not None


def test_a_process_that_goes_unmaps_everything():
    t = _table()
    core = NodeCore(t, node_id=NODE)
    a = _put(t, 1)
    client = Client("conn", "w1", 5, None, None)
    answer = core.handle(client, M.MapObject(1, a))[0]
    assert answer.ok and answer.value[0] == M.SHARED
    core.handle(client, M.MapObject(2, a))
    core.handle(client, M.UnmapObject(a))
    assert t.spill_candidates() == []  # one map left
    core.handle(None, ClientGone(client))
    assert [c.oid for c in t.spill_candidates()] == [a] and t.maps_by == {}


def test_store_full_error_says_what_is_in_memory_and_on_disk_and_how_to_free():
    t = _table(capacity=2 * MB, limit=MB)
    a = _put(t, 1)
    _put(t, 2)
    t.mark_spilled(a)
    core = NodeCore(t, node_id=NODE)
    answer = core.handle(Client("conn", "driver", 1, None, None), M.Alloc(3, _oid(3), 2 * MB, 1, None))[0]
    assert not answer.ok and isinstance(answer.value, exc.ObjectStoreFullError)
    text = str(answer.value)
    for part in ("2,097,152 bytes", "1,048,576 of 2,097,152 bytes are in memory",
                 "1,048,576 bytes are spilled to disk (1 objects, limit 1,048,576 bytes)",
                 "the spill space is full", "drop ObjectRefs", "object_store_memory=",
                 "object_spilling_directory="):
        assert part in text, (part, text)


def test_full_message_names_objects_in_use():
    text = full_message(10, 100, 90, 5, 3, SpillSpace(), "/d", mapped=2)
    assert "in use" in text and "no limit" in text and "/d" in text


def test_spill_options_take_rays_shape_and_carmes(tmp_path):
    cfg = '{"type": "filesystem", "params": {"directory_path": "%s"}}' % (tmp_path / "a")
    assert spill_options({"object_spilling_config": cfg}) == {"object_spilling_directory": str(tmp_path / "a")}
    assert (tmp_path / "a").is_dir()
    assert spill_options({"object_spilling_directory": str(tmp_path), "object_spilling_max_bytes": 5}) == {
        "object_spilling_directory": str(tmp_path), "object_spilling_max_bytes": 5}
    assert spill_options({"memory_usage_threshold": 0.5}) == {}
    with pytest.raises(ValueError, match="object_spilling_config must be JSON like"):
        spill_options({"object_spilling_config": '{"type": "smart_open", "params": {"uri": "s3://x"}}'})
    with pytest.raises(ValueError, match="object_spilling_max_bytes must be a number of bytes"):
        spill_options({"object_spilling_max_bytes": -1})
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot be created"):
        spill_options({"object_spilling_directory": str(blocker / "sub")})


def test_a_restore_may_use_the_disk_space_its_own_file_frees():
    space = SpillSpace(limit=2 * MB)
    space.add(_oid(9), 2 * MB)  # full
    cands = [Candidate(_oid(1), 1, 0, MB)]
    assert spill_victims(cands, MB, space) == []
    assert [c.oid for c in spill_victims(cands, MB, space, credit=MB)] == [_oid(1)]


# ---------------------------------------------------------------------------- the spill thread
def test_spiller_writes_on_its_thread_and_serves_waiters_when_the_writes_end(tmp_path):
    """The shell around the policy: real files, the copying thread, and the loop's side
    run by hand (what the daemon's loop would run is collected from `post`)."""
    import queue as q

    from carme._spill_files import Spiller, SpillFiles
    store = tmp_path / "store"
    store.write_bytes(b"\0" * (4 * MB))
    t = _table()
    posted: q.Queue = q.Queue()
    log: list[str] = []
    files = SpillFiles(str(tmp_path / "spill"), str(store))
    sp = Spiller(t, files, posted.put, lambda effects: None, log.append)
    oids = []
    with open(store, "r+b") as f:
        for i in range(4):
            oid = _put(t, i + 1)
            f.seek(t.get_entry(oid).payload[1])
            f.write(bytes([i + 1]) * MB)
            oids.append(oid)
    ran: list[str] = []
    sp.when_room(MB, lambda: ran.append("room"))
    assert ran == [] and t.get_entry(oids[0]).spilling  # the oldest is being written
    assert t.map_object(oids[0], "w1")[0]  # and stays readable meanwhile...
    t.unmap_object(oids[0], "w1")
    posted.get(timeout=30)()  # the write's end, on "the loop"
    assert ran == ["room"] and t.get_entry(oids[0]).spilled
    assert (tmp_path / "spill" / oids[0].hex()).read_bytes() == b"\1" * MB
    # the object comes back when read: room is made again (the next oldest goes)
    t.alloc(_oid(9), MB, 1, "driver")  # the room is taken
    sp.when_resident(oids[0], lambda: ran.append("back"))
    posted.get(timeout=30)()  # oids[1] written
    assert t.get_entry(oids[1]).spilled
    posted.get(timeout=30)()  # oids[0] read back
    assert ran == ["room", "back"] and not t.get_entry(oids[0]).spilled
    off = t.get_entry(oids[0]).payload[1]
    with open(store, "rb") as f:
        f.seek(off)
        assert f.read(MB) == b"\1" * MB
    assert t.dropped_files == [] and (tmp_path / "spill" / oids[0].hex()).exists()  # kept
    sp.close()
    assert not (tmp_path / "spill").exists() and log == []


def test_a_write_whose_object_was_mapped_meanwhile_is_dropped(tmp_path):
    import queue as q

    from carme._spill_files import Spiller, SpillFiles
    store = tmp_path / "store"
    store.write_bytes(b"\0" * (4 * MB))
    t = _table()
    posted: q.Queue = q.Queue()
    sp = Spiller(t, SpillFiles(str(tmp_path / "spill"), str(store)), posted.put, lambda e: None, print)
    oids = [_put(t, i + 1) for i in range(4)]
    ran: list[str] = []
    sp.when_room(MB, lambda: ran.append("room"))
    t.map_object(oids[0], "w1")  # read while being written: it stays in memory
    posted.get(timeout=30)()
    assert not t.get_entry(oids[0]).spilled and not (tmp_path / "spill" / oids[0].hex()).exists()
    # the waiter is still served: the next candidate goes
    posted.get(timeout=30)()
    assert ran == ["room"] and t.get_entry(oids[1]).spilled
    sp.close()


def test_the_writer_maps_an_object_from_its_alloc_until_it_unmaps():
    t = _table()
    off = t.alloc(_oid(1), MB, 1, "driver", writer="driver")
    t.export(_oid(1), (M.SHARED, off, MB, False, NODE), [], 0, "ndarray", "driver", 1)
    assert t.spill_candidates() == []  # its writer may read it without asking
    t.unmap_object(_oid(1), "driver")
    assert [c.oid for c in t.spill_candidates()] == [_oid(1)]


def test_room_waits_once_for_mappings_to_lapse_before_giving_up(tmp_path):
    """Objects only mapped may be a process's idle mappings, given back within a second:
    a waiter for room looks again once after that, then gives up if they are still mapped."""
    import queue as q

    from carme._spill_files import Spiller, SpillFiles
    store = tmp_path / "store"
    store.write_bytes(b"\0" * (2 * MB))
    t = _table(capacity=2 * MB)
    posted: q.Queue = q.Queue()
    sp = Spiller(t, SpillFiles(str(tmp_path / "spill"), str(store)), posted.put, lambda e: None, print)
    a, b = _put(t, 1), _put(t, 2)
    t.map_object(a, "w1")
    t.map_object(b, "w2")
    ran: list[str] = []
    sp.when_room(MB, lambda: ran.append("first"))
    assert ran == []  # waiting
    t.unmap_object(a, "w1")  # w1's idle mapping lapsed
    posted.get(timeout=30)()  # the look again: a is written
    posted.get(timeout=30)()  # its write ends
    assert ran == ["first"] and t.get_entry(a).spilled
    t.alloc(_oid(3), MB, 1, "driver")  # the room is taken; only b (mapped) is left
    sp.when_room(MB, lambda: ran.append("second"))
    assert ran == ["first"]
    posted.get(timeout=30)()  # looked again: b still mapped, so it gives up
    assert ran == ["first", "second"]
    sp.close()


def test_a_map_that_comes_before_the_seal_is_answered_by_it():
    """A reader's MAP may reach the daemon before the writer's EXPORT (another connection)."""
    t = _table()
    core = NodeCore(t, node_id=NODE)
    oid = _oid(1)
    off = t.alloc(oid, MB, 1, "driver")
    reader = Client("wconn", "w1", 5, None, None)
    assert core.handle(reader, M.MapObject(7, oid)) == []  # waits
    answers = core.handle(Client("dconn", "driver", 1, None, None),
                          M.Export(None, oid, (M.SHARED, off, MB, False, NODE), [], 0, "ndarray"))
    granted = [a for a in answers if a.client == "wconn"]
    assert len(granted) == 1 and granted[0].ok and granted[0].req == 7 and granted[0].value[1] == off
    assert t.get_entry(oid).maps == {"w1": 1}


def test_a_map_waiting_for_a_seal_hears_when_the_object_is_freed_instead():
    t = _table()
    core = NodeCore(t, node_id=NODE)
    oid = _oid(1)
    t.alloc(oid, MB, 1, "driver")
    core.handle(Client("wconn", "w1", 5, None, None), M.MapObject(7, oid))
    answers = t.release_holder("driver")
    assert [(a.client, a.req, a.ok) for a in answers] == [("wconn", 7, False)]
    assert isinstance(answers[0].value, exc.ObjectLostError)
