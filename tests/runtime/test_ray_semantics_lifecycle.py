"""Differential tests: init / shutdown / is_initialized, re-init, auto-init, namespaces.

Each test starts its own cluster (`fresh_impl` is not initialized); Ray's
dashboard is switched off to keep them fast (carme accepts and ignores it).
"""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.ray]

FAST = {"include_dashboard": False}


def test_init_shutdown_cycle(fresh_impl):
    ray = fresh_impl
    assert not ray.is_initialized()
    ray.init(num_cpus=1, **FAST)
    assert ray.is_initialized()
    assert ray.cluster_resources()["CPU"] == 1
    ray.shutdown()
    assert not ray.is_initialized()
    ray.shutdown()  # a second shutdown is harmless
    ray.init(num_cpus=2, **FAST)  # and the process can start a new cluster

    @ray.remote
    def f():
        return "again"

    assert ray.get(f.remote()) == "again"
    assert ray.cluster_resources()["CPU"] == 2


def test_init_twice(fresh_impl):
    ray = fresh_impl
    ray.init(num_cpus=1, **FAST)
    with pytest.raises(RuntimeError, match="ignore_reinit_error"):
        ray.init(num_cpus=1, **FAST)
    ray.init(num_cpus=1, ignore_reinit_error=True, **FAST)
    assert ray.is_initialized()


def test_init_as_context_manager(fresh_impl):
    ray = fresh_impl
    with ray.init(num_cpus=1, **FAST):
        assert ray.is_initialized()
        assert ray.get(ray.put("inside")) == "inside"
    assert not ray.is_initialized()


def test_first_remote_call_initializes(fresh_impl):
    ray = fresh_impl

    @ray.remote
    def f():
        return 1

    assert ray.get(f.remote()) == 1
    assert ray.is_initialized()


def test_address_auto_without_a_cluster(fresh_impl, monkeypatch):
    ray = fresh_impl
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("CARME_ADDRESS", raising=False)
    with pytest.raises(ConnectionError):
        ray.init(address="auto")
    assert not ray.is_initialized()


def test_job_namespace(fresh_impl):
    ray = fresh_impl
    ray.init(num_cpus=1, namespace="lifecycle-ns", **FAST)
    assert ray.get_runtime_context().namespace == "lifecycle-ns"

    @ray.remote
    class A:
        def ns(self):
            return ray.get_runtime_context().namespace

    a = A.options(name="in-job-ns").remote()
    assert ray.get(a.ns.remote()) == "lifecycle-ns"
    same = ray.get_actor("in-job-ns")
    assert ray.get(same.ns.remote()) == "lifecycle-ns"
    assert ray.get(ray.get_actor("in-job-ns", namespace="lifecycle-ns").ns.remote()) == "lifecycle-ns"


def test_empty_get_and_wait(fresh_impl):
    ray = fresh_impl
    ray.init(num_cpus=1, **FAST)
    assert ray.get([]) == []
    assert ray.wait([]) == ([], [])


def _physical_gpus() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return 0  # no driver: no GPUs
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def test_default_init_detects_real_gpus(fresh_impl):
    ray = fresh_impl
    n = _physical_gpus()
    if not n:
        pytest.skip("no GPU on this machine")
    ray.init(**FAST)
    assert ray.cluster_resources().get("GPU") == n

    @ray.remote(num_gpus=1)
    def visible():
        return os.environ.get("CUDA_VISIBLE_DEVICES"), ray.get_gpu_ids()

    devices, ids = ray.get(visible.remote(), timeout=60)
    assert len(ids) == 1 and devices == str(ids[0])
