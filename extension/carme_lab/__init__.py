"""carme_lab: the JupyterLab side panel and server extension of carme.

The server extension (`carme_lab.app.CarmeLabApp`) serves a REST and WebSocket
API under ``/carme/api/`` behind Jupyter's own authentication; the side panel
(TypeScript, prebuilt into ``carme_lab/labextension``) shows the selected
cluster live and starts, stops and connects to clusters. Importing carme_lab
imports neither Jupyter nor carme.
"""

from __future__ import annotations

from typing import Any

__all__ = ["_jupyter_labextension_paths", "_jupyter_server_extension_points"]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "carme-lab"}]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import CarmeLabApp

    return [{"module": "carme_lab", "app": CarmeLabApp}]
