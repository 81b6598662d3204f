"""The side panel's Kubernetes (KubeRay) section in a real JupyterLab, driven by Chromium.

``jupyter lab`` runs with ``--KubeRayConfig.kubeconfig`` pointing at the fake Kubernetes
API server of ``tests/extension/k8s_fake.py`` (a thread of this test process on
127.0.0.1, checking the bearer token and KubeRay's strict schema), which holds the
RayCluster of ``deploy/kubernetes/raycluster.yaml``. As a user would: open the panel
(the section opens itself because Kubernetes is configured), create a RayCluster
from the form, scale its worker group, select the shipped cluster for new kernels
(the main cluster list shows its head address), delete the one the panel created;
the Delete button of the shipped one stays disabled. Skipped like the other browser
tests where Chromium, Playwright or JupyterLab is missing.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_side_panel import Lab, _browser_page, _open_panel, make_lab

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "extension"))
sys.path.insert(0, str(ROOT / "tests" / "deploy"))
import kube_schemas  # noqa: E402
from k8s_fake import FakeKubeAPI, write_kubeconfig  # noqa: E402

pytestmark = [pytest.mark.processes, pytest.mark.timeout(300)]
HEAD = "ray:carme-ray-head-svc.carme.svc:6379"


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKubeAPI]:
    fake = FakeKubeAPI()
    fake.validate = kube_schemas.errors
    fake.put(yaml.safe_load((ROOT / "deploy" / "kubernetes" / "raycluster.yaml").read_text()))
    fake.set_status("carme-ray", {"state": "ready", "availableWorkerReplicas": 1,
                                  "desiredWorkerReplicas": 1})
    yield fake
    fake.close()


@pytest.fixture
def lab(jupyter_dirs: Path, tmp_path: Path, kube: FakeKubeAPI,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # the kubeconfig, not a pod's account
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.url, kube.token)
    server = make_lab(tmp_path, (f"--KubeRayConfig.kubeconfig={kubeconfig}",))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _wait(page: Any, js: str, arg: Any = None, timeout: float = 30_000) -> None:
    page.wait_for_function(js, arg=arg, timeout=timeout)


def _cluster(page: Any, name: str) -> Any:
    return page.locator(f".clab-kuberay-cluster[data-name='{name}']")


def test_kuberay_section_creates_scales_selects_and_deletes(lab: Lab, kube: FakeKubeAPI,
                                                            tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    with _browser_page(lab, shots) as page:
        page.goto(f"{lab.url}/lab?token={lab.token}", timeout=60_000)
        _open_panel(page)
        section = page.locator("[data-testid='carme-kuberay']")
        _wait(page, "() => document.querySelector(\"[data-testid='carme-kuberay']\").open")
        _cluster(page, "carme-ray").wait_for(timeout=30_000)
        shipped = _cluster(page, "carme-ray").inner_text()
        assert "ready" in shipped and HEAD in shipped and "1/1 workers up" in shipped, shipped
        assert "Namespace carme" in section.inner_text()
        assert page.locator("[data-testid='carme-kuberay-delete-carme-ray']").is_disabled()

        # create one from the form: 2 workers of 1 CPU
        form = section.locator(".clab-kuberay-create")
        form.locator("input[type='text']").fill("nb")
        numbers = form.locator("input[type='number']")
        numbers.nth(0).fill("2")
        numbers.nth(1).fill("1")
        numbers.nth(2).fill("0")
        page.locator("[data-testid='carme-kuberay-create']").click()
        _cluster(page, "nb").wait_for(timeout=30_000)
        stored = kube.objects[("carme", "nb")]
        group = stored["spec"]["workerGroupSpecs"][0]
        assert group["replicas"] == 2
        assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "1"
        assert stored["metadata"]["labels"]["app.kubernetes.io/created-by"] == "carme-lab"
        page.locator("#carme-side-panel").screenshot(path=str(shots / "kuberay-created.png"))

        # scale its worker group to 3
        row = _cluster(page, "nb")
        row.locator(".clab-kuberay-group input").fill("3")
        row.locator(".clab-kuberay-group button", has_text="Scale").click()
        # the listing after the patch: maxReplicas widened from 2 to 3
        _wait(page, "() => { const r = document.querySelector(\".clab-kuberay-cluster[data-name='nb'] "
                    ".clab-kuberay-group\"); return r !== null && r.textContent.includes('0–3'); }")
        assert kube.objects[("carme", "nb")]["spec"]["workerGroupSpecs"][0]["replicas"] == 3

        # select the shipped cluster for new kernels: the main list selects its address
        page.locator("[data-testid='carme-kuberay-select-carme-ray']").click()
        _wait(page, "(a) => document.querySelector(\"[data-testid='carme-cluster-select']\").value === a",
              arg=HEAD)
        _wait(page, "() => document.querySelector(\"[data-testid='carme-kuberay-select-carme-ray']\")"
                    ".textContent === 'Selected'")

        # delete the one the panel created
        page.locator("[data-testid='carme-kuberay-delete-nb']").click()
        _cluster(page, "nb").wait_for(state="detached", timeout=30_000)
        assert ("carme", "nb") not in kube.objects and ("carme", "carme-ray") in kube.objects
        assert {v for v, *_ in kube.requests} == {"list", "get", "create", "patch", "delete"}
        page.locator("#carme-side-panel").screenshot(path=str(shots / "kuberay-panel.png"))
        if os.environ.get("CARME_SCREENSHOT_DIR"):
            dest = Path(os.environ["CARME_SCREENSHOT_DIR"])
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(shots / "kuberay-panel.png", dest / "kuberay-panel.png")
