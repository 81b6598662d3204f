"""``/carme/api/kubernetes/...`` through a real Jupyter server (jp_fetch), the kubernetes
client and a fake API server on 127.0.0.1; request bodies are checked strictly."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from carme_lab_fakes import FakeBackend
from k8s_fake import FakeKubeAPI, write_kubeconfig
from lab_client import call as lab_call
from lab_client import kernels_join

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
import kube_schemas  # noqa: E402

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKubeAPI]:
    fake = FakeKubeAPI()
    fake.validate = kube_schemas.errors
    fake.kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fake.url, fake.token)  # type: ignore[attr-defined]
    fake.put(yaml.safe_load((DEPLOY / "raycluster.yaml").read_text()))
    yield fake
    fake.close()


@pytest.fixture  # type: ignore[no-redef]
def jp_server_config(kube: FakeKubeAPI) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"carme_lab": True}},
        "CarmeLabApp": {"backend_class": FakeBackend, "interval": 0.05, "call_timeout": 5.0},
        "KubeRayConfig": {"kubeconfig": str(kube.kubeconfig), "call_timeout": 10.0},  # type: ignore[attr-defined]
    }


async def call(jp_fetch: Any, *path: str, **kwargs: Any) -> tuple[int, Any]:
    """`lab_client.call` under /carme/api/kubernetes/."""
    return await lab_call(jp_fetch, "kubernetes", *path, **kwargs)


async def test_list_create_scale_select_delete(jp_fetch: Any, kube: FakeKubeAPI) -> None:
    code, listing = await call(jp_fetch, "rayclusters")
    assert code == 200 and listing["available"] is True and listing["namespace"] == "carme"
    assert [c["name"] for c in listing["clusters"]] == ["carme-ray"]

    code, row = await call(jp_fetch, "rayclusters", method="POST",
                           body={"name": "nb", "workers": 1, "cpus": 2, "gpus": 0})
    assert code == 201 and row["name"] == "nb" and row["created_by_carme"] is True
    assert ("carme", "nb") in kube.objects

    code, row = await call(jp_fetch, "rayclusters", "nb", method="PATCH",
                           body={"group": "workers", "replicas": 4})
    assert code == 200 and row["worker_groups"][0]["replicas"] == 4

    code, row = await call(jp_fetch, "select", method="POST", body={"name": "nb"})
    assert code == 200 and row["selected"] is True
    assert kernels_join() == "ray:nb-head-svc.carme.svc:6379"
    # the main cluster list shows the selection too
    r = await jp_fetch("carme", "api", "clusters")
    assert json.loads(r.body)["selected"] == "ray:nb-head-svc.carme.svc:6379"

    code, out = await call(jp_fetch, "rayclusters", "nb", method="DELETE")
    assert code == 200 and out == {"name": "nb", "deleted": True, "selected": None}
    assert kernels_join() is None and ("carme", "nb") not in kube.objects

    code, out = await call(jp_fetch, "rayclusters", "carme-ray", method="DELETE")
    assert code == 409 and "not created from this panel" in out["message"]


@pytest.mark.parametrize("raw,field", [
    ('{"workers": 1, "cpus": 1, "gpu": 1}', "'gpu'"),            # unknown field
    ('{"workers": 1, "cpus": NaN}', "NaN"),                       # non-finite
    ('{"workers": 1, "cpus": Infinity}', "Infinity"),
    ('{"workers": 1, "cpus": 1e400}', "'cpus'"),                  # overflows to inf
    ('{"workers": true, "cpus": 1}', "'workers'"),                # bool is not a number
    ('{"workers": 1.5, "cpus": 1}', "'workers'"),                 # not an integer
    ('{"workers": 1, "cpus": "2"}', "'cpus'"),                    # wrong type
    ('{"workers": 1, "cpus": 0}', "'cpus'"),                      # out of range
    ('{"workers": -1, "cpus": 1}', "'workers'"),
    ('{"workers": 1, "cpus": 1, "gpus": 17}', "'gpus'"),
    ('{"workers": 1, "cpus": 1, "memory_gib": -2}', "'memory_gib'"),
    ('{"workers": 1, "cpus": 1, "select": "yes"}', "'select'"),
    ('{"workers": 1, "cpus": 1, "name": "Has_Caps"}', "'name'"),
    ('{"workers": 1, "cpus": 1, "name": 7}', "'name'"),
    ('{"cpus": 1}', "'workers'"),                                 # missing
    ('{"workers": 1, "workers": 2, "cpus": 1}', "'workers' appears twice"),
    ('[1, 2]', "JSON object"),
    ('{"workers": 1,', "JSON object"),
])
async def test_create_rejects_bad_bodies_naming_the_field(
        jp_fetch: Any, kube: FakeKubeAPI, raw: str, field: str) -> None:
    code, out = await call(jp_fetch, "rayclusters", method="POST", raw=raw)
    assert code == 400, out
    assert field in out["message"], out["message"]
    assert [v for v, *_ in kube.requests if v == "create"] == [], "nothing reaches the API server"


@pytest.mark.parametrize("path,method,raw,field", [
    (("rayclusters", "carme-ray"), "PATCH", '{"group": "cpu", "replicas": 2, "x": 1}', "'x'"),
    (("rayclusters", "carme-ray"), "PATCH", '{"group": "cpu", "replicas": "2"}', "'replicas'"),
    (("rayclusters", "carme-ray"), "PATCH", '{"group": 3, "replicas": 2}', "'group'"),
    (("rayclusters", "carme-ray"), "PATCH", '{"group": "cpu", "replicas": -Infinity}', "Infinity"),
    (("rayclusters", "Bad.Name"), "PATCH", '{"group": "cpu", "replicas": 1}', "name in the URL"),
    (("select",), "POST", '{"name": "carme-ray", "also": 1}', "'also'"),
    (("select",), "POST", '{"name": null}', "'name'"),
    (("select",), "POST", '', "'name'"),
])
async def test_scale_and_select_reject_bad_bodies(
        jp_fetch: Any, kube: FakeKubeAPI, path: tuple[str, ...], method: str, raw: str,
        field: str) -> None:
    before = json.dumps(sorted(kube.objects.items()))
    code, out = await call(jp_fetch, *path, method=method, raw=raw)
    assert code == 400, out
    assert field in out["message"], out["message"]
    assert json.dumps(sorted(kube.objects.items())) == before
    assert kernels_join() is None


async def test_listing_says_why_when_the_api_server_refuses(jp_fetch: Any, kube: FakeKubeAPI) -> None:
    kube.token = "rotated"
    code, listing = await call(jp_fetch, "rayclusters")
    assert code == 200 and listing["available"] is False
    assert "401" in listing["reason"] and listing["clusters"] == []
