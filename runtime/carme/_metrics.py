"""Node metrics: CPU and memory from psutil, GPUs from NVML (nvidia-ml-py).

NVML is optional: without the library or a driver, `gpu_info()` returns [] and GPU
detection reports zero GPUs — never an exception.
"""

from __future__ import annotations

import os
from typing import Any

import psutil


def detect_num_gpus() -> int:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip() and d.strip() != "-1"])
    return len(gpu_info())


def gpu_info() -> list[dict[str, Any]]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no device: no GPUs
        return []
    out = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            info: dict[str, Any] = {"index": i}
            for key, fn in (
                ("name", lambda h: pynvml.nvmlDeviceGetName(h)),
                ("uuid", lambda h: pynvml.nvmlDeviceGetUUID(h)),
                ("utilization_gpu", lambda h: pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
                ("memory_used", lambda h: pynvml.nvmlDeviceGetMemoryInfo(h).used),
                ("memory_total", lambda h: pynvml.nvmlDeviceGetMemoryInfo(h).total),
                ("temperature", lambda h: pynvml.nvmlDeviceGetTemperature(h, 0)),
                ("power_watts", lambda h: pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
            ):
                try:
                    v = fn(h)
                    info[key] = v.decode() if isinstance(v, bytes) else v
                except Exception:
                    info[key] = None
            out.append(info)
    except Exception:
        return out
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return out


def node_metrics(worker_pids: list[int]) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    rss = 0
    for pid in worker_pids:
        try:
            rss += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "num_cpus": psutil.cpu_count(),
        "memory_total": vm.total,
        "memory_used": vm.total - vm.available,
        "workers_rss": rss,
        "gpus": gpu_info(),
    }
