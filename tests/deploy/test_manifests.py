"""deploy/kubernetes validated offline: every manifest, the kustomize rendering, the panel's
template, and the cross-references between files (see kube_schemas.py for how)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kube_schemas as ks
import pytest

from carme_kernel.engines import parse_target
from carme_lab import _kubernetes, _raycluster
from ray_support import requires_ray

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
EXAMPLES = DEPLOY / "examples"
KUSTOMIZATIONS = [DEPLOY, EXAMPLES]


def manifest_files() -> list[Path]:
    return sorted(p for d in KUSTOMIZATIONS for p in d.glob("*.yaml") if p.name != "kustomization.yaml")


def all_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.relative_to(DEPLOY)}:{d['kind']}", d) for p in manifest_files() for d in ks.load_all(p)]


def by_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in all_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/kubernetes, found {len(found)}"
    return found[0]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl not found: run scripts/install-kubectl (Debian's kubernetes-client)")
    return path


def kustomize(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {directory} failed:\n{out.stderr}"
    import yaml

    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


# ---------------------------------------------------------------------- every manifest
@pytest.mark.parametrize("where,doc", all_docs(), ids=[w for w, _ in all_docs()])
def test_manifest_is_valid(where: str, doc: dict[str, Any]) -> None:
    assert ks.errors(doc) == []


def test_the_files_hold_every_kind_the_deployment_needs() -> None:
    kinds = sorted(d["kind"] for _, d in all_docs())
    assert kinds == sorted(["Namespace", "ServiceAccount", "Role", "RoleBinding", "RayCluster",
                            "Deployment", "Service", "RayJob", "RayService"])


# A misspelled field in a test copy of each kind must fail, naming the field.
MISSPELLED: dict[str, tuple[str, str]] = {
    # kind: (path to an object, a misspelled key to add there)
    "Namespace": ("metadata", "lables"),
    "ServiceAccount": ("", "automountServiceAccountTokens"),
    "Role": ("rules.0", "verb"),
    "RoleBinding": ("subjects.0", "namespaces"),
    "Deployment": ("spec.template.spec.containers.0", "imagePulPolicy"),
    "Service": ("spec", "selectors"),
    "RayCluster": ("spec.workerGroupSpecs.1", "maxReplica"),
    "RayJob": ("spec", "shutdownAfterJobFinish"),
    "RayService": ("spec.rayClusterConfig.headGroupSpec", "rayStartParam"),
}


@pytest.mark.parametrize("kind", sorted(MISSPELLED))
def test_a_misspelled_field_fails(kind: str) -> None:
    path, key = MISSPELLED[kind]
    doc = copy.deepcopy(by_kind(kind) if kind != "Service" else by_kind("Service", "carme-lab"))
    node: Any = doc
    for part in filter(None, path.split(".")):
        node = node[int(part)] if part.isdigit() else node[part]
    node[key] = "x"
    problems = ks.errors(doc)
    assert problems, f"{kind} with the unknown field {path}.{key} was accepted"
    assert any(key in p for p in problems), problems


def test_wrong_types_and_missing_fields_fail() -> None:
    rc = copy.deepcopy(by_kind("RayCluster"))
    rc["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("replicas" in p for p in ks.errors(rc))
    rc = copy.deepcopy(by_kind("RayCluster"))
    del rc["spec"]["headGroupSpec"]
    assert any("headGroupSpec" in p for p in ks.errors(rc))
    rc = copy.deepcopy(by_kind("RayCluster"))
    rc["apiVersion"] = "ray.io/v1alpha2"
    assert ks.errors(rc) == ["RayCluster: expected apiVersion ray.io/v1, got ray.io/v1alpha2"]
    dep = copy.deepcopy(by_kind("Deployment"))
    dep["spec"]["replicas"] = "one"
    assert ks.errors(dep)


def test_strict_closes_only_objects_that_list_their_properties() -> None:
    schema = {"type": "object", "properties": {
        "listed": {"type": "object", "properties": {"a": {"type": "string"}}},
        "open": {"type": "object"},
        "preserved": {"type": "object", "properties": {"a": {}},
                      "x-kubernetes-preserve-unknown-fields": True},
        "map": {"type": "object", "additionalProperties": {"type": "string"}},
        "list": {"type": "array", "items": {"type": "object", "properties": {"b": {}}}},
    }}
    s = ks.strict(schema)
    assert s["additionalProperties"] is False
    assert s["properties"]["listed"]["additionalProperties"] is False
    assert "additionalProperties" not in s["properties"]["open"]
    assert "additionalProperties" not in s["properties"]["preserved"]
    assert s["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert s["properties"]["list"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in schema, "strict() must not change its argument"


# ---------------------------------------------------------------------- kustomize
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=["deploy", "examples"])
def test_kustomize_renders_every_file_and_the_output_validates(directory: Path) -> None:
    rendered = kustomize(directory)
    assert all(ks.errors(d) == [] for d in rendered), [ks.errors(d) for d in rendered]
    listed = ks.load_all(directory / "kustomization.yaml")[0]["resources"]
    expected = sorted((d["kind"], d["metadata"]["name"]) for f in listed for d in ks.load_all(directory / f))
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == expected
    for d in rendered:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "carme", d["metadata"]


def test_kustomize_output_with_a_misspelled_field_fails(tmp_path: Path) -> None:
    copy_dir = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, copy_dir, ignore=shutil.ignore_patterns("examples"))
    text = (copy_dir / "raycluster.yaml").read_text()
    assert "enableInTreeAutoscaling: true" in text
    (copy_dir / "raycluster.yaml").write_text(
        text.replace("enableInTreeAutoscaling: true", "enableInTreeAutoscalling: true"))
    problems = [p for d in kustomize(copy_dir) for p in ks.errors(d)]
    assert len(problems) == 1 and "enableInTreeAutoscalling" in problems[0], problems


# ---------------------------------------------------------------------- cross-references
def test_notebook_kernels_join_the_rayclusters_head_service() -> None:
    rc = by_kind("RayCluster")
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    gcs = next(p["containerPort"] for p in head["ports"] if p["name"] == "gcs-server")
    env = {e["name"]: e for e in by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CARME_ADDRESS"]["value"] == f"ray:{rc['metadata']['name']}-head-svc:{gcs}"
    assert gcs == _raycluster.GCS_PORT == 6379
    # the kernel reads it as a Ray GCS address (a normal Ray driver, not Ray Client)
    target = parse_target(env["CARME_ADDRESS"]["value"])
    assert (target.engine, target.address, target.client) == ("ray", f"{rc['metadata']['name']}-head-svc:{gcs}", False)
    panel = parse_target(_raycluster.head_address(rc["metadata"]["name"], "carme"))
    assert (panel.engine, panel.address) == ("ray", f"{rc['metadata']['name']}-head-svc.carme.svc:{gcs}")
    # Ray's token: the RayCluster's Secret is the one the notebook reads
    secret = rc["spec"]["authOptions"]["secretName"]
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "auth_token"}
    assert env["RAY_AUTH_MODE"]["value"] == rc["spec"]["authOptions"]["mode"] == "token"
    assert _kubernetes.DEFAULT_AUTH_SECRET == secret


def test_the_role_grants_exactly_the_verbs_the_panel_uses() -> None:
    role = by_kind("Role")
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayclusters"],
                              "verbs": sorted(_kubernetes.RAYCLUSTER_VERBS)}]
    sa = by_kind("ServiceAccount")
    binding = by_kind("RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


def test_the_service_selects_the_jupyterlab_pods() -> None:
    dep, svc = by_kind("Deployment"), by_kind("Service", "carme-lab")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names


def ray_pod_templates(cluster_spec: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [(g["template"], g["rayStartParams"]) for g in groups]


def test_the_raycluster_has_cpu_and_gpu_groups_autoscaling_and_prometheus_annotations() -> None:
    spec = by_kind("RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] >= 1
    cpu = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in cpu["limits"]
    for template, params in ray_pod_templates(spec):
        ann = template["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        assert ann["prometheus.io/port"] == params["metrics-export-port"]
        limits = template["spec"]["containers"][0]["resources"]["limits"]
        assert {"cpu", "memory"} <= set(limits)


def test_one_image_and_one_ray_version_everywhere() -> None:
    docker = (DEPLOY / "Dockerfile").read_text()
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", docker, re.M)
    assert ray_version, "Dockerfile: expected a line ARG RAY_VERSION=..."
    specs = [by_kind("RayCluster")["spec"], by_kind("RayJob")["spec"]["rayClusterSpec"],
             by_kind("RayService")["spec"]["rayClusterConfig"]]
    assert {s["rayVersion"] for s in specs} == {ray_version.group(1), _kubernetes.DEFAULT_RAY_VERSION}
    images = {c["image"] for s in specs for t, _ in ray_pod_templates(s) for c in t["spec"]["containers"]}
    images |= {c["image"] for c in by_kind("Deployment")["spec"]["template"]["spec"]["containers"]}
    assert images == {_kubernetes.DEFAULT_IMAGE}
    # the examples the RayJob and RayService run are the files the image copies
    assert "COPY deploy/kubernetes/examples/*.py /opt/carme/examples/" in docker
    assert by_kind("RayJob")["spec"]["entrypoint"] == "python /opt/carme/examples/pi.py"
    assert "import_path: serve_app:app" in by_kind("RayService")["spec"]["serveConfigV2"]
    assert (EXAMPLES / "pi.py").exists() and (EXAMPLES / "serve_app.py").exists()


# ---------------------------------------------------------------------- the panel's template
@pytest.mark.parametrize("workers,cpus,gpus,memory", [(0, 1, 0, None), (3, 0.5, 0, 1.5), (2, 8, 2, 64)])
def test_the_panels_template_validates(workers: int, cpus: float, gpus: int, memory: float | None) -> None:
    body: dict[str, Any] = {"name": "nb-1", "workers": workers, "cpus": cpus, "gpus": gpus}
    if memory is not None:
        body["memory_gib"] = memory
    req = _raycluster.check_create(body, "unused")
    doc = _raycluster.raycluster_manifest(req, namespace="carme", image=_kubernetes.DEFAULT_IMAGE,
                                          ray_version=_kubernetes.DEFAULT_RAY_VERSION,
                                          auth_secret=_kubernetes.DEFAULT_AUTH_SECRET)
    assert ks.errors(doc) == []
    group = doc["spec"]["workerGroupSpecs"][0]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert group["replicas"] == workers and limits.get("nvidia.com/gpu", 0) == gpus
    shipped = by_kind("RayCluster")["spec"]
    assert doc["spec"]["headGroupSpec"]["rayStartParams"] == shipped["headGroupSpec"]["rayStartParams"]
    assert doc["spec"]["authOptions"] == shipped["authOptions"]


# ---------------------------------------------------------------------- the examples' code
@pytest.mark.processes
def test_the_rayjob_script_runs_on_carme() -> None:
    code = ("import sys, carme; sys.path.insert(0, sys.argv[1]); import pi; "
            "carme.init(num_cpus=2); "
            "print(round(pi.main(carme, samples_per_task=20000, tasks=4), 1)); carme.shutdown()")
    out = subprocess.run([sys.executable, "-c", code, str(EXAMPLES)], capture_output=True,
                         text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "3.1"


def test_the_rayservice_config_and_serve_app_fit_ray_serve() -> None:
    """Checked with Ray Serve's own schema where Ray is installed (the ray extra)."""
    pytest.importorskip("ray.serve")
    import yaml
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    config = yaml.safe_load(by_kind("RayService")["spec"]["serveConfigV2"])
    parsed = ServeDeploySchema.model_validate(config)  # Serve's models allow unknown keys:
    for app in config["applications"]:                  # check those by hand
        assert set(app) <= set(ServeApplicationSchema.model_fields), app
        for dep in app.get("deployments", []):
            assert set(dep) <= set(DeploymentSchema.model_fields), dep
    [app] = parsed.applications
    module, _, attr = app.import_path.partition(":")
    sys.path.insert(0, str(EXAMPLES))
    try:
        serve_app = __import__(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    from ray.serve import Application

    assert isinstance(getattr(serve_app, attr), Application)
    assert [d.name for d in app.deployments] == [serve_app.SumOfSquares.name]
    assert serve_app.sum_of_squares(10) == 285


@requires_ray
@pytest.mark.processes
def test_the_rayjob_entrypoint_runs_on_a_ray_cluster(ray_cluster: Any, tmp_path: Path) -> None:
    """As a RayJob's submitter runs it: `python pi.py` with RAY_ADDRESS set to the cluster."""
    env = dict(os.environ, **ray_cluster.env(), RAY_ADDRESS=ray_cluster.gcs_address)
    out = subprocess.run([sys.executable, str(EXAMPLES / "pi.py")], capture_output=True, text=True,
                         timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert re.search(r"^pi is about 3\.1\d*$", out.stdout, re.M), out.stdout
