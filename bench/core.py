"""Core benchmark: the same workloads against carme and (with ``--vs ray``) Ray.

Usage::

    .venv/bin/python bench/core.py                 # carme only
    .venv-bench/bin/python bench/core.py --vs ray  # carme and Ray, side by side
    .venv/bin/python bench/core.py --before REF    # this tree against git REF, alternating
    .venv/bin/python bench/core.py --limit         # carme and the machine's floor

The ``limit`` column (always with ``--vs``) runs the same loops with nothing but the
machine: a bare ``ProcessPoolExecutor`` for tasks and actor calls, memcpy for puts.

Theory of operation
-------------------
The parent process never imports either runtime. For each implementation it
starts fresh child processes of this same script, one after the other (never
two clusters at once):

- ``--child startup`` (once per repetition): time from ``init()`` to the first
  task result, in a fresh interpreter each time;
- ``--child workloads`` (once): initializes, measures the idle cluster's
  resident memory, then runs every workload ``--reps`` times after a warm-up.

A child prints one JSON line prefixed with ``BENCH_RESULT``; the parent takes
medians, prints a table with carme/Ray ratios, and writes everything (raw
samples included) to ``bench/results/core-<time>.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MARK = "BENCH_RESULT "
MB100 = 100 * 1024 * 1024

# name -> (label, unit, higher_is_better)
WORKLOADS: dict[str, tuple[str, str, bool]] = {
    "import_s": ("import", "s", False),
    "init_first_result_s": ("init() -> first task result", "s", False),
    "tasks_sync": ("no-op tasks, one at a time", "tasks/s", True),
    "tasks_batch": ("no-op tasks, 1,000 then one get", "tasks/s", True),
    "actor_sync": ("actor calls, one at a time", "calls/s", True),
    "actor_batch": ("actor calls, 1,000 then one get", "calls/s", True),
    "put_get_small": ("put+get of a small int", "ops/s", True),
    "put_100mb": ("put of a 100 MB numpy array", "GB/s", True),
    "put_100mb_fresh": ("put of 100 MB into fresh store pages", "GB/s", True),
    "get_100mb": ("get of a 100 MB numpy array", "GB/s", True),
    "task_100mb_arg": ("tasks taking a 100 MB ObjectRef", "tasks/s", True),
    "idle_rss_mb": ("idle cluster RSS (driver excluded)", "MB", False),
    "idle_processes": ("idle cluster processes", "count", False),
}


# -- children -----------------------------------------------------------------


def _emit(result: dict[str, Any]) -> None:
    print(MARK + json.dumps(result), flush=True)


def _init(ray: Any) -> None:
    ray.init()


def _noop() -> None:
    return None


def _limit_startup() -> None:
    """The machine's floor for a start: a bare process pool's first result."""
    t0 = time.perf_counter()
    from concurrent.futures import ProcessPoolExecutor
    t1 = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        pool.submit(_noop).result()
        t2 = time.perf_counter()
    _emit({"import_s": t1 - t0, "init_first_result_s": t2 - t1})


def _limit_workloads(reps: int, scale: float) -> None:
    """The same workloads with nothing but the machine: a bare ProcessPoolExecutor (one
    worker per core for tasks; one worker for the "actor"), and memcpy for puts (into
    touched pages, and into fresh ones). Rows with no bare counterpart stay empty."""
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    n_sync = max(10, int(500 * scale))
    n_batch = max(10, int(1000 * scale))
    samples: dict[str, list[float]] = {k: [] for k in WORKLOADS if k not in ("import_s", "init_first_result_s")}

    def rate(n: int, fn: Any) -> float:
        t = time.perf_counter()
        fn()
        return n / (time.perf_counter() - t)

    with ProcessPoolExecutor(os.cpu_count()) as pool, ProcessPoolExecutor(1) as one:
        # workers start (fork) before the arrays exist, so they do not share their pages
        [f.result() for f in [pool.submit(_noop) for _ in range(20)]]
        one.submit(_noop).result()
        time.sleep(2.0)
        rss_mb, nproc = _cluster_memory()
        samples["idle_rss_mb"] = [rss_mb]
        samples["idle_processes"] = [float(nproc)]
        big = np.arange(MB100 // 8, dtype=np.float64)
        touched = np.empty_like(big)
        touched.fill(1.0)
        for _ in range(reps):
            samples["tasks_sync"].append(rate(n_sync, lambda: [pool.submit(_noop).result() for _ in range(n_sync)]))
            samples["tasks_batch"].append(
                rate(n_batch, lambda: [f.result() for f in [pool.submit(_noop) for _ in range(n_batch)]]))
            samples["actor_sync"].append(rate(n_sync, lambda: [one.submit(_noop).result() for _ in range(n_sync)]))
            samples["actor_batch"].append(
                rate(n_batch, lambda: [f.result() for f in [one.submit(_noop) for _ in range(n_batch)]]))
            t0 = time.perf_counter()
            np.copyto(touched, big)
            samples["put_100mb"].append(big.nbytes / (time.perf_counter() - t0) / 1e9)
            fresh = np.empty_like(big)
            t0 = time.perf_counter()
            np.copyto(fresh, big)
            samples["put_100mb_fresh"].append(big.nbytes / (time.perf_counter() - t0) / 1e9)
            del fresh
    _emit({"samples": samples, "zero_copy_get": None, "version": "ProcessPoolExecutor, memcpy"})


def child_startup(impl: str) -> None:
    if impl == "limit":
        _limit_startup()
        return
    t0 = time.perf_counter()
    ray = importlib.import_module(impl)
    t1 = time.perf_counter()
    _init(ray)

    @ray.remote
    def first() -> int:
        return 1

    assert ray.get(first.remote()) == 1
    t2 = time.perf_counter()
    ray.shutdown()
    _emit({"import_s": t1 - t0, "init_first_result_s": t2 - t1})


def _cluster_memory() -> tuple[float, int]:
    import psutil

    total, count = 0, 0
    for p in psutil.Process().children(recursive=True):
        try:
            total += p.memory_info().rss
            count += 1
        except psutil.Error:
            pass
    return total / 1e6, count


def remote_workloads(ray: Any) -> tuple[Any, Any, Any]:
    """The remote functions the workloads call (`noop`, `first_item`) and their actor
    class, defined with `ray` (carme or Ray); bench/cpu.py uses them too."""

    @ray.remote
    def noop() -> None:
        return None

    @ray.remote
    def first_item(a: Any) -> float:
        return float(a[0])

    @ray.remote
    class Actor:
        def noop(self) -> None:
            return None

    return noop, first_item, Actor


def warm_carme() -> tuple[Any, Any, Any, Any]:
    """carme with an embedded 2-CPU cluster, its workers and an actor started and warmed
    up (bench/cpu.py, bench/sync_pairs.py): the module, `noop`, `first_item`, the actor."""
    import carme as ray

    ray.init(num_cpus=2)
    noop, first_item, Actor = remote_workloads(ray)
    actor = Actor.remote()
    ray.get([noop.remote() for _ in range(200)])
    ray.get([actor.noop.remote() for _ in range(200)])
    return ray, noop, first_item, actor


def child_workloads(impl: str, reps: int, scale: float) -> None:
    if impl == "limit":
        _limit_workloads(reps, scale)
        return
    import numpy as np

    ray = importlib.import_module(impl)
    _init(ray)
    noop, first_item, Actor = remote_workloads(ray)

    n_sync = max(10, int(500 * scale))
    n_batch = max(10, int(1000 * scale))
    n_small = max(10, int(1000 * scale))
    n_big_tasks = max(2, int(20 * scale))

    # Warm up: a few tasks, so workers exist; then let the cluster settle and measure it.
    ray.get([noop.remote() for _ in range(20)])
    actor = Actor.remote()
    ray.get(actor.noop.remote())
    time.sleep(2.0)
    rss_mb, nproc = _cluster_memory()
    samples: dict[str, list[float]] = {k: [] for k in WORKLOADS if k not in ("import_s", "init_first_result_s")}
    samples["idle_rss_mb"] = [rss_mb]
    samples["idle_processes"] = [float(nproc)]

    def rate(n: int, fn: Any) -> float:
        t = time.perf_counter()
        fn()
        return n / (time.perf_counter() - t)

    big = np.arange(MB100 // 8, dtype=np.float64)
    fresh = []  # each lands in store pages no put touched before (all kept until the end)
    for _ in range(reps):
        t0 = time.perf_counter()
        fresh.append(ray.put(big))
        samples["put_100mb_fresh"].append(big.nbytes / (time.perf_counter() - t0) / 1e9)
    del fresh
    zero_copy = None
    for _ in range(reps):
        samples["tasks_sync"].append(rate(n_sync, lambda: [ray.get(noop.remote()) for _ in range(n_sync)]))
        samples["tasks_batch"].append(rate(n_batch, lambda: ray.get([noop.remote() for _ in range(n_batch)])))
        samples["actor_sync"].append(
            rate(n_sync, lambda: [ray.get(actor.noop.remote()) for _ in range(n_sync)])
        )
        samples["actor_batch"].append(
            rate(n_batch, lambda: ray.get([actor.noop.remote() for _ in range(n_batch)]))
        )
        samples["put_get_small"].append(
            rate(n_small, lambda: [ray.get(ray.put(i)) for i in range(n_small)])
        )

        t0 = time.perf_counter()
        ref = ray.put(big)
        t1 = time.perf_counter()
        out = ray.get(ref)
        t2 = time.perf_counter()
        samples["put_100mb"].append(big.nbytes / (t1 - t0) / 1e9)
        samples["get_100mb"].append(big.nbytes / (t2 - t1) / 1e9)
        zero_copy = bool(not out.flags.owndata and not out.flags.writeable)
        ray.get(first_item.remote(ref))  # warm the path once
        samples["task_100mb_arg"].append(
            rate(n_big_tasks, lambda ref=ref: ray.get([first_item.remote(ref) for _ in range(n_big_tasks)]))
        )
        del out, ref

    ray.kill(actor)
    ray.shutdown()
    _emit({"samples": samples, "zero_copy_get": zero_copy, "version": getattr(ray, "__version__", "?")})


# -- parent -------------------------------------------------------------------


def _run_child(impl: str, args: list[str], timeout: float) -> dict[str, Any]:
    module, _, ref = impl.partition("@")
    env = dict(os.environ)
    if ref:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_TREES[ref], env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args, "--impl", module]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return dict(json.loads(line[len(MARK) :]))
    tail = (proc.stdout + proc.stderr)[-3000:]
    raise RuntimeError(f"{impl} child {args} failed (exit {proc.returncode}):\n{tail}")


# git ref -> directory holding that ref's runtime/ packages (set by export_tree)
_TREES: dict[str, str] = {}


def export_tree(ref: str, into: Path) -> None:
    """Export ``runtime/`` of git ``ref`` into ``into``; children of ``carme@ref`` import it."""
    root = HERE.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", "--format=tar", ref, "runtime"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise SystemExit(f"--before {ref}: git archive failed: {archive.stderr.decode().strip()}")
    tar = into / "tree.tar"
    tar.write_bytes(archive.stdout)
    with tarfile.open(tar) as tf:
        tf.extractall(into, filter="data")
    _TREES[ref] = str(into / "runtime")


def run_tree_child(script: str, impl: str, args: list[str]) -> dict[str, Any]:
    """Run ``script --child --before - *args`` against ``impl`` ("carme", or "carme@REF"
    of a tree `export_tree` made) and return the result it printed after MARK
    (bench/cpu.py and bench/sync_pairs.py)."""
    _, _, ref = impl.partition("@")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if ref:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_TREES[ref], env.get("PYTHONPATH")]))
    cmd = [sys.executable, script, "--child", "--before", "-", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return dict(json.loads(line[len(MARK):]))
    raise RuntimeError(f"{impl} child failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")


def merge_results(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds of one implementation: samples pooled, medians over them."""
    samples: dict[str, list[float]] = {}
    for r in rounds:
        for k, v in r["samples"].items():
            samples.setdefault(k, []).extend(v)
    return {
        "version": rounds[0]["version"],
        "zero_copy_get": None if any(r["zero_copy_get"] is None for r in rounds)
        else all(r["zero_copy_get"] for r in rounds),
        "samples": samples,
        "median": {k: statistics.median(v) for k, v in samples.items() if v},
        "rounds": len(rounds),
    }


def machine() -> dict[str, Any]:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        mem_gib = psutil.virtual_memory().total / 2**30
    except ImportError:
        mem_gib = float("nan")
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def bench_impl(impl: str, reps: int, scale: float) -> dict[str, Any]:
    print(f"[{impl}] startup x{reps} ...", file=sys.stderr, flush=True)
    startups = [_run_child(impl, ["startup"], timeout=300) for _ in range(reps)]
    print(f"[{impl}] workloads x{reps} ...", file=sys.stderr, flush=True)
    work = _run_child(impl, ["workloads", "--reps", str(reps), "--scale", str(scale)], timeout=1200)
    samples = dict(work["samples"])
    for key in ("import_s", "init_first_result_s"):
        samples[key] = [s[key] for s in startups]
    return {
        "version": work["version"],
        "zero_copy_get": work["zero_copy_get"],
        "samples": samples,
        "median": {k: statistics.median(v) for k, v in samples.items() if v},
    }


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def table(results: dict[str, Any], impls: list[str]) -> str:
    head = ["workload", "unit", *impls, *(f"{impls[0]}/{i}" for i in impls[1:])]
    rows = [head]
    for key, (label, unit, higher) in WORKLOADS.items():
        vals = [results[i]["median"].get(key) for i in impls]
        cells = [(f"{v:.0f}" if unit == "count" and v is not None else _fmt(v)) for v in vals]
        row = [label, unit + (" ↑" if higher else " ↓"), *cells]
        a = vals[0]
        row += [f"{a / b:.2f}" if a is not None and b else "-" for b in vals[1:]]
        rows.append(row)
    zc = ["get is zero-copy (view, read-only)", "",
          *("-" if results[i]["zero_copy_get"] is None else str(results[i]["zero_copy_get"]) for i in impls)]
    rows.append(zc + [""] * (len(head) - len(zc)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vs", choices=["ray"], help="also run the workloads against Ray")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per workload (median is reported)")
    ap.add_argument("--scale", type=float, default=1.0, help="scale operation counts (0.1 for a smoke run)")
    ap.add_argument("--before", metavar="REF", help="also run git REF's runtime, alternating with this tree")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds with --before (default 3)")
    ap.add_argument("--limit", action="store_true",
                    help="also measure the machine's floor: a bare process pool, memcpy (always with --vs)")
    ap.add_argument("--table", metavar="JSON", help="print the table of a saved result file and exit")
    ap.add_argument("--child", choices=["startup", "workloads"], help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="carme", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child == "startup":
        child_startup(args.impl)
        return 0
    if args.child == "workloads":
        child_workloads(args.impl, args.reps, args.scale)
        return 0

    if args.table:
        saved = json.loads(Path(args.table).read_text())
        print(table(saved["results"], list(saved["results"])))
        return 0

    if args.before and args.vs:
        ap.error("--before and --vs are separate runs: pass one of them")
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, not {args.rounds}")
    impls = (["carme"] + ([args.vs] if args.vs else []) + ([f"carme@{args.before}"] if args.before else [])
             + (["limit"] if args.limit or args.vs else []))
    info = machine()
    print(
        f"machine: {info['cores']} cores, {info['cpu_model']}, {info['memory_gib']} GiB, "
        f"Python {info['python']}"
    )
    if args.before:
        with tempfile.TemporaryDirectory(prefix="carme-bench-") as tmp:
            export_tree(args.before, Path(tmp))
            rounds: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
            for n in range(args.rounds):
                for impl in impls if n % 2 == 0 else reversed(impls):
                    rounds[impl].append(bench_impl(impl, args.reps, args.scale))
            results = {impl: merge_results(rs) for impl, rs in rounds.items()}
    else:
        results = {impl: bench_impl(impl, args.reps, args.scale) for impl in impls}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / time.strftime("core-%Y%m%d-%H%M%S.json")
    out.write_text(
        json.dumps({"machine": info, "reps": args.reps, "scale": args.scale, "results": results}, indent=1)
    )
    versions = ", ".join(f"{i} {results[i]['version']}" for i in impls)
    print(f"versions: {versions}; medians of {args.reps} repetitions (↑ higher is better)\n")
    print(table(results, impls))
    print(f"\nwritten: {out.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
