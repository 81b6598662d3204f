"""The notebook layer's cost on Ray: no-op tasks with and without the kernel's hooks.

Usage::

    .venv/bin/python bench/notebook_overhead.py [--tasks 200] [--rounds 7]

Theory of operation
-------------------
Starts one Ray head on 127.0.0.1 (``tests/ray_support.py``: free ports, token in
a temporary directory, stopped by process group), joins it as a driver, and
runs the same workloads in alternating rounds, *plain* (Ray as it comes: its
own log printer, no cell windows) and *hooked* (the kernel's
:class:`~carme_kernel.engines._ray.RayBackend` attached: Ray's printer replaced
by the kernel's output routing, a cell window opened per round, a resolver
thread that reads task state while output waits). Workloads:

- ``sync``: ``ray.get(noop.remote())`` one at a time (tasks/s);
- ``batched``: ``ray.get([noop.remote() for _ in range(n)])`` (tasks/s);
- ``printing``: like ``batched``, each task printing one line (tasks/s, with
  the output routed to a sink that counts it).

Reports the median per workload and mode over the rounds and the ratio
hooked/plain throughput (1.0 = no cost; the target is at least 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SETTLE_S = 3.0
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _rate(n: int, fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    from ray_support import start_ray_head

    head = start_ray_head(num_cpus=2)
    try:
        os.environ.update(head.env())
        import ray

        from carme_kernel.engines._ray import RayBackend, _ray_printer

        ray.init(address=head.gcs_address, log_to_driver=True)

        @ray.remote
        def noop() -> None:
            return None

        @ray.remote
        def talk(i: int) -> int:
            print("line", i)
            return i

        n = args.tasks
        workloads: dict[str, Callable[[], Any]] = {
            "sync": lambda: [ray.get(noop.remote()) for _ in range(n)],
            "batched": lambda: ray.get([noop.remote() for _ in range(n)]),
            "printing": lambda: ray.get([talk.remote(i) for i in range(n)]),
        }
        for fn in workloads.values():  # warm-up: workers started, functions exported
            fn()
        delivered = [0]
        backend = RayBackend()
        backend.set_output_sink(lambda tag, stream, text: delivered.__setitem__(0, delivered[0] + 1))
        from ray._private import worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        results: dict[str, dict[str, list[float]]] = {w: {"plain": [], "hooked": []} for w in workloads}
        for r in range(args.rounds):
            for mode in ("plain", "hooked") if r % 2 == 0 else ("hooked", "plain"):
                time.sleep(SETTLE_S)  # the previous mode's output has reached the driver
                if mode == "hooked":
                    backend.attach()
                    backend.cell_started({"run": f"round-{r}", "execution_count": r + 1})
                for name, fn in workloads.items():
                    results[name][mode].append(_rate(n, fn))
                if mode == "hooked":
                    # let the routing finish the printing workload's lines first, so
                    # its state polling is charged to "printing", not the next round
                    deadline = time.monotonic() + 60
                    while backend._resolver and backend._resolver.pending() and time.monotonic() < deadline:
                        time.sleep(0.2)
                    backend._detach()
                    dispatcher.add_handler("ray_print_logs", _ray_printer(worker))
        report = {
            "machine": f"{platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"Ray {ray.__version__}",
            "tasks_per_round": n,
            "rounds": args.rounds,
            "lines_routed_by_the_kernel": delivered[0],
            "workloads": {},
        }
        for name, modes in results.items():
            plain = statistics.median(modes["plain"])
            hooked = statistics.median(modes["hooked"])
            report["workloads"][name] = {
                "plain_tasks_per_s": round(plain, 1),
                "hooked_tasks_per_s": round(hooked, 1),
                "hooked_over_plain": round(hooked / plain, 3),
            }
        print(json.dumps(report, indent=2))
        ray.shutdown()
    finally:
        head.stop()


if __name__ == "__main__":
    main()
