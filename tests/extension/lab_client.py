"""`call`: one REST call to the carme_lab API through pytest-jupyter's `jp_fetch`."""

from __future__ import annotations

import json
from typing import Any

from tornado.httpclient import HTTPClientError


async def call(jp_fetch: Any, *path: str, method: str = "GET", body: Any = None,
               params: dict[str, str] | None = None, timeout: float = 400,
               raw: str | None = None) -> tuple[int, Any]:
    """(status, decoded JSON body) of ``/carme/api/<path>``; error answers are returned too.

    `body` is sent as JSON; `raw` as given (for bodies JSON cannot make, e.g. ``1e400``)."""
    kwargs: dict[str, Any] = {"method": method, "params": params, "request_timeout": timeout}
    if raw is not None:
        kwargs["body"] = raw
    elif body is not None:
        kwargs["body"] = json.dumps(body)
    elif method in ("POST", "PUT", "PATCH"):
        kwargs["body"] = ""
    try:
        r = await jp_fetch("carme", "api", *path, **kwargs)
    except HTTPClientError as e:
        assert e.response is not None
        return e.code, json.loads(e.response.body)
    return r.code, json.loads(r.body)


def kernel_choice() -> Any:
    """What a kernel the server starts now would join: its environment is a copy of the
    server's, and it reads the selection file named there (`carme.notebook.default_address`)."""
    import os

    from carme.notebook import default_address

    return default_address(dict(os.environ))


def kernels_join() -> str | None:
    """The address of `kernel_choice()` (None: an embedded cluster each)."""
    return kernel_choice().address
