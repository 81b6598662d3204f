"""Scale benchmark: how carme (and, with ``--vs ray``, Ray) behave as the work grows.

Usage::

    .venv/bin/python bench/scale.py                        # carme only
    .venv-bench/bin/python bench/scale.py --vs ray          # carme and Ray, side by side
    .venv/bin/python bench/scale.py --sizes 1000,10000      # fewer points

Workloads, each a curve rather than one point:

- ``tasks``: no-op tasks submitted N at a time, then one ``get`` of all (tasks/s for
  each N in ``--sizes``, default 1k, 10k, 50k);
- ``pending``: driver memory per 10,000 refs of tasks that are still queued (the tasks
  wait on an event the benchmark sets afterwards), for 10k and 50k refs;
- ``actors``: time and cluster memory per actor to create N actors and get one call
  from each (``--actors``, default 50 and 200; Ray takes minutes per 50 on two cores, so
  ``--ray-actors`` caps Ray's counts, default 50);
- ``puts``: 20,000 small ``put`` calls then one ``get`` of all (puts/s).

The parent never imports a runtime; each implementation runs in a child process of
this script, one after the other (never two clusters at once). A child prints one JSON
line prefixed with ``BENCH_RESULT``; the parent prints a table and writes everything
to ``bench/results/scale-<time>.json``. Ratios are carme/Ray from the same run.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MARK = "BENCH_RESULT "


def _rss_mb(pid: int | None = None, children: bool = False) -> float:
    import psutil

    p = psutil.Process(pid)
    procs = p.children(recursive=True) if children else [p]
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total / 1e6


def child(impl: str, sizes: list[int], actor_counts: list[int], puts: int) -> None:
    ray = importlib.import_module(impl)
    ray.init(num_cpus=2)
    out: dict[str, Any] = {"version": getattr(ray, "__version__", "?")}

    @ray.remote
    def noop() -> None:
        return None

    @ray.remote
    def wait_for(sig: Any) -> None:
        ray.get(sig.wait.remote())

    @ray.remote
    class Signal:
        def __init__(self) -> None:
            import asyncio
            self.ev = asyncio.Event()

        async def wait(self) -> None:
            await self.ev.wait()

        def send(self) -> None:
            self.ev.set()

    @ray.remote(num_cpus=0)
    class Small:
        def ping(self) -> int:
            return 1

    ray.get([noop.remote() for _ in range(100)])  # warm up: workers exist

    # Pending refs first, before any batch has grown the heaps: an allocator that keeps
    # what was freed (Ray's core worker, in C++) shows almost no growth for refs queued
    # after a 50,000-task batch, Python's (which gives arenas back) does.
    pending: dict[str, float] = {}
    for n in [s for s in sizes if s >= 10_000] or [max(sizes)]:
        sig = Signal.options(num_cpus=0).remote()
        blocker = [wait_for.remote(sig) for _ in range(2)]  # both CPUs busy: the rest queue
        time.sleep(0.5)
        gc.collect()
        before = _rss_mb()
        refs = [noop.remote() for _ in range(n)]
        time.sleep(0.5)
        after = _rss_mb()
        pending[str(n)] = (after - before) / n * 10_000
        ray.get(sig.send.remote())
        ray.get(blocker + refs)
        del refs, blocker
        ray.kill(sig)
    out["pending_mb_per_10k"] = pending

    tasks: dict[str, float] = {}
    for n in sizes:
        t = time.perf_counter()
        ray.get([noop.remote() for _ in range(n)])
        tasks[str(n)] = n / (time.perf_counter() - t)
    out["tasks_per_s"] = tasks

    actors: dict[str, dict[str, float]] = {}
    for n in actor_counts:
        base = _rss_mb(children=True)
        t = time.perf_counter()
        handles = [Small.remote() for _ in range(n)]
        ray.get([h.ping.remote() for h in handles])
        took = time.perf_counter() - t
        grown = _rss_mb(children=True) - base
        actors[str(n)] = {"s_per_actor": took / n, "mb_per_actor": grown / n}
        for h in handles:
            ray.kill(h)
        del handles
        time.sleep(1.0)
    out["actors"] = actors

    t = time.perf_counter()
    refs = [ray.put(i) for i in range(puts)]
    ray.get(refs)
    out["puts_per_s"] = puts / (time.perf_counter() - t)
    out["puts"] = puts
    del refs
    ray.shutdown()
    print(MARK + json.dumps(out), flush=True)


def run_child(impl: str, sizes: list[int], actors: list[int], puts: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", impl,
           "--sizes", ",".join(map(str, sizes)), "--actors", ",".join(map(str, actors)),
           "--puts", str(puts)]
    print(f"[{impl}] ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return dict(json.loads(line[len(MARK):]))
    raise RuntimeError(f"{impl} child failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")


def rows(results: dict[str, Any]) -> list[tuple[str, str, dict[str, float | None]]]:
    impls = list(results)
    keys: list[tuple[str, str, Any]] = []
    for n in results[impls[0]]["tasks_per_s"]:
        keys.append((f"no-op tasks, {int(n):,} then one get", "tasks/s ↑", lambda r, n=n: r["tasks_per_s"].get(n)))
    for n in results[impls[0]]["pending_mb_per_10k"]:
        keys.append((f"driver memory, {int(n):,} queued refs", "MB per 10k ↓",
                     lambda r, n=n: r["pending_mb_per_10k"].get(n)))
    counts = sorted({n for r in results.values() for n in r["actors"]}, key=int)
    for n in counts:
        keys.append((f"{n} actors: time per actor", "s ↓", lambda r, n=n: (r["actors"].get(n) or {}).get("s_per_actor")))
        keys.append((f"{n} actors: memory per actor", "MB ↓", lambda r, n=n: (r["actors"].get(n) or {}).get("mb_per_actor")))
    keys.append((f"{results[impls[0]]['puts']:,} small puts then one get", "puts/s ↑", lambda r: r["puts_per_s"]))
    return [(label, unit, {i: get(results[i]) for i in impls}) for label, unit, get in keys]


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"


def table(results: dict[str, Any]) -> str:
    impls = list(results)
    head = ["workload", "unit", *impls] + (["carme/ray"] if len(impls) == 2 else [])
    out = [head]
    for label, unit, vals in rows(results):
        row = [label, unit, *(_fmt(vals[i]) for i in impls)]
        if len(impls) == 2:
            a, b = vals[impls[0]], vals[impls[1]]
            row.append(f"{a / b:.2f}" if a is not None and b else "-")
        out.append(row)
    widths = [max(len(r[c]) for r in out) for c in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in out]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts like 1000,10000, not {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive counts, not {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vs", choices=["ray"], help="also run the workloads against Ray")
    ap.add_argument("--sizes", type=_ints, default=[1000, 10_000, 50_000], help="task batch sizes")
    ap.add_argument("--actors", type=_ints, default=[50, 200], help="actor counts for carme")
    ap.add_argument("--ray-actors", type=_ints, default=[50], help="actor counts for Ray (slow)")
    ap.add_argument("--puts", type=int, default=20_000, help="small puts")
    ap.add_argument("--child", choices=["carme", "ray"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.sizes, args.actors, args.puts)
        return 0
    sys.path.insert(0, str(HERE))
    from core import machine  # the same machine facts as bench/core.py

    info = machine()
    print(f"machine: {info['cores']} cores, {info['cpu_model']}, {info['memory_gib']} GiB, Python {info['python']}")
    results = {"carme": run_child("carme", args.sizes, args.actors, args.puts, timeout=1800)}
    if args.vs:
        results["ray"] = run_child("ray", args.sizes, args.ray_actors, args.puts, timeout=3600)
    (HERE / "results").mkdir(exist_ok=True)
    out = HERE / "results" / time.strftime("scale-%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps({"machine": info, "args": {k: v for k, v in vars(args).items() if k != "child"},
                               "results": results}, indent=1))
    versions = ", ".join(f"{k} {v['version']}" for k, v in results.items())
    print(f"versions: {versions}\n")
    print(table(results))
    print(f"\nwritten: {out.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "")
    sys.exit(main())
