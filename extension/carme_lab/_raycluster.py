"""RayClusters for the side panel, as pure logic: request checks, the template, rows, patches.

Theory of operation
-------------------
Nothing here does I/O; `_kubernetes.py` is the shell that talks to the API server.

- `check_create`, `check_scale`, `check_select` turn a request body (already parsed
  JSON) into typed values or raise `RequestError` naming the field: unknown fields,
  wrong types (``true`` is not a number), non-finite or out-of-range numbers.
- `raycluster_manifest` is the panel's template: the same shape as
  ``deploy/kubernetes/raycluster.yaml`` (head that schedules no tasks, token
  authentication from a shared Secret, Prometheus annotations, the carme image) with
  one worker group sized as chosen (workers, CPUs, GPUs and memory per worker) and
  the label `CREATED_BY` so the panel deletes only clusters it created. Autoscaling is
  off: the panel's clusters have the size the user set and scale by hand.
- `cluster_row` summarizes a RayCluster object for the listing: state, worker groups
  with replicas, and the head Service's address (KubeRay names it
  ``<name>-head-svc``), which kernels join as ``ray:<name>-head-svc.<ns>.svc:<port>``.
- `scale_patch` is a JSON Patch that sets one group's replicas, first testing that
  the group is still at that index (a concurrent edit fails instead of scaling the
  wrong group), and widens min/max so the operator accepts the new count.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CREATED_BY", "GCS_PORT", "MAX_CPUS", "MAX_GPUS", "MAX_MEMORY_GIB", "MAX_REPLICAS",
    "NAME_MAX", "CreateRequest", "RequestError", "check_create", "check_name",
    "check_scale", "check_select", "cluster_row", "head_address", "raycluster_manifest",
    "scale_patch",
]

CREATED_BY = ("app.kubernetes.io/created-by", "carme-lab")
GCS_PORT = 6379
NAME_MAX = 40  # KubeRay derives pod and Service names (<name>-head-svc, ...) from it
MAX_REPLICAS = 1000
MAX_CPUS = 512
MAX_GPUS = 16
MAX_MEMORY_GIB = 4096
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class RequestError(ValueError):
    """A request body or parameter that is not what the API expects (HTTP 400)."""


@dataclass(frozen=True)
class CreateRequest:
    name: str
    workers: int
    cpus: float
    gpus: int
    memory_gib: float
    select: bool


# ---------------------------------------------------------------------- checks
def _fields(body: object, allowed: dict[str, bool], what: str) -> dict[str, Any]:
    """`body` as a dict with only `allowed` keys (name -> required)."""
    if not isinstance(body, dict):
        raise RequestError(f"expected a JSON object as the body of {what}, got {type(body).__name__}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r} in {what}; "
                           f"expected only {', '.join(repr(k) for k in allowed)}")
    missing = [k for k, required in allowed.items() if required and k not in body]
    if missing:
        raise RequestError(f"missing field {missing[0]!r} in {what}")
    return body


def _number(body: dict[str, Any], key: str, *, low: float, high: float, integer: bool,
            default: float | None = None, low_open: bool = False) -> float:
    v = body.get(key, default)
    kind = "an integer" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not (
            isinstance(v, int) or (isinstance(v, float) and v.is_integer()))):
        raise RequestError(f"expected {key!r} as {kind}, got {type(v).__name__} {v!r}")
    if not math.isfinite(v):
        raise RequestError(f"expected {key!r} as a finite number, got {v!r}")
    if (v <= low if low_open else v < low) or v > high:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise RequestError(f"expected {key!r} {bound} and <= {high:g}, got {v!r}")
    return float(v)


def check_name(name: object, what: str = "'name'") -> str:
    if not isinstance(name, str):
        raise RequestError(f"expected {what} as a string, got {type(name).__name__} {name!r}")
    if not _NAME.match(name) or len(name) > NAME_MAX:
        raise RequestError(
            f"expected {what} as a RayCluster name: lower-case letters, digits and '-', "
            f"starting with a letter, at most {NAME_MAX} characters; got {name!r}")
    return name


def check_create(body: object, default_name: str) -> CreateRequest:
    b = _fields(body, {"name": False, "workers": True, "cpus": True, "gpus": False,
                       "memory_gib": False, "select": False}, "a RayCluster to create")
    name = check_name(b["name"]) if b.get("name") is not None else default_name
    workers = int(_number(b, "workers", low=0, high=MAX_REPLICAS, integer=True))
    cpus = _number(b, "cpus", low=0, high=MAX_CPUS, integer=False, low_open=True)
    gpus = int(_number(b, "gpus", low=0, high=MAX_GPUS, integer=True, default=0))
    memory = _number(b, "memory_gib", low=0, high=MAX_MEMORY_GIB, integer=False,
                     default=max(2.0, 2.0 * cpus), low_open=True)
    select = b.get("select", False)
    if not isinstance(select, bool):
        raise RequestError(f"expected 'select' as true or false, got {select!r}")
    return CreateRequest(name, workers, cpus, gpus, memory, select)


def check_scale(body: object) -> tuple[str, int]:
    b = _fields(body, {"group": True, "replicas": True}, "a scale request")
    group = b["group"]
    if not isinstance(group, str) or not group:
        raise RequestError(f"expected 'group' as a worker group's name, got {group!r}")
    return group, int(_number(b, "replicas", low=0, high=MAX_REPLICAS, integer=True))


def check_select(body: object) -> str:
    b = _fields(body, {"name": True}, "a selection")
    return check_name(b["name"])


# ---------------------------------------------------------------------- template
def _cpu_quantity(cpus: float) -> str:
    milli = round(cpus * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def _memory_quantity(gib: float) -> str:
    mib = round(gib * 1024)
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


_PROMETHEUS = {"prometheus.io/scrape": "true", "prometheus.io/port": "8080",
               "prometheus.io/path": "/metrics"}


def raycluster_manifest(req: CreateRequest, *, namespace: str, image: str, ray_version: str,
                        auth_secret: str | None) -> dict[str, Any]:
    """The RayCluster the panel creates (see the module docstring)."""
    labels = {"app.kubernetes.io/name": req.name, "app.kubernetes.io/part-of": "carme",
              CREATED_BY[0]: CREATED_BY[1]}
    limits: dict[str, Any] = {"cpu": _cpu_quantity(req.cpus), "memory": _memory_quantity(req.memory_gib)}
    if req.gpus:
        limits["nvidia.com/gpu"] = req.gpus
    worker_spec: dict[str, Any] = {"containers": [{
        "name": "ray-worker", "image": image, "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "metrics", "containerPort": 8080}],
        "resources": {"requests": dict(limits), "limits": dict(limits)},
    }]}
    if req.gpus:
        worker_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                                       "effect": "NoSchedule"}]
    spec: dict[str, Any] = {
        "rayVersion": ray_version,
        "enableInTreeAutoscaling": False,
        "headGroupSpec": {
            "serviceType": "ClusterIP",
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0",
                               "metrics-export-port": "8080"},
            "template": {
                "metadata": {"labels": {**labels, "app.kubernetes.io/component": "head"},
                             "annotations": dict(_PROMETHEUS)},
                "spec": {"containers": [{
                    "name": "ray-head", "image": image, "imagePullPolicy": "IfNotPresent",
                    "ports": [{"name": "gcs-server", "containerPort": GCS_PORT},
                              {"name": "dashboard", "containerPort": 8265},
                              {"name": "client", "containerPort": 10001},
                              {"name": "metrics", "containerPort": 8080}],
                    "resources": {"requests": {"cpu": "1", "memory": "4Gi"},
                                  "limits": {"cpu": "2", "memory": "4Gi"}},
                }]},
            },
        },
        "workerGroupSpecs": [{
            "groupName": "workers",
            "replicas": req.workers,
            "minReplicas": 0,
            "maxReplicas": max(req.workers, 1),
            "rayStartParams": {"metrics-export-port": "8080"},
            "template": {
                "metadata": {"labels": {**labels, "app.kubernetes.io/component": "worker"},
                             "annotations": dict(_PROMETHEUS)},
                "spec": worker_spec,
            },
        }],
    }
    if auth_secret:
        spec["authOptions"] = {"mode": "token", "secretName": auth_secret}
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": req.name, "namespace": namespace, "labels": labels},
            "spec": spec}


# ---------------------------------------------------------------------- rows
def _gcs_port(spec: dict[str, Any]) -> int:
    port = ((spec.get("headGroupSpec") or {}).get("rayStartParams") or {}).get("port")
    try:
        return int(port) if port is not None else GCS_PORT
    except (TypeError, ValueError):
        return GCS_PORT


def head_address(name: str, namespace: str, port: int = GCS_PORT) -> str:
    """The CARME_ADDRESS kernels use to join the RayCluster `name` as Ray drivers."""
    return f"ray:{name}-head-svc.{namespace}.svc:{port}"


def _group_row(group: dict[str, Any]) -> dict[str, Any]:
    containers = (((group.get("template") or {}).get("spec") or {}).get("containers") or [{}])
    limits = ((containers[0] or {}).get("resources") or {}).get("limits") or {}
    return {
        "name": group.get("groupName"),
        "replicas": group.get("replicas"),
        "min_replicas": group.get("minReplicas"),
        "max_replicas": group.get("maxReplicas"),
        "cpus": None if limits.get("cpu") is None else str(limits["cpu"]),
        "gpus": None if limits.get("nvidia.com/gpu") is None else str(limits["nvidia.com/gpu"]),
        "memory": None if limits.get("memory") is None else str(limits["memory"]),
    }


def cluster_row(obj: dict[str, Any], selected: str | None) -> dict[str, Any]:
    """One RayCluster as the panel lists it."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    name, namespace = meta.get("name", ""), meta.get("namespace", "")
    address = head_address(name, namespace, _gcs_port(spec))
    return {
        "name": name,
        "namespace": namespace,
        "state": status.get("state") or "pending",
        "reason": status.get("reason") or None,
        "created": meta.get("creationTimestamp"),
        "created_by_carme": (meta.get("labels") or {}).get(CREATED_BY[0]) == CREATED_BY[1],
        "ray_version": spec.get("rayVersion"),
        "autoscaling": bool(spec.get("enableInTreeAutoscaling")),
        "head_service": f"{name}-head-svc.{namespace}.svc",
        "address": address,
        "worker_groups": [_group_row(g) for g in spec.get("workerGroupSpecs") or []],
        "desired_workers": status.get("desiredWorkerReplicas"),
        "available_workers": status.get("availableWorkerReplicas"),
        "selected": address == selected,
    }


# ---------------------------------------------------------------------- patches
def scale_patch(obj: dict[str, Any], group: str, replicas: int) -> list[dict[str, Any]]:
    """JSON Patch setting `group`'s replicas (KeyError naming the groups if it has none)."""
    groups = (obj.get("spec") or {}).get("workerGroupSpecs") or []
    names = [g.get("groupName") for g in groups]
    if group not in names:
        raise KeyError(f"the RayCluster {obj.get('metadata', {}).get('name')!r} has no worker "
                       f"group {group!r}; its groups: {', '.join(map(str, names)) or 'none'}")
    i = names.index(group)
    base = f"/spec/workerGroupSpecs/{i}"
    ops: list[dict[str, Any]] = [{"op": "test", "path": f"{base}/groupName", "value": group},
                                 {"op": "replace" if "replicas" in groups[i] else "add",
                                  "path": f"{base}/replicas", "value": replicas}]
    low, high = groups[i].get("minReplicas"), groups[i].get("maxReplicas")
    if isinstance(low, int) and replicas < low:
        ops.append({"op": "replace", "path": f"{base}/minReplicas", "value": replicas})
    if isinstance(high, int) and replicas > high:
        ops.append({"op": "replace", "path": f"{base}/maxReplicas", "value": replicas})
    return ops
