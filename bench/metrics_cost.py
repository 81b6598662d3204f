"""CPU cost of live metrics: the node daemon's CPU time per second while a ClusterView and
a GPUView refresh at 1 Hz, against the same daemon idle (embedded cluster).

    .venv/bin/python bench/metrics_cost.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import time

import psutil


def cpu_per_s(proc: psutil.Process, seconds: float) -> float:
    t0 = proc.cpu_times()
    time.sleep(seconds)
    t1 = proc.cpu_times()
    return ((t1.user - t0.user) + (t1.system - t0.system)) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    import carme
    from carme_kernel.widgets import ClusterView, GPUView
    carme.init(num_cpus=2)
    try:
        daemon = next(p for p in psutil.Process().children() if "carme._daemon" in " ".join(p.cmdline()))
        idle = cpu_per_s(daemon, args.seconds)
        views = [ClusterView(), GPUView()]
        # what a displayed widget does once a second (without a frontend to display it)
        t0 = daemon.cpu_times()
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            for v in views:
                v.refresh()
            time.sleep(1.0)
        t1 = daemon.cpu_times()
        busy = ((t1.user - t0.user) + (t1.system - t0.system)) / args.seconds
        for v in views:
            v.close()
    finally:
        carme.shutdown()
    print(f"node daemon CPU: idle {idle * 100:.2f}% of a core; with ClusterView + GPUView at 1 Hz "
          f"{busy * 100:.2f}%; cost {(busy - idle) * 100:.2f}% of a core")


if __name__ == "__main__":
    main()
