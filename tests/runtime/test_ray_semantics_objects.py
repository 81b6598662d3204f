"""Differential tests: objects, get, put, wait, awaiting refs, numpy zero-copy."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

pytestmark = [pytest.mark.processes, pytest.mark.ray]

BIG = 1_000_000  # 8 MB of float64/int64: well above any inline threshold


def test_put_get_values(ray_impl):
    ray = ray_impl
    values = [1, "two", 3.0, None, {"a": [1, 2]}, (1, 2), b"\x00" * 10]
    refs = [ray.put(v) for v in values]
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert [ray.get(r) for r in refs] == values
    assert ray.get(refs) == values


def test_object_ref_identity(ray_impl):
    ray = ray_impl
    r = ray.put(1)
    assert isinstance(r.hex(), str) and r.hex()
    assert r == r and hash(r) == hash(r)
    assert {r: "x"}[r] == "x"
    assert r != ray.put(1)


def test_refs_inside_objects_stay_refs(ray_impl):
    ray = ray_impl
    inner = ray.put("inner")
    outer = ray.get(ray.put({"ref": inner}))
    assert isinstance(outer["ref"], ray.ObjectRef)
    assert ray.get(outer["ref"]) == "inner"


def test_get_of_non_ref_fails(ray_impl):
    ray = ray_impl
    with pytest.raises((TypeError, ValueError)):
        ray.get(1)
    with pytest.raises((TypeError, ValueError)):
        ray.get([ray.put(1), 2])


def test_get_timeout(ray_impl):
    ray = ray_impl

    @ray.remote
    def slow():
        time.sleep(1.5)
        return "late"

    ref = slow.remote()
    start = time.monotonic()
    with pytest.raises(ray.exceptions.GetTimeoutError) as ei:
        ray.get(ref, timeout=0.2)
    assert time.monotonic() - start < 1.2
    assert isinstance(ei.value, TimeoutError)
    assert ray.get(ref, timeout=30) == "late"
    assert ray.get(ray.put(5), timeout=0) == 5


def test_wait_keeps_input_order(ray_impl):
    ray = ray_impl

    @ray.remote
    def slow():
        time.sleep(2)
        return "slow"

    @ray.remote
    def fast(x):
        return x

    s = slow.remote()
    f1, f2 = fast.remote(1), fast.remote(2)
    ray.get([f1, f2])
    ready, not_ready = ray.wait([f2, s, f1], num_returns=2, timeout=10)
    assert ready == [f2, f1]
    assert not_ready == [s]

    ready, not_ready = ray.wait([s, f1])  # num_returns defaults to 1
    assert ready == [f1] and not_ready == [s]

    ready, not_ready = ray.wait([s], timeout=0)
    assert ready == [] and not_ready == [s]

    ready, not_ready = ray.wait([f1, s, f2], num_returns=3, timeout=30, fetch_local=False)
    assert ready == [f1, s, f2] and not_ready == []


def test_wait_bad_arguments(ray_impl):
    ray = ray_impl
    r = ray.put(1)
    with pytest.raises(ValueError):
        ray.wait([r, r])
    with pytest.raises(ValueError):
        ray.wait([r], num_returns=2)
    with pytest.raises(TypeError):
        ray.wait(r)


def test_await_ref_in_asyncio(ray_impl):
    ray = ray_impl

    @ray.remote
    def square(x):
        time.sleep(0.05)
        return x * x

    async def main():
        one = await square.remote(3)
        many = await asyncio.gather(*[square.remote(i) for i in range(4)])
        put = await ray.put("p")
        return one, many, put

    assert asyncio.run(main()) == (9, [0, 1, 4, 9], "p")


def test_await_ref_error_raises_user_exception(ray_impl):
    ray = ray_impl

    @ray.remote
    def bad():
        raise KeyError("nope")

    async def main():
        return await bad.remote()

    with pytest.raises(KeyError):
        asyncio.run(main())


def test_numpy_get_is_read_only_zero_copy(ray_impl):
    ray = ray_impl
    arr = np.arange(BIG, dtype=np.int64)
    out = ray.get(ray.put(arr))
    assert np.array_equal(out, arr)
    assert not out.flags.writeable
    assert not out.flags.owndata  # a view on shared memory, not a copy
    with pytest.raises(ValueError):
        out[0] = 1


def test_numpy_task_args_and_results(ray_impl):
    ray = ray_impl

    @ray.remote
    def describe(x):
        return float(x.sum()), x.flags.writeable

    @ray.remote
    def make(n):
        return np.ones(n)

    ref = ray.put(np.ones(BIG))
    assert ray.get(describe.remote(ref)) == (float(BIG), False)
    out = ray.get(make.remote(BIG))
    assert out.shape == (BIG,) and not out.flags.writeable
    assert ray.get(describe.remote(make.remote(BIG)))[0] == float(BIG)


def test_large_objects(ray_impl):
    ray = ray_impl
    payload = {"blob": b"z" * 2_000_000, "text": "y" * 200_000, "list": list(range(50_000))}
    assert ray.get(ray.put(payload)) == payload

    @ray.remote
    def size(d):
        return len(d["blob"]) + len(d["text"]) + len(d["list"])

    assert ray.get(size.remote(payload)) == 2_250_000
    assert ray.get(size.remote(ray.put(payload))) == 2_250_000


def test_many_refs_get_in_order(ray_impl):
    ray = ray_impl

    @ray.remote
    def ident(x):
        return x

    refs = [ident.remote(i) for i in range(200)]
    assert ray.get(refs) == list(range(200))
