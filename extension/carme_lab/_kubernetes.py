"""RayClusters on Kubernetes (KubeRay) for the side panel: the shell around `_raycluster`.

Theory of operation
-------------------
`KubeRayConfig` holds the settings (``--KubeRayConfig.<name>=...``). `RayClusterAPI`
is the only code that talks to a Kubernetes API server, through the official
``kubernetes`` client: list, get, create, patch and delete ``ray.io/v1`` rayclusters
in one namespace (`RAYCLUSTER_VERBS`, the verbs ``deploy/kubernetes/rbac.yaml``
grants). Credentials come from, in order: the ``kubeconfig`` setting, the in-cluster
service account (when the server runs in a pod), ``$KUBECONFIG`` or ``~/.kube/config``.
None of them: the feature is off and the listing says why; nothing is contacted when
the server starts, only when the panel asks.

`KubeRayService` is what the handlers call (``settings["carme_kuberay_service"]``).
Like `LabService` it runs each blocking call on a worker thread of its own with a
time limit, so the server's event loop never waits on the API server. Selecting a
RayCluster hands its head Service's address (``ray:<name>-head-svc.<ns>.svc:6379``)
to `LabService.connect`, which exports it as ``CARME_ADDRESS`` to the kernels started
afterwards. Only clusters the panel created (label `CREATED_BY`) can be deleted here.

API errors become `LabError`s with the API server's own message: 403 says which verb
the service account lacks, 404 and 409 pass through, anything else is 502 (the API
server answered badly) or 503 (it did not answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from traitlets import Float, Unicode
from traitlets.config import Configurable

from . import _raycluster as rc
from ._service import LabError

__all__ = [
    "DEFAULT_AUTH_SECRET", "DEFAULT_IMAGE", "DEFAULT_RAY_VERSION", "RAYCLUSTER_VERBS",
    "KubeRayConfig", "KubeRayService", "KubernetesUnavailable", "RayClusterAPI",
]

T = TypeVar("T")
GROUP, VERSION, PLURAL = "ray.io", "v1", "rayclusters"
RAYCLUSTER_VERBS = ("create", "delete", "get", "list", "patch")
DEFAULT_IMAGE = "carme:0.1.0"  # built from deploy/kubernetes/Dockerfile
DEFAULT_RAY_VERSION = "2.60.0"
DEFAULT_AUTH_SECRET = "carme-ray-auth"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeRayConfig(Configurable):
    """Settings of the side panel's Kubernetes section."""

    kubeconfig = Unicode(
        "", config=True,
        help="kubeconfig file to use (default: the in-cluster service account, else "
             "$KUBECONFIG or ~/.kube/config).")
    context = Unicode("", config=True, help="kubeconfig context (default: its current one).")
    namespace = Unicode(
        "", config=True,
        help="Namespace of the RayClusters (default: the service account's, else the "
             "context's, else 'default').")
    image = Unicode(DEFAULT_IMAGE, config=True, help="Image of RayClusters the panel creates.")
    ray_version = Unicode(DEFAULT_RAY_VERSION, config=True,
                          help="rayVersion of RayClusters the panel creates (the image's Ray).")
    auth_secret = Unicode(
        DEFAULT_AUTH_SECRET, config=True,
        help="Secret with Ray's token (key auth_token) for clusters the panel creates; "
             "empty: no token authentication.")
    call_timeout = Float(15.0, config=True, help="Seconds a call to the API server may take.")


class KubernetesUnavailable(Exception):
    """No credentials for a Kubernetes API server (the feature is off)."""


class RayClusterAPI:
    """Blocking access to the rayclusters of one namespace (official ``kubernetes`` client)."""

    def __init__(self, api_client: Any, namespace: str, source: str, timeout: float) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.namespace = namespace
        self.source = source
        self._api: Any = client.CustomObjectsApi(api_client)
        self._timeout = (min(5.0, timeout), timeout)

    @classmethod
    def from_config(cls, cfg: KubeRayConfig) -> RayClusterAPI:
        """Load credentials (see the module docstring); raise KubernetesUnavailable if none.

        The cheap checks come first: importing the client takes seconds of CPU (while
        holding the GIL, so the server's event loop waits too), and a server without
        credentials never pays that."""
        namespace = cfg.namespace
        path = cfg.kubeconfig or None
        in_cluster = (path is None and "KUBERNETES_SERVICE_HOST" in os.environ
                      and os.path.exists(os.path.join(SA_DIR, "token")))
        if not in_cluster:
            path = path or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or os.path.expanduser(
                "~/.kube/config")
            if not os.path.exists(path):
                raise KubernetesUnavailable(
                    f"no Kubernetes credentials: not in a pod, and no kubeconfig at {path} "
                    f"(set $KUBECONFIG or --KubeRayConfig.kubeconfig)")
        try:
            from kubernetes import client, config
        except ImportError:
            raise KubernetesUnavailable(
                "the Python package 'kubernetes' is not installed (pip install kubernetes)") from None
        conf = client.Configuration()
        if in_cluster:
            from kubernetes.config.incluster_config import InClusterConfigLoader

            try:
                InClusterConfigLoader(token_filename=os.path.join(SA_DIR, "token"),
                                      cert_filename=os.path.join(SA_DIR, "ca.crt")).load_and_set(conf)
            except Exception as e:
                raise KubernetesUnavailable(f"the pod's service account cannot be used: {e}") from None
            source = "in-cluster service account"
            if not namespace:
                with contextlib.suppress(OSError), open(os.path.join(SA_DIR, "namespace")) as f:
                    namespace = f.read().strip()
        else:
            assert path is not None
            try:
                config.load_kube_config(config_file=path, context=cfg.context or None,
                                        client_configuration=conf)
                _, active = config.list_kube_config_contexts(config_file=path)
            except Exception as e:
                raise KubernetesUnavailable(f"the kubeconfig {path} cannot be used: {e}") from None
            if cfg.context:
                active = next((c for c in config.list_kube_config_contexts(config_file=path)[0]
                               if c.get("name") == cfg.context), active)
            source = f"kubeconfig {path} (context {active.get('name')})"
            if not namespace:
                namespace = (active.get("context") or {}).get("namespace") or ""
        return cls(client.ApiClient(conf), namespace or "default", source, cfg.call_timeout)

    def _kw(self) -> dict[str, Any]:
        return {"group": GROUP, "version": VERSION, "namespace": self.namespace, "plural": PLURAL,
                "_request_timeout": self._timeout}

    def list_all(self) -> list[dict[str, Any]]:
        out = self._api.list_namespaced_custom_object(**self._kw())
        return list(out.get("items") or [])

    def get(self, name: str) -> dict[str, Any]:
        return self._api.get_namespaced_custom_object(name=name, **self._kw())

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._api.create_namespaced_custom_object(
            body=body, field_validation="Strict", **self._kw())

    def patch(self, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return self._api.patch_namespaced_custom_object(
            name=name, body=ops, _content_type="application/json-patch+json", **self._kw())

    def delete(self, name: str) -> None:
        self._api.delete_namespaced_custom_object(name=name, **self._kw())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.api_client.close()


class KubeRayService:
    """What the Kubernetes handlers call; see the module docstring."""

    def __init__(self, cfg: KubeRayConfig, lab: Any, log: logging.Logger | None = None,
                 api_factory: Callable[[KubeRayConfig], RayClusterAPI] = RayClusterAPI.from_config) -> None:
        self.cfg = cfg
        self.lab = lab  # the LabService that owns the selection (CARME_ADDRESS)
        self.log = log or logging.getLogger("carme_lab")
        self._factory = api_factory
        self._api: RayClusterAPI | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="carme-kuberay")

    # ------------------------------------------------------------------ plumbing
    def _connect(self) -> RayClusterAPI:
        if self._api is None:
            self._api = self._factory(self.cfg)
        return self._api

    async def _run(self, what: str, fn: Callable[[RayClusterAPI], T]) -> T:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, lambda: fn(self._connect()))
        try:
            return await asyncio.wait_for(fut, self.cfg.call_timeout + 5)
        except asyncio.TimeoutError:
            raise LabError(504, f"{what}: the Kubernetes API server did not answer within "
                                f"{self.cfg.call_timeout:.0f} s") from None
        except KubernetesUnavailable as e:
            raise LabError(404, f"Kubernetes is not configured for this server: {e}") from None
        except LabError:
            raise
        except Exception as e:
            raise _api_error(what, e) from None

    def _selected(self) -> str | None:
        return self.lab.book.selected if self.lab is not None else None

    # ------------------------------------------------------------------ REST
    async def listing(self) -> dict[str, Any]:
        """The namespace's RayClusters, or why there are none to show."""
        out: dict[str, Any] = {"available": False, "namespace": None, "source": None,
                               "reason": None, "clusters": [], "selected": self._selected()}
        try:
            items = await self._run("listing RayClusters", lambda api: api.list_all())
        except LabError as e:
            out["reason"] = e.message
            return out
        api = self._connect()
        out.update(available=True, namespace=api.namespace, source=api.source,
                   clusters=[rc.cluster_row(o, self._selected()) for o in
                             sorted(items, key=lambda o: o.get("metadata", {}).get("name", ""))])
        return out

    async def create(self, body: object) -> dict[str, Any]:
        req = _checked(rc.check_create, body, f"carme-{secrets.token_hex(3)}")
        api = await self._run("connecting", lambda api: api)
        manifest = rc.raycluster_manifest(req, namespace=api.namespace, image=self.cfg.image,
                                          ray_version=self.cfg.ray_version,
                                          auth_secret=self.cfg.auth_secret or None)
        created = await self._run(f"creating the RayCluster {req.name!r}",
                                  lambda api: api.create(manifest))
        row = rc.cluster_row(created, self._selected())
        if req.select:
            await self._select_address(row["address"])
            row["selected"] = True
        return row

    async def scale(self, name: str, body: object) -> dict[str, Any]:
        name = _checked(rc.check_name, name, "the RayCluster's name in the URL")
        group, replicas = _checked(rc.check_scale, body)
        obj = await self._run(f"reading the RayCluster {name!r}", lambda api: api.get(name))
        try:
            ops = rc.scale_patch(obj, group, replicas)
        except KeyError as e:
            raise LabError(404, str(e.args[0])) from None
        patched = await self._run(f"scaling the RayCluster {name!r}", lambda api: api.patch(name, ops))
        return rc.cluster_row(patched, self._selected())

    async def delete(self, name: str) -> dict[str, Any]:
        name = _checked(rc.check_name, name, "the RayCluster's name in the URL")
        obj = await self._run(f"reading the RayCluster {name!r}", lambda api: api.get(name))
        row = rc.cluster_row(obj, self._selected())
        if not row["created_by_carme"]:
            raise LabError(409, f"the RayCluster {name!r} was not created from this panel (it has "
                                f"no label {rc.CREATED_BY[0]}={rc.CREATED_BY[1]}); delete it "
                                f"where it was made (kubectl delete raycluster {name})")
        await self._run(f"deleting the RayCluster {name!r}", lambda api: api.delete(name))
        if self.lab is not None:
            if self.lab.book.selected == row["address"]:
                await self.lab.connect({"address": None})
            self.lab.book.stopped(row["address"])
        return {"name": name, "deleted": True, "selected": self._selected()}

    async def select(self, body: object) -> dict[str, Any]:
        name = _checked(rc.check_select, body)
        obj = await self._run(f"reading the RayCluster {name!r}", lambda api: api.get(name))
        row = rc.cluster_row(obj, self._selected())
        await self._select_address(row["address"])
        row["selected"] = True
        return row

    async def _select_address(self, address: str) -> None:
        if self.lab is None:
            raise LabError(500, "no cluster service to hand the selection to")
        await self.lab.connect({"address": address})

    async def close(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, api.close)
        self._pool.shutdown(wait=False)


def _checked(fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except rc.RequestError as e:
        raise LabError(400, str(e)) from None


def _api_error(what: str, e: Exception) -> LabError:
    """A LabError for an exception of the kubernetes client (see the module docstring)."""
    status = getattr(e, "status", None)
    if not isinstance(status, int) or status == 0:
        return LabError(503, f"{what}: the Kubernetes API server did not answer "
                             f"({type(e).__name__}: {e})")
    message = getattr(e, "reason", None) or ""
    body = getattr(e, "body", None)
    with contextlib.suppress(Exception):
        message = json.loads(body)["message"] if body else message
    if status == 401:
        return LabError(502, f"{what}: the Kubernetes API server refused the credentials "
                             f"(401 {message}); check the kubeconfig or service account token")
    if status == 403:
        return LabError(403, f"{what}: forbidden by Kubernetes ({message}); the service account "
                             f"needs the verbs {', '.join(RAYCLUSTER_VERBS)} on rayclusters.ray.io "
                             f"(deploy/kubernetes/rbac.yaml)")
    if status in (404, 409, 422):
        return LabError(status if status != 422 else 400, f"{what}: {message}")
    return LabError(502, f"{what}: the Kubernetes API server answered {status} ({message})")

