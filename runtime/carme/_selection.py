"""Which cluster a driver joins when it is given no address.

Theory of operation
-------------------
`default_address()` answers from three sources, the first that names one wins:

1. ``CARME_ADDRESS`` in the environment: set by the user (or by ``%carme
   connect`` in a carme kernel, for the cells after it);
2. the *selection file* whose path is in ``CARME_SELECTION_FILE``: the JupyterLab
   server extension (``carme_lab``) rewrites it whenever the side panel's
   selection changes. Kernels started by that server carry only the file's
   *path* in their environment, which never goes stale; they read the file when
   they first join (and again after a restart), so they follow the panel's
   current selection, not the one of the moment they started;
3. none: an embedded cluster of this process.

``carme.init(address="local")`` (as in Ray) skips all three.

The file is JSON, written whole and atomically (a temporary file renamed over
it) with mode 0600: ``{"address": "HOST:PORT" | "ray:HOST:PORT" | null,
"env": {NAME: VALUE}}``, where ``env`` holds variables a driver of that cluster
needs (``RAY_AUTH_MODE`` for a token-auth Ray cluster). A missing, unreadable or
malformed file means "no selection" (it is a convenience, not a contract).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from ._files import write_private
from ._record import field, record

__all__ = ["ADDRESS_ENV", "SELECTION_ENV", "Choice", "default_address", "read_selection",
           "write_selection"]

ADDRESS_ENV = "CARME_ADDRESS"
SELECTION_ENV = "CARME_SELECTION_FILE"
PANEL = "the JupyterLab side panel's selection"


@record(frozen=True)
class Choice:
    """The address a driver joins and where it came from (for error messages)."""

    address: str | None  # None: an embedded cluster
    source: str  # e.g. "CARME_ADDRESS", "the JupyterLab side panel's selection (FILE)"
    env: dict[str, str] = field(default_factory=dict)  # what a driver of it needs set

    @property
    def from_panel(self) -> bool:
        return self.source.startswith(PANEL)


def read_selection(path: str) -> tuple[str | None, dict[str, str]]:
    """(address or None, env) from a selection file; (None, {}) if it is missing or malformed."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None, {}
    if not isinstance(data, dict):
        return None, {}
    address = data.get("address")
    env = data.get("env")
    env = {k: v for k, v in env.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(env, dict) else {}
    return (address.strip() or None, env) if isinstance(address, str) else (None, {})


def write_selection(path: str, address: str | None, env: Mapping[str, str] | None = None) -> None:
    """Write the selection file atomically, readable by this user only."""
    write_private(path, json.dumps({"address": address, "env": dict(env or {})}))


def default_address(environ: Mapping[str, str] | None = None) -> Choice:
    """The address a driver given none joins (see the module docstring)."""
    environ = os.environ if environ is None else environ
    given = (environ.get(ADDRESS_ENV) or "").strip()
    if given:
        return Choice(given, ADDRESS_ENV)
    path = environ.get(SELECTION_ENV)
    if path:
        address, env = read_selection(path)
        if address:
            return Choice(address, f"{PANEL} ({SELECTION_ENV}={path})", env)
    return Choice(None, "none")
