"""Cluster benchmark: moving objects between nodes and running tasks on another node, for
carme (`carme.testing.Cluster`) and, with `--vs ray`, Ray (`ray.cluster_utils.Cluster`),
one after the other, each in its own child process. Medians of --reps repetitions.

    .venv/bin/python bench/cluster.py                 # carme only
    .venv-bench/bin/python bench/cluster.py --vs ray  # both, with ratios

Workloads: a 100 MB and a 1 GB numpy array made on node B and read by the driver on the
head node (cross-node transfer, GB/s; every repetition makes a new object, so each is a
real transfer); no-op tasks pinned to node B from the driver on the head (tasks/s,
1,000 submitted then one get).

The 1 GB rows: "first" is the first 1 GB object the head node receives, into store pages
never touched before (each page faults in: this machine's first-touch rate bounds it);
the other row is the median of the later ones, each made after the previous copy was
released (1 s pause), so the head's store reuses memory it has touched before — the
steady state of a node that keeps moving objects.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MARK = "BENCH_RESULT "
SIZES = {"transfer_100mb": 100 << 20, "transfer_1gb": 1 << 30}
LABELS = {
    "transfer_100mb": ("100 MB array node B -> driver on head", "GB/s"),
    "transfer_1gb_first": ("1 GB array node B -> driver on head, first (fresh pages)", "GB/s"),
    "transfer_1gb": ("1 GB array node B -> driver on head, later ones", "GB/s"),
    "remote_tasks": ("no-op tasks on node B, 1,000 then one get", "tasks/s"),
}


def child(impl: str, reps: int, scale: float) -> None:
    import numpy as np
    if impl == "carme":
        import carme as ray
        from carme.testing import Cluster
        os.environ.setdefault("CARME_STATE_DIR", tempfile.mkdtemp(prefix="carme-bench-"))
        cluster = Cluster(head_node_args={"num_cpus": 1, "object_store_memory": 3 << 30})
        cluster.add_node(num_cpus=1, resources={"b": 1000}, object_store_memory=3 << 30)
    else:
        import ray
        from ray.cluster_utils import Cluster
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 3 << 30})
        cluster.add_node(num_cpus=1, resources={"b": 1000}, object_store_memory=3 << 30)
        cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    out: dict[str, list[float]] = {k: [] for k in LABELS}
    try:
        @ray.remote(resources={"b": 1})
        def make(n: int) -> Any:
            return np.ones(n // 8, dtype=np.float64)

        @ray.remote(resources={"b": 0.001}, num_cpus=0)
        def noop() -> None:
            return None

        ray.get(make.remote(1 << 20))
        ray.get(noop.remote())
        for key, size in SIZES.items():
            n = int(size * (scale if key == "transfer_1gb" else 1))
            for i in range(reps if key == "transfer_100mb" else 1 + max(2, reps // 2)):
                ref = make.remote(n)
                ray.wait([ref], fetch_local=False)
                t0 = time.perf_counter()
                arr = ray.get(ref)
                dt = time.perf_counter() - t0
                assert arr.nbytes == n // 8 * 8
                out[key + "_first" if key == "transfer_1gb" and i == 0 else key].append(n / dt / 1e9)
                del arr, ref
                if key == "transfer_1gb":
                    time.sleep(1.0)  # the copy's release reaches the head: its block is reused
        count = int(1000 * scale) or 10
        for _ in range(reps):
            t0 = time.perf_counter()
            ray.get([noop.remote() for _ in range(count)])
            out["remote_tasks"].append(count / (time.perf_counter() - t0))
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(MARK + json.dumps(out), flush=True)


def run(impl: str, reps: int, scale: float) -> dict[str, float]:
    proc = subprocess.run([sys.executable, __file__, "--child", impl, "--reps", str(reps),
                           "--scale", str(scale)], capture_output=True, text=True, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            samples = json.loads(line[len(MARK):])
            return {k: statistics.median(v) for k, v in samples.items() if v}
    raise RuntimeError(f"{impl} benchmark failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vs", choices=["ray"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="scale the 1 GB object and task count")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.reps, args.scale)
        return 0
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    results = {"carme": run("carme", args.reps, args.scale)}
    if args.vs:
        results["ray"] = run("ray", args.reps, args.scale)
    cols = list(results)
    print(f"\nmedians of {args.reps} repetitions (higher is better)\n")
    head = "| workload | unit | " + " | ".join(cols) + (" | carme/ray |" if "ray" in results else " |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for key, (label, unit) in LABELS.items():
        vals = [results[c].get(key) for c in cols]
        row = f"| {label} | {unit} | " + " | ".join(f"{v:,.2f}" if v is not None else "-" for v in vals)
        if "ray" in results and results["ray"].get(key):
            row += f" | {results['carme'][key] / results['ray'][key]:.1f}x"
        print(row + " |")
    (HERE / "results").mkdir(exist_ok=True)
    path = HERE / "results" / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwritten: {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
