"""REST handlers under ``/carme/api/kubernetes/``: RayClusters through KubeRay.

Thin, like ``handlers.py``: `KubeRayService` does the work. Every method requires an
authenticated user authorized for the ``carme`` resource (``@authorized``: GET reads,
POST, PATCH and DELETE write). Bodies are parsed strictly: a JSON object, no
``NaN``/``Infinity``, no duplicate keys; the service then rejects unknown fields and
wrong types, naming the field (400).

Routes (``<name>`` is a RayCluster's name in the server's namespace)::

    GET    kubernetes/rayclusters         {"available", "namespace", "source", "reason",
                                           "clusters": [...], "selected"}
    POST   kubernetes/rayclusters         create: {"name"?, "workers", "cpus", "gpus"?,
                                           "memory_gib"?, "select"?}
    PATCH  kubernetes/rayclusters/<name>  scale a worker group: {"group", "replicas"}
    DELETE kubernetes/rayclusters/<name>  delete one the panel created
    POST   kubernetes/select              {"name"}: new kernels join it
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from jupyter_server.auth.decorator import authorized
from tornado import web

from ._kubernetes import KubeRayService
from ._service import LabError
from .handlers import _Base

__all__ = ["K8S_HANDLERS"]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows; send a finite number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the field {key!r} appears twice")
        out[key] = value
    return out


def parse_body(raw: bytes) -> object:
    """The request body as JSON, strictly (see the module docstring); LabError 400 if not."""
    try:
        return json.loads(raw or b"{}", parse_constant=_no_constant,
                          object_pairs_hook=_no_duplicates)
    except ValueError as e:
        raise LabError(400, f"expected a JSON object as the request body: {e}") from None


class _KubeBase(_Base):
    @property
    def kuberay(self) -> KubeRayService:
        return self.settings["carme_kuberay_service"]  # type: ignore[no-any-return]

    def strict_body(self) -> object:
        return parse_body(self.request.body)


class RayClustersHandler(_KubeBase):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.answer(lambda: self.kuberay.listing())

    @web.authenticated
    @authorized
    async def post(self) -> None:
        await self.answer(lambda: self.kuberay.create(self.strict_body()), 201)


class RayClusterHandler(_KubeBase):
    @web.authenticated
    @authorized
    async def patch(self, name: str) -> None:
        await self.answer(lambda: self.kuberay.scale(unquote(name), self.strict_body()))

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        await self.answer(lambda: self.kuberay.delete(unquote(name)))


class SelectHandler(_KubeBase):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        await self.answer(lambda: self.kuberay.select(self.strict_body()))


K8S_HANDLERS: list[tuple[str, type[web.RequestHandler]]] = [
    (r"kubernetes/rayclusters", RayClustersHandler),
    (r"kubernetes/rayclusters/(?P<name>[^/]+)", RayClusterHandler),
    (r"kubernetes/select", SelectHandler),
]
