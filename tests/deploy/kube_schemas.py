"""Strict offline validation of Kubernetes manifests: KubeRay's CRDs and built-in kinds.

Theory of operation
-------------------
No Kubernetes API server runs here, so manifests are checked against schemas:

- Custom resources (``ray.io/v1`` RayCluster, RayJob, RayService) against the
  ``openAPIV3Schema`` of KubeRay's CRDs (``crds/``, copied unchanged from KubeRay).
  A real API server prunes fields the schema does not list, so a misspelled field
  would be dropped silently; `strict()` therefore closes every object schema that
  lists ``properties`` (``additionalProperties: false``) unless it already says what
  extra keys may hold or keeps unknown fields (``x-kubernetes-preserve-unknown-fields``).
  The CRD leaves ``metadata`` open (``type: object``); it is checked against
  `OBJECT_META`, the ObjectMeta fields a manifest may set. OpenAPI v3 schemas are
  JSON Schema draft 4 plus extensions (``x-kubernetes-*``, ``nullable``, ``format``),
  which draft 4 validators ignore, so `jsonschema.Draft4Validator` is used.
- Built-in kinds (Namespace, ServiceAccount, Role, RoleBinding, Deployment, Service)
  with ``kubernetes-validate`` in strict mode (unknown fields are errors), against
  the schemas of `K8S_VERSION` it ships; it needs no network.

`errors(doc)` returns one readable line per problem (the path of the field and
what was wrong); an empty list means the manifest is valid.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD_DIR = Path(__file__).parent / "crds"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
CR_API_VERSION = "ray.io/v1"
K8S_VERSION = "1.30.0"  # the Kubernetes schema version built-in kinds are checked against

# The ObjectMeta fields a manifest (or the panel) may set on a custom resource.
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema in which unknown fields are errors (see module doc)."""
    schema = copy.deepcopy(schema)
    _close(schema)
    return schema


def _close(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _close(item)
        return
    if not isinstance(node, dict):
        return
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        node["additionalProperties"] = False
    for key in ("properties", "patternProperties", "definitions"):
        for sub in (node.get(key) or {}).values():
            _close(sub)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), (dict, list)):
            _close(node[key])
    for key in ("allOf", "anyOf", "oneOf"):
        _close(node.get(key) or [])


@functools.cache
def crd_schema(kind: str, version: str = "v1") -> dict[str, Any]:
    """The strict schema of `kind` (RayCluster, RayJob, RayService) at `version`."""
    if kind not in CRD_FILES:
        raise KeyError(f"no CRD for kind {kind!r}; known: {sorted(CRD_FILES)}")
    crd = yaml.safe_load((CRD_DIR / CRD_FILES[kind]).read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = strict(v["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = OBJECT_META
            schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
            schema["properties"]["apiVersion"] = {"enum": [f"ray.io/{version}"]}
            schema["properties"]["kind"] = {"enum": [kind]}
            jsonschema.Draft4Validator.check_schema(schema)
            return schema  # type: ignore[no-any-return]
    raise KeyError(f"the {kind} CRD has no version {version!r}")


def _path(error: jsonschema.ValidationError) -> str:
    parts = []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else f".{p}")
    return "".join(parts).lstrip(".") or "(top level)"


def cr_errors(doc: dict[str, Any]) -> list[str]:
    """Problems of a ray.io custom resource against KubeRay's strict CRD schema."""
    validator = jsonschema.Draft4Validator(crd_schema(doc.get("kind", "")))
    return sorted(f"{doc['kind']} {_path(e)}: {e.message}" for e in validator.iter_errors(doc))


def builtin_errors(doc: dict[str, Any]) -> list[str]:
    """Problems of a built-in kind, from kubernetes-validate in strict mode."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "(top level)"
        return [f"{doc.get('kind')} {path}: {e.message}"]
    return []


def errors(doc: dict[str, Any]) -> list[str]:
    """Every problem found in one manifest; [] when it is valid."""
    if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
        return [f"expected a Kubernetes object with apiVersion and kind, got {doc!r:.80}"]
    if doc["apiVersion"].startswith("ray.io/"):
        if doc["apiVersion"] != CR_API_VERSION:
            return [f"{doc['kind']}: expected apiVersion {CR_API_VERSION}, got {doc['apiVersion']}"]
        return cr_errors(doc)
    return builtin_errors(doc)


def load_all(path: Path) -> list[dict[str, Any]]:
    """The documents of a YAML file (empty documents skipped)."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
