"""Prometheus metrics: the families of a node snapshot (pure), then `carme start --head
--metrics-port N` and an embedded cluster scraped over HTTP and parsed with
prometheus_client's own parser."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from carme._metrics_http import families

SNAPSHOT = {
    "node_id": "n1", "cpu_percent": 12.5, "num_cpus": 2, "memory_used": 5 << 30,
    "memory_total": 16 << 30, "workers_rss": 1 << 20, "store_used": 100, "store_capacity": 1000,
    "store_spilled": 0, "gpus": [{"index": 0, "utilization_gpu": 40, "memory_used": 2 << 30,
                                  "memory_total": 80 << 30}],
    "tasks": {"FINISHED": 3, "RUNNING": 1}, "actors": {"ALIVE": 2}, "workers": {"IDLE": 1},
    "oom_kills": 1,
}


def _parse(text: str) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted labels: value}}"""
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_a_snapshot_becomes_metric_families_the_parser_reads() -> None:
    class One:
        def collect(self):
            return families(SNAPSHOT)

    reg = CollectorRegistry(auto_describe=False)
    reg.register(One())  # type: ignore[arg-type]
    m = _parse(generate_latest(reg).decode())
    assert m["carme_node_memory_total_bytes"][(("node_id", "n1"),)] == 16 << 30
    assert m["carme_node_gpu_utilization_percent"][(("gpu", "0"), ("node_id", "n1"))] == 40
    assert m["carme_tasks"][(("node_id", "n1"), ("state", "FINISHED"))] == 3
    assert m["carme_actors"][(("node_id", "n1"), ("state", "ALIVE"))] == 2
    assert m["carme_object_store_spilled_bytes"][(("node_id", "n1"),)] == 0
    assert m["carme_memory_monitor_kills_total"][(("node_id", "n1"),)] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, dict[tuple, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        return _parse(r.read().decode())


def _finished(m: dict) -> float:
    return sum(v for k, v in m.get("carme_tasks", {}).items() if ("state", "FINISHED") in k)


def _wait_finished(port: int, n: int) -> dict:
    deadline = time.monotonic() + 60  # task events reach the daemon every 100 ms
    while True:
        m = _scrape(port)
        if _finished(m) >= n or time.monotonic() > deadline:
            return m
        time.sleep(0.1)


EXPECTED = ("carme_node_cpu_percent", "carme_node_cpus", "carme_node_memory_used_bytes",
            "carme_node_memory_total_bytes", "carme_object_store_used_bytes",
            "carme_object_store_capacity_bytes", "carme_object_store_spilled_bytes", "carme_workers")


@pytest.mark.processes
def test_cli_head_serves_metrics_that_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import carme
    state = tmp_path / "state"
    monkeypatch.setenv("CARME_STATE_DIR", str(state))
    monkeypatch.delenv("CARME_ADDRESS", raising=False)
    env = {**os.environ, "CARME_STATE_DIR": str(state)}
    port = _free_port()
    out = subprocess.run([sys.executable, "-m", "carme", "start", "--head", "--num-cpus", "2",
                          "--metrics-port", str(port)], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"http://127.0.0.1:{port}/metrics" in out.stdout
    try:
        before = _scrape(port)
        for name in EXPECTED:
            assert name in before, (name, sorted(before))
        assert _finished(before) == 0
        total = next(iter(before["carme_node_memory_total_bytes"].values()))
        assert total > 0

        carme.init(address="auto")
        try:
            @carme.remote
            def square(x):
                return x * x

            assert carme.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
            after = _wait_finished(port, 4)
        finally:
            carme.shutdown()
        assert _finished(after) >= 4
    finally:
        stopped = subprocess.run([sys.executable, "-m", "carme", "stop"], capture_output=True,
                                 text=True, env=env, timeout=60)
    assert "stopped 1 cluster" in stopped.stdout


@pytest.mark.processes
def test_embedded_cluster_serves_metrics_with_rays_init_argument() -> None:
    import carme
    port = _free_port()
    carme.init(num_cpus=1, _metrics_export_port=port)
    try:
        @carme.remote
        def one():
            return 1

        assert carme.get(one.remote()) == 1
        m = _wait_finished(port, 1)
        assert _finished(m) >= 1
        assert any(("state", "IDLE") in k or ("state", "LEASED") in k for k in m["carme_workers"])
    finally:
        carme.shutdown()


def test_bad_metrics_port_is_refused_before_anything_starts() -> None:
    import carme
    with pytest.raises(ValueError, match="_metrics_export_port must be a port number"):
        carme.init(_metrics_export_port=70000)


def test_a_metrics_port_in_use_is_refused_before_anything_starts(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from carme import cluster
    monkeypatch.setenv("CARME_STATE_DIR", str(tmp_path / "state"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=rf"--metrics-port {port}: cannot listen on 127.0.0.1:{port}"):
            cluster.start_head(num_cpus=1, metrics_port=port)
