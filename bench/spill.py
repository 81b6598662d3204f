"""Spilling benchmark: put and get throughput when the object store overflows to disk,
carme against Ray (``--vs ray``) in the same run.

Usage::

    .venv/bin/python bench/spill.py                        # carme only
    .venv-bench/bin/python bench/spill.py --vs ray         # carme and Ray, side by side
    .venv/bin/python bench/spill.py --scale 0.5 --reps 3   # smaller and shorter

Theory of operation
-------------------
The parent never imports a runtime; for each implementation it runs one child process
of this script (never two clusters at once). The child starts a cluster with a store of
``256 MiB * scale`` that spills into a fresh directory under ``--dir`` (both runtimes
spill to the same file system), then per repetition:

- ``put_spill``: puts twice the store's capacity in 16 arrays, holding every ref, so the
  second half of the puts write the first half to disk (GB/s of puts);
- ``get_restore``: gets every array in put order, reading two bytes of each, so each
  get of a spilled array reads it back from disk (and writes another out) (GB/s of gets);
- then drops the refs and waits until the store is empty again.

Medians over repetitions go to a table and, with the raw samples and the machine, to
``bench/results/spill-<time>.json``. Figures depend on the disk under ``--dir``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MARK = "BENCH_RESULT "
STORE = 256 << 20
COUNT = 16  # arrays per repetition: twice the store

WORKLOADS = {
    "put_spill": "put of 2x the store, holding refs",
    "get_restore": "get of each, in put order",
}


def child(impl: str, reps: int, scale: float, directory: str) -> None:
    import numpy as np
    rt: Any = importlib.import_module(impl)
    store = max(int(STORE * scale), 80 << 20)  # Ray's smallest store is 75 MiB
    item = store * 2 // COUNT
    if impl == "ray":
        cfg = {"object_spilling_config": json.dumps(
            {"type": "filesystem", "params": {"directory_path": directory}})}
    else:
        cfg = {"object_spilling_directory": directory}
    extra = {"include_dashboard": False} if impl == "ray" else {}
    rt.init(num_cpus=1, object_store_memory=store, _system_config=cfg, **extra)
    arrays = [np.full(item, i % 251, dtype=np.uint8) for i in range(COUNT)]
    samples: dict[str, list[float]] = {k: [] for k in WORKLOADS}
    on_disk: list[int] = []  # bytes in files under the spill directory after the puts
    for rep in range(reps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        refs = [rt.put(a) for a in arrays]
        t1 = time.perf_counter()
        on_disk.append(_disk_bytes(directory))  # (not timed)
        t1b = time.perf_counter()
        for i, r in enumerate(refs):
            v = rt.get(r)
            assert v[0] == i % 251 and v[-1] == i % 251
            del v
        t2 = time.perf_counter()
        del refs
        time.sleep(0.5)  # let the frees reach the store
        if rep:
            samples["put_spill"].append(item * COUNT / (t1 - t0) / 1e9)
            samples["get_restore"].append(item * COUNT / (t2 - t1b) / 1e9)
    rt.shutdown()
    print(MARK + json.dumps({"samples": samples, "store": store, "item": item, "on_disk": on_disk}),
          flush=True)


def _disk_bytes(directory: str) -> int:
    total = 0
    for dirpath, _, names in os.walk(directory):
        for n in names:
            try:
                total += os.stat(os.path.join(dirpath, n)).st_blocks * 512
            except OSError:
                pass
    return total


def run_child(impl: str, reps: int, scale: float, base: str) -> dict[str, Any]:
    directory = tempfile.mkdtemp(prefix=f"spill-{impl}-", dir=base)
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", impl,
                               "--reps", str(reps), "--scale", str(scale), "--dir", directory],
                              capture_output=True, text=True, timeout=1800, check=False)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return dict(json.loads(line[len(MARK):]))
    raise RuntimeError(f"{impl} child failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vs", choices=["ray"], help="also run Ray, in the same run")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="store size: 256 MiB x scale")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where both runtimes spill")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.reps, args.scale, args.dir)
        return
    impls = ["carme"] + ([args.vs] if args.vs else [])
    results = {impl: run_child(impl, args.reps, args.scale, args.dir) for impl in impls}
    medians = {impl: {k: statistics.median(v) for k, v in r["samples"].items()} for impl, r in results.items()}
    first = results["carme"]
    print(f"store {first['store'] >> 20} MiB, {COUNT} arrays of {first['item'] >> 20} MiB, "
          f"{args.reps} reps, spilling under {args.dir}; medians in GB/s")
    header = f"{'workload':40} " + " ".join(f"{i:>8}" for i in impls) + ("   carme/ray" if args.vs else "")
    print(header)
    for k, label in WORKLOADS.items():
        row = f"{label:40} " + " ".join(f"{medians[i][k]:8.2f}" for i in impls)
        if args.vs:
            row += f"   {medians['carme'][k] / medians[args.vs][k]:9.2f}x"
        print(row)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"spill-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                           "python": platform.python_version()},
                               "args": vars(args), "medians": medians, "results": results}, indent=1))
    for i in impls:
        mb = statistics.median(results[i]["on_disk"]) / (1 << 20)
        print(f"{i}: {mb:,.0f} MiB in files under its spill directory after the puts (median)")
    print(f"written to {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
