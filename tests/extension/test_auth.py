"""Every handler under /carme/ requires an authenticated, authorized Jupyter user.

`probe` sends each HTTP method a handler class implements to each carme route,
without a token (and with a valid XSRF pair, so a POST is refused by the auth
check, not by XSRF); anything but 401/403 fails. The route list is taken from
the running server, so a handler added later is probed too, and a test proves
the probe catches an unprotected handler.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from carme_lab_fakes import FakeBackend
from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.base.handlers import APIHandler
from tornado.httpclient import HTTPClientError
from tornado.routing import PathMatches

from carme_lab._k8s_handlers import K8S_HANDLERS
from carme_lab.handlers import AUTH_RESOURCE, HANDLERS

METHODS = ("get", "post", "put", "patch", "delete")
XSRF = "0123456789abcdef0123456789abcdef"


def carme_routes(serverapp: Any) -> list[tuple[str, type]]:
    """(path regex, handler class) of every route the server registered under /carme/."""
    found = []
    app = serverapp.web_app
    rules = list(app.default_router.rules) + list(app.wildcard_router.rules)
    while rules:
        rule = rules.pop()
        target = rule.target
        if hasattr(target, "rules"):
            rules.extend(target.rules)
            continue
        if isinstance(rule.matcher, PathMatches) and "/carme/" in rule.matcher.regex.pattern:
            found.append((rule.matcher.regex.pattern, target))
    return found


def concrete(pattern: str) -> str:
    """A URL path that the route regex matches (groups filled with a cluster id)."""
    path = re.sub(r"\(\?P<\w+>[^)]*\)", "127.0.0.1:6380", pattern)
    return path.rstrip("$")


def implemented(cls: type) -> list[str]:
    from tornado.web import RequestHandler

    return [m for m in METHODS if getattr(cls, m) is not getattr(RequestHandler, m)]


async def probe(serverapp: Any, client: Any, headers: dict[str, str]) -> list[str]:
    """Routes x methods that did not answer 401/403; each as 'METHOD path -> code'."""
    bad = []
    for pattern, cls in carme_routes(serverapp):
        for method in implemented(cls):
            url = concrete(pattern)
            h = dict(headers)
            if issubclass(cls, APIHandler) or method != "get":
                h.update({"Cookie": f"_xsrf={XSRF}", "X-XSRFToken": XSRF})
            else:  # a WebSocket
                h.update({"Connection": "Upgrade", "Upgrade": "websocket",
                          "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
            body = "{}" if method in ("post", "put", "patch") else None
            try:
                r = await client.fetch(url, method=method.upper(), headers=h, body=body,
                                       follow_redirects=False, raise_error=False,
                                       request_timeout=10)
                code = r.code
            except HTTPClientError as e:
                code = e.code
            if code not in (401, 403):
                bad.append(f"{method.upper()} {concrete(pattern)} -> {code}")
    return bad


def test_every_registered_route_is_a_known_handler(jp_serverapp: Any) -> None:
    routes = carme_routes(jp_serverapp)
    assert {cls for _, cls in routes} == {cls for _, cls in HANDLERS + K8S_HANDLERS}
    assert all(implemented(cls) for _, cls in routes)


async def test_no_token_gets_403_everywhere(jp_serverapp: Any, http_server_client: Any) -> None:
    assert await probe(jp_serverapp, http_server_client, {}) == []


async def test_a_wrong_token_gets_403_everywhere(jp_serverapp: Any, http_server_client: Any) -> None:
    assert await probe(jp_serverapp, http_server_client, {"Authorization": "token not-the-token"}) == []


class DenyCarme(Authorizer):
    """Authenticated users may do anything except touch the carme resource."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource != AUTH_RESOURCE


DENY_CONFIG = {
    "ServerApp": {"jpserver_extensions": {"carme_lab": True}, "authorizer_class": DenyCarme},
    "CarmeLabApp": {"backend_class": FakeBackend},
}


@pytest.mark.parametrize("jp_server_config", [DENY_CONFIG])
async def test_unauthorized_user_gets_403_everywhere(
    jp_serverapp: Any, http_server_client: Any, jp_auth_header: dict[str, str]
) -> None:
    # the token is valid: the authorizer, not authentication, must refuse
    assert await probe(jp_serverapp, http_server_client, dict(jp_auth_header)) == []
    status = next(p for p, _ in carme_routes(jp_serverapp) if p.endswith("/carme/api/clusters$"))
    r = await http_server_client.fetch(concrete(status).replace("carme/api/clusters", "api/status"),
                                       headers=jp_auth_header, raise_error=False)
    assert r.code == 200, "the token should be valid for everything but carme"


class Unprotected(APIHandler):
    def get(self) -> None:
        self.finish("{}")

    def post(self) -> None:
        self.finish("{}")


async def test_the_probe_catches_an_unprotected_handler(jp_serverapp: Any, http_server_client: Any) -> None:
    jp_serverapp.web_app.add_handlers(".*$", [("/carme/api/oops", Unprotected)])
    bad = await probe(jp_serverapp, http_server_client, {})
    assert bad == ["GET /carme/api/oops -> 200", "POST /carme/api/oops -> 200"]
