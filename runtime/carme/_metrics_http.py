"""Prometheus metrics of a node, served over HTTP (`carme start --head --metrics-port N`).

Theory of operation. `families(snapshot)` turns one snapshot of the node (a plain dict
the daemon builds: CPU, memory, GPUs, object store, tasks by state, actors, workers) into
`prometheus_client` metric families; it is pure and tested without a server.
`MetricsServer` serves them with `prometheus_client.start_http_server` on its own
thread, bound to 127.0.0.1 unless told otherwise. A scrape asks the daemon's loop for a
fresh snapshot (`fetch`, which posts to the loop and waits a few seconds at most), so
the daemon's state is read only on its own thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric


def _gauge(name: str, doc: str, node: str, value: float, **labels: str) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=["node_id", *labels])
    g.add_metric([node, *labels.values()], float(value))
    return g


def families(snap: dict[str, Any]) -> list[Metric]:
    """The metric families of one node snapshot."""
    node = snap["node_id"]
    out: list[Metric] = [
        _gauge("carme_node_cpu_percent", "CPU utilization of the node, percent", node, snap["cpu_percent"]),
        _gauge("carme_node_cpus", "logical CPUs of the node", node, snap["num_cpus"]),
        _gauge("carme_node_memory_used_bytes", "memory in use on the node (total - available)",
               node, snap["memory_used"]),
        _gauge("carme_node_memory_total_bytes", "memory of the node", node, snap["memory_total"]),
        _gauge("carme_node_workers_rss_bytes", "resident memory of the node's workers",
               node, snap["workers_rss"]),
        _gauge("carme_object_store_used_bytes", "bytes allocated in the node's object store",
               node, snap["store_used"]),
        _gauge("carme_object_store_capacity_bytes", "size of the node's object store",
               node, snap["store_capacity"]),
        _gauge("carme_object_store_spilled_bytes", "bytes of objects spilled to disk now",
               node, snap.get("store_spilled", 0)),
    ]
    util = GaugeMetricFamily("carme_node_gpu_utilization_percent", "GPU utilization, percent",
                             labels=["node_id", "gpu"])
    mem = GaugeMetricFamily("carme_node_gpu_memory_used_bytes", "GPU memory in use",
                            labels=["node_id", "gpu"])
    mem_total = GaugeMetricFamily("carme_node_gpu_memory_total_bytes", "GPU memory",
                                  labels=["node_id", "gpu"])
    for g in snap.get("gpus", []):
        for fam, key in ((util, "utilization_gpu"), (mem, "memory_used"), (mem_total, "memory_total")):
            if g.get(key) is not None:
                fam.add_metric([node, str(g["index"])], float(g[key]))
    out += [util, mem, mem_total]
    for name, doc, key in (("carme_tasks", "task attempts this node knows of, by state", "tasks"),
                           ("carme_actors", "actors on this node, by state", "actors"),
                           ("carme_workers", "worker processes of this node, by state", "workers")):
        fam = GaugeMetricFamily(name, doc, labels=["node_id", "state"])
        for state, n in sorted(snap[key].items()):
            fam.add_metric([node, state], float(n))
        out.append(fam)
    kills = CounterMetricFamily("carme_memory_monitor_kills", "workers killed by the memory monitor",
                                labels=["node_id"])
    kills.add_metric([node], float(snap.get("oom_kills", 0)))
    out.append(kills)
    return out


class _Collector:
    def __init__(self, fetch: Callable[[], dict[str, Any] | None]) -> None:
        self.fetch = fetch

    def collect(self) -> Iterator[Metric]:
        snap = self.fetch()
        if snap is not None:
            yield from families(snap)

    def describe(self) -> list[Metric]:
        return []  # no metric at registration time: the daemon may not be serving yet


class MetricsServer:
    """`prometheus_client`'s HTTP server over a registry holding only this node's families."""

    def __init__(self, port: int, fetch: Callable[[], dict[str, Any] | None],
                 host: str = "127.0.0.1") -> None:
        from prometheus_client import start_http_server
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(fetch))  # type: ignore[arg-type]
        try:
            self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise OSError(f"could not serve metrics on {host}:{port}: {e}. Pick a free port with "
                          f"--metrics-port, or leave it out.") from e
        self.port = self.server.server_port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
