"""One call at a time, this tree against git REF: pairs of fresh drivers, long loops.

Usage::

    .venv/bin/python bench/sync_pairs.py --before REF [--pairs 6] [--calls 2000]

Why: a loop of one call at a time is the path a notebook user feels most, and on the
2-core VM its rate moves by ±30% from one process to the next. `bench/core.py` times
500-call loops inside one long child; this runs each tree in a fresh driver per pair,
alternating which goes first, each loop `--calls` long (three loops per driver, their
median kept), and reports the median of the per-pair ratios with their range.

Theory of operation: the parent exports REF's `runtime/` (as `bench/core.py --before`
does) and starts children of this script with `PYTHONPATH` pointing at it or not. A
child starts an embedded cluster (2 CPUs), warms up a task and an actor, and times
`get(noop.remote())` and `get(actor.noop.remote())` loops.
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

KINDS = ("tasks", "actor calls")


def child(calls: int) -> None:
    ray, noop, _, actor = warm_carme()
    out: dict[str, float] = {}
    for kind, call in zip(KINDS, (noop.remote, actor.noop.remote), strict=True):
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(calls):
                ray.get(call())
            rates.append(calls / (time.perf_counter() - t))
        out[kind] = statistics.median(rates)
    ray.shutdown()
    print(MARK + json.dumps(out), flush=True)




def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", metavar="REF", required=True, help="git REF whose runtime to compare with")
    ap.add_argument("--pairs", type=int, default=6, help="pairs of fresh drivers (default 6)")
    ap.add_argument("--calls", type=int, default=2000, help="calls per timed loop (default 2000)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.calls)
        return 0
    runs: dict[str, list[dict[str, float]]] = {"carme": [], f"carme@{args.before}": []}
    with tempfile.TemporaryDirectory(prefix="carme-bench-") as tmp:
        export_tree(args.before, Path(tmp))
        script, impls = str(Path(__file__).resolve()), list(runs)
        for p in range(args.pairs):
            for impl in impls if p % 2 == 0 else impls[::-1]:
                print(f"[{impl}] pair {p + 1}/{args.pairs} ...", file=sys.stderr, flush=True)
                runs[impl].append(run_tree_child(script, impl, ["--calls", str(args.calls)]))
    _TREES.clear()
    new, old = runs
    print(f"\nOne call at a time, {args.calls} per loop, {args.pairs} pairs of fresh drivers "
          f"(calls/s; ratio: median of the pairs' ratios, with their range)\n")
    print(f"| workload | {new} | {old} | ratio | range |")
    print("|---|---|---|---|---|")
    for kind in KINDS:
        xs = [r[kind] for r in runs[new]]
        ys = [r[kind] for r in runs[old]]
        ratios = sorted(x / y for x, y in zip(xs, ys, strict=True))
        print(f"| {kind} | {statistics.median(xs):,.0f} | {statistics.median(ys):,.0f} | "
              f"{statistics.median(ratios):.2f} | {ratios[0]:.2f}–{ratios[-1]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
