"""Estimate pi with Ray tasks: the script the RayJob example submits (rayjob.yaml).

Plain Ray core code. The tests run it as a RayJob's submitter would (``python pi.py``
with ``RAY_ADDRESS`` set) against a local Ray head, and ``main`` on carme's own runtime
(``import carme as ray``).
"""

from __future__ import annotations

import random
import sys


def main(ray, samples_per_task: int = 200_000, tasks: int = 8) -> float:  # noqa: ANN001
    @ray.remote
    def inside(n: int, seed: int) -> int:
        rng = random.Random(seed)
        return sum(1 for _ in range(n) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)

    hits = sum(ray.get([inside.remote(samples_per_task, seed) for seed in range(tasks)]))
    return 4.0 * hits / (samples_per_task * tasks)


if __name__ == "__main__":
    import ray

    ray.init()  # inside a RayJob: the job's cluster (RAY_ADDRESS is set by the job)
    estimate = main(ray)
    print(f"pi is about {estimate:.4f}")
    sys.exit(0 if abs(estimate - 3.1416) < 0.05 else 1)
