"""Which thread of a process runs its I/O loop: the poll role.

Theory of operation. A CoreWorker's I/O loop (select, read, dispatch) normally runs on its
I/O thread, which hands what it reads to the thread that waits for it. On this machine a
hand-off costs a thread wake-up (tens of µs, more when the woken thread's CPU was idle),
so a round trip that crosses two of them (the worker's reader hands the task to the
main thread; the driver's reader hands the result to the caller of `get`) pays for it
twice. A thread that is about to block until a message comes (a worker's main thread
with no task) can instead hold the role and run the loop's steps itself: the message
wakes the thread that needs it, and nothing is handed over.

The role is lent, never taken by force:

* a thread asks for it (`ask`); the I/O thread, when it next would wait for I/O, lends
  it (`lend_if_asked`) and calls the asker's notice, then naps;
* the holder runs steps (`begin` ... `end`); between steps it is *parked* (it runs a
  task, say) and nobody reads;
* the I/O thread takes the role back once the holder has been parked for `PARKED_MAX`
  seconds, or at once when kicked (`kick`: another thread needs the loop, or the holder
  is about to block in a wait of its own, `need_loop`). So a parked holder delays
  messages by at most `PARKED_MAX`, and a task's cancel still arrives while it runs.

While the holder is inside a step (blocked in select) the I/O thread naps in growing
intervals (to `NAP_MAX`), so an idle worker costs a few wake-ups a second; a holder that
parks after a long step kicks it, so the `PARKED_MAX` bound holds then too.

This class only keeps the state and the locks; `CoreWorker` runs the steps.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

try:  # the C functions: `signal`'s wrappers convert to and from enums (µs per call)
    import _signal as _sig  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - CPython has it
    _sig = signal

PARKED_MAX = 0.002
NAP_MAX = 0.1


class PollRole:
    __slots__ = ("_lock", "_nap", "lent_to", "busy", "parked_at", "steps", "wanted",
                 "notice", "wanted_for", "kicked", "_seen_steps", "_nap_len", "long_nap", "waiting",
                 "taken_back")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nap = threading.Lock()
        self._nap.acquire()
        self.lent_to: int | None = None  # the holder's thread ident; None: the I/O thread
        self.busy = False  # the holder is inside a step
        self.parked_at = 0.0
        self.steps = 0
        self.wanted: int | None = None  # a thread that asked for the role
        self.notice: Callable[[], None] | None = None  # called when it gets it
        self.wanted_for: Any = None  # lent only once this waiter is set (see `ask`)
        self.kicked = False
        self._seen_steps = -1
        self._nap_len = PARKED_MAX
        self.long_nap = False
        self.waiting = 0  # threads blocked until the loop reads for them (`need_loop`)
        self.taken_back = 0  # times the I/O thread took the role back (a count to look at)

    # ------------------------------------------------------------------ the borrower
    def ask(self, notice: Callable[[], None], waiter: Any = None) -> bool:
        """Ask for the role for this thread; `notice()` runs (on the I/O thread) when it is
        lent. A thread that waits for `waiter` meanwhile (a `_rpc._Waiter`) gets it only
        together with that waiter's result, never while it still waits for it (nobody
        would read then). False when it is lent to another thread."""
        me = threading.get_ident()
        with self._lock:
            if self.lent_to is not None:
                return False
            self.wanted, self.notice, self.wanted_for = me, notice, waiter
            return True

    def begin(self) -> bool:
        """Start a step on this thread: False when it does not hold the role."""
        with self._lock:
            if self.lent_to != threading.get_ident() or self.busy:  # (busy: a nested wait)
                return False
            self.busy = True
            self.steps += 1
            return True

    def end(self) -> None:
        """The step is over: the holder is parked until its next `begin`."""
        with self._lock:
            self.busy = False
            self.parked_at = time.monotonic()
            if self.waiting:  # other threads wait for the loop: it is the I/O thread's now
                self.kicked = True
            wake = self.long_nap or self.kicked
        if wake:  # (the I/O thread naps long: it must see the park within PARKED_MAX)
            self._wake_nap()

    def holds(self) -> bool:
        return self.lent_to == threading.get_ident()

    def need_loop(self) -> None:
        """This thread is about to block until the loop reads something for it (call
        `loop_done` after): a holder that is parked (this thread, or another) gives the
        role back to the I/O thread now, and one in a step gives it back as it ends."""
        with self._lock:
            self.waiting += 1
            if self.lent_to is None or self.busy:
                return
            self.kicked = True
        self._wake_nap()

    def loop_done(self) -> None:
        with self._lock:
            self.waiting -= 1

    # ------------------------------------------------------------------ others
    def parked_elsewhere(self) -> bool:
        """Lent to another thread, which is not in a step: nobody reads now."""
        lent = self.lent_to
        return lent is not None and not self.busy and lent != threading.get_ident()

    def kick(self) -> None:
        """The loop is needed (by a thread other than a parked holder, or by the holder
        that is about to wait): the I/O thread takes the role back unless a step runs."""
        with self._lock:
            if self.lent_to is None:
                return
            self.kicked = True
        self._wake_nap()

    def _wake_nap(self) -> None:
        try:
            self._nap.release()
        except RuntimeError:  # already released: the I/O thread wakes anyway
            pass

    # ------------------------------------------------------------------ the I/O thread
    def io_holds(self) -> bool:
        """The I/O thread's check before a step: True when the role is its own (taking it
        back from a holder parked too long, or kicked)."""
        with self._lock:
            if self.lent_to is None:
                return True
            if self.busy:
                return False
            if self.kicked or time.monotonic() - self.parked_at >= PARKED_MAX:
                self.lent_to = None
                self.kicked = False
                self.taken_back += 1
                return True
            return False

    def lend_if_asked(self) -> Callable[[], None] | None:
        """The I/O thread is about to wait for I/O: lend the role to a thread that asked;
        returns its notice (the I/O thread then naps instead of waiting)."""
        if self.wanted is None or (self.wanted_for is not None and not self.wanted_for.done):
            return None
        with self._lock:
            me, notice = self.wanted, self.notice
            self.wanted = self.notice = self.wanted_for = None
            if me is None or self.kicked:
                self.kicked = False
                return None
            self.lent_to = me
            self.parked_at = time.monotonic()
            self._seen_steps = -1
            self._nap_len = PARKED_MAX
            return notice

    def nap(self) -> None:
        """The I/O thread waits while the role is lent: until the holder may have been
        parked for PARKED_MAX, or longer (doubling) while it stays in its steps."""
        with self._lock:
            if self.busy:
                # one step since the last look (an idle holder woken by a timer) or none:
                # nap longer; several (calls going on): the holder parks often, look again
                # soon, so that `end` need not wake us each time
                if self.steps - self._seen_steps <= 1:
                    self._nap_len = min(self._nap_len * 2, NAP_MAX)
                else:
                    self._nap_len = PARKED_MAX
                self._seen_steps = self.steps
                timeout = self._nap_len
            else:
                timeout = max(self.parked_at + PARKED_MAX - time.monotonic(), 0.0) + 0.0001
            self.long_nap = timeout > PARKED_MAX
        self._nap.acquire(timeout=timeout)
        self.long_nap = False

    def release_all(self) -> None:
        """Shutting down: the I/O thread stops napping."""
        with self._lock:
            self.kicked = True
        self._wake_nap()


class DeferredInterrupt:
    """While the main thread runs the loop's steps, SIGINT's Python handler (the one that
    raises KeyboardInterrupt) runs only where stopping loses nothing: while it waits in
    select (nothing read yet), or between steps. Never in the middle of dispatching what
    was read, which would drop messages and leave tables half updated."""

    __slots__ = ("orig", "in_select", "pending")

    def __init__(self) -> None:
        self.orig: Any = None
        self.in_select = False
        self.pending: tuple | None = None

    def __enter__(self) -> DeferredInterrupt:
        handler = _sig.getsignal(signal.SIGINT)
        if callable(handler):
            self.orig = handler
            _sig.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.in_select:
            self.orig(signum, frame)
        else:
            self.pending = (signum, frame)

    def deliver(self) -> None:
        """Between steps: run the handler of an interrupt that came during one."""
        pending, self.pending = self.pending, None
        if pending is not None and self.orig is not None:
            self.orig(*pending)

    def __exit__(self, *exc_info: Any) -> None:
        if self.orig is not None:
            _sig.signal(signal.SIGINT, self.orig)
            if exc_info[0] is None:
                self.deliver()
