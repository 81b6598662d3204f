"""`carme_lab._raycluster`: request checks, the panel's template, rows and patches (no I/O)."""

from __future__ import annotations

import math

import pytest

from carme_lab import _raycluster as rc


def test_create_defaults_and_quantities() -> None:
    req = rc.check_create({"workers": 2, "cpus": 0.25}, "carme-abc123")
    assert req == rc.CreateRequest("carme-abc123", 2, 0.25, 0, 2.0, False)
    doc = rc.raycluster_manifest(req, namespace="ns", image="img:1", ray_version="2.60.0",
                                 auth_secret=None)
    assert "authOptions" not in doc["spec"]
    limits = doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "250m", "memory": "2Gi"}
    assert doc["metadata"]["labels"][rc.CREATED_BY[0]] == rc.CREATED_BY[1]
    assert doc["spec"]["enableInTreeAutoscaling"] is False
    req = rc.check_create({"workers": 1, "cpus": 3, "memory_gib": 1.5, "gpus": 2.0}, "x")
    assert (req.memory_gib, req.gpus) == (1.5, 2)


@pytest.mark.parametrize("body,needle", [
    ({"workers": 1, "cpus": math.nan}, "finite"),
    ({"workers": 1, "cpus": math.inf}, "finite"),
    ({"workers": 1, "cpus": 1, "gpus": False}, "'gpus' as an integer"),
    ({"workers": 1001, "cpus": 1}, "<= 1000"),
    ({"workers": 1, "cpus": 1, "name": "a" * 41}, "at most 40"),
    ({"workers": 1, "cpus": 1, "name": "1abc"}, "starting with a letter"),
    ({"workers": 1, "cpus": 1, "extra": None}, "unknown field 'extra'"),
])
def test_create_refusals_name_the_field(body: dict, needle: str) -> None:
    with pytest.raises(rc.RequestError, match=needle.replace("(", r"\(")):
        rc.check_create(body, "x")


def cluster(groups: list[dict]) -> dict:
    return {"metadata": {"name": "c", "namespace": "ns"},
            "spec": {"headGroupSpec": {"rayStartParams": {"port": "7000"}}, "workerGroupSpecs": groups}}


def test_rows_use_the_head_port_and_survive_missing_fields() -> None:
    row = rc.cluster_row(cluster([{"groupName": "g"}]), selected="ray:c-head-svc.ns.svc:7000")
    assert row["address"] == "ray:c-head-svc.ns.svc:7000" and row["selected"] is True
    assert row["state"] == "pending" and row["created_by_carme"] is False
    assert row["worker_groups"] == [{"name": "g", "replicas": None, "min_replicas": None,
                                     "max_replicas": None, "cpus": None, "gpus": None, "memory": None}]
    assert rc.cluster_row({}, None)["worker_groups"] == []


def test_scale_patch_tests_the_group_then_sets_replicas_and_bounds() -> None:
    obj = cluster([{"groupName": "a", "replicas": 1, "minReplicas": 1, "maxReplicas": 2},
                   {"groupName": "b", "minReplicas": 2, "maxReplicas": 4}])
    assert rc.scale_patch(obj, "b", 3) == [
        {"op": "test", "path": "/spec/workerGroupSpecs/1/groupName", "value": "b"},
        {"op": "add", "path": "/spec/workerGroupSpecs/1/replicas", "value": 3}]
    assert rc.scale_patch(obj, "a", 0)[1:] == [
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 0},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/minReplicas", "value": 0}]
    assert rc.scale_patch(obj, "a", 5)[2:] == [
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/maxReplicas", "value": 5}]
    with pytest.raises(KeyError, match="no worker group 'z'; its groups: a, b"):
        rc.scale_patch(obj, "z", 1)


def test_scale_and_select_checks() -> None:
    assert rc.check_scale({"group": "g", "replicas": 2.0}) == ("g", 2)
    with pytest.raises(rc.RequestError, match="missing field 'replicas'"):
        rc.check_scale({"group": "g"})
    with pytest.raises(rc.RequestError, match="'group'"):
        rc.check_scale({"group": "", "replicas": 1})
    assert rc.check_select({"name": "abc"}) == "abc"
    with pytest.raises(rc.RequestError, match="JSON object"):
        rc.check_select(["abc"])
