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


def test_spill_and_restore_account_and_list_files_to_remove():
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
    assert t.needs_restore(a) is None and t.dropped_files == [a]
    ok, payload = t.map_object(a, "w1")
    assert ok and payload[1] == off and payload[2] == MB
    s = t.spill.stats()
    assert (s["spilled_bytes"], s["spilled_objects"], s["spilled_total"], s["restored_total"]) == (0, 0, MB, MB)


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
