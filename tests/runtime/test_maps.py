"""A process's mappings of store objects (`_maps.MapCache`), driven synchronously."""

from __future__ import annotations

from carme import _messages as M
from carme._maps import MapCache

MB = 1 << 20
A, B, C = b"a" * 28, b"b" * 28, b"c" * 28


def _p(size: int = MB) -> tuple:
    return (M.SHARED, 64, size, False, "n" * 56)


def test_a_mapped_object_is_read_again_without_asking() -> None:
    c = MapCache()
    assert c.acquire(A) is None  # ask the daemon
    assert c.add(A, _p())
    assert c.release([A], now=0.0) == []  # idle, still mapped
    assert c.acquire(A) == _p()  # no round trip
    assert c.release([A], now=5.0) == [] and c.expired(now=5.5) == []


def test_idle_mappings_are_given_back_after_linger() -> None:
    c = MapCache(linger_s=1.0)
    c.add(A, _p())
    c.add(B, _p())
    c.release([A], now=0.0)
    c.release([B], now=0.5)
    assert c.expired(now=0.9) == []
    assert c.expired(now=1.2) == [A]
    assert c.expired(now=2.0) == [B]
    assert c.acquire(A) is None and c.entries == {} and c.idle_bytes == 0


def test_objects_in_use_never_expire() -> None:
    c = MapCache(linger_s=1.0)
    c.add(A, _p())
    c.acquire(A)  # two users
    c.release([A], now=0.0)
    assert c.expired(now=10.0) == [] and A in c.entries


def test_idle_bytes_are_bounded_oldest_first() -> None:
    c = MapCache(idle_limit=2 * MB)
    for oid in (A, B, C):
        c.add(oid, _p())
    assert c.release([A, B], now=0.0) == []
    assert c.release([C], now=1.0 - 0.5) == [A]  # three idle MiB > 2: the oldest goes
    assert c.idle_bytes == 2 * MB


def test_a_second_map_of_the_same_object_is_given_back_by_the_caller() -> None:
    c = MapCache()
    c.add(A, _p())
    assert not c.add(A, _p())  # another thread mapped it meanwhile
    assert c.entries[A].views == 2
