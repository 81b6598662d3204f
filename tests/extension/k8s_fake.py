"""A small Kubernetes API server for the tests: ``ray.io/v1`` rayclusters, nothing else.

Theory of operation
-------------------
No Kubernetes API server can run here, so `FakeKubeAPI` answers the few calls the side
panel makes, over real HTTP on 127.0.0.1 (a `ThreadingHTTPServer` on a thread of the
test process), the way the real one does:

- every request needs ``Authorization: Bearer <token>``; otherwise 401 with a
  ``Status`` object, as an API server answers anonymous or bad credentials;
- RBAC: only the verbs in ``allowed_verbs`` pass; others get 403 with the API
  server's message (``... cannot patch resource "rayclusters" in API group
  "ray.io" in the namespace "carme"``);
- ``GET/POST /apis/ray.io/v1/namespaces/<ns>/rayclusters`` (list, create) and
  ``GET/PATCH/DELETE .../rayclusters/<name>`` (get, JSON Patch or merge patch, delete);
  409 AlreadyExists, 404 NotFound, 415 for other patch types, 422 for a failed JSON
  Patch ``test``; metadata gets uid, resourceVersion, generation, creationTimestamp;
- ``validate`` (optional): a function returning a list of problems; the server then
  answers 400 as a server asked for ``fieldValidation=Strict`` would, instead of
  storing an object KubeRay's schema does not allow.

Every request is recorded in ``requests`` as (verb, namespace, name, query), so a
test can compare the verbs the panel used with those the Role grants.
`write_kubeconfig` writes a kubeconfig that points at the server with its token. With
``tls=(certificate, key)`` it serves HTTPS, as the API server a pod's service account
reaches (``KUBERNETES_SERVICE_HOST``, the cluster's CA) does.
"""

from __future__ import annotations

import copy
import json
import re
import ssl
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

PATH = re.compile(r"^/apis/ray\.io/v1/namespaces/(?P<ns>[a-z0-9-]+)/rayclusters(?:/(?P<name>[^/]+))?$")
ALL_VERBS = frozenset({"list", "get", "create", "patch", "delete", "update", "watch"})


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class PatchFailed(Exception):
    pass


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 for the ops the panel sends (test, replace, add, remove)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last: Any = int(parts[-1]) if isinstance(parent, list) else parts[-1]
        kind = op["op"]
        if kind == "test":
            if parent[last] != op["value"]:
                raise PatchFailed(f"the test at {op['path']} failed: {parent[last]!r} != {op['value']!r}")
        elif kind in ("replace", "add"):
            if kind == "replace" and (last not in parent if isinstance(parent, dict) else last >= len(parent)):
                raise PatchFailed(f"replace: nothing at {op['path']}")
            parent[last] = op["value"]
        elif kind == "remove":
            del parent[last]
        else:
            raise PatchFailed(f"unsupported op {kind!r}")
    return doc


def merge_patch(doc: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(doc) if isinstance(doc, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class FakeKubeAPI:
    def __init__(self, token: str = "s3cret-token", namespace: str = "carme",
                 tls: tuple[Path, Path] | None = None) -> None:
        self.token = token
        self.namespace = namespace
        self.allowed_verbs: set[str] = set(ALL_VERBS)
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str | None, dict[str, list[str]]]] = []
        self.validate: Callable[[dict[str, Any]], list[str]] | None = None
        self._lock = threading.Lock()
        self._version = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_PATCH(self) -> None:
                fake._handle(self, "PATCH")

            def do_DELETE(self) -> None:
                fake._handle(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if tls is not None:  # (certificate, key): HTTPS, as a pod's service account sees it
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-kube-api",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ test helpers
    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as if someone else (kubectl) had created it."""
        with self._lock:
            return self._store(copy.deepcopy(obj), obj["metadata"].get("namespace", self.namespace))

    def set_status(self, name: str, status_: dict[str, Any], namespace: str | None = None) -> None:
        """What the KubeRay operator would write (state, worker counts)."""
        with self._lock:
            self.objects[(namespace or self.namespace, name)]["status"] = status_

    def verbs_used(self) -> set[str]:
        return {verb for verb, *_ in self.requests}

    # ------------------------------------------------------------------ serving
    def _store(self, obj: dict[str, Any], ns: str) -> dict[str, Any]:
        self._version += 1
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp",
                        datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        meta["namespace"] = ns
        meta["resourceVersion"] = str(self._version)
        meta["generation"] = meta.get("generation", 0) + 1
        self.objects[(ns, meta["name"])] = obj
        return copy.deepcopy(obj)

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        query = parse_qs(url.query)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        scheme, _, credential = (h.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or credential.strip() != self.token:  # schemes ignore case
            return self._send(h, 401, status(401, "Unauthorized", "Unauthorized"))
        m = PATH.match(url.path)
        if not m:
            return self._send(h, 404, status(404, "NotFound", "the server could not find the requested resource"))
        ns, name = m.group("ns"), m.group("name")
        verb = {("GET", False): "list", ("GET", True): "get", ("POST", False): "create",
                ("PATCH", True): "patch", ("DELETE", True): "delete"}.get((method, name is not None))
        if verb is None:
            return self._send(h, 405, status(405, "MethodNotAllowed", f"{method} is not allowed here"))
        self.requests.append((verb, ns, name, query))
        if verb not in self.allowed_verbs:
            return self._send(h, 403, status(403, "Forbidden", (
                f'rayclusters.ray.io{" " + repr(name) if name else ""} is forbidden: User '
                f'"system:serviceaccount:{ns}:carme-lab" cannot {verb} resource "rayclusters" '
                f'in API group "ray.io" in the namespace "{ns}"')))
        try:
            body = json.loads(raw) if raw else None
        except ValueError as e:
            return self._send(h, 400, status(400, "BadRequest", f"invalid JSON: {e}"))
        with self._lock:
            code, answer = getattr(self, f"_{verb}")(ns, name, body, h.headers.get("Content-Type", ""))
        self._send(h, code, answer)

    def _list(self, ns: str, name: None, body: Any, ctype: str) -> tuple[int, Any]:
        items = [copy.deepcopy(o) for (n, _), o in sorted(self.objects.items()) if n == ns]
        return 200, {"apiVersion": "ray.io/v1", "kind": "RayClusterList",
                     "metadata": {"resourceVersion": str(self._version)}, "items": items}

    def _get(self, ns: str, name: str, body: Any, ctype: str) -> tuple[int, Any]:
        obj = self.objects.get((ns, name))
        if obj is None:
            return 404, status(404, "NotFound", f'rayclusters.ray.io "{name}" not found')
        return 200, copy.deepcopy(obj)

    def _invalid(self, obj: Any) -> list[str]:
        if not isinstance(obj, dict) or obj.get("kind") != "RayCluster":
            return ["expected a RayCluster object"]
        return self.validate(obj) if self.validate else []

    def _create(self, ns: str, name: None, body: Any, ctype: str) -> tuple[int, Any]:
        problems = self._invalid(body)
        if problems:
            return 400, status(400, "BadRequest", "strict decoding error: " + "; ".join(problems))
        meta = body.get("metadata") or {}
        if meta.get("namespace") not in (None, ns):
            return 400, status(400, "BadRequest", "the namespace of the provided object does not "
                                                  "match the namespace sent on the request")
        if (ns, meta.get("name")) in self.objects:
            return 409, status(409, "AlreadyExists", f'rayclusters.ray.io "{meta.get("name")}" already exists')
        return 201, self._store(body, ns)

    def _patch(self, ns: str, name: str, body: Any, ctype: str) -> tuple[int, Any]:
        obj = self.objects.get((ns, name))
        if obj is None:
            return 404, status(404, "NotFound", f'rayclusters.ray.io "{name}" not found')
        try:
            if ctype.startswith("application/json-patch+json"):
                new = json_patch(obj, body)
            elif ctype.startswith("application/merge-patch+json"):
                new = merge_patch(obj, body)
            else:
                return 415, status(415, "UnsupportedMediaType", f"the body of the request was in an "
                                                                f"unknown format: {ctype}")
        except (PatchFailed, KeyError, IndexError, ValueError, TypeError) as e:
            return 422, status(422, "Invalid", str(e))
        problems = self._invalid({k: v for k, v in new.items() if k != "status"} | {
            "metadata": {k: v for k, v in new["metadata"].items()
                         if k in ("name", "namespace", "labels", "annotations")}})
        if problems:
            return 422, status(422, "Invalid", "; ".join(problems))
        return 200, self._store(new, ns)

    def _delete(self, ns: str, name: str, body: Any, ctype: str) -> tuple[int, Any]:
        if self.objects.pop((ns, name), None) is None:
            return 404, status(404, "NotFound", f'rayclusters.ray.io "{name}" not found')
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": {"name": name, "group": "ray.io", "kind": "rayclusters"}}

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, data: Any) -> None:
        raw = json.dumps(data).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)


def write_kubeconfig(path: Path, server: str, token: str, namespace: str | None = "carme") -> Path:
    context: dict[str, Any] = {"cluster": "fake", "user": "panel"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "panel", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": context}],
    }))
    return path
