"""Node metrics: CPU and memory from psutil, GPUs from NVML (nvidia-ml-py).

NVML is optional: without the library or a driver, `gpu_info()` returns [] and GPU
detection reports zero GPUs — never an exception.
"""

from __future__ import annotations

import json
import os
from typing import Any

import psutil


def detect_num_gpus() -> int:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip() and d.strip() != "-1"])
    return len(gpu_info())


class GpuMonitor:
    """NVML opened once and kept open (opening it costs ~10 ms; a read ~0.3 ms)."""

    def __init__(self) -> None:
        self.nvml: Any = None
        try:
            import pynvml
            pynvml.nvmlInit()
            self.nvml = pynvml
        except Exception:  # no library, no driver, no device: no GPUs
            self.nvml = None

    def read(self) -> list[dict[str, Any]]:
        nv = self.nvml
        if nv is None:
            return []
        out = []
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                info: dict[str, Any] = {"index": i}
                for key, fn in (
                    ("name", lambda h: nv.nvmlDeviceGetName(h)),
                    ("uuid", lambda h: nv.nvmlDeviceGetUUID(h)),
                    ("utilization_gpu", lambda h: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                    ("memory_used", lambda h: nv.nvmlDeviceGetMemoryInfo(h).used),
                    ("memory_total", lambda h: nv.nvmlDeviceGetMemoryInfo(h).total),
                    ("temperature", lambda h: nv.nvmlDeviceGetTemperature(h, 0)),
                    ("power_watts", lambda h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
                ):
                    try:
                        v = fn(h)
                        info[key] = v.decode() if isinstance(v, bytes) else v
                    except Exception:
                        info[key] = None
                out.append(info)
        except Exception:
            return out
        return out

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
            self.nvml = None


def gpu_info() -> list[dict[str, Any]]:
    """One reading of this machine's GPUs ([] without NVML or a driver)."""
    mon = GpuMonitor()
    try:
        return mon.read()
    finally:
        mon.close()


def node_metrics(worker_pids: list[int], gpus: GpuMonitor | None = None) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    rss = sum(process_rss(pid) for pid in worker_pids)
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "num_cpus": psutil.cpu_count(),
        "memory_total": vm.total,
        "memory_used": vm.total - vm.available,
        "workers_rss": rss,
        "gpus": gpus.read() if gpus is not None else gpu_info(),
    }


def _cgroup_limit() -> tuple[int, int] | None:
    """(used, limit) of this process's cgroup, where a limit is set (v2, else v1)."""
    for limit_path, used_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                   "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_path) as f:
                raw = f.read().strip()
            if raw == "max":
                return None
            limit = int(raw)
            with open(used_path) as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if 0 < limit < psutil.virtual_memory().total:  # v1 says "no limit" with a huge number
            return used, limit
        return None
    return None


def memory_reading(test_file: str | None = None) -> tuple[int, int, str]:
    """(used, total, source) of this node's memory: the cgroup's figures where the cgroup
    has a limit below the machine's memory, else the machine's (used = total - available).

    `test_file` (a daemon's test-only option `_memory_reading_file`): when that file
    exists it holds `{"used": N, "total": N}`; it is read once and removed, so a test
    can inject one high reading without filling the machine's memory."""
    if test_file is not None:
        try:
            with open(test_file) as f:
                data = json.load(f)
            os.unlink(test_file)
            return int(data["used"]), int(data["total"]), "test file"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    cg = _cgroup_limit()
    if cg is not None:
        return cg[0], cg[1], "cgroup"
    vm = psutil.virtual_memory()
    return vm.total - vm.available, vm.total, "system"


def process_rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0
