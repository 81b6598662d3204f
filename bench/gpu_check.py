"""GPU path check for a machine with an NVIDIA GPU: NVML detection, GPU resources, and
CUDA_VISIBLE_DEVICES for GPU tasks. Prints a JSON report; exits non-zero on a mismatch.

    python bench/gpu_check.py
"""

from __future__ import annotations

import json
import os
import sys

import carme
from carme._metrics import gpu_info


def main() -> int:
    report: dict = {"nvml": gpu_info()}
    carme.init()
    try:
        report["cluster_resources"] = carme.cluster_resources()

        @carme.remote(num_gpus=1)
        def on_gpu() -> dict:
            return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                    "gpu_ids": carme.get_gpu_ids()}

        @carme.remote(num_gpus=0.5)
        def half() -> list:
            return carme.get_gpu_ids()

        report["gpu_task"] = carme.get(on_gpu.remote(), timeout=60)
        report["half_gpu_tasks"] = carme.get([half.remote() for _ in range(2)], timeout=60)
        report["node_gpu_metrics"] = carme.nodes()[0]["Resources"].get("GPU")
    finally:
        carme.shutdown()
    print(json.dumps(report, indent=2, default=str))
    n = len(report["nvml"])
    ok = report["cluster_resources"].get("GPU", 0) == n and (n == 0 or report["gpu_task"]["CUDA_VISIBLE_DEVICES"] is not None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
