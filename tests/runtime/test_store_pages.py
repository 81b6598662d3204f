"""carme-only: how the store gets its pages ready for writers.

The arena's high-water mark, a writer's mapping faulted in by whole chunks once, and the
daemon's prefaulter giving untouched store pages their memory ahead of the writers. Real
files in /dev/shm, removed by each test.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator

import pytest

from carme import _store as S
from carme._store import Arena, Prefaulter, SharedArena, create_store_file


@pytest.fixture
def store_file() -> Iterator[str]:
    path = f"/dev/shm/carme-test-{secrets.token_hex(6)}-store"
    create_store_file(path, 64 << 20)
    try:
        yield path
    finally:
        os.unlink(path)


def _resident(path: str) -> int:
    return os.stat(path).st_blocks * 512


def test_the_high_water_mark_is_the_end_of_the_highest_block_ever_handed_out() -> None:
    a = Arena(1 << 20)
    x = a.allocate(1000)
    y = a.allocate(5000)
    assert a.high_water == y + S._aligned(5000)
    a.free(y)
    a.free(x)
    assert a.high_water == y + S._aligned(5000)  # freeing keeps the pages: the mark stays
    a.allocate(100)
    assert a.high_water == y + S._aligned(5000)


def test_a_large_write_maps_its_chunks_once(store_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    arena = SharedArena(store_file)
    calls: list[tuple[int, int]] = []
    real = arena.map.madvise
    monkeypatch.setattr(arena, "map", type("M", (), {
        "madvise": staticmethod(lambda op, start, n: (calls.append((start, n)), real(op, start, n))),
        "close": arena.map.close,
    })())
    chunk = S.POPULATE_CHUNK
    view = arena.writable(chunk + 100, 3 * chunk)  # touches chunks 1..4
    view[:] = b"\x07" * len(view)
    if not arena._can_populate:
        pytest.skip("this kernel has no MADV_POPULATE_WRITE")
    assert calls == [(chunk, 4 * chunk)]
    arena.writable(2 * chunk, 4 * chunk)  # chunks 2..5: only 5 is new
    assert calls[1:] == [(5 * chunk, chunk)]
    arena.writable(3 * chunk, S.POPULATE_MIN - 1)  # small writes fault as they go
    assert len(calls) == 2
    assert _resident(store_file) >= 5 * chunk
    del view
    arena.close()


def test_the_prefaulter_readies_pages_past_the_mark_in_proportion(store_file: str) -> None:
    p = Prefaulter(store_file, 64 << 20)
    try:
        p.grew(1 << 20, S.POPULATE_MIN - 1)  # small allocations ask for nothing
        assert p.ready_to == 0
        p.grew(8 << 20, 4 << 20)  # 8 MiB ahead of a 4 MiB allocation
        assert p.ready_to == 16 << 20
        deadline = time.monotonic() + 10
        while _resident(store_file) < 8 << 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _resident(store_file) >= 8 << 20  # the pages past the mark exist now
        assert _resident(store_file) < 12 << 20  # and nothing below it was touched here
        p.grew(60 << 20, 30 << 20)  # never past the store's end
        assert p.ready_to == 64 << 20
    finally:
        p.close()
    assert not p._thread.is_alive()


@pytest.mark.processes
def test_a_daemon_makes_room_ahead_of_a_growing_workload() -> None:
    """A put that grows the store leaves pages ready for the next one (a real cluster)."""
    np = pytest.importorskip("numpy")
    import carme
    carme.init(num_cpus=1)
    try:
        from carme._api import STATE
        path = STATE.core.arena.path
        before = _resident(path)
        ref = carme.put(np.ones(8 << 20, dtype=np.uint8))
        deadline = time.monotonic() + 10
        while _resident(path) < before + (24 << 20) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _resident(path) >= before + (24 << 20)  # the object's 8 MiB and 16 MiB ahead
        assert (carme.get(ref) == 1).all()
    finally:
        carme.shutdown()
