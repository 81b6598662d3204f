"""The poll role: a thread that waits for a message reads it itself (`_poll_role.py`).

The first tests drive `PollRole` and `DeferredInterrupt` directly, on one thread; the last
ones run real workers and check that the role is used (the waiting threads ran the
loop), that an interrupt never loses a message, and that a task holding the role still
sees its cancel.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from carme import _poll_role
from carme._poll_role import PARKED_MAX, DeferredInterrupt, PollRole


def _lent_to_me(role: PollRole) -> list:
    told: list = []
    assert role.ask(lambda: told.append("lent"))
    notice = role.lend_if_asked()
    assert notice is not None
    notice()
    assert told == ["lent"] and role.holds()
    return told


def test_the_role_is_lent_when_the_io_thread_next_waits_and_only_to_the_asker():
    role = PollRole()
    assert role.io_holds()
    assert role.lend_if_asked() is None  # nobody asked: the I/O thread waits itself
    assert not role.begin()  # not lent: a step here would race the I/O thread
    _lent_to_me(role)
    assert not role.io_holds()  # lent, and parked only just now
    assert role.begin()
    assert not role.begin()  # a wait inside a step (a nested get) does not step again
    role.end()
    other: list = []
    t = threading.Thread(target=lambda: other.append((role.holds(), role.begin(),
                                                       role.ask(lambda: None))))
    t.start()
    t.join()
    assert other == [(False, False, False)]  # lent to us: another thread can't step or ask


def test_a_thread_waiting_for_a_result_gets_the_role_only_with_that_result():
    """Lent while its wait goes on, nobody would read for it: the role goes with the
    result (the I/O thread lends it in the step that sets the waiter)."""
    from carme._rpc import _Waiter
    role = PollRole()
    w = _Waiter()
    assert role.ask(lambda: None, w)
    assert role.lend_if_asked() is None and not role.holds()  # still waiting
    assert role.io_holds()
    w.set(True, "result")
    assert role.lend_if_asked() is not None and role.holds()


def test_a_parked_holder_loses_the_role_after_parked_max():
    role = PollRole()
    _lent_to_me(role)
    assert role.begin()
    role.end()
    assert not role.io_holds()
    time.sleep(PARKED_MAX * 2)
    assert role.io_holds()  # the I/O thread takes it back: messages wait at most that long
    assert not role.holds() and not role.begin()


def test_a_holder_in_a_step_keeps_the_role_however_long_it_waits():
    role = PollRole()
    _lent_to_me(role)
    assert role.begin()
    time.sleep(PARKED_MAX * 2)
    assert not role.io_holds()  # it is reading (in select): nothing waits for it
    role.end()
    assert not role.io_holds()


def test_a_thread_that_must_wait_for_the_loop_takes_the_role_back_from_a_parked_holder():
    role = PollRole()
    _lent_to_me(role)
    role.need_loop()  # e.g. a get that will not poll (another thread, or no role)
    assert role.io_holds()
    role.loop_done()
    assert role.waiting == 0


def test_a_holder_in_a_step_gives_the_role_back_when_it_ends_if_others_wait():
    role = PollRole()
    _lent_to_me(role)
    assert role.begin()
    role.need_loop()  # another thread waits: the step reads for it, it keeps its role
    assert not role.io_holds()
    role.end()  # parked now: the waiter would wait up to PARKED_MAX
    assert role.io_holds()
    role.loop_done()


def test_the_io_thread_naps_longer_while_the_holder_steps_rarely(monkeypatch):
    naps: list = []
    role = PollRole()
    monkeypatch.setattr(role, "_nap", type("Nap", (), {
        "acquire": staticmethod(lambda timeout: naps.append(timeout)),
        "release": staticmethod(lambda: naps.append("woken"))})())
    _lent_to_me(role)
    role.begin()
    for _ in range(8):
        role.nap()
    assert naps[0] == PARKED_MAX
    assert naps[1:4] == [PARKED_MAX * 2, PARKED_MAX * 4, PARKED_MAX * 8]
    assert naps[-1] == _poll_role.NAP_MAX  # an idle worker costs a few wake-ups a second
    role.nap()
    role.long_nap = True  # (as it is while the I/O thread naps long)
    role.end()
    assert naps[-1] == "woken"  # parking after a long step wakes it, so the bound holds
    role.begin()
    role.end()
    role.nap()
    assert naps[-1] <= PARKED_MAX + 0.001  # parked: checked again within PARKED_MAX
    for _ in range(3):  # calls going on: it parks often, so look again soon
        role.begin()
        role.end()
    role.begin()
    role.nap()
    assert naps[-1] == PARKED_MAX
    role.nap()
    assert naps[-1] == PARKED_MAX * 2  # one step since (a timer's): longer again


def test_an_interrupt_during_a_step_waits_for_its_end_and_one_in_select_comes_at_once():
    calls: list = []

    def handler(signum, frame):
        calls.append(signum)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with DeferredInterrupt() as guard:
                signal.raise_signal(signal.SIGINT)  # dispatching: deferred
                assert calls == [] and guard.pending is not None
                guard.deliver()  # between steps: the handler runs now
        assert calls == [signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is handler  # restored
        with pytest.raises(KeyboardInterrupt):
            with DeferredInterrupt() as guard:
                guard.in_select = True
                signal.raise_signal(signal.SIGINT)
        assert calls == [signal.SIGINT] * 2
        with pytest.raises(KeyboardInterrupt):
            with DeferredInterrupt():
                signal.raise_signal(signal.SIGINT)
            # (never delivered inside: the handler runs as the guard ends)
        assert calls == [signal.SIGINT] * 3
    finally:
        signal.signal(signal.SIGINT, old)


# ---------------------------------------------------------------------- real processes
def _core():
    from carme import _context
    return _context.maybe_core()


@pytest.mark.processes
@pytest.mark.timeout(120)
def test_one_call_at_a_time_is_read_by_the_threads_that_wait(carme):
    """In a loop of one call at a time, the driver's main thread reads its results and the
    worker's main thread its tasks (both ran steps of the loop), and every result is
    right."""

    def steps():
        from carme import _context
        return _context.maybe_core()._role.steps

    @carme.remote
    def task(i):
        return i, steps()

    @carme.remote
    class Actor:
        def call(self, i):
            return i, steps()

    a = Actor.remote()
    before = _core()._role.steps
    results = [carme.get(task.remote(i), timeout=30) for i in range(300)]
    calls = [carme.get(a.call.remote(i), timeout=30) for i in range(300)]
    assert [r[0] for r in results] == list(range(300))
    assert [r[0] for r in calls] == list(range(300))
    assert _core()._role.steps - before > 0
    assert max(r[1] for r in results) > 0
    assert calls[-1][1] > calls[0][1]


@pytest.mark.processes
@pytest.mark.timeout(180)
def test_interrupts_of_a_get_lose_no_result(carme):
    """SIGINT while the main thread reads results for itself ends that get; results read
    in the same step are kept (the interrupt waits for the step's end), so every task's
    result still arrives."""

    @carme.remote
    def task(i):
        return i

    main = threading.get_ident()
    stop = threading.Event()

    def interrupter():
        while not stop.wait(0.003):
            signal.pthread_kill(main, signal.SIGINT)

    # The interrupt raises only inside the loop's try (armed there, disarmed by the raise
    # and after each turn): one landing on the test's own lines between two turns would
    # escape and end the whole pytest session.
    armed = [False]

    def on_sigint(signum, frame):
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    refs: list = []
    results: list = []
    interrupted = 0
    previous = signal.signal(signal.SIGINT, on_sigint)
    t = threading.Thread(target=interrupter, daemon=True)
    t.start()
    try:
        while len(results) < 1500:  # one call at a time: the gets wait, reading for themselves
            try:
                armed[0] = True
                if len(refs) == len(results):
                    refs.append(task.remote(len(refs)))
                results.append(carme.get(refs[-1], timeout=60))
            except KeyboardInterrupt:
                interrupted += 1
            finally:
                armed[0] = False
    finally:
        stop.set()
        t.join()
        signal.signal(signal.SIGINT, previous)
    assert interrupted > 0
    assert results == list(range(1500))
    assert carme.get(refs, timeout=60) == results


@pytest.mark.processes
@pytest.mark.timeout(120)
def test_a_task_waiting_in_a_nested_get_sees_its_cancel(carme, wait_for, tmp_path):
    """A worker's main thread that reads for itself inside a task's get still gets that
    task's cancel (the interrupt comes between steps, never inside one)."""
    started = tmp_path / "started"

    @carme.remote
    def forever():
        time.sleep(3600)

    @carme.remote
    def outer(path):
        import pathlib
        inner = forever.remote()
        pathlib.Path(path).touch()
        import carme as c
        return c.get(inner)

    ref = outer.remote(str(started))
    wait_for(started.exists, timeout=30)
    time.sleep(0.2)
    carme.cancel(ref)
    with pytest.raises(carme.exceptions.TaskCancelledError):
        carme.get(ref, timeout=30)

    @carme.remote
    def after():
        return 7

    assert carme.get(after.remote(), timeout=30) == 7


@pytest.mark.processes
@pytest.mark.timeout(60)
def test_a_loop_of_calls_keeps_one_idle_check_per_lease_and_the_lease_goes_back_after(carme):
    """Each result used to set a timer of its own (the lease's idle check, LEASE_IDLE s
    later): in a loop of calls one came due about every call and ended the waiting
    get's step early. Now one check per lease is set at a time; the lease is still kept
    while calls come and given back LEASE_IDLE s after the last."""
    import os

    from carme._submit import LEASE_IDLE

    @carme.remote
    def pid():
        return os.getpid()

    core = _core()

    def idle_checks() -> int:  # (set by `maybe_idle`, now or in the version before)
        with core.lock:
            fns = [getattr(t[2], "func", t[2]) for t in core._timers]
        return sum(1 for fn in fns if "idle" in fn.__qualname__)

    first = carme.get(pid.remote(), timeout=30)
    seen, pids = [], []
    end = time.monotonic() + 4 * LEASE_IDLE
    while time.monotonic() < end:
        pids.append(carme.get(pid.remote(), timeout=30))
        seen.append(idle_checks())
    assert len(pids) > 20 and set(pids) == {first}  # the lease was kept: one worker
    assert max(seen) == 1, seen
    deadline = time.monotonic() + 10
    while any(q.leases for q in core.submitter.queues.values()):
        assert time.monotonic() < deadline, "the idle lease was never given back"
        time.sleep(0.01)
    assert idle_checks() == 0


@pytest.mark.processes
@pytest.mark.timeout(60)
def test_a_worker_that_lost_the_role_gets_it_back_and_keeps_it_for_calls_one_at_a_time(carme):
    """A worker's main thread that lost the role (a task ran past PARKED_MAX) asks for it
    again; the notice that it was lent waits in the task queue. Taken for queued work,
    it had each result posted (the poster kicks the I/O thread, which takes the role
    back and lends it again): every later call of a loop crossed two thread hand-offs.
    Now the role is taken back a few times at most over 200 calls (about 95 before)."""

    def taken_back():
        from carme import _context
        return _context.maybe_core()._role.taken_back

    @carme.remote
    def task(i, pause):
        time.sleep(pause)
        return i, taken_back()

    carme.get(task.remote(0, 0), timeout=30)
    first = carme.get(task.remote(0, 0.02), timeout=30)  # parked 20 ms: the role goes back
    results = [carme.get(task.remote(i, 0), timeout=30) for i in range(1, 201)]
    assert [r[0] for r in results] == list(range(1, 201))
    assert results[-1][1] - first[1] <= 20, (first, results[-1])
