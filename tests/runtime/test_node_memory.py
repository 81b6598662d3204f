"""The memory monitor: the pure policy (fake readings), then one cluster that kills a worker."""

from __future__ import annotations

import json
import os
import time

import pytest

from carme._node_memory import MemoryMonitor, MemoryReading, WorkerUse, memory_options

GIB = 1 << 30


def use(wid: str, started: float, *, retriable: bool = True, actor: bool = False, rss: int = 0) -> WorkerUse:
    return WorkerUse(wid, pid=100 + int(started), started=started, retriable=retriable, actor=actor,
                     what=f"task {wid}", rss=rss)


def test_below_threshold_kills_nothing() -> None:
    m = MemoryMonitor(threshold=0.9)
    assert m.check(MemoryReading(8 * GIB, 10 * GIB), [use("a", 1)]) is None


def test_newest_retriable_task_first_then_non_retriable_then_actors() -> None:
    high = MemoryReading(99 * GIB, 100 * GIB)
    workers = [use("old", 1), use("new", 2), use("nonretry", 3, retriable=False),
               use("actor", 4, actor=True)]
    m = MemoryMonitor(threshold=0.95)
    order = []
    while workers:
        d = m.check(high, workers)
        assert d is not None
        order.append(d.worker.worker_id)
        m.gone(d.worker.worker_id)
        workers = [w for w in workers if w.worker_id != d.worker.worker_id]
    assert order == ["new", "old", "nonretry", "actor"]


def test_no_second_kill_until_the_first_worker_is_gone() -> None:
    m = MemoryMonitor(threshold=0.5)
    high = MemoryReading(9 * GIB, 10 * GIB)
    first = m.check(high, [use("a", 1), use("b", 2)])
    assert first is not None and first.worker.worker_id == "b"
    assert m.check(high, [use("a", 1), use("b", 2)]) is None
    m.gone("b")
    second = m.check(high, [use("a", 1)])
    assert second is not None and second.worker.worker_id == "a"


def test_reason_names_the_task_the_figures_and_the_fix() -> None:
    m = MemoryMonitor(threshold=0.9)
    d = m.check(MemoryReading(95 * GIB, 100 * GIB, "cgroup"), [use("a", 1, rss=3 * GIB)])
    assert d is not None
    assert m.reason("a") == d.reason
    for part in ("task a", "95.00 GiB used of 100.00 GiB", "95%", "cgroup", "90%", "memory=",
                 "fewer tasks"):
        assert part in d.reason
    assert m.reason("other") is None


def test_refresh_zero_disables_and_bad_settings_are_refused() -> None:
    assert MemoryMonitor(refresh_ms=0).check(MemoryReading(10, 10), [use("a", 1)]) is None
    with pytest.raises(ValueError, match=r"fraction of the node's memory in \(0, 1\]"):
        MemoryMonitor(threshold=1.5)
    with pytest.raises(ValueError, match="milliseconds"):
        MemoryMonitor(refresh_ms=-1)


def test_settings_come_from_the_environment_and_rays_system_config_names() -> None:
    env = {"CARME_MEMORY_USAGE_THRESHOLD": "0.8", "CARME_MEMORY_MONITOR_REFRESH_MS": "100"}
    assert memory_options(None, env) == {"memory_usage_threshold": 0.8, "memory_monitor_refresh_ms": 100}
    given = {"memory_usage_threshold": 0.7, "object_spilling_config": "ignored"}
    assert memory_options(given, env) == {"memory_usage_threshold": 0.7, "memory_monitor_refresh_ms": 100}
    with pytest.raises(ValueError, match="CARME_MEMORY_USAGE_THRESHOLD='lots' is not a number"):
        memory_options(None, {"CARME_MEMORY_USAGE_THRESHOLD": "lots"})
    with pytest.raises(ValueError, match="memory_monitor_refresh_ms must be a whole number"):
        memory_options({"memory_monitor_refresh_ms": 0.5}, {})


@pytest.mark.processes
def test_init_refuses_a_bad_threshold_before_starting_anything() -> None:
    import carme
    with pytest.raises(ValueError, match=r"memory_usage_threshold must be a fraction"):
        carme.init(_system_config={"memory_usage_threshold": 2})
    assert not carme.is_initialized()


def test_reasons_are_bounded() -> None:
    m = MemoryMonitor(threshold=0.1)
    for i in range(1100):
        assert m.check(MemoryReading(9, 10), [use(f"w{i}", i)]) is not None
        m.gone(f"w{i}")
    assert m.reason("w0") is None and m.reason("w1099") is not None


# ---------------------------------------------------------------------------- a real cluster
# The daemon's memory reading comes from a test-controlled file (the test-only daemon
# option `_memory_reading_file`, read once then removed): filling this shared machine's
# memory for real would disturb everything else on it, and a threshold just above current
# usage would depend on what other processes do meanwhile.


HIGH = json.dumps({"used": 99 << 30, "total": 100 << 30})  # 99% of 100 GiB


@pytest.fixture
def oom_cluster(tmp_path):
    import carme
    reading = str(tmp_path / "reading.json")
    carme.init(num_cpus=1, _system_config={"memory_usage_threshold": 0.9,
                                           "memory_monitor_refresh_ms": 50,
                                           "_memory_reading_file": reading})
    try:
        yield carme, tmp_path, reading
    finally:
        carme.shutdown()


@pytest.mark.processes
def test_a_task_past_the_threshold_fails_with_out_of_memory_and_the_driver_lives(oom_cluster):
    carme, _, reading = oom_cluster
    from carme import exceptions as exc

    @carme.remote(max_retries=0)
    def hog(path, high):
        import os
        import time
        block = bytearray(64 << 20)  # allocates, then reports the node as nearly full
        with open(path + ".tmp", "w") as f:
            f.write(high)
        os.replace(path + ".tmp", path)
        while True:
            time.sleep(0.05)
        return len(block)

    with pytest.raises(exc.OutOfMemoryError) as info:
        carme.get(hog.remote(reading, HIGH), timeout=120)
    text = str(info.value)
    for part in ("'hog'", "99.00 GiB used of 100.00 GiB", "99%", "threshold of 90%", "memory=",
                 "fewer tasks"):
        assert part in text, (part, text)

    @carme.remote
    def ok():
        return "alive"

    assert carme.get(ok.remote(), timeout=120) == "alive"


@pytest.mark.processes
def test_a_retriable_task_killed_for_memory_is_retried(oom_cluster):
    carme, tmp_path, reading = oom_cluster
    marker = str(tmp_path / "first-attempt")

    @carme.remote(max_retries=1)
    def once_hog(path, marker, high):
        import os
        import time
        if not os.path.exists(marker):  # the first attempt: the node looks full
            open(marker, "w").close()
            with open(path + ".tmp", "w") as f:
                f.write(high)
            os.replace(path + ".tmp", path)
            while True:
                time.sleep(0.05)
        return "retried"

    assert carme.get(once_hog.remote(reading, marker, HIGH), timeout=120) == "retried"


@pytest.mark.processes
def test_the_monitor_kills_a_retriable_tasks_worker_before_a_newer_non_retriable_one(tmp_path):
    """Ray's order needs to know which tasks may run again: the driver says so in its lease
    requests (max_retries=0 tasks get leases of their own)."""
    import carme
    reading = str(tmp_path / "reading.json")
    carme.init(num_cpus=2, _system_config={"memory_usage_threshold": 0.9,
                                           "memory_monitor_refresh_ms": 50,
                                           "_memory_reading_file": reading})
    try:
        @carme.remote
        def sleeper(name, d):
            import os
            import time
            first = not os.path.exists(f"{d}/{name}-started")
            with open(f"{d}/{name}-started", "a") as f:
                f.write("x")
            if name == "a" and not first:
                return "a retried"
            while not os.path.exists(f"{d}/release"):
                time.sleep(0.05)
            return f"{name} done"

        def started(name):
            deadline = time.monotonic() + 60
            while not (tmp_path / f"{name}-started").exists():
                assert time.monotonic() < deadline, f"task {name} did not start"
                time.sleep(0.05)

        a = sleeper.options(max_retries=1).remote("a", str(tmp_path))  # older, retriable
        started("a")
        b = sleeper.options(max_retries=0).remote("b", str(tmp_path))  # newer, not retriable
        started("b")
        (tmp_path / "reading.tmp").write_text(HIGH)
        os.replace(tmp_path / "reading.tmp", reading)
        assert carme.get(a, timeout=120) == "a retried"  # its worker went first; it ran again
        (tmp_path / "release").touch()
        assert carme.get(b, timeout=120) == "b done"     # never killed
    finally:
        carme.shutdown()


@pytest.mark.processes
def test_an_actor_killed_for_memory_says_so_to_its_callers(oom_cluster):
    carme, _, reading = oom_cluster

    @carme.remote
    class Hog:
        def fill(self, path, high):
            import os
            import time
            self.block = bytearray(64 << 20)
            with open(path + ".tmp", "w") as f:
                f.write(high)
            os.replace(path + ".tmp", path)
            while True:
                time.sleep(0.05)

    h = Hog.remote()
    with pytest.raises(carme.exceptions.ActorDiedError, match="memory monitor") as info:
        carme.get(h.fill.remote(reading, HIGH), timeout=120)
    assert "threshold of 90%" in str(info.value)


@pytest.mark.processes
def test_a_low_threshold_on_the_real_reading_kills_a_running_task():
    """The node's real memory reading (psutil, or the cgroup's), not a test file: with a
    threshold of 1% any machine is past it as soon as a task runs."""
    import carme
    carme.init(num_cpus=1, _system_config={"memory_usage_threshold": 0.01,
                                           "memory_monitor_refresh_ms": 50})
    try:
        @carme.remote(max_retries=0)
        def sleeps():
            import time
            time.sleep(60)

        with pytest.raises(carme.exceptions.OutOfMemoryError, match="threshold of 1%"):
            carme.get(sleeps.remote(), timeout=120)
    finally:
        carme.shutdown()
