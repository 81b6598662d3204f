"""Validation of request bodies (pure): every field checked, unknown fields refused.

`start_spec(body)` turns the JSON body of ``POST /carme/api/clusters`` into a
`StartSpec` or raises `BodyError` naming the field, what was expected and what
came. Nothing is started before the whole body passed. JSON lets through
``1e400`` (infinity) and Python's json module also reads ``NaN`` and
``Infinity``: numbers must be finite. Booleans are not numbers here.

Two engines, two sets of fields::

    carme: engine?, num_cpus?, num_gpus?, resources?, select?
    ray:   engine,  num_cpus?, num_gpus?, resources?, select?, port?, dashboard_port?

``port`` is the Ray head's GCS port and ``dashboard_port`` its dashboard (state
REST API) port; left out or 0, a free port of 127.0.0.1 is chosen.

`connect_body(body)` checks ``POST /carme/api/connect``: ``address`` (an id, or
null for none), ``select``, and for a Ray cluster ``dashboard``, the URL of its
dashboard when it is not ``http://HOST:8265``.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["BodyError", "ENGINES", "StartSpec", "check_dashboard", "connect_body", "start_spec"]

Engine = Literal["carme", "ray"]
ENGINES: tuple[Engine, ...] = ("carme", "ray")
_COMMON = ("engine", "num_cpus", "num_gpus", "resources", "select")
_FIELDS: dict[str, tuple[str, ...]] = {
    "carme": _COMMON,
    "ray": (*_COMMON, "port", "dashboard_port"),
}
_RESERVED = {"CPU": "num_cpus", "GPU": "num_gpus"}


class BodyError(ValueError):
    """A request body that does not fit; the message names the field."""


@dataclass(frozen=True)
class StartSpec:
    """A validated start request."""

    engine: Engine = "carme"
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: dict[str, float] | None = None
    select: bool = True
    port: int = 0
    dashboard_port: int = 0


def _number(key: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BodyError(f"expected {key!r} as a number >= 0 (or left out), got "
                        f"{type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise BodyError(f"expected {key!r} as a finite number >= 0 (or left out), got {value!r}")
    return float(value)


def _port(key: str, value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 65536:
        raise BodyError(f"expected {key!r} as an integer port in 1..65535, or 0 / left out for a "
                        f"free port, got {value!r}")
    return value


def _resources(value: object) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BodyError(f"expected 'resources' as an object of name: number (e.g. {{\"disk\": 2}}), "
                        f"got {type(value).__name__} {value!r}")
    out = {}
    for name, amount in value.items():
        if not name or not isinstance(name, str):
            raise BodyError(f"expected resource names as non-empty strings, got {name!r}")
        if name in _RESERVED:
            raise BodyError(f"'resources' must not contain {name!r}: give it as "
                            f"{_RESERVED[name]!r} instead")
        n = _number(f"resources.{name}", amount)
        assert n is not None
        out[name] = n
    return out or None


def start_spec(body: dict[str, Any]) -> StartSpec:
    """The validated `StartSpec` of a ``POST /carme/api/clusters`` body."""
    engine = body.get("engine", "carme")
    if engine not in ENGINES:
        raise BodyError(f"expected 'engine' to be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    allowed = _FIELDS[engine]
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise BodyError(f"unknown field(s) {', '.join(map(repr, unknown))} for a {engine} cluster; "
                        f"expected some of {', '.join(allowed)}")
    for key in ("num_cpus", "num_gpus"):
        value = body.get(key)
        if engine == "ray" and isinstance(value, float) and math.isfinite(value) and not value.is_integer():
            raise BodyError(f"expected {key!r} as a whole number for a Ray head (`ray start "
                            f"--{key.replace('_', '-')}` takes integers), got {value!r}")
    select = body.get("select", True)
    if not isinstance(select, bool):
        raise BodyError(f"expected 'select' as true or false, got {select!r}")
    port, dashboard_port = _port("port", body.get("port")), _port("dashboard_port", body.get("dashboard_port"))
    if port and port == dashboard_port:
        raise BodyError(f"'port' and 'dashboard_port' must differ, both are {port}")
    return StartSpec(
        engine=engine,
        num_cpus=_number("num_cpus", body.get("num_cpus")),
        num_gpus=_number("num_gpus", body.get("num_gpus")),
        resources=_resources(body.get("resources")),
        select=select,
        port=port,
        dashboard_port=dashboard_port,
    )


def check_dashboard(value: object) -> str:
    """``http(s)://HOST[:PORT]`` normalized (no path), or BodyError."""
    url = urllib.parse.urlsplit(value) if isinstance(value, str) else None
    try:
        port_ok = url is not None and (url.port is None or 0 < url.port < 65536)
    except ValueError:
        port_ok = False
    if (url is None or url.scheme not in ("http", "https") or not url.hostname or not port_ok
            or url.path not in ("", "/") or url.query or url.fragment or url.username):
        raise BodyError(f"expected 'dashboard' as the URL of a Ray dashboard, "
                        f"http://HOST:PORT (e.g. http://10.0.0.5:8265), got {value!r}")
    return f"{url.scheme}://{url.netloc}"


def connect_body(body: dict[str, Any]) -> tuple[object, bool, str | None]:
    """(address or None, select, dashboard or None) of a ``POST /carme/api/connect`` body.

    The address itself is checked by the cluster book (`check_joinable`)."""
    unknown = sorted(k for k in body if k not in ("address", "select", "dashboard"))
    if unknown or "address" not in body:
        raise BodyError("expected a JSON body {\"address\": \"HOST:PORT\" or \"ray:HOST:PORT\"} "
                        "(or {\"address\": null} to select no cluster), optionally with "
                        "\"select\" and, for Ray, \"dashboard\""
                        + (f"; unknown field(s) {', '.join(map(repr, unknown))}" if unknown else ""))
    address = body["address"]
    if address == "":
        address = None
    select = body.get("select", True)
    if not isinstance(select, bool):
        raise BodyError(f"expected 'select' as true or false, got {select!r}")
    dashboard = body.get("dashboard")
    if dashboard is not None:
        if not (isinstance(address, str) and address.strip().startswith("ray:")):
            raise BodyError("'dashboard' goes with a Ray cluster's address (ray:HOST:PORT)")
        dashboard = check_dashboard(dashboard)
    return address, select, dashboard
