"""A small Ray Serve application: the one the RayService example serves (rayservice.yaml).

``GET /?n=10`` answers ``{"n": 10, "sum_of_squares": 285}``. The image puts this
directory on PYTHONPATH, so Serve imports it as ``serve_app:app``.
"""

from __future__ import annotations

from typing import Any

from ray import serve


def sum_of_squares(n: int) -> int:
    return sum(i * i for i in range(n))


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5})
class SumOfSquares:
    async def __call__(self, request: Any) -> dict[str, int]:
        n = int(request.query_params.get("n", "10"))
        if not 0 <= n <= 10_000_000:
            n = 10
        return {"n": n, "sum_of_squares": sum_of_squares(n)}


app = SumOfSquares.bind()
