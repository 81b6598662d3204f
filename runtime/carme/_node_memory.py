"""The node's memory monitor: which worker to kill when the node runs out of memory. Pure.

Theory of operation. The daemon samples the node's memory on its loop (`_metrics.
memory_reading`: psutil, or the cgroup's limit where one is set) every `refresh_ms`
(Ray's `memory_monitor_refresh_ms`, default 250; 0 turns the monitor off) and hands the
reading, with one `WorkerUse` per worker that runs something, to `MemoryMonitor.check`.
Past `threshold` of the total (Ray's `memory_usage_threshold`, default 0.95) it names
one worker to kill, in Ray's order: a retriable task's worker before a non-retriable
one's, actors last, and within a class the most recently started first (it has done the
least work). Until that worker is gone (`gone`), no second one is chosen: a kill takes a
moment to free memory, and the next reading must see it.

The reason of every kill is kept (the last `KEEP` workers) so the submitter whose worker
connection dropped can ask why (`reason`) and fail the task with `OutOfMemoryError`
instead of `WorkerCrashedError`. No psutil, no os, no socket here: readings come in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

DEFAULT_THRESHOLD = 0.95  # Ray's RAY_memory_usage_threshold
DEFAULT_REFRESH_MS = 250  # Ray's RAY_memory_monitor_refresh_ms; 0 disables
KEEP = 1024


# records, not dataclasses: every driver imports this module at init(), and generating
# dataclasses costs milliseconds there
class WorkerUse(NamedTuple):
    """A worker that runs something: a task (under a lease) or an actor."""

    worker_id: str
    pid: int
    started: float  # when its current task (lease) or actor started, any clock
    retriable: bool = True
    actor: bool = False
    what: str = ""  # "task f", "actor A", for the message
    rss: int = 0  # its resident memory, bytes (0 when unknown)


class MemoryReading(NamedTuple):
    used: int
    total: int
    source: str = "system"  # "system", "cgroup", or a test's file


class KillDecision(NamedTuple):
    worker: WorkerUse
    reason: str


def check_threshold(value: object, where: str) -> float:
    """A threshold from a user: a number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{where} must be a fraction of the node's memory in (0, 1], e.g. 0.95, "
                         f"not {value!r}")
    return float(value)


def check_refresh_ms(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where} must be a whole number of milliseconds >= 0 (0 turns the memory "
                         f"monitor off), not {value!r}")
    return value


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


class MemoryMonitor:
    def __init__(self, threshold: float = DEFAULT_THRESHOLD, refresh_ms: int = DEFAULT_REFRESH_MS) -> None:
        self.threshold = check_threshold(threshold, "memory_usage_threshold")
        self.refresh_ms = check_refresh_ms(refresh_ms, "memory_monitor_refresh_ms")
        self.pending: str | None = None  # the worker killed and not yet gone
        self.reasons: OrderedDict[str, str] = OrderedDict()
        self.kills = 0

    @property
    def enabled(self) -> bool:
        return self.refresh_ms > 0

    def over(self, reading: MemoryReading) -> bool:
        """Whether this reading is past the threshold (the daemon then reads its workers)."""
        return self.enabled and reading.total > 0 and reading.used / reading.total >= self.threshold

    def check(self, reading: MemoryReading, workers: list[WorkerUse]) -> KillDecision | None:
        """The worker to kill now, or None (below the threshold, a kill pending, or
        nothing to kill)."""
        if self.pending is not None or not workers or not self.over(reading):
            return None
        fraction = reading.used / reading.total
        # Ray's order: retriable tasks, then other tasks, actors last; newest first
        victim = min(workers, key=lambda w: (w.actor, not w.retriable, -w.started))
        others = sorted(workers, key=lambda w: -w.rss)[:3]
        top = ", ".join(f"{w.what or 'worker'} (pid {w.pid}): {_gib(w.rss)}" for w in others if w.rss)
        reason = (
            f"The worker running {victim.what or 'a task'} (pid {victim.pid}) was killed because "
            f"the node ran low on memory: {_gib(reading.used)} used of {_gib(reading.total)} "
            f"({fraction:.0%}, {reading.source} memory), past the memory monitor's threshold "
            f"of {self.threshold:.0%}."
            + (f" Largest workers: {top}." if top else "")
            + " To fix: run fewer tasks at once on this node (request memory=... or more "
            "num_cpus per task so fewer fit), reduce what each task holds in memory, or raise "
            "CARME_MEMORY_USAGE_THRESHOLD (0 < x <= 1; CARME_MEMORY_MONITOR_REFRESH_MS=0 turns "
            "the monitor off)."
        )
        self.pending = victim.worker_id
        self.kills += 1
        self.reasons[victim.worker_id] = reason
        while len(self.reasons) > KEEP:
            self.reasons.popitem(last=False)
        return KillDecision(victim, reason)

    def gone(self, worker_id: str) -> None:
        """A worker left the node (its connection closed)."""
        if self.pending == worker_id:
            self.pending = None

    def reason(self, worker_id: str) -> str | None:
        """Why this node killed that worker, if it did for memory."""
        return self.reasons.get(worker_id)


ENV_THRESHOLD = "CARME_MEMORY_USAGE_THRESHOLD"
ENV_REFRESH_MS = "CARME_MEMORY_MONITOR_REFRESH_MS"
OPTION_NAMES = ("memory_usage_threshold", "memory_monitor_refresh_ms", "_memory_reading_file")


def memory_options(given: Mapping[str, Any] | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """The daemon options of the memory monitor: the environment (CARME_MEMORY_USAGE_THRESHOLD,
    CARME_MEMORY_MONITOR_REFRESH_MS, Ray's knobs under carme's prefix), overridden by what was
    given (`init(_system_config=...)`, Ray's names); checked here, before a daemon starts."""
    out: dict[str, Any] = {}
    for env, name, conv in ((ENV_THRESHOLD, "memory_usage_threshold", float),
                            (ENV_REFRESH_MS, "memory_monitor_refresh_ms", int)):
        if environ.get(env, "").strip():
            try:
                out[name] = conv(environ[env])
            except ValueError:
                raise ValueError(f"{env}={environ[env]!r} is not a number; set it to e.g. "
                                 f"{'0.95' if conv is float else '250'} or unset it") from None
    for name, value in (given or {}).items():
        if name in OPTION_NAMES:
            out[name] = value
    if "memory_usage_threshold" in out:
        check_threshold(out["memory_usage_threshold"], "memory_usage_threshold")
    if "memory_monitor_refresh_ms" in out:
        check_refresh_ms(out["memory_monitor_refresh_ms"], "memory_monitor_refresh_ms")
    return out
