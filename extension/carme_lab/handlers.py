"""REST and WebSocket handlers under ``/carme/api/``; thin: `LabService` does the work.

Every handler requires an authenticated user (``@web.authenticated`` /
``@ws_authenticated``) who is authorized for the ``carme`` resource (``@authorized``:
GET reads, POST and DELETE write; the WebSocket asks for ``read``). The test
``tests/extension/test_auth.py`` walks `HANDLERS` and every route the server
registered under ``/carme/`` and fails if any answers without a token.

Routes (``<id>`` is a cluster address, URL-encoded)::

    GET    clusters              listing: {"clusters": [...], "selected": id | null, "showing": id | null}
    POST   clusters              start one: {"engine": "carme" | "ray", "num_cpus", "num_gpus",
                                 "resources", "select", and for Ray "port", "dashboard_port"}
    DELETE clusters/<id>         stop one this server started (or a carme one of this machine)
    POST   connect               {"address": "HOST:PORT" | "ray:HOST:PORT" | null}: remember, select
    POST   view                  {"cluster": id | null}: show it in the panel (kernels unaffected)
    GET    snapshot?cluster=<id> the panel's snapshot (default: the selected cluster)
    GET    timeline?cluster=<id> Chrome trace JSON (an array of events)
    WS     stream                one "tick" message about every second
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.extension.handler import ExtensionHandlerMixin
from jupyter_server.utils import ensure_async
from tornado import web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from ._service import LabError, LabService

__all__ = ["API", "AUTH_RESOURCE", "HANDLERS"]

AUTH_RESOURCE = "carme"
API = "carme/api"


class _Base(ExtensionHandlerMixin, APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def service(self) -> LabService:
        return self.settings["carme_lab_service"]  # type: ignore[no-any-return]

    def body(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except ValueError as e:
            raise LabError(400, f"expected a JSON object as the request body: {e}") from None
        if not isinstance(data, dict):
            raise LabError(400, f"expected a JSON object as the request body, got {type(data).__name__}")
        return data

    async def answer(self, call: Callable[[], Awaitable[Any]], status: int = 200) -> None:
        """Reply with `call()`'s result as JSON, or with a LabError's status and message."""
        try:
            data = await call()
        except LabError as e:
            status, data = e.status, {"message": e.message, "reason": None}
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class ClustersHandler(_Base):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.answer(lambda: self.service.listing())

    @web.authenticated
    @authorized
    async def post(self) -> None:
        await self.answer(lambda: self.service.start(self.body()), 201)


class ClusterHandler(_Base):
    @web.authenticated
    @authorized
    async def delete(self, cluster_id: str) -> None:
        await self.answer(lambda: self.service.stop(unquote(cluster_id)))


class ConnectHandler(_Base):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        await self.answer(lambda: self.service.connect(self.body()))


class ViewHandler(_Base):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        await self.answer(lambda: self.service.view(self.body()))


class SnapshotHandler(_Base):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.answer(lambda: self.service.snapshot(self.get_argument("cluster", None)))


class TimelineHandler(_Base):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.answer(lambda: self.service.timeline(self.get_argument("cluster", None)))


class StreamHandler(WebSocketMixin, WebSocketHandler, JupyterHandler):
    """Pushes `LabService.tick()` messages; the client sends nothing."""

    auth_resource = AUTH_RESOURCE

    @property
    def service(self) -> LabService:
        return self.settings["carme_lab_service"]  # type: ignore[no-any-return]

    async def pre_get(self) -> None:
        user = self.current_user
        ok = await ensure_async(self.authorizer.is_authorized(self, user, "read", AUTH_RESOURCE))
        if not ok:
            raise web.HTTPError(403)

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await self.pre_get()
        await super().get(*args, **kwargs)  # type: ignore[misc]

    def open(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().open()  # WebSocketMixin: starts the ping loop
        self.service.subscribe(self._send)

    def _send(self, msg: dict[str, Any]) -> None:
        try:
            self.write_message(json.dumps(msg))
        except WebSocketClosedError:
            self.service.unsubscribe(self._send)

    def on_message(self, message: str | bytes) -> None:
        pass  # nothing to receive; pings are answered by tornado

    def on_close(self) -> None:
        self.service.unsubscribe(self._send)


HANDLERS: list[tuple[str, type[web.RequestHandler]]] = [
    (r"clusters", ClustersHandler),
    (r"clusters/(?P<cluster_id>[^/]+)", ClusterHandler),
    (r"connect", ConnectHandler),
    (r"view", ViewHandler),
    (r"snapshot", SnapshotHandler),
    (r"timeline", TimelineHandler),
    (r"stream", StreamHandler),
]
