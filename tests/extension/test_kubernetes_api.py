"""The RayCluster backend (`carme_lab._kubernetes`) through the official kubernetes client,
against a fake API server on 127.0.0.1 reached through a kubeconfig the test writes."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from carme_lab_fakes import FakeBackend
from k8s_fake import FakeKubeAPI, json_patch, write_kubeconfig
from lab_client import kernels_join

from carme_lab import _kubernetes
from carme_lab._kubernetes import RAYCLUSTER_VERBS, KubeRayConfig, KubeRayService
from carme_lab._service import LabError, LabService

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
import kube_schemas  # noqa: E402

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKubeAPI]:
    fake = FakeKubeAPI()
    fake.validate = kube_schemas.errors  # what a server with fieldValidation=Strict would refuse
    fake.kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fake.url, fake.token)  # type: ignore[attr-defined]
    yield fake
    fake.close()


class Env:
    """A KubeRayService with a LabService (fake cluster backend) on one event loop."""

    def __init__(self, kubeconfig: Path | str, **cfg: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.lab = LabService(FakeBackend(), state_file=None)
        self.svc = KubeRayService(KubeRayConfig(kubeconfig=str(kubeconfig), call_timeout=10.0, **cfg),
                                  self.lab)

    def __call__(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def error(self, coro: Any) -> LabError:
        with pytest.raises(LabError) as info:
            self(coro)
        return info.value

    def close(self) -> None:
        self(self.svc.close())
        self(self.lab.close())
        self.loop.close()


@pytest.fixture
def env(kube: FakeKubeAPI) -> Iterator[Env]:
    e = Env(kube.kubeconfig)  # type: ignore[attr-defined]
    yield e
    e.close()


def shipped_raycluster() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "raycluster.yaml").read_text())


# ---------------------------------------------------------------------- the fake itself
def test_the_fake_checks_the_bearer_token_like_an_api_server(kube: FakeKubeAPI) -> None:
    url = f"{kube.url}/apis/ray.io/v1/namespaces/carme/rayclusters"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {kube.token}"}):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
        assert info.value.code == 401
        assert json.loads(info.value.read())["reason"] == "Unauthorized"
    ok = urllib.request.urlopen(urllib.request.Request(
        url, headers={"Authorization": f"Bearer {kube.token}"}), timeout=10)
    assert json.loads(ok.read())["items"] == []


def test_the_fakes_json_patch_test_op_refuses_a_changed_document() -> None:
    doc = {"a": [{"n": "x", "r": 1}]}
    assert json_patch(doc, [{"op": "test", "path": "/a/0/n", "value": "x"},
                            {"op": "replace", "path": "/a/0/r", "value": 2}]) == {"a": [{"n": "x", "r": 2}]}
    with pytest.raises(Exception, match="test at /a/0/n failed"):
        json_patch(doc, [{"op": "test", "path": "/a/0/n", "value": "y"}])


# ---------------------------------------------------------------------- listing and rows
def test_listing_shows_the_namespaces_rayclusters_with_state_groups_and_address(
        env: Env, kube: FakeKubeAPI) -> None:
    out = env(env.svc.listing())
    assert out["available"] is True and out["namespace"] == "carme" and out["clusters"] == []
    assert "kubeconfig" in out["source"] and "context fake" in out["source"]
    kube.put(shipped_raycluster())
    kube.set_status("carme-ray", {"state": "ready", "availableWorkerReplicas": 1,
                                  "desiredWorkerReplicas": 1})
    [row] = env(env.svc.listing())["clusters"]
    assert row["name"] == "carme-ray" and row["state"] == "ready"
    assert row["address"] == "ray:carme-ray-head-svc.carme.svc:6379"
    assert row["head_service"] == "carme-ray-head-svc.carme.svc"
    assert row["autoscaling"] is True and row["created_by_carme"] is False
    assert [(g["name"], g["replicas"], g["min_replicas"], g["max_replicas"], g["gpus"])
            for g in row["worker_groups"]] == [("cpu", 1, 0, 8, None), ("gpu", 0, 0, 2, "1")]
    assert row["available_workers"] == 1 and row["selected"] is False


def test_other_namespaces_are_not_listed(env: Env, kube: FakeKubeAPI) -> None:
    other = shipped_raycluster()
    other["metadata"]["namespace"] = "elsewhere"
    kube.put(other)
    assert env(env.svc.listing())["clusters"] == []


# ---------------------------------------------------------------------- create, scale, delete
def test_create_stores_a_valid_raycluster_marked_as_the_panels(env: Env, kube: FakeKubeAPI) -> None:
    row = env(env.svc.create({"name": "nb", "workers": 2, "cpus": 1.5, "gpus": 1}))
    assert row["name"] == "nb" and row["created_by_carme"] is True and row["state"] == "pending"
    stored = kube.objects[("carme", "nb")]
    assert kube_schemas.errors({k: v for k, v in stored.items() if k != "status"} | {
        "metadata": {"name": "nb", "namespace": "carme", "labels": stored["metadata"]["labels"]}}) == []
    group = stored["spec"]["workerGroupSpecs"][0]
    assert group["replicas"] == 2
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "cpu": "1500m", "memory": "3Gi", "nvidia.com/gpu": 1}
    assert stored["spec"]["authOptions"] == {"mode": "token", "secretName": "carme-ray-auth"}
    # the real server is asked to refuse unknown fields instead of dropping them
    assert [q for verb, _, _, q in kube.requests if verb == "create"] == [{"fieldValidation": ["Strict"]}]
    assert kernels_join() is None, "create without select leaves kernels alone"


def test_create_without_a_name_picks_one_and_a_taken_name_is_409(env: Env, kube: FakeKubeAPI) -> None:
    row = env(env.svc.create({"workers": 0, "cpus": 1}))
    assert row["name"].startswith("carme-") and len(row["name"]) == len("carme-") + 6
    err = env.error(env.svc.create({"name": row["name"], "workers": 1, "cpus": 1}))
    assert err.status == 409 and "already exists" in err.message


def test_create_with_select_exports_the_head_address_to_new_kernels(env: Env) -> None:
    row = env(env.svc.create({"name": "nb", "workers": 1, "cpus": 1, "select": True}))
    assert row["selected"] is True
    assert kernels_join() == "ray:nb-head-svc.carme.svc:6379"
    listing = env(env.svc.listing())
    assert listing["selected"] == "ray:nb-head-svc.carme.svc:6379"
    assert [c["selected"] for c in listing["clusters"]] == [True]


def test_scale_sets_replicas_and_widens_the_bounds(env: Env, kube: FakeKubeAPI) -> None:
    kube.put(shipped_raycluster())
    row = env(env.svc.scale("carme-ray", {"group": "gpu", "replicas": 3}))
    assert [(g["name"], g["replicas"], g["max_replicas"]) for g in row["worker_groups"]] == [
        ("cpu", 1, 8), ("gpu", 3, 3)]
    assert kube.objects[("carme", "carme-ray")]["spec"]["workerGroupSpecs"][1]["replicas"] == 3
    row = env(env.svc.scale("carme-ray", {"group": "cpu", "replicas": 0}))
    assert row["worker_groups"][0]["replicas"] == 0
    err = env.error(env.svc.scale("carme-ray", {"group": "tpu", "replicas": 1}))
    assert err.status == 404 and "no worker group 'tpu'" in err.message and "cpu, gpu" in err.message
    err = env.error(env.svc.scale("missing", {"group": "cpu", "replicas": 1}))
    assert err.status == 404 and '"missing" not found' in err.message


def test_delete_only_what_the_panel_created_and_clear_its_selection(env: Env, kube: FakeKubeAPI) -> None:
    kube.put(shipped_raycluster())
    err = env.error(env.svc.delete("carme-ray"))
    assert err.status == 409 and "not created from this panel" in err.message
    assert ("carme", "carme-ray") in kube.objects
    env(env.svc.create({"name": "nb", "workers": 1, "cpus": 1, "select": True}))
    out = env(env.svc.delete("nb"))
    assert out == {"name": "nb", "deleted": True, "selected": None}
    assert ("carme", "nb") not in kube.objects and kernels_join() is None


def test_select_a_raycluster_for_new_kernels(env: Env, kube: FakeKubeAPI) -> None:
    kube.put(shipped_raycluster())
    row = env(env.svc.select({"name": "carme-ray"}))
    assert row["selected"] is True
    assert kernels_join() == "ray:carme-ray-head-svc.carme.svc:6379"
    err = env.error(env.svc.select({"name": "nope"}))
    assert err.status == 404
    assert kernels_join() == "ray:carme-ray-head-svc.carme.svc:6379"


# ---------------------------------------------------------------------- RBAC and failures
def test_the_panel_needs_exactly_the_verbs_the_role_grants(env: Env, kube: FakeKubeAPI) -> None:
    role = next(d for d in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()) if d["kind"] == "Role")
    kube.allowed_verbs = set(role["rules"][0]["verbs"])
    kube.put(shipped_raycluster())
    env(env.svc.listing())
    env(env.svc.create({"name": "nb", "workers": 1, "cpus": 1}))
    env(env.svc.scale("nb", {"group": "workers", "replicas": 2}))
    env(env.svc.select({"name": "carme-ray"}))
    env(env.svc.delete("nb"))
    assert kube.verbs_used() == set(RAYCLUSTER_VERBS) == set(role["rules"][0]["verbs"])


def test_a_missing_verb_is_403_naming_what_the_service_account_needs(env: Env, kube: FakeKubeAPI) -> None:
    kube.put(shipped_raycluster())
    kube.allowed_verbs = set(RAYCLUSTER_VERBS) - {"patch"}
    err = env.error(env.svc.scale("carme-ray", {"group": "cpu", "replicas": 2}))
    assert err.status == 403
    assert 'cannot patch resource "rayclusters"' in err.message and "rbac.yaml" in err.message
    kube.allowed_verbs = set()
    out = env(env.svc.listing())
    assert out["available"] is False and "cannot list" in out["reason"]


def test_a_wrong_token_is_reported_not_hidden(kube: FakeKubeAPI, tmp_path: Path) -> None:
    e = Env(write_kubeconfig(tmp_path / "bad", kube.url, "not-the-token"))
    try:
        out = e(e.svc.listing())
        assert out["available"] is False and "refused the credentials (401" in out["reason"]
        err = e.error(e.svc.create({"workers": 1, "cpus": 1}))
        assert err.status == 502
    finally:
        e.close()
    assert kube.objects == {}


def test_an_api_server_that_does_not_answer_is_503(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    e = Env(write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}", "t"))
    try:
        out = e(e.svc.listing())
        assert out["available"] is False and "did not answer" in out["reason"]
        assert e.error(e.svc.select({"name": "x"})).status == 503
    finally:
        e.close()


def test_without_credentials_the_feature_is_off_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    # ... found without importing the client (seconds of CPU under the GIL on a small machine)
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    e = Env("")
    try:
        out = e(e.svc.listing())
        assert out["available"] is False and out["clusters"] == []
        assert f"no kubeconfig at {tmp_path / 'none'}" in out["reason"]
        assert e.error(e.svc.create({"workers": 1, "cpus": 1})).status == 404
    finally:
        e.close()


def test_the_namespace_setting_wins_over_the_context(kube: FakeKubeAPI, tmp_path: Path) -> None:
    kube.put(shipped_raycluster())
    e = Env(kube.kubeconfig, namespace="team-b")  # type: ignore[attr-defined]
    try:
        out = e(e.svc.listing())
        assert out["namespace"] == "team-b" and out["clusters"] == []
        e(e.svc.create({"name": "nb", "workers": 0, "cpus": 1}))
        assert ("team-b", "nb") in kube.objects
    finally:
        e.close()


def test_in_a_pod_the_service_account_is_used_over_https(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a pod sees: KUBERNETES_SERVICE_HOST/PORT, and the account's token, CA and namespace."""
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    out = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(sa / "ca.crt"),
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    fake = FakeKubeAPI(token="pod-token", namespace="team-x", tls=(sa / "ca.crt", tmp_path / "key.pem"))
    try:
        (sa / "token").write_text("pod-token")
        (sa / "namespace").write_text("team-x\n")
        monkeypatch.setattr(_kubernetes, "SA_DIR", str(sa))
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(fake.port))
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))  # must not be needed
        e = Env("")
        try:
            out_ = e(e.svc.listing())
            assert out_["available"] is True, out_["reason"]
            assert out_["source"] == "in-cluster service account" and out_["namespace"] == "team-x"
            e(e.svc.create({"name": "nb", "workers": 1, "cpus": 1}))
            assert ("team-x", "nb") in fake.objects
        finally:
            e.close()
    finally:
        fake.close()


def test_without_the_kubernetes_package_the_feature_is_off_and_says_how_to_fix(
        kube: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # import kubernetes -> ImportError
    e = Env(kube.kubeconfig)  # type: ignore[attr-defined]
    try:
        out = e(e.svc.listing())
        assert out["available"] is False and "pip install kubernetes" in out["reason"]
    finally:
        e.close()


def test_a_broken_pod_environment_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("t")
    monkeypatch.setattr(_kubernetes, "SA_DIR", str(sa))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    e = Env("")
    try:
        out = e(e.svc.listing())
        assert out["available"] is False
        assert "the pod's service account cannot be used" in out["reason"], out["reason"]
    finally:
        e.close()
