"""CPU time per operation: this tree against git REF, summed over every process of the cluster.

Usage::

    .venv/bin/python bench/cpu.py --before REF [--after REF2] [--rounds 8] [--scale 2]

Why: the wall-clock rates of `bench/core.py` mix CPU work with waiting. This counts the
work: the CPU time the driver, the node daemon and the workers spend per operation, so it
also says which process a change moved. It does not remove the machine's own noise: on
the 2-core VM one process of identical code runs up to 20% slower or faster than the
next (a plain Python loop does), so take many rounds, and compare a tree with itself
(`--before HEAD` on a clean tree) to see the spread before reading a ratio.

Theory of operation: the parent runs fresh child processes of this script, alternating
this tree and REF's `runtime/` (exported as `bench/core.py --before` does), `--rounds`
times each. A child starts an embedded cluster (2 CPUs), warms it up, then runs each
workload once, long enough (about a second at `--scale 1`) that the 10 ms clock ticks of
the processes' CPU times do not matter; before and after, it reads the user+system time
of itself (`driver`), the daemon it started (`daemon`) and every other process of the
cluster (`workers`, the zygote included). The table shows medians over the rounds: CPU
µs per operation, total and per role, and wall µs per operation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import _TREES, MARK, export_tree, run_tree_child, warm_carme  # noqa: E402

ROLES = ("driver", "daemon", "workers")


def _cpu_by_role() -> dict[str, float]:
    import psutil

    me = psutil.Process()
    kids = me.children(recursive=True)
    daemons = {p.pid for p in kids if p.ppid() == me.pid}
    out = dict.fromkeys(ROLES, 0.0)
    for p in [me, *kids]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        role = "driver" if p.pid == me.pid else "daemon" if p.pid in daemons else "workers"
        out[role] += t.user + t.system
    return out


def child(scale: float) -> None:
    import numpy as np

    ray, noop, first_item, actor = warm_carme()
    big = np.arange(100 * 2**20 // 8, dtype=np.float64)
    batches = max(1, int(6 * scale))
    one_by_one = max(10, int(1500 * scale))

    def tasks_batch() -> int:
        for _ in range(batches):
            ray.get([noop.remote() for _ in range(1000)])
        return batches * 1000

    def actor_batch() -> int:
        for _ in range(batches):
            ray.get([actor.noop.remote() for _ in range(1000)])
        return batches * 1000

    def tasks_sync() -> int:
        for _ in range(one_by_one):
            ray.get(noop.remote())
        return one_by_one

    def actor_sync() -> int:
        for _ in range(one_by_one):
            ray.get(actor.noop.remote())
        return one_by_one

    def put_get_small() -> int:
        n = one_by_one * 12
        for i in range(n):
            ray.get(ray.put(i))
        return n

    def task_100mb_arg() -> int:
        # as bench/core.py: a fresh 100 MB object the driver has read, then 10 tasks on it
        rounds = max(1, int(30 * scale))
        for _ in range(rounds):
            ref = ray.put(big)
            view = ray.get(ref)
            ray.get([first_item.remote(ref) for _ in range(10)])
            del view, ref
        return rounds * 10

    out: dict[str, dict[str, float]] = {}
    for fn in (tasks_batch, actor_batch, tasks_sync, actor_sync, put_get_small, task_100mb_arg):
        c0, t0 = _cpu_by_role(), time.perf_counter()
        n = fn()
        t1, c1 = time.perf_counter(), _cpu_by_role()
        row = {f"{r}_us": (c1[r] - c0[r]) / n * 1e6 for r in ROLES}
        row["cpu_us"] = sum(row.values())
        row["wall_us"] = (t1 - t0) / n * 1e6
        out[fn.__name__] = row
    ray.shutdown()
    print(MARK + json.dumps(out), flush=True)


def _run(impl: str, scale: float) -> dict[str, dict[str, float]]:
    """One child of this script against `impl` ("carme" or "carme@REF")."""
    return run_tree_child(str(Path(__file__).resolve()), impl, ["--scale", str(scale)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", metavar="REF", required=True, help="git REF whose runtime to compare with")
    ap.add_argument("--after", metavar="REF2", help="git REF2's runtime in place of this tree (which commits moved it)")
    ap.add_argument("--rounds", type=int, default=8, help="alternating rounds (default 8)")
    ap.add_argument("--scale", type=float, default=1.0, help="scale operation counts")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.scale)
        return 0
    impls = [f"carme@{args.after}" if args.after else "carme", f"carme@{args.before}"]
    samples: dict[str, dict[str, dict[str, list[float]]]] = {i: {} for i in impls}
    with tempfile.TemporaryDirectory(prefix="carme-bench-") as tmp:
        for ref, sub in ((args.before, "before"), (args.after, "after")):
            if ref:
                (Path(tmp) / sub).mkdir()
                export_tree(ref, Path(tmp) / sub)
        for r in range(args.rounds):
            for impl in impls if r % 2 == 0 else impls[::-1]:
                print(f"[{impl}] round {r + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
                res = _run(impl, args.scale)
                for work, row in res.items():
                    for metric, v in row.items():
                        samples[impl].setdefault(work, {}).setdefault(metric, []).append(v)
    _TREES.clear()
    new, old = impls
    print(f"\nCPU and wall µs per operation, medians of {args.rounds} rounds (lower is better)\n")
    print("(round ratios: the middle half of the per-round ratios, round i of one against round i")
    print("of the other: how far one round's ratio strays)\n")
    print(f"| workload | metric | {new} | {old} | ratio | round ratios |")
    print("|---|---|---|---|---|---|")
    for work, rows in samples[new].items():
        for metric in ("cpu_us", *(f"{r}_us" for r in ROLES), "wall_us"):
            xs, ys = rows[metric], samples[old][work][metric]
            a, b = statistics.median(xs), statistics.median(ys)
            ratio = f"{a / b:.2f}" if b > 0 else "-"
            per_round = sorted(x / y for x, y in zip(xs, ys, strict=True) if y > 0)
            spread = "-"
            if len(per_round) >= 4:
                q = statistics.quantiles(per_round, n=4)
                spread = f"{q[0]:.2f}–{q[2]:.2f}"
            print(f"| {work} | {metric[:-3]} | {a:.1f} | {b:.1f} | {ratio} | {spread} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
