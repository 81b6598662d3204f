"""carme-only: the embedded cluster's life cycle, reference counting and driver output.

Each test that starts a cluster is marked `processes`, so the autouse leak guard in
tests/conftest.py checks that no process and no /dev/shm segment survives it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parents[2]


def _run_driver(code: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(pids: list[int], store: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive and not os.path.exists(store):
            return
        time.sleep(0.1)
    pytest.fail(f"left behind after {timeout} s: processes {alive}, store {os.path.exists(store)}")


DRIVER = """
import os, carme
carme.init(num_cpus=2)
@carme.remote
def f(): return os.getpid()
@carme.remote
class A:
    def pid(self): return os.getpid()
a = A.remote()
ref = carme.put(bytes(1 << 20))  # in shared memory
pids = set(carme.get([f.remote() for _ in range(4)])) | {carme.get(a.pid.remote())}
import psutil
from carme._context import core
print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
print(core().info["store_file"], flush=True)
import sys
sys.stdin.readline()  # the test checks the store exists before the driver ends
"""


@pytest.mark.parametrize("ending", ["exit", "exception", "sigkill"])
def test_cluster_dies_with_its_driver(ending: str) -> None:
    tail = {"exit": "", "exception": "raise SystemExit(3)",
            "sigkill": "import time\nprint('ready', flush=True)\ntime.sleep(60)"}[ending]
    p = _run_driver(DRIVER + tail, stdin=subprocess.PIPE)
    assert p.stdout is not None and p.stdin is not None
    pids = [int(x) for x in p.stdout.readline().split()]
    store = p.stdout.readline().strip()
    assert len(pids) >= 3, pids  # the daemon, its zygote and its workers
    assert store.startswith("/dev/shm/carme-") and os.path.exists(store)
    p.stdin.write("\n")
    p.stdin.close()
    if ending == "sigkill":
        assert p.stdout.readline().strip() == "ready"
        os.kill(p.pid, signal.SIGKILL)
    p.wait(30)
    p.stdout.close()
    p.stderr.close()  # type: ignore[union-attr]
    _wait_gone(pids, store)


def test_init_shutdown_init_and_double_init(carme) -> None:
    @carme.remote
    def one():
        return 1

    assert carme.get(one.remote()) == 1
    with pytest.raises(RuntimeError, match="ignore_reinit_error"):
        carme.init()
    assert carme.init(ignore_reinit_error=True) is not None
    carme.shutdown()
    assert not carme.is_initialized()
    carme.init(num_cpus=1)
    assert carme.get(one.remote()) == 1


def test_an_actor_handle_collected_at_shutdown_starts_no_new_cluster() -> None:
    """The collected handle's termination call runs on the I/O thread; when shutdown has
    begun meanwhile it must go to its own (ending) cluster, never auto-start another one
    (this left a stray embedded cluster behind for the rest of a test run)."""
    import carme

    @carme.remote
    class Kept:
        def f(self):
            return 1

    strays = 0
    for _ in range(10):
        carme.init(num_cpus=1)
        try:
            h = Kept.remote()
            assert carme.get(h.f.remote()) == 1
            del h
        finally:
            carme.shutdown()
        time.sleep(0.2)
        if carme.is_initialized():
            strays += 1
            carme.shutdown()
    assert strays == 0


def test_get_if_exists_after_the_named_actor_died_gives_a_live_one() -> None:
    """The caller saw the actor's connection drop before its node reaped the worker: the
    next get_if_exists must not hand back the dead actor (its calls would fail again)."""
    import carme
    carme.init(num_cpus=1)
    try:
        @carme.remote(max_restarts=0)
        class Box:
            def pid(self):
                return os.getpid()

            def die(self):
                os._exit(1)

        first = Box.options(name="box", get_if_exists=True).remote()
        pids = {carme.get(first.pid.remote())}
        for _ in range(15):
            h = Box.options(name="box", get_if_exists=True).remote()
            with pytest.raises(carme.exceptions.RayActorError):
                carme.get(h.die.remote(), timeout=30)
            h = Box.options(name="box", get_if_exists=True).remote()
            pids.add(carme.get(h.pid.remote(), timeout=30))  # a fresh actor answers
        assert len(pids) == 16
    finally:
        carme.shutdown()


def _store_used(carme) -> int:
    from carme import _messages as M
    from carme._context import core
    core().flush()
    time.sleep(0.05)
    return core().request(M.STORE_STATS)["used"]


def test_objects_are_freed_when_no_reference_remains(carme) -> None:
    np = pytest.importorskip("numpy")
    base = _store_used(carme)

    @carme.remote
    def total(arrays):
        return sum(float(carme.get(r).sum()) for r in arrays)

    @carme.remote
    def make():
        return np.ones(1 << 18)

    @carme.remote
    class Holder:
        def __init__(self):
            self.kept = None

        def keep(self, refs):
            self.kept = refs
            return len(refs)

        def drop(self):
            self.kept = None

    big = [carme.put(np.full(1 << 18, i, dtype=np.float64)) for i in range(3)]
    outer = carme.put(big)                      # refs nested inside a stored value
    made = make.remote()                        # a large return value
    assert carme.get(total.remote(big)) == sum(i * (1 << 18) for i in range(3))
    h = Holder.remote()
    assert carme.get(h.keep.remote([made])) == 1  # an actor holds a nested ref
    assert _store_used(carme) > base
    del big, outer
    carme.get(h.drop.remote())
    del made
    deadline = time.monotonic() + 5
    while _store_used(carme) != base:
        assert time.monotonic() < deadline, f"store still holds {_store_used(carme) - base} bytes"
        time.sleep(0.1)


def test_zero_copy_numpy_is_read_only(carme) -> None:
    np = pytest.importorskip("numpy")
    arr = np.arange(1 << 20, dtype=np.int64)
    out = carme.get(carme.put(arr))
    assert not out.flags.owndata and not out.flags.writeable
    assert (out == arr).all()


def test_zero_copy_view_outlives_its_ref(carme) -> None:
    np = pytest.importorskip("numpy")
    ref = carme.put(np.full(1 << 20, 7, dtype=np.int64))
    view = carme.get(ref)
    del ref
    # the view pins the memory: new objects must not overwrite it
    others = [carme.put(np.zeros(1 << 20, dtype=np.int64)) for _ in range(3)]
    assert int(view[0]) == 7 and int(view[-1]) == 7
    del others


def test_workers_start_without_the_node_daemons_modules(carme) -> None:
    """Every worker is a fork of the zygote and starts with all of its memory: the zygote
    is forked before the daemon imports its own modules, so no worker carries them."""
    @carme.remote
    def modules() -> list[str]:
        import sys
        return [m for m in sys.modules if m.startswith("carme.")]

    @carme.remote
    class A:
        def modules(self) -> list[str]:
            import sys
            return [m for m in sys.modules if m.startswith("carme.")]

    for mods in (carme.get(modules.remote()), carme.get(A.remote().modules.remote())):
        assert "carme._worker" in mods
        assert not [m for m in mods if m.startswith("carme._node_") or m == "carme._daemon"], mods


def test_workers_keep_the_default_collector_thresholds_the_daemon_raises(carme) -> None:
    """The daemon collects less often (`_daemon.GC_THRESHOLDS`), after it forked the
    zygote: workers run user code with Python's default thresholds."""
    import gc

    from carme._daemon import GC_THRESHOLDS

    @carme.remote
    def thresholds():
        import gc
        return gc.get_threshold()

    assert GC_THRESHOLDS != gc.get_threshold()
    assert carme.get(thresholds.remote()) == gc.get_threshold()


def test_task_that_can_never_fit_says_so(carme) -> None:
    @carme.remote(resources={"unicorn": 1})
    def f():
        return 1

    with pytest.raises(carme.exceptions.TaskUnschedulableError, match="unicorn"):
        carme.get(f.remote(), timeout=10)


def test_unpicklable_argument_is_named(carme) -> None:
    import threading

    @carme.remote
    def f(a, b):
        return 1

    with pytest.raises(TypeError, match="argument 1 .*lock"):
        f.remote(1, threading.Lock())


def test_worker_output_reaches_the_driver_with_a_prefix() -> None:
    p = _run_driver("""
        import carme
        carme.init(num_cpus=1)
        @carme.remote
        def shout():
            print("hello from the task")
            return 1
        carme.get(shout.remote())
        carme.shutdown()
    """)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "(shout pid=" in out and "hello from the task" in out


def test_log_to_driver_false_is_quiet() -> None:
    p = _run_driver("""
        import carme
        carme.init(num_cpus=1, log_to_driver=False)
        @carme.remote
        def shout():
            print("should not show")
            return 1
        carme.get(shout.remote())
        carme.shutdown()
    """)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "should not show" not in out


def test_worker_crash_is_retried_then_reported(carme, tmp_path) -> None:
    marker = tmp_path / "attempts"

    @carme.remote(max_retries=1)
    def crash(path):
        with open(path, "a") as f:
            f.write("x")
        os._exit(1)

    with pytest.raises(carme.exceptions.WorkerCrashedError):
        carme.get(crash.remote(str(marker)), timeout=30)
    assert marker.read_text() == "xx"  # the first run and one retry


def test_object_too_big_for_the_store_fails_cleanly() -> None:
    np = pytest.importorskip("numpy")
    import carme
    carme.init(num_cpus=1, object_store_memory=64 << 20)
    try:
        with pytest.raises(carme.exceptions.ObjectStoreFullError, match="object_store_memory"):
            carme.put(np.zeros(100 << 20, dtype=np.uint8))

        @carme.remote
        def too_big():
            return np.zeros(100 << 20, dtype=np.uint8)

        with pytest.raises(carme.exceptions.ObjectStoreFullError):
            carme.get(too_big.remote(), timeout=60)
        # what was stored before is intact and the store still works
        ok = carme.put(np.arange(1 << 20, dtype=np.int64))
        assert int(carme.get(ok)[-1]) == (1 << 20) - 1
    finally:
        carme.shutdown()
